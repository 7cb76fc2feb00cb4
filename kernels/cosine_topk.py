"""Exact cosine top-k: for every query row, the k most similar database rows.

Formula, for query rows ``q_i`` [Nq, D] and database rows ``d_j`` [Nd, D]::

    s(i, j) = (q_i . d_j) * rq_i * rd_j,   rq_i = 1 / ||q_i||,  rd_j = 1 / ||d_j||  (0 for a zero row)
    top(i)  = the k indices j with the largest s(i, j), j != query_offset + i when self-matches are
              excluded, in descending order of s (the offset may be negative: a query block that
              overlaps a database shard only partly)

The dot products accumulate in float32 from fp32 / fp16 / bf16 inputs; the inverse norms are float32.
Ties are broken deterministically: equal similarities are ordered by ascending database index. Every
(similarity, index) pair is packed into one int64 key (order-preserving float bits in the high 32 bits,
``2**32 - 1 - j`` in the low 32), so ``max`` over keys is "largest similarity, then lowest index" and no
two keys are equal. When fewer than k candidates exist (k > Nd, or k > Nd - 1 for a self-search), the
missing slots hold similarity ``-inf`` and index ``-1``.

Layers: the Triton kernel (one program per block of query rows; it streams database blocks through a
fused matmul and keeps a running top-k per row in registers, so memory is O(Nq * k), never Nq * Nd),
its launcher, the plain torch reference (the CPU path and the oracle: the same blocked loop with
``torch.topk`` on the int64 keys, memory bounded by the block sizes), and `cosine_topk`, registered as
the torch custom op ``neuroprint::cosine_topk``: Triton on CUDA, the reference elsewhere.

The ``@triton.jit`` code lives in `_cosine_topk_jit.py`, imported on first use (see kernels/_jit.py).
"""

from __future__ import annotations

import torch

from ._jit import cdiv, lazy_jit, next_power_of_2, triton_available

__all__ = [
    "NO_SELF",
    "cosine_topk",
    "inverse_norms",
    "merge_topk_keys",
    "shift_keys",
    "keys_to_topk",
    "reference_cosine_topk",
    "triton_cosine_topk",
]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The key of "no candidate": below every real key (a real key's high half is at least the ordered bits of
# -inf, which are far above INT32_MIN).
_EMPTY_KEY = -(2**63)
_LOW = 0xFFFFFFFF
# Rows of database indices are packed into 32 bits.
MAX_DATABASE_ROWS = 2**32 - 1
# query_offset meaning "no self-exclusion" (any other value, negative included, is an offset).
NO_SELF = -(2**62)


def inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """float32 [N]: 1 / ||x_i|| in float32, and 0 for an all-zero row (its similarities are all 0)."""
    n = torch.linalg.vector_norm(x.float(), dim=1)
    return torch.where(n > 0, 1.0 / n, torch.zeros_like(n))


def _pack(scores: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float32 scores [..., n] and int64 column indices [n] -> unique, order-preserving int64 keys."""
    bits = scores.contiguous().view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    return (ordered << 32) | (_LOW - cols)


def keys_to_topk(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack int64 keys [Nq, k] into (float32 similarities, int64 indices); empty slots -> (-inf, -1)."""
    empty = keys == _EMPTY_KEY
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    values = bits.view(torch.float32).clone()
    index = _LOW - (keys & _LOW)
    values[empty] = float("-inf")
    index[empty] = -1
    return values, index


def shift_keys(keys: torch.Tensor, offset: int) -> torch.Tensor:
    """Keys of a search against a database shard whose row 0 is global row ``offset`` -> keys with
    global indices (same similarities, same order). Empty keys stay empty."""
    if offset == 0:
        return keys
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return torch.where(keys == _EMPTY_KEY, keys, keys - offset)


def merge_topk_keys(parts: list[torch.Tensor], k: int) -> torch.Tensor:
    """The top-k of several [Nq, k_i] key tensors of the same queries (e.g. against disjoint database
    shards, after `shift_keys`). Exact: keys are unique, so the merge equals a search of the union."""
    merged = torch.cat(parts, dim=1)
    if merged.shape[1] < k:
        pad = torch.full(
            (merged.shape[0], k - merged.shape[1]), _EMPTY_KEY, dtype=torch.int64, device=merged.device
        )
        merged = torch.cat([merged, pad], dim=1)
    return torch.topk(merged, k, dim=1, sorted=True).values


def _check(query: torch.Tensor, database: torch.Tensor, k: int, query_offset: int) -> None:
    if query.dim() != 2 or database.dim() != 2:
        raise ValueError(
            f"query and database must be 2-d [rows, dim], got {tuple(query.shape)} and {tuple(database.shape)}"
        )
    if query.shape[1] != database.shape[1]:
        raise ValueError(f"dimension mismatch: query has {query.shape[1]}, database {database.shape[1]}")
    if query.dtype not in _DTYPES or database.dtype not in _DTYPES:
        raise TypeError(
            f"supported dtypes are float32, float16 and bfloat16; got {query.dtype}, {database.dtype}"
        )
    if query.dtype != database.dtype:
        raise TypeError(f"query and database dtypes differ: {query.dtype} vs {database.dtype}")
    if query.device != database.device:
        raise ValueError(f"query and database are on different devices: {query.device} vs {database.device}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if database.shape[0] > MAX_DATABASE_ROWS:
        raise ValueError(f"at most {MAX_DATABASE_ROWS} database rows per call, got {database.shape[0]}")
    if not isinstance(query_offset, int):
        raise TypeError(f"query_offset must be an int, got {query_offset!r}")


def _block_candidates(scores: torch.Tensor, d0: int, k: int, fast: bool) -> torch.Tensor:
    """int64 keys of one [rows, n] block of scores (database columns d0..d0+n): every score's key, or
    (fast) only the k best per row when that set is unambiguous. -inf (excluded) becomes the empty key."""
    n = scores.shape[1]
    if fast and n > k:
        vals, idx = torch.topk(scores, k, dim=1, sorted=False)
        kth = vals.min(dim=1, keepdim=True).values
        # The float top-k is the key top-k unless a score outside the chosen set equals the k-th value.
        if int((scores >= kth).sum(dim=1).max()) == k:
            keys = _pack(vals, idx + d0)
            return keys.masked_fill_(vals == float("-inf"), _EMPTY_KEY)
    cols = torch.arange(d0, d0 + n, device=scores.device)
    keys = _pack(scores, cols)
    return keys.masked_fill_(scores == float("-inf"), _EMPTY_KEY)


def reference_cosine_topk(
    query: torch.Tensor,
    database: torch.Tensor,
    k: int,
    query_offset: int = NO_SELF,
    *,
    block_q: int = 1024,
    block_d: int = 8192,
    fast: bool = True,
) -> torch.Tensor:
    """Plain torch reference and CPU path: int64 keys [Nq, k] of the top-k (see `keys_to_topk`).

    Unless ``query_offset`` is ``NO_SELF``, query row i is database row ``query_offset + i`` and is not
    its own neighbour.
    Memory is O(block_q * (block_d + k)) beyond the inputs and output. ``fast=False`` packs every
    score of a block into a key (the definition); the default first takes a float ``torch.topk`` of the
    block and packs only those k candidates, which gives the same keys whenever no score ties the k-th
    largest of its row, and falls back to the definition for the blocks where one does.
    """
    _check(query, database, k, query_offset)
    nq, nd = query.shape[0], database.shape[0]
    out = torch.full((nq, k), _EMPTY_KEY, dtype=torch.int64, device=query.device)
    if nq == 0 or nd == 0:
        return out
    rq_all, rd_all = inverse_norms(query), inverse_norms(database)
    db = database.float() if database.dtype != torch.float32 else database
    for q0 in range(0, nq, block_q):
        q1 = min(nq, q0 + block_q)
        q = query[q0:q1].float()
        rq = rq_all[q0:q1, None]
        best = out[q0:q1]
        rows = torch.arange(q0, q1, device=query.device)
        for d0 in range(0, nd, block_d):
            d1 = min(nd, d0 + block_d)
            scores = (q @ db[d0:d1].T).mul_(rq).mul_(rd_all[None, d0:d1])
            if query_offset != NO_SELF:
                self_col = rows + query_offset
                hit = (self_col >= d0) & (self_col < d1)
                if bool(hit.any()):
                    r = hit.nonzero().squeeze(1)
                    scores[r, self_col[r] - d0] = float("-inf")  # no real similarity is -inf
            keys = _block_candidates(scores, d0, k, fast)
            merged = torch.cat([best, keys], dim=1)
            best = torch.topk(merged, k, dim=1, sorted=True).values
        out[q0:q1] = best
    return out


# ------------------------------------------------------------------------------------------ Triton


def _blocks(
    k: int, dim: int, interpret: bool, dtype: torch.dtype = torch.float16
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): the running top-k holds BLOCK_M * next_pow2(k) int64 per
    program and a block's keys BLOCK_M * BLOCK_N int64. Chosen so that no configuration spills on sm_90
    or sm_80 (tests/test_kernel_aot.py): float32's full-precision products need half the query rows of
    the 16-bit types at small k and a shorter K step, and 8 warps hold a 4,096-key top-k."""
    if interpret:  # the interpreter runs tiles as numpy arrays: small tiles keep the tests fast
        return 16, 16, 16, 4
    k_pad = next_power_of_2(k)
    if dtype == torch.float32:  # full-precision products run on FMA units with both tiles in registers
        block_m = 32 if k_pad <= 128 else 16
        return block_m, 64, min(32, max(16, next_power_of_2(dim))), 8
    block_m = 64 if k_pad <= 32 else 32 if k_pad <= 128 else 16
    block_k = 64 if dim >= 64 else max(16, next_power_of_2(dim))
    warps = 8 if block_m * k_pad >= 4096 else 4
    return block_m, 64, block_k, warps


MAX_KERNEL_K = 256


def triton_cosine_topk(
    query: torch.Tensor, database: torch.Tensor, k: int, query_offset: int = NO_SELF
) -> torch.Tensor:
    """Launcher: int64 keys [Nq, k] by the Triton kernel (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    if not triton_available():
        raise RuntimeError("Triton is not installed; use reference_cosine_topk")
    _check(query, database, k, query_offset)
    if k > MAX_KERNEL_K:
        raise ValueError(f"the Triton kernel keeps at most k={MAX_KERNEL_K} per row in registers, got {k}")
    nq, nd = query.shape[0], database.shape[0]
    out = torch.full((nq, k), _EMPTY_KEY, dtype=torch.int64, device=query.device)
    if nq == 0 or nd == 0:
        return out
    rq, rd = inverse_norms(query).contiguous(), inverse_norms(database).contiguous()
    # Rows must be contiguous: a strided inner dimension defeats vector loads and spilled 334 bytes per
    # thread on sm_90 (and thousands on sm_80); one copy costs less than that on every tile.
    if query.stride(1) != 1:
        query = query.contiguous()
    if database.stride(1) != 1:
        database = database.contiguous()
    plan = plan_cosine_topk(
        nq,
        nd,
        query.shape[1],
        k,
        query.dtype,
        query_offset != NO_SELF,
        query.stride(),
        database.stride(),
        0 if query_offset == NO_SELF else query_offset,
    )
    plan(q_ptr=query, d_ptr=database, rq_ptr=rq, rd_ptr=rd, out_ptr=out)
    return out


def plan_cosine_topk(
    nq: int,
    nd: int,
    dim: int,
    k: int,
    dtype: torch.dtype,
    exclude: bool = False,
    q_strides=None,
    d_strides=None,
    query_offset: int = 0,
):
    """The `Launch` of `triton_cosine_topk` (contiguous strides unless given)."""
    import os

    from ._launch import Launch, extent

    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    bm, bn, bk, warps = _blocks(k, dim, interpret, dtype)
    qs, ds = q_strides or (dim, 1), d_strides or (dim, 1)
    return Launch(
        _jit()._cosine_topk_kernel,
        grid=(cdiv(nq, bm),),
        pointers={"q_ptr": dtype, "d_ptr": dtype, "rq_ptr": torch.float32, "rd_ptr": torch.float32,
                  "out_ptr": torch.int64},
        extents={"q_ptr": extent((nq, dim), qs), "d_ptr": extent((nd, dim), ds), "rq_ptr": nq, "rd_ptr": nd,
                 "out_ptr": nq * k},
        scalars={"Nq": nq, "Nd": nd, "D": dim, "sqm": qs[0], "sqd": qs[1], "sdn": ds[0], "sdd": ds[1],
                 "query_offset": query_offset},
        constexprs={"K": k, "K_PAD": next_power_of_2(k), "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
                    "IEEE": dtype == torch.float32 or interpret,
                    "UPCAST": interpret and dtype == torch.bfloat16, "EXCLUDE": bool(exclude)},
        num_warps=warps,
    )  # fmt: skip


# -------------------------------------------------------------------------------------- custom op


@torch.library.custom_op("neuroprint::cosine_topk", mutates_args=())
def _cosine_topk_op(query: torch.Tensor, database: torch.Tensor, k: int, query_offset: int) -> torch.Tensor:
    return reference_cosine_topk(query, database, k, query_offset)


@_cosine_topk_op.register_fake
def _(query, database, k, query_offset):
    return query.new_empty((query.shape[0], k), dtype=torch.int64)


if triton_available():

    @_cosine_topk_op.register_kernel("cuda")
    def _(query, database, k, query_offset):
        if k > MAX_KERNEL_K:
            return reference_cosine_topk(query, database, k, query_offset)
        return triton_cosine_topk(query, database, k, query_offset)


def cosine_topk(
    query: torch.Tensor,
    database: torch.Tensor | None = None,
    k: int = 10,
    *,
    query_offset: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities float32 [Nq, k], indices int64 [Nq, k]) of each query row's k nearest database rows.

    ``database=None`` searches ``query`` against itself without self-matches. ``query_offset=o``: query
    row i is database row o + i (a chunk of a self-search) and is not its own neighbour. Rows come back
    in descending similarity, ties by ascending index; missing neighbours are (-inf, -1). Runs the
    Triton kernel on CUDA and the torch reference elsewhere.
    """
    if database is None:
        database = query
        query_offset = 0 if query_offset is None else query_offset
    offset = NO_SELF if query_offset is None else int(query_offset)
    _check(query, database, k, offset)
    return keys_to_topk(_cosine_topk_op(query, database, k, offset))


# the @triton.jit code, imported on first use (see kernels/_jit.py)
_jit, __getattr__ = lazy_jit(__name__, "_cosine_topk_jit")
