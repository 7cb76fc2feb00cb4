"""Batched earth mover's distance between sets of histograms (vdna's EMD, many pairs in one launch).

Formula, for a pair (i, j) and neuron (row) r of histograms with N bins::

    emd[pair, r] = sum_k | cumsum_k( a[i, r, k] / sum(a[i, r]) - b[j, r, k] / sum(b[j, r]) ) |

in float64, in bin units: exactly vdna's ``earth_movers_distance`` row by row. ``a`` is [Pa, R, N],
``b`` is [Pb, R, N] (integer counts or float), ``pairs`` [M, 2] indexes (i into a, j into b).

Layers: the Triton kernel (one program per (pair, block of rows), streaming the bins in chunks and
carrying the running cumulative sum), its launcher, the torch reference, and `batched_emd`, the custom op
``neuroprint::batched_emd`` (Triton on CUDA, the reference elsewhere).

The ``@triton.jit`` code lives in `_emd_jit.py`, imported on first use (see kernels/_jit.py).
"""

from __future__ import annotations

import torch

from ._jit import cdiv, lazy_jit, next_power_of_2, triton_available

__all__ = ["all_pairs", "batched_emd", "reference_batched_emd", "triton_batched_emd"]


def all_pairs(pa: int, pb: int, device=None) -> torch.Tensor:
    """[pa * pb, 2] int64: every (i, j), row-major."""
    i = torch.arange(pa, device=device).repeat_interleave(pb)
    j = torch.arange(pb, device=device).repeat(pa)
    return torch.stack([i, j], dim=1)


def _check(a: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor | None) -> torch.Tensor:
    if a.dim() != 3 or b.dim() != 3:
        raise ValueError(
            f"histogram sets must be [sets, neurons, bins], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"histogram sets differ in neurons or bins: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}"
        )
    if pairs is None:
        return all_pairs(a.shape[0], b.shape[0], device=a.device)
    pairs = torch.as_tensor(pairs, dtype=torch.int64, device=a.device)
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be [M, 2], got {tuple(pairs.shape)}")
    if pairs.numel() and (
        pairs[:, 0].min() < 0
        or pairs[:, 1].min() < 0
        or pairs[:, 0].max() >= a.shape[0]
        or pairs[:, 1].max() >= b.shape[0]
    ):
        raise IndexError("pairs index a histogram set that does not exist")
    return pairs


def reference_batched_emd(
    a: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor | None = None, *, chunk_cells: int = 1 << 17
) -> torch.Tensor:
    """Torch reference: float64 [M, R] EMD of every pair and neuron.

    The CPU path too: row sums are taken once per set, and each pair is streamed through two small
    reused float64 buffers (``chunk_cells`` cells, cache-sized), so no [pairs, R, N] temporary exists.
    """
    pairs = _check(a, b, pairs)
    m, (r, n) = pairs.shape[0], a.shape[1:]
    dev = a.device
    b = b.to(dev)
    out = torch.empty(m, r, dtype=torch.float64, device=dev)
    if m == 0 or r == 0:
        return out
    sa = a.sum(dim=-1, dtype=torch.float64, keepdim=True)
    sb = b.sum(dim=-1, dtype=torch.float64, keepdim=True)
    step = max(1, min(r, chunk_cells // max(n, 1)))
    buf1 = torch.empty(step, n, dtype=torch.float64, device=dev)
    buf2 = torch.empty(step, n, dtype=torch.float64, device=dev)
    for k, (i, j) in enumerate(pairs.tolist()):
        for r0 in range(0, r, step):
            rows = min(step, r - r0)
            x, y = buf1[:rows], buf2[:rows]
            torch.div(a[i, r0 : r0 + rows], sa[i, r0 : r0 + rows], out=x)
            torch.div(b[j, r0 : r0 + rows], sb[j, r0 : r0 + rows], out=y)
            x.sub_(y)
            torch.cumsum(x, dim=1, out=y)
            torch.sum(y.abs_(), dim=1, out=out[k, r0 : r0 + rows])
    return out


def _blocks(n: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_N, num_warps): a [BLOCK_R, BLOCK_N] float64 tile of 8 values per thread, so that
    the four live tiles of the second pass (two histograms, their difference, its cumulative sum) stay in
    registers: 1,024 cells for 4 warps. A 16 x 256 tile spilled 840 bytes per thread on sm_90."""
    block_n = min(next_power_of_2(max(n, 1)), 128)
    block_r = max(1, 1024 // block_n)
    return block_r, block_n, 4


def plan_batched_emd(
    m: int, r: int, n: int, dtype: torch.dtype, pa: int | None = None, pb: int | None = None
):
    """The `Launch` of `triton_batched_emd` for M pairs of [R, N] histograms of ``dtype`` (the dtype the
    kernel reads: int32 or a float type) in sets of ``pa`` / ``pb`` (default M)."""
    from ._launch import Launch

    block_r, block_n, warps = _blocks(n)
    pa, pb = m if pa is None else pa, m if pb is None else pb
    return Launch(
        _jit()._batched_emd_kernel,
        grid=(m, cdiv(r, block_r)),
        pointers={"a_ptr": dtype, "b_ptr": dtype, "pairs_ptr": torch.int64, "out_ptr": torch.float64},
        extents={"a_ptr": pa * r * n, "b_ptr": pb * r * n, "pairs_ptr": 2 * m, "out_ptr": m * r},
        scalars={"R": r, "N": n},
        constexprs={"BLOCK_R": block_r, "BLOCK_N": block_n},
        num_warps=warps,
    )


def triton_batched_emd(a: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Launcher: float64 [M, R] by the Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)."""
    if not triton_available():
        raise RuntimeError("Triton is not installed; use reference_batched_emd")
    pairs = _check(a, b, pairs).contiguous()
    if a.dtype != b.dtype:
        raise TypeError(f"histogram sets differ in dtype: {a.dtype} vs {b.dtype}")
    if a.dtype in (torch.int64, torch.uint8, torch.int8, torch.int16, torch.bool):
        a, b = a.to(torch.int32), b.to(torch.int32)  # counts < 2**31 per bin; int32 halves the bytes read
    a, b = a.contiguous(), b.contiguous()
    m, (r, n) = pairs.shape[0], a.shape[1:]
    out = torch.empty(m, r, dtype=torch.float64, device=a.device)
    if m == 0 or r == 0:
        return out
    plan = plan_batched_emd(m, r, n, a.dtype, a.shape[0], b.shape[0])
    plan(a_ptr=a, b_ptr=b, pairs_ptr=pairs, out_ptr=out)
    return out


@torch.library.custom_op("neuroprint::batched_emd", mutates_args=())
def _batched_emd_op(a: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    return reference_batched_emd(a, b, pairs)


@_batched_emd_op.register_fake
def _(a, b, pairs):
    return a.new_empty((pairs.shape[0], a.shape[1]), dtype=torch.float64)


if triton_available():

    @_batched_emd_op.register_kernel("cuda")
    def _(a, b, pairs):
        return triton_batched_emd(a, b, pairs)


def batched_emd(
    a: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor | None = None, *, neuron_wise: bool = False
) -> torch.Tensor:
    """EMD between histogram sets a [Pa, R, N] and b [Pb, R, N] for ``pairs`` (default: all pairs).

    Returns float64 [M, R] with ``neuron_wise``, else the mean over neurons [M] (vdna's EMD value).
    Select neurons by slicing the R axis before the call.
    """
    if a.dtype != b.dtype:
        common = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(common), b.to(common)
    pairs = _check(a, b, pairs)
    b = b.to(a.device)
    per = _batched_emd_op(a, b, pairs)
    return per if neuron_wise else per.mean(dim=1)


# the @triton.jit code, imported on first use (see kernels/_jit.py)
_jit, __getattr__ = lazy_jit(__name__, "_emd_jit")
