"""Duplicate search over signatures: exact (cosine top-k, Hamming), approximate (IVF / k-means), and the
grouping of pairs into connected components with a keep policy."""

from __future__ import annotations

import logging

import numpy as np
import torch

from .hashes import hamming_pairs
from .settings import KEEP_POLICIES

logger = logging.getLogger(__name__)


def _as_tensor(emb, device) -> torch.Tensor:
    if isinstance(emb, np.ndarray) and not emb.flags.writeable:
        emb = emb.copy()  # e.g. a zero-copy view of a Parquet column; torch wants writable memory
    t = torch.as_tensor(emb)
    if t.dim() != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        t = t.float()
    return t.to(device)


def _dedupe_pairs(i: np.ndarray, j: np.ndarray, sim: np.ndarray, n: int):
    """Unordered pairs (a < b) once each, keeping the larger similarity when both directions were found;
    sorted by (a, b)."""
    a, b = np.minimum(i, j), np.maximum(i, j)
    key = a.astype(np.int64) * max(n, 1) + b
    order = np.lexsort((-sim, key))  # by key, then best similarity first
    key, sim, a, b = key[order], sim[order], a[order], b[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return a[first], b[first], sim[first]


def embedding_pairs(
    embeddings,
    threshold: float,
    k: int = 10,
    *,
    device: str | torch.device = "cpu",
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact search: pairs (a < b) where b is among a's k nearest neighbours (or a among b's) with cosine
    similarity >= threshold. Returns (a, b, similarity) numpy arrays sorted by (a, b).

    Runs `neuroprint.kernels.cosine_topk` over blocks of ``block`` query rows (the database stays whole
    on ``device``), so the output is O(N k) and no N x N matrix is formed.
    """
    from neuroprint.kernels.cosine_topk import cosine_topk

    x = _as_tensor(embeddings, device)
    n = x.shape[0]
    found_i, found_j, found_s = [], [], []
    for q0 in range(0, n, block):
        sims, idx = cosine_topk(x[q0 : q0 + block], x, k=k, query_offset=q0)
        sims, idx = sims.cpu().numpy(), idx.cpu().numpy()
        hit = (idx >= 0) & (sims >= threshold)
        r, c = np.nonzero(hit)
        found_i.append(r + q0)
        found_j.append(idx[r, c])
        found_s.append(sims[r, c])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return _dedupe_pairs(np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s), n)


def hash_pairs(hashes, max_distance: int, *, device: str | torch.device = "cpu"):
    """Exact search: every pair (a < b) with Hamming distance <= max_distance: (a, b, distance)."""
    h = torch.as_tensor(np.asarray(hashes, dtype=np.int64)).to(device)
    i, j, d = hamming_pairs(h, max_distance)
    return i.cpu().numpy(), j.cpu().numpy(), d.cpu().numpy()


# ------------------------------------------------------------------------------------- approximate search


def _kmeans(x: torch.Tensor, clusters: int, iters: int, seed: int) -> torch.Tensor:
    """Spherical k-means on L2-normalised rows: unit-norm centroids [clusters, D] (float32)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    init = torch.randperm(x.shape[0], generator=g)[:clusters].to(x.device)
    cent = x[init].clone()
    for _ in range(iters):
        assign = _nearest(x, cent, 1)[:, 0]
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=clusters)
        empty = counts == 0
        if bool(empty.any()):  # re-seed empty clusters with random points
            sums[empty] = x[torch.randint(0, x.shape[0], (int(empty.sum()),), generator=g).to(x.device)]
        cent = torch.nn.functional.normalize(sums, dim=1)
    return cent


def _nearest(x: torch.Tensor, cent: torch.Tensor, p: int, block: int = 8192) -> torch.Tensor:
    out = []
    for s in range(0, x.shape[0], block):
        out.append(torch.topk(x[s : s + block] @ cent.T, p, dim=1).indices)
    return torch.cat(out)


def _faiss_topk(x: np.ndarray, k: int, nlist: int, nprobe: int, seed: int):
    import faiss

    d = x.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(x)
    index.add(x)
    index.nprobe = nprobe
    sims, idx = index.search(x, k + 1)
    return sims.astype(np.float32), idx.astype(np.int64)


def approximate_topk(
    embeddings,
    k: int = 10,
    *,
    nlist: int | None = None,
    nprobe: int = 4,
    backend: str = "auto",
    iters: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate self-search top-k (no self-matches): (similarities [N, k], indices [N, k]), missing
    neighbours as (-inf, -1), rows in descending similarity.

    backend "faiss": an IVF-Flat inner-product index over the L2-normalised rows (faiss must be
    installed); "kmeans": SemDeDup-style spherical k-means in torch, then exact search (the cosine top-k
    op) of each query against the members of its ``nprobe`` nearest clusters; "auto": faiss when it
    imports, else kmeans. nlist: number of clusters (default about 4 sqrt(N)). Measure the loss with
    `recall_at_k` against `neuroprint.kernels.cosine_topk`.
    """
    from neuroprint.kernels.cosine_topk import cosine_topk

    if backend not in ("auto", "faiss", "kmeans"):
        raise ValueError(f"unknown backend {backend!r}; expected auto, faiss or kmeans")
    x = torch.nn.functional.normalize(_as_tensor(embeddings, device).float(), dim=1)
    n = x.shape[0]
    if n < 2:
        return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
    nlist = int(nlist) if nlist else max(1, min(n // 8, int(4 * np.sqrt(n))))
    nlist = max(1, min(nlist, n))
    nprobe = max(1, min(int(nprobe), nlist))
    if backend == "auto":
        try:
            import faiss  # noqa: F401

            backend = "faiss"
        except ImportError:
            backend = "kmeans"
    if backend == "faiss":
        sims, idx = _faiss_topk(np.ascontiguousarray(x.cpu().numpy()), k, nlist, nprobe, seed)
        sims = np.where(idx < 0, -np.inf, sims).astype(np.float32)
        cand_s, cand_i = torch.from_numpy(sims), torch.from_numpy(idx)
    else:
        cent = _kmeans(x, nlist, iters, seed)
        assign = _nearest(x, cent, 1)[:, 0]
        probes = _nearest(x, cent, nprobe)  # [N, nprobe]
        width = k + 1
        cand_s = torch.full((n, nprobe * width), float("-inf"), device=x.device)
        cand_i = torch.full((n, nprobe * width), -1, dtype=torch.int64, device=x.device)
        order = torch.argsort(assign, stable=True)
        bounds = torch.searchsorted(assign[order], torch.arange(nlist + 1, device=x.device)).tolist()
        # (query, probe slot) pairs grouped by the cluster they probe: one sort instead of a scan per cluster.
        flat_c = probes.reshape(-1)
        flat_q = torch.arange(n, device=x.device).repeat_interleave(nprobe)
        flat_slot = torch.arange(nprobe, device=x.device).repeat(n)
        qorder = torch.argsort(flat_c, stable=True)
        qbounds = torch.searchsorted(flat_c[qorder], torch.arange(nlist + 1, device=x.device)).tolist()
        rows, cols, vals, index = [], [], [], []
        for c in range(nlist):
            members = order[bounds[c] : bounds[c + 1]]
            sel = qorder[qbounds[c] : qbounds[c + 1]]
            if members.numel() == 0 or sel.numel() == 0:
                continue
            qrow, slot = flat_q[sel], flat_slot[sel]
            s, local = cosine_topk(x[qrow], x[members], k=min(width, members.numel()))
            rows.append(qrow[:, None].expand_as(local))
            cols.append(slot[:, None] * width + torch.arange(s.shape[1], device=x.device)[None, :])
            vals.append(s)
            index.append(torch.where(local >= 0, members[local.clamp(min=0)], local))
        if rows:
            r = torch.cat([t.reshape(-1) for t in rows])
            c_ = torch.cat([t.reshape(-1) for t in cols])
            cand_s[r, c_] = torch.cat([t.reshape(-1) for t in vals])
            cand_i[r, c_] = torch.cat([t.reshape(-1) for t in index])
    self_hit = cand_i == torch.arange(n, device=cand_i.device)[:, None]
    cand_s = cand_s.masked_fill(self_hit, float("-inf"))
    cand_i = cand_i.masked_fill(self_hit, -1)
    # Descending similarity, ties by ascending index (as the exact op).
    o1 = torch.argsort(torch.where(cand_i < 0, n, cand_i), dim=1, stable=True)
    cand_s, cand_i = cand_s.gather(1, o1), cand_i.gather(1, o1)
    o2 = torch.argsort(-cand_s, dim=1, stable=True)[:, :k]
    sims, idx = cand_s.gather(1, o2), cand_i.gather(1, o2)
    if sims.shape[1] < k:
        pad = k - sims.shape[1]
        sims = torch.nn.functional.pad(sims, (0, pad), value=float("-inf"))
        idx = torch.nn.functional.pad(idx, (0, pad), value=-1)
    return sims.cpu().numpy(), idx.cpu().numpy()


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean over rows of |approx neighbours ∩ exact neighbours| / |exact neighbours| (-1 slots ignored)."""
    approx_idx, exact_idx = np.asarray(approx_idx), np.asarray(exact_idx)
    if approx_idx.shape[0] != exact_idx.shape[0]:
        raise ValueError(f"row counts differ: {approx_idx.shape[0]} vs {exact_idx.shape[0]}")
    found = total = 0
    for a, e in zip(approx_idx, exact_idx):
        e = e[e >= 0]
        total += len(e)
        found += len(np.intersect1d(a[a >= 0], e))
    return found / total if total else 1.0


# ------------------------------------------------------------------------------------ groups and keeping


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64 [n]: for each node, the smallest node index of its component under the edges (a, b).

    Vectorised hooking and pointer jumping: every edge hooks the larger root under the smaller one, then
    paths are compressed, until both ends of every edge share a root.
    """
    parent = np.arange(n, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.size == 0:
        return parent
    while True:
        ra, rb = parent[a], parent[b]
        if np.array_equal(ra, rb):
            return parent
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        np.minimum.at(parent, hi, lo)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def keep_ranking(
    members: np.ndarray,
    policy: str,
    *,
    widths: np.ndarray,
    heights: np.ndarray,
    embeddings: np.ndarray | None = None,
    hashes: np.ndarray | None = None,
    sharpness: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The members (source-order indices) in the policy's order of preference, best first, and for each
    the reason it would be kept. Ties go to the first seen.

    largest: most pixels (width x height) among the images that look native, then the ones that look
    upscaled or blurred (``sharpness`` below `neuroprint.dedup.sharpness.UPSCALED_BELOW`; NaN or no sharpness:
    not taken as upscaled), by pixels too; first: source order; centre: highest cosine to the mean of the
    members' L2-normalised embeddings, or without embeddings the hash medoid (smallest total Hamming
    distance to the others).
    """
    from .sharpness import UPSCALED_BELOW

    members = np.sort(np.asarray(members, dtype=np.int64))
    if policy == "first":
        return members, ["first seen"] * len(members)
    if policy == "largest":
        area = widths[members].astype(np.int64) * heights[members].astype(np.int64)
        soft = np.zeros(len(members), dtype=bool)
        if sharpness is not None:
            s = np.asarray(sharpness, dtype=np.float64)[members]
            soft = np.isfinite(s) & (s < UPSCALED_BELOW)
        order = np.lexsort((members, -area, soft))
        ranked = members[order]
        why = []
        for m, is_soft in zip(ranked, soft[order]):
            size = f"{int(widths[m])}x{int(heights[m])}"
            why.append(
                f"largest resolution ({size}), though it looks upscaled or blurred (sharpness "
                f"{float(sharpness[m]):.2f})"
                if is_soft
                else f"largest native resolution ({size})"
            )
        return ranked, why
    if policy == "centre":
        if embeddings is not None:
            e = torch.nn.functional.normalize(torch.as_tensor(embeddings[members]).float(), dim=1)
            centre = torch.nn.functional.normalize(e.mean(dim=0), dim=0)
            score = (e @ centre).numpy().astype(np.float64)
            why = "closest to the group centre (embedding)"
        elif hashes is not None:
            score = -hash_distance_sums(np.asarray(hashes)[members]).astype(np.float64)
            why = "closest to the group centre (hash medoid)"
        else:
            raise ValueError("keep policy 'centre' needs embeddings or hashes")
        order = np.lexsort((members, -score))
        return members[order], [why] * len(members)
    raise ValueError(f"unknown keep policy {policy!r}; expected one of {', '.join(KEEP_POLICIES)}")


def hash_distance_sums(hashes: np.ndarray) -> np.ndarray:
    """Each hash's total Hamming distance to all of ``hashes`` (int64 [m], or [m, w] words), in O(m x 64)
    per word without the m x m matrix: at each bit, a hash differs from the members holding the other
    value, so its sum is the count of ones where it has a zero plus the count of zeros where it has a one."""
    h = np.ascontiguousarray(np.asarray(hashes, dtype=np.int64))
    m = h.shape[0]
    bits = np.unpackbits(h.reshape(m, -1).view(np.uint8), axis=1)  # uint8 [m, 64 w]
    ones = bits.sum(axis=0, dtype=np.int64)
    # sum_b ones_b + bit_ib (m - 2 ones_b), in row blocks (no [m, 64] int64 copy of a large group)
    weight, out = m - 2 * ones, np.empty(m, dtype=np.int64)
    for s in range(0, m, 65536):
        out[s : s + 65536] = bits[s : s + 65536].astype(np.int64) @ weight + ones.sum()
    return out


def choose_keep(
    members: np.ndarray,
    policy: str,
    *,
    widths: np.ndarray,
    heights: np.ndarray,
    embeddings: np.ndarray | None = None,
    hashes: np.ndarray | None = None,
    sharpness: np.ndarray | None = None,
) -> tuple[int, str]:
    """The member (a source-order index) to keep of one group, and why: the first of `keep_ranking`."""
    ranked, why = keep_ranking(
        members,
        policy,
        widths=widths,
        heights=heights,
        embeddings=embeddings,
        hashes=hashes,
        sharpness=sharpness,
    )
    return int(ranked[0]), why[0]


def kept_groups(n: int, a: np.ndarray, b: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """int64 [n]: for each node, the kept node it is dropped for (itself when kept), grouping without
    chaining.

    Nodes are taken in increasing ``rank`` (the keep policy's preference, compared only between nodes
    joined by an edge); each joins the best-ranked kept node it shares an edge (a, b) with, else is kept
    itself. So every node of a group is directly paired with the group's kept node (as SemDeDup keeps
    against kept items), whereas connected components chain: A-B and B-C put A and C in one group however
    far apart they are.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    rank = np.asarray(rank)
    head = np.arange(n, dtype=np.int64)
    if a.size == 0:
        return head
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    indptr = np.searchsorted(src, np.arange(n + 1))
    touched = np.unique(src)
    kept = np.zeros(n, dtype=bool)
    for v in touched[np.argsort(rank[touched], kind="stable")]:
        nbrs = dst[indptr[v] : indptr[v + 1]]
        nbrs = nbrs[kept[nbrs]]
        if nbrs.size:
            head[v] = nbrs[np.argmin(rank[nbrs])]
        else:
            kept[v] = True
    return head


# ------------------------------------------------------------------------------------ across Ray actors


def sharded_topk(
    embeddings,
    k: int = 10,
    *,
    num_shards: int | None = None,
    block: int = 4096,
    ray_address: str | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact self-search top-k with the database split over Ray actors: (similarities, indices) equal to
    ``cosine_topk(embeddings, k=k)`` bit for bit.

    Each actor holds one contiguous shard of the rows (so the signatures need not fit on one machine)
    and answers every block of ``block`` queries with its shard's top-k as int64 keys carrying global
    indices; the driver merges the shards' keys per block (exact: keys are unique). ``num_shards``:
    default one per CPU slot of the cluster; ``ray_address``: an existing cluster, else a local one is
    started (and shut down afterwards). ``device``: where each actor searches ("cuda" uses the kernel).
    """
    from neuroprint.kernels.cosine_topk import keys_to_topk, merge_topk_keys

    from ..jobs.ray import ray_session

    x = np.ascontiguousarray(np.asarray(embeddings))
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    if x.dtype not in (np.float32, np.float16):
        x = x.astype(np.float32)
    n = x.shape[0]
    with ray_session(ray_address) as ray:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        if num_shards is None:
            num_shards = max(1, int(cpus))
        num_shards = max(1, min(int(num_shards), n or 1))
        on_gpu = torch.device(device).type == "cuda"
        # Shards may outnumber the CPU slots (memory, not cores, decides their count): all must be placed.
        cpus_each = min(1.0, cpus / num_shards)

        @ray.remote(num_cpus=cpus_each, num_gpus=1 if on_gpu else 0)
        class ShardSearcher:
            def __init__(self, rows, start):
                self.db = torch.from_numpy(rows).to(device)
                self.start = start

            def search(self, queries, q0, k):
                from neuroprint.kernels.cosine_topk import _cosine_topk_op, shift_keys

                q = torch.from_numpy(queries).to(device)
                keys = _cosine_topk_op(q, self.db, k, q0 - self.start)
                return shift_keys(keys, self.start).cpu()

        bounds = np.linspace(0, n, num_shards + 1).astype(int)
        actors = [ShardSearcher.remote(x[a:b], int(a)) for a, b in zip(bounds[:-1], bounds[1:])]
        keys = []
        for q0 in range(0, n, block):
            qref = ray.put(x[q0 : q0 + block])
            parts = ray.get([a.search.remote(qref, q0, k) for a in actors])
            keys.append(merge_topk_keys(parts, k))
        for a in actors:
            ray.kill(a)
    if not keys:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    sims, idx = keys_to_topk(torch.cat(keys))
    return sims.numpy(), idx.numpy()
