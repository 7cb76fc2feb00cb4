"""Dataset drift with a calibrated null: EMD per neuron / layer / overall and FD per layer, each with a
p-value from the statistic's distribution at the night's sample size, drawn from the reference itself.

The null pool. A reference keeps, for a pool of its images (the ``pool_size`` whose sha256(id) are
smallest: a fixed, uniform sample that does not depend on shards), each image's per-neuron histogram
(uint16 counts over its positions, the reference's bins and ranges) and its per-neuron spatial means
(float32; the layer-gaussian statistic is over these). `NeuronPool` is the job part that collects them;
on a night it collects the means of every image (for the driving images).

The statistic and its null. A night of n images is compared with a reference of N images:
T = EMD(night histograms, reference histograms) per neuron (bins), averaged per layer and overall, and
FD(night layer-gaussian, reference layer-gaussian) per layer. Under "no drift" both sets are independent
samples of one distribution, so the null draws, ``resamples`` times, a night of n and a reference of N
images with replacement from the pool (a two-sample bootstrap: multinomial weights over the pool's
images; sums of per-image counts and moments give the resampled histograms and Gaussians exactly) and
computes the same statistics. p = (1 + #{T* >= T}) / (1 + resamples). The family of tests (overall EMD,
each layer's EMD and FD) is summarised by a max-statistic p: every statistic is standardised by its null
(z), and the night's largest z is compared with the largest z of each draw, so the one ``drift`` p needs
no Bonferroni factor and stays exact under the null.

Cost: resamples x pool x neurons x bins for the histograms (a matmul) and, per layer of d neurons,
resamples x k^3 for FD (k = min(distinct images of a draw, d): the spectrum of S1 S2 is read off a
k x k matrix when a draw has fewer distinct images than neurons). It does not depend on the reference's
size or shards. ``device`` runs it on a GPU (the draws are made on the host, so the null is the same).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..jobs.parts import Part, register_part

__all__ = ["NeuronPool", "drift_statistics", "pool_ids"]


def _key(item_id: str) -> str:
    return hashlib.sha256(item_id.encode()).hexdigest()


def pool_ids(ids, size: int) -> list[str]:
    """The ``size`` ids with the smallest sha256: the null pool (every id when there are fewer)."""
    return sorted(ids, key=_key)[: max(0, int(size))]


@register_part
class NeuronPool(Part):
    """Per-image neuron statistics: spatial means (float32) of every image (``means="all"``) or of the
    pool only (``"pool"``), and per-neuron histograms (uint16, the job's ranges) of the images in
    ``pool``; written to ``<file>`` in the job directory (arrays ids, means, pool_ids, hists)."""

    name = "neuron_pool"
    needs = frozenset({"features"})

    def __init__(
        self,
        pool=(),
        *,
        means: str = "pool",
        bins: int = 0,
        file: str = "pool.npz",
        reference=None,
        histogram: str | None = None,
        ranges=None,
    ):
        if means not in ("pool", "all"):
            raise ValueError(f"means must be 'pool' or 'all', got {means!r}")
        # histogram="histogram-<bins>": also write the dataset's histogram VDNA under that name, as the sum
        # of the per-image histograms computed for emd:reference (the same counts as the Distributions
        # part's, without binning every activation a second time). Needs the reference.
        if histogram is not None and (reference is None or histogram != f"histogram-{int(bins)}"):
            raise ValueError(f"histogram={histogram!r} needs reference= and the name histogram-{int(bins)}")
        self.histogram = histogram
        self.ranges_file = ranges  # used when no other part fixed the job's ranges.json
        self.pool = sorted(set(pool))
        self.means, self.bins, self.file = means, int(bins), file
        # {layer: int64 counts [C, bins]}: adds each image's EMD to it (mean over neurons) as emd:reference,
        # from the image's own histograms (the numbers of neuroprint.score_images, at a fraction of the cost)
        self.reference = None if reference is None else {k: np.asarray(v) for k, v in reference.items()}

    def settings(self) -> dict:
        digest = hashlib.sha256("\n".join(self.pool).encode()).hexdigest()
        ref = None
        if self.reference is not None:
            h = hashlib.sha256()
            for k, v in self.reference.items():
                h.update(k.encode() + b"\0" + np.ascontiguousarray(v, dtype=np.int64).tobytes())
            ref = h.hexdigest()
        out = {
            "pool_sha256": digest,
            "means": self.means,
            "bins": self.bins,
            "file": self.file,
            "reference_sha256": ref,
        }
        if self.histogram is not None:
            out["histogram"] = self.histogram
        return {"neuron_pool": out}

    def fields(self) -> list:
        import pyarrow as pa

        return [] if self.reference is None else [("emd:reference", pa.float64())]

    def prepare(self, job) -> None:
        import json

        from ..stats.ranges import Ranges

        self._layers = dict(job.ex.layers)
        path = job.out / "ranges.json"
        if not path.is_file():  # no histogram in the Distributions part: this part fixes the ranges
            if self.ranges_file is None:
                raise ValueError("NeuronPool needs the job's ranges.json or ranges=")
            from ..stats.vdna import load_ranges

            job.write_json(path, load_ranges(self.ranges_file).to_json())
        self.ranges = Ranges.from_json(json.loads(path.read_text()))

    def bind(self, worker) -> None:
        from neuroprint.kernels.histogram import norm_params

        self._pool = set(self.pool)
        self._ref_cdf = None
        if self.reference is not None:
            ref = torch.cat([torch.as_tensor(self.reference[k]) for k in self._layers]).double()
            self._ref_cdf = torch.cumsum(ref / ref.sum(1, keepdim=True).clamp(min=1), 1).to(worker.dev)
        self._params = {}
        for layer in self._layers:
            m, s = norm_params(self.ranges.mins[layer], self.ranges.maxs[layer])
            self._params[layer] = (m.to(worker.dev), s.to(worker.dev))

    def start_shard(self) -> None:
        self._ids, self._means, self._pool_ids, self._hists = [], [], [], []
        self._reducer = self._new_reducer() if self.histogram is not None else None

    def _new_reducer(self):
        from ..stats.reducers import HistogramReducer

        return HistogramReducer(self._layers, self.bins, self.ranges)

    def columns(self, batch, feats) -> dict:
        keep = [i for i, it in enumerate(batch.items) if self.means == "all" or it.id in self._pool]
        if keep:
            idx = torch.tensor(keep, device=next(iter(feats.values())).device)
            every = len(keep) == len(batch.items)  # then no copy of the feature maps
            m = torch.cat(
                [
                    (feats[k] if every else feats[k].index_select(0, idx)).float().mean(dim=1)
                    for k in self._layers
                ],
                dim=1,
            )
            self._means.append(m.cpu().numpy().astype(np.float32))
            self._ids.extend(batch.items[i].id for i in keep)
        rows = [i for i, it in enumerate(batch.items) if self._ref_cdf is not None or it.id in self._pool]
        emd = []
        if rows:
            hc = self._histograms(feats, rows)  # [len(rows), neurons, bins]
            if self._reducer is not None:  # every row of the batch: the dataset histogram is their sum
                total, c0 = hc.sum(0).cpu(), 0
                for k, c in self._layers.items():
                    self._reducer.counts[k] += total[c0 : c0 + c]
                    c0 += c
                self._reducer.count += len(rows)
            if self._ref_cdf is not None:
                cdf = torch.cumsum(hc.double() / hc.sum(2, keepdim=True).clamp(min=1), 2)
                emd = (cdf - self._ref_cdf[None]).abs().sum(2).mean(1).cpu().tolist()
            for r, i in enumerate(rows):
                if batch.items[i].id in self._pool:
                    c = hc[r].cpu().numpy()
                    if c.max(initial=0) > np.iinfo(np.uint16).max:
                        raise ValueError(
                            "a feature map has more than 65535 positions: uint16 pool counts overflow"
                        )
                    self._hists.append(c.astype(np.uint16))
                    self._pool_ids.append(batch.items[i].id)
        return {} if self._ref_cdf is None else {"emd:reference": emd}

    def _histograms(self, feats, rows: list) -> torch.Tensor:
        """Each image's own per-neuron histograms, int64 [len(rows), neurons, bins], in one kernel call
        per layer: the images' channels become the channels of one image (the same binning, op by op)."""
        from neuroprint.kernels.histogram import images_per_chunk, neuron_histogram

        out = []
        for k in self._layers:
            x = feats[k]
            if rows != list(range(x.shape[0])):
                x = x[torch.as_tensor(rows, device=x.device)]
            b, p, c = x.shape
            mean, std = self._params[k]
            # On the CPU, groups of images of about one chunk of the reference path (a call is one chunk:
            # its images are one image's channels, and larger float64 buffers cost page faults and cache)
            g = b if x.is_cuda else images_per_chunk(c * p, b)
            parts = []
            for s0 in range(0, b, g):
                xs = x[s0 : s0 + g]
                n = xs.shape[0]
                xc = xs.transpose(1, 2).reshape(1, n * c, p).transpose(1, 2)  # [1, P, n*C], channel-major
                parts.append(
                    neuron_histogram(xc, mean.repeat(n), std.repeat(n), self.bins).view(n, c, self.bins)
                )
            out.append(torch.cat(parts) if len(parts) > 1 else parts[0])
        return torch.cat(out, dim=1)

    def shard_state(self) -> dict:
        f = sum(self._layers.values())
        hist = {} if self._reducer is None else {f"hist:{k}": v for k, v in self._reducer.state().items()}
        return {
            **hist,
            "pool:ids": np.array(self._ids, dtype=str) if self._ids else np.zeros(0, dtype="<U1"),
            "pool:means": np.concatenate(self._means) if self._means else np.zeros((0, f), np.float32),
            "pool:pool_ids": np.array(self._pool_ids, dtype=str) if self._pool_ids else np.zeros(0, "<U1"),
            "pool:hists": np.stack(self._hists) if self._hists else np.zeros((0, f, self.bins), np.uint16),
        }

    def merge_state(self, arrays: dict) -> None:
        if getattr(self, "_merged", None) is None:
            self._merged = []
            self._merged_hist = self._new_reducer() if self.histogram is not None else None
        self._merged.append({k[5:]: arrays[k] for k in arrays if k.startswith("pool:")})
        if self._merged_hist is not None:
            part = self._new_reducer().load_state({k[5:]: arrays[k] for k in arrays if k.startswith("hist:")})
            self._merged_hist.merge(part)

    def finish(self, job) -> dict:
        merged, self._merged = getattr(self, "_merged", None) or [], None
        vdnas = {}
        hist, self._merged_hist = getattr(self, "_merged_hist", None), None
        if hist is not None and hist.count:
            from ..stats.profile import build_vdnas

            vdnas = build_vdnas(
                [self.histogram], [hist], job.ex, job.recipe, job.dtype, job.source, job.failures,
                self.ranges, job.data_settings(), job.extraction_settings(), decoder=job.decoder,
            )  # fmt: skip
            vdnas[self.histogram].save(job.out / self.histogram)
        out = {k: np.concatenate([m[k] for m in merged]) for k in ("ids", "means", "pool_ids", "hists")}
        out["ids"], out["pool_ids"] = out["ids"].astype(str), out["pool_ids"].astype(str)
        out["layers"] = np.array(list(self._layers), dtype=str)
        out["channels"] = np.array(list(self._layers.values()), dtype=np.int64)
        save_pool(job.out / self.file, out)
        return vdnas


def pool_view(arrays: dict) -> dict:
    """The null pool of a `NeuronPool` file: ids, hists and the means of those images, sorted by id."""
    where = {i: k for k, i in enumerate(arrays["ids"].tolist())}
    pid = arrays["pool_ids"].tolist()
    missing = [i for i in pid if i not in where]
    if missing:
        raise ValueError(f"the pool file has no means for {len(missing)} pool image(s)")
    order = np.argsort(np.array(pid, dtype=str), kind="stable")
    rows = np.array([where[pid[k]] for k in order], dtype=np.int64)
    return {
        "ids": np.array(pid, dtype=str)[order] if pid else np.zeros(0, str),
        "hists": arrays["hists"][order],
        "means": arrays["means"][rows] if pid else arrays["means"][:0],
        "layers": arrays["layers"],
        "channels": arrays["channels"],
    }


def save_pool(path, arrays: dict) -> None:
    from ..jobs.job import _savez, _write_atomic

    _write_atomic(path, lambda tmp: _savez(tmp, arrays))


def load_pool(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def merge_pools(a: dict, b: dict, size: int) -> dict:
    """The pool of the union of two sets of images (`pool_view`s): the ``size`` smallest sha256 ids of
    both pools; returned as a `NeuronPool` file's arrays (means of the pool images only)."""
    if list(a["layers"]) != list(b["layers"]) or a["hists"].shape[1:] != b["hists"].shape[1:]:
        raise ValueError("the pools differ in layers or bins")
    if list(a["layers"]) != list(b["layers"]) or list(a["channels"]) != list(b["channels"]):
        raise ValueError("the pools differ in layers")
    ids = np.concatenate([a["ids"], b["ids"]]).astype(str)
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("the night shares image ids with the reference's pool: it is already merged")
    keep = set(pool_ids(ids.tolist(), size))
    sel = np.array([i in keep for i in ids.tolist()], dtype=bool)
    out = {k: np.concatenate([a[k], b[k]])[sel] for k in ("ids", "means", "hists")}
    order = np.argsort(out["ids"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    out["pool_ids"] = out["ids"]
    out["layers"], out["channels"] = a["layers"], a["channels"]
    return out


# ------------------------------------------------------------------------------------------ statistics


def _emd_rows(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """EMD (bins) per neuron between count tensors [..., F, bins] (float64)."""
    p1 = h1 / h1.sum(-1, keepdim=True).clamp(min=1e-300)
    p2 = h2 / h2.sum(-1, keepdim=True).clamp(min=1e-300)
    return torch.cumsum(p1 - p2, dim=-1).abs().sum(-1)


def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp(min=0).sqrt()[..., None, :]) @ v.transpose(-1, -2)


def _fd_batched(mu1, s1, mu2, s2) -> torch.Tensor:
    """FD between batches of Gaussians (float64): ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)."""
    s1 = (s1 + s1.transpose(-1, -2)) / 2
    s2 = (s2 + s2.transpose(-1, -2)) / 2
    r = _sqrtm_psd(s1)
    m = r @ s2 @ r
    ev = torch.linalg.eigvalsh((m + m.transpose(-1, -2)) / 2).clamp(min=0)
    diff = ((mu1 - mu2) ** 2).sum(-1)
    return (
        diff
        + torch.diagonal(s1, dim1=-2, dim2=-1).sum(-1)
        + torch.diagonal(s2, dim1=-2, dim2=-1).sum(-1)
        - 2 * ev.sqrt().sum(-1)
    )


def _gaussian(w: torch.Tensor, x: torch.Tensor):
    """Weighted mean and covariance (correction 1) of rows x [P, d] under integer weights w [R, P]."""
    n = w.sum(1, keepdim=True)
    mu = (w @ x) / n
    xc = x[None] - mu[:, None]  # [R, P, d]
    sigma = (xc * w[:, :, None]).transpose(1, 2) @ xc / (n[:, :, None] - 1)
    return mu, sigma


def _fd_gram(wa: torch.Tensor, wb: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """FD between the Gaussians (mean, covariance with correction 1) of two weighted samples of the same
    P rows x, from their Gram matrix ``gram`` = x x^T [P, P] alone (weights wa, wb [R, P], integer counts).

    With u = w / n and s = sqrt(w / (n - 1)), the covariances are S = A^T A with A = diag(s) (x - 1 mu^T),
    and the nonzero spectrum of S_a S_b is the squared singular values of A B^T = diag(s_a) C diag(s_b),
    C = (x - 1 mu_a^T)(x - 1 mu_b^T)^T = G - (G u_b) 1^T - 1 (G u_a)^T + (u_a^T G u_b) 1 1^T. Only the k rows
    that sample a draws (wa > 0) are nonzero in A, so tr sqrt(S_a S_b) = sum sqrt(eig(M M^T)) with M the
    k x P block: k^2 P + k^3 per draw whatever the number of neurons; every other term is a quadratic form
    of G.
    """
    na, nb = wa.sum(1, keepdim=True), wb.sum(1, keepdim=True)
    ua, ub = wa / na, wb / nb
    ga, gb = ua @ gram, ub @ gram  # [R, P]: (G u)_j = x_j . mu
    aa, bb = (ga * ua).sum(1), (gb * ub).sum(1)  # ||mu||^2
    ab = (ga * ub).sum(1)
    diag = torch.diagonal(gram)
    sa, sb = torch.sqrt(wa / (na - 1)), torch.sqrt(wb / (nb - 1))
    k = int((wa > 0).sum(1).max())
    rows = torch.argsort((wa > 0).to(torch.int8), dim=1, descending=True, stable=True)[:, :k]  # [R, k]
    # (x_i - mu_a) . (x_j - mu_b) = G_ij - x_i . mu_b - x_j . mu_a + mu_a . mu_b, for the rows i sampled by a
    c = gram[rows] - torch.gather(gb, 1, rows)[:, :, None] - ga[:, None, :] + ab[:, None, None]
    m = torch.gather(sa, 1, rows)[:, :, None] * c * sb[:, None, :]
    ev = torch.linalg.eigvalsh(m @ m.transpose(1, 2)).clamp(min=0)
    tr_a = (sa**2 * (diag[None] - 2 * ga + aa[:, None])).sum(1)
    tr_b = (sb**2 * (diag[None] - 2 * gb + bb[:, None])).sum(1)
    return (aa + bb - 2 * ab) + tr_a + tr_b - 2 * ev.sqrt().sum(-1)


def _fd_null(wn: torch.Tensor, wN: torch.Tensor, x: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """FD of each draw's night sample (weights wn) to its reference sample (wN) over the pool rows x
    [P, d] (centred) with Gram matrix ``gram``: by `_fd_gram` (k^2 P + k^3, k the night's distinct rows)
    or through the d x d covariances (P d^2 + d^3), whichever costs less for this layer (the Gram route
    only while k < d, where the covariance route takes square roots of eigenvalues that are zero)."""
    P, d = x.shape
    k = int((wn > 0).sum(1).max())
    if k < d and k * k * P + k**3 <= 2 * P * d * d + 3 * d**3:
        return _fd_gram(wn, wN, gram)
    return _fd_batched(*_gaussian(wn, x), *_gaussian(wN, x))


def _pvalue(t: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """(1 + #{null >= t}) / (1 + R) along the first axis of null."""
    return (1 + (null >= t.unsqueeze(0)).sum(0)).double() / (1 + null.shape[0])


def drift_statistics(
    night_hist: dict,
    ref_hist: dict,
    night_gauss: dict,
    ref_gauss: dict,
    pool: dict,
    n: int,
    N: int,
    *,
    resamples: int = 500,
    seed: int = 0,
    chunk: int = 32,
    device="cpu",
) -> dict:
    """The drift statistics, their nulls and p-values (see the module docstring).

    night_hist/ref_hist: {layer: int64 counts [C, bins]}; night_gauss/ref_gauss: {layer: (mu [C], sigma
    [C, C])}; pool: `load_pool`'s arrays; n, N: the night's and the reference's image counts.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    layers = [str(x) for x in pool["layers"]]
    chans = [int(c) for c in pool["channels"]]
    if list(night_hist) != layers or list(ref_hist) != layers:
        raise ValueError("the night, the reference and the pool must cover the same layers")
    P = int(pool["ids"].shape[0])
    if P < 2:
        raise ValueError(f"the reference's null pool holds {P} image(s); it needs at least 2")
    hn = torch.cat([torch.as_tensor(night_hist[k]) for k in layers]).double()
    hr = torch.cat([torch.as_tensor(ref_hist[k]) for k in layers]).double()
    t_neuron = _emd_rows(hn, hr)
    bounds = np.cumsum([0, *chans])
    t_layer = torch.stack([t_neuron[bounds[i] : bounds[i + 1]].mean() for i in range(len(layers))])
    t_all = t_neuron.mean()
    t_fd = torch.stack(
        [
            _fd_batched(
                torch.as_tensor(night_gauss[k][0]).double()[None],
                torch.as_tensor(night_gauss[k][1]).double()[None],
                torch.as_tensor(ref_gauss[k][0]).double()[None],
                torch.as_tensor(ref_gauss[k][1]).double()[None],
            )[0]
            for k in layers
        ]
    )
    dev = torch.device(device)
    H = torch.as_tensor(pool["hists"].astype(np.float32)).reshape(P, -1).to(dev)
    M = torch.as_tensor(pool["means"]).double().to(dev)
    # Each layer's pool means enter the FD null only through their Gram matrix (`_fd_gram`); centred on
    # the pool mean first (FD does not depend on the origin) so that float64 keeps the small terms.
    xs = [M[:, bounds[i] : bounds[i + 1]] for i in range(len(layers))]
    xs = [x - x.mean(0, keepdim=True) for x in xs]
    grams = [x @ x.T for x in xs]
    gen = np.random.default_rng(seed)
    null_neuron, null_fd = [], []
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        # the draws come from numpy on the host: the same null on every device
        wn = torch.as_tensor(gen.multinomial(n, np.full(P, 1.0 / P), size=r), dtype=torch.float64).to(dev)
        wN = torch.as_tensor(gen.multinomial(N, np.full(P, 1.0 / P), size=r), dtype=torch.float64).to(dev)
        bn = (wn.float() @ H).double().reshape(r, -1, hn.shape[1])
        bN = (wN.float() @ H).double().reshape(r, -1, hn.shape[1])
        null_neuron.append(_emd_rows(bn, bN).cpu())
        fds = [_fd_null(wn, wN, x, g) for x, g in zip(xs, grams)]
        null_fd.append(torch.stack(fds, dim=1).cpu())
    null_neuron = torch.cat(null_neuron)  # [R, F]
    null_fd = torch.cat(null_fd)  # [R, L]
    null_layer = torch.stack(
        [null_neuron[:, bounds[i] : bounds[i + 1]].mean(1) for i in range(len(layers))], 1
    )
    null_all = null_neuron.mean(1)
    # the family: overall EMD, each layer's EMD and FD, standardised by their nulls
    fam_t = torch.cat([t_all[None], t_layer, t_fd])
    fam_null = torch.cat([null_all[:, None], null_layer, null_fd], dim=1)
    mu, sd = fam_null.mean(0), fam_null.std(0).clamp(min=1e-12)
    z, z_null = (fam_t - mu) / sd, (fam_null - mu) / sd
    p_family = float((1 + (z_null.max(1).values >= z.max()).sum()) / (1 + resamples))
    # a neuron whose null hardly moves (a dead unit: every value in one bin) must not rank first on a
    # rounding-size difference: its spread is floored at 1e-3 bins
    nm, ns = null_neuron.mean(0), null_neuron.std(0).clamp(min=1e-3)
    return {
        "resamples": int(resamples),
        "pool": P,
        "n": int(n),
        "N": int(N),
        "layers": layers,
        "channels": chans,
        "p": p_family,
        "z_max": float(z.max()),
        "emd": float(t_all),
        "emd_p": float(_pvalue(t_all[None], null_all[:, None])[0]),
        "emd_null": _band(null_all),
        "layer_emd": t_layer.tolist(),
        "layer_emd_p": _pvalue(t_layer, null_layer).tolist(),
        "layer_emd_null": [_band(null_layer[:, i]) for i in range(len(layers))],
        "layer_fd": t_fd.tolist(),
        "layer_fd_p": _pvalue(t_fd, null_fd).tolist(),
        "layer_fd_null": [_band(null_fd[:, i]) for i in range(len(layers))],
        "neuron_emd": t_neuron.numpy(),
        "neuron_p": _pvalue(t_neuron, null_neuron).numpy(),
        "neuron_z": ((t_neuron - nm) / ns).numpy(),
        "neuron_null_mean": nm.numpy(),
    }


def _band(x: torch.Tensor) -> dict:
    q = torch.quantile(x.double(), torch.tensor([0.05, 0.5, 0.95, 0.99], dtype=torch.float64))
    return {"p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]), "p99": float(q[3])}
