"""Per-neuron histogram binning with Visual DNA's normalisation.

Formula (vdna 0.1.1, ``FeatureExtractionModel.get_data_features`` + ``histogram_per_channel`` on its
``torch.histc`` path), for neuron ``c`` with range ``[lo_c, hi_c]`` and ``N`` bins::

    a, b  = 1.2 * lo_c, 1.2 * hi_c                    (float64)
    mean  = (a + b) / 2;   std = (b - a) / 2 + 1e-8   (float64)
    x'    = clamp((float64(x) - mean) / std, -1, 1)
    bin   = trunc(((x' + 1) * N) / 2), and bin N -> N - 1  (the last bin is closed)

NaN activations are not counted (``histc`` skips them); +-inf land in the end bins. Counts are int64.

Layers of this module: the Triton kernel (one launch per layer: normalise, clamp, bin and count every
neuron; each program keeps its counts on chip across many rows and adds them to the output once with
integer atomics, so the result is exact and deterministic), its launcher, the plain torch reference
(the CPU path and the oracle), and `neuron_histogram`, registered as the torch custom op
``neuroprint::neuron_histogram`` so that it composes with ``torch.compile``; it runs the kernel on CUDA
and the reference elsewhere.

The ``@triton.jit`` code lives in `_histogram_jit.py`, imported on first use (see kernels/_jit.py).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from ._jit import cdiv, lazy_jit, next_power_of_2, triton_available

__all__ = [
    "PRECISIONS",
    "RANGE_SCALE",
    "neuron_histogram",
    "norm_params",
    "reference_neuron_histogram",
    "triton_neuron_histogram",
]

# vdna's ExtractionSettings.range_scale_for_norm_params.
RANGE_SCALE = 1.2

# Elements binned per chunk: two reused buffers of 8 MB each.
_CHUNK_ELEMENTS = 1 << 20

# The normalisation's arithmetic: float64 (vdna's, exact parity; the default) or float32 (for bf16 / fp16
# jobs, where vdna parity is not the point: half the registers and no fp64 units on the GPU). A value
# lands in another bin only when it lies within a few float32 ulps of a bin edge.
PRECISIONS = ("fp64", "fp32")


def _precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"histogram precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def norm_params(mins, maxs, range_scale: float = RANGE_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron (mean, std) in float64 from activation ranges, computed as vdna computes them."""
    lo = np.asarray(mins, dtype=np.float64) * range_scale
    hi = np.asarray(maxs, dtype=np.float64) * range_scale
    if lo.shape != hi.shape or lo.ndim != 1:
        raise ValueError(f"mins and maxs must be 1-d of equal length, got {lo.shape} and {hi.shape}")
    mean = (lo + hi) / 2
    std = (hi - lo) / 2 + 1e-8
    return torch.from_numpy(mean), torch.from_numpy(std)


def _as_bpc(x: torch.Tensor) -> torch.Tensor:
    """[B, P, C], [rows, C] or [B, C, H, W] -> a [B, P, C] view (never a copy)."""
    if x.dim() == 3:
        return x
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    raise ValueError(f"activations must be [B, P, C], [rows, C] or [B, C, H, W], got shape {tuple(x.shape)}")


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    x = _as_bpc(x)
    return x.reshape(-1, x.shape[-1])


def _check(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bins: int) -> torch.Tensor:
    """Validate the arguments; returns x as a [B, P, C] view."""
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if not x.is_floating_point():
        raise TypeError(f"activations must be floating point, got {x.dtype}")
    bpc = _as_bpc(x)
    channels = bpc.shape[-1]
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"ranges cover {tuple(mean.shape)} / {tuple(std.shape)} neurons but activations have {channels}"
        )
    return bpc


def images_per_chunk(per_image: int, images: int) -> int:
    """How many images of ``per_image`` elements one CPU chunk of ``_CHUNK_ELEMENTS`` holds (1 to ``images``):
    the CPU paths work a chunk at a time, since large fresh buffers cost more in page faults than the work."""
    return max(1, min(int(images), _CHUNK_ELEMENTS // max(1, int(per_image))))


_workspace = threading.local()


def _buffer(name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A per-thread scratch tensor reused across calls: fresh large CPU allocations are page-faulted
    in on every call, which costs more than the binning itself."""
    numel = math.prod(shape)
    key = (name, dtype, str(device))
    cache = _workspace.__dict__.setdefault("buffers", {})
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        # A normal tensor even when first needed under inference_mode, so that later calls outside it
        # may still write into it.
        with torch.inference_mode(False):
            buf = torch.empty(numel, dtype=dtype, device=device)
        cache[key] = buf
    return buf[:numel].view(shape)


def _bin_chunk(chunk, xn, pos, mean, std, offsets, bins: int, counts: torch.Tensor) -> None:
    """Bin one chunk into ``counts`` using the buffers ``xn`` (float64 or float32: the precision of the
    normalisation, as ``mean`` and ``std``) and ``pos`` (int64) of its shape."""
    xn.copy_(chunk)
    xn.sub_(mean).div_(std).clamp_(-1.0, 1.0)
    nan = torch.isnan(xn)
    xn.add_(1.0).mul_(bins / 2.0)
    pos.copy_(xn)  # truncation toward zero, as histc's cast
    pos.clamp_(max=bins - 1).add_(offsets)
    flat = pos[~nan] if bool(nan.any()) else pos.view(-1)
    counts += torch.bincount(flat, minlength=counts.numel())


def reference_neuron_histogram(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bins: int, precision: str = "fp64"
) -> torch.Tensor:
    """Plain torch reference: int64 counts [C, bins] of activations x ([B, P, C], [rows, C] or [B, C, H, W]).

    It is also the CPU path, so it works in chunks with reused buffers and in-place ops (large
    temporaries cost more in page faults than the arithmetic), and in the memory order of the input:
    channel-major for CNN maps ([B, C, H*W] underneath), row-major for token layouts, so that the float64
    copy never transposes. The arithmetic is the formula above, op by op; ``* (bins / 2)`` equals
    ``* bins / 2`` exactly (scaling by 0.5 is exact in binary). ``precision="fp32"``: the same steps in
    float32, from mean and std rounded to float32 (the kernel's fp32 path).
    """
    bpc = _check(x, mean, std, bins)
    B, P, C = bpc.shape
    device = bpc.device
    work = torch.float64 if _precision(precision) == "fp64" else torch.float32
    mean = mean.to(device=device, dtype=torch.float64).to(work)
    std = std.to(device=device, dtype=torch.float64).to(work)
    offsets = torch.arange(C, device=device, dtype=torch.int64) * bins
    counts = torch.zeros(C * bins, dtype=torch.int64, device=device)
    if B * P * C == 0:
        return counts.view(C, bins)
    if P > 1 and C > 1 and bpc.stride(1) == 1:
        # Channel-major: each image is a contiguous [C, P] block.
        cbp = bpc.transpose(1, 2)
        step = images_per_chunk(C * P, B)
        xbuf = _buffer("x", (step, C, P), work, device)
        ibuf = _buffer("i", (step, C, P), torch.int64, device)
        m, s, o = mean.view(C, 1), std.view(C, 1), offsets.view(C, 1)
        for start in range(0, B, step):
            n = min(step, B - start)
            _bin_chunk(cbp[start : start + n], xbuf[:n], ibuf[:n], m, s, o, bins, counts)
        return counts.view(C, bins)
    rows = bpc.reshape(-1, C)
    step = max(1, min(rows.shape[0], _CHUNK_ELEMENTS // C))
    xbuf = _buffer("x", (step, C), work, device)
    ibuf = _buffer("i", (step, C), torch.int64, device)
    for start in range(0, rows.shape[0], step):
        n = min(step, rows.shape[0] - start)
        _bin_chunk(rows[start : start + n], xbuf[:n], ibuf[:n], mean, std, offsets, bins, counts)
    return counts.view(C, bins)


# ------------------------------------------------------------------------------------------ Triton


def _blocks(rows: int, channels: int, bins: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, rows_per_prog): on-chip counts of BLOCK_C * next_pow2(bins) int32 per program."""
    nb_pad = next_power_of_2(bins)
    block_c = max(1, min(next_power_of_2(channels), 8192 // nb_pad, 16))
    block_r = max(16, min(128, 4096 // block_c))
    col_progs = cdiv(channels, block_c)
    # Enough programs to fill a large GPU a few times over; each covers many rows so that its one
    # atomic flush of BLOCK_C * NBINS counts is amortised.
    row_progs = max(1, min(cdiv(rows, block_r), 1024 // col_progs))
    rows_per_prog = cdiv(cdiv(rows, row_progs), block_r) * block_r
    return block_r, block_c, rows_per_prog


_MAX_ROWS = 2**31 - 1


def plan_neuron_histogram(shape, strides, dtype: torch.dtype, bins: int, precision: str = "fp64"):
    """The `Launch` of `triton_neuron_histogram` for a [B, P, C] view of ``shape`` / ``strides``
    (B * P < 2**31; `triton_neuron_histogram` splits larger batches)."""
    from ._launch import Launch, LaunchError, extent

    B, P, C = (int(v) for v in shape)
    rows = B * P
    if rows > _MAX_ROWS:
        raise LaunchError(f"{rows} rows in one histogram launch; at most {_MAX_ROWS}")
    block_r, block_c, rows_per_prog = _blocks(rows, C, bins)
    return Launch(
        _jit()._neuron_histogram_kernel,
        grid=(cdiv(rows, rows_per_prog), cdiv(C, block_c)),
        pointers={"x_ptr": dtype, "mean_ptr": torch.float64, "std_ptr": torch.float64, "out_ptr": torch.int64},
        extents={"x_ptr": extent(shape, strides), "mean_ptr": C, "std_ptr": C, "out_ptr": C * bins},
        scalars={"R": rows, "P": P, "C": C, "sb": strides[0], "sp": strides[1], "sc": strides[2],
                 "rows_per_prog": rows_per_prog},
        constexprs={"NBINS": bins, "NB_PAD": next_power_of_2(bins), "BLOCK_R": block_r,
                    "BLOCK_C": block_c, "FP64": _precision(precision) == "fp64"},
    )  # fmt: skip


def triton_neuron_histogram(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bins: int, precision: str = "fp64"
) -> torch.Tensor:
    """Launcher: int64 counts [C, bins] by the Triton kernel (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    if not triton_available():
        raise RuntimeError("Triton is not installed; use reference_neuron_histogram")
    bpc = _check(x, mean, std, bins)
    if bpc.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"unsupported activation dtype {bpc.dtype}")
    B, P, C = bpc.shape
    out = torch.zeros(C, bins, dtype=torch.int64, device=bpc.device)
    if B * P == 0 or C == 0:
        return out
    mean = mean.to(device=bpc.device, dtype=torch.float64).contiguous()
    std = std.to(device=bpc.device, dtype=torch.float64).contiguous()
    # Row indices are 32-bit in the kernel (offsets are 64-bit): launch at most 2**31 - 1 rows at a time.
    step = max(1, min(B, _MAX_ROWS // max(P, 1)))
    for b0 in range(0, B, step):
        part = bpc[b0 : b0 + step]
        plan = plan_neuron_histogram(part.shape, part.stride(), part.dtype, bins, precision)
        plan(x_ptr=part, mean_ptr=mean, std_ptr=std, out_ptr=out)
    return out


# -------------------------------------------------------------------------------------- custom op


@torch.library.custom_op("neuroprint::neuron_histogram", mutates_args=())
def _neuron_histogram_op(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bins: int, precision: str
) -> torch.Tensor:
    return reference_neuron_histogram(x, mean, std, bins, precision)


@_neuron_histogram_op.register_fake
def _(x, mean, std, bins, precision):
    channels = x.shape[1] if x.dim() == 4 else x.shape[-1]
    return x.new_empty((channels, bins), dtype=torch.int64)


if triton_available():

    @_neuron_histogram_op.register_kernel("cuda")
    def _(x, mean, std, bins, precision):
        return triton_neuron_histogram(x, mean, std, bins, precision)


def neuron_histogram(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    bins: int,
    out: torch.Tensor | None = None,
    precision: str = "fp64",
) -> torch.Tensor:
    """Counts [C, bins] (int64) of every neuron of one layer; added into ``out`` when given.

    x: [B, P, C], [rows, C] or [B, C, H, W] (any strides) in fp32/fp16/bf16/fp64; mean, std: float64 [C]
    from `norm_params`; precision: the normalisation's arithmetic (`PRECISIONS`: "fp64", vdna's, or
    "fp32"). Runs the Triton kernel on CUDA, the torch reference elsewhere.
    """
    _check(x, mean, std, bins)
    _precision(precision)
    mean = mean.to(device=x.device, dtype=torch.float64)
    std = std.to(device=x.device, dtype=torch.float64)
    counts = _neuron_histogram_op(x, mean, std, bins, precision)
    if out is None:
        return counts
    if out.shape != counts.shape or out.dtype != torch.int64:
        raise ValueError(f"out must be int64 {tuple(counts.shape)}, got {out.dtype} {tuple(out.shape)}")
    out += counts
    return out


# the @triton.jit code, imported on first use (see kernels/_jit.py)
_jit, __getattr__ = lazy_jit(__name__, "_histogram_jit")
