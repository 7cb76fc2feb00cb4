"""Perceptual hashes (pHash, dHash) of decoded images, batched in torch, and blocked Hamming search.

The formulation is the ``imagehash`` package's (4.3), step by step:

- grayscale: PIL's ``convert("L")``, ``L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16`` (integers);
- resize with PIL's LANCZOS (a=3) filter, as Pillow's 8-bit resampler computes it: separable, one pass
  with its result rounded to uint8, then the other, in the installed Pillow's order (horizontal first
  up to Pillow 12; Pillow 13 starts with the vertical pass when the height shrinks much more, see
  `_vertical_first`); each output is
  ``clip8((sum(pixel * kk) + 2**21) >> 22)`` with ``kk`` the filter weights in 22-bit fixed point.
  The weights are built for a whole batch at once (one [out, in] matrix per image, zero beyond the
  image's size, so images of different sizes share one padded tensor) and applied as batched matmuls in
  float64, where every product and partial sum is an integer below 2**53 and hence exact;
- pHash: 32x32 pixels, DCT-II along rows and columns (as ``scipy.fftpack.dct``), the 8x8
  lowest-frequency block, bits = block > its median (the mean of the two middle values);
- dHash: 9 wide x 8 tall pixels, bits = ``pixel[:, 1:] > pixel[:, :-1]``.

The 64 bits (row-major, first bit most significant, as imagehash's hex string) are packed into one
int64. The only expected disagreements with imagehash are bits whose value sits within float rounding of
a threshold (the DCT is a matrix product here and an FFT in scipy, so coefficients differ in the last
bits; |coefficient| < 1e-6 is snapped to the exact 0 scipy gives for flat and symmetric images; the sine
in the Lanczos weights may differ by an ulp); tests/test_dedup.py measures the agreement.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .bits import hamming_distance, popcount64

__all__ = [
    "HASH_BITS",
    "dhash",
    "hamming_distance",
    "hamming_pairs",
    "hash_pixels",
    "hashes_from_pixels",
    "image_hashes",
    "pack_bits",
    "phash",
    "popcount64",
    "to_gray",
]

HASH_BITS = 64
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit resampling
_LANCZOS_SUPPORT = 3.0
# Padded pixels held at once (float64 during the resize: 8 bytes each).
_CHUNK_PIXELS = 1 << 22


def to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3] RGB -> uint8 [...] luma exactly as PIL's ``convert("L")``."""
    return _gray_float(rgb).to(torch.uint8)


_LUMA = (19595.0, 38470.0, 7471.0)


def _gray_float(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3] -> float32 [...] integer-valued PIL luma. Exact in float32: every partial sum of
    ``19595 R + 38470 G + 7471 B + 0x8000`` is an integer below 2**24."""
    w = torch.tensor(_LUMA, dtype=torch.float32, device=rgb.device)
    return torch.floor((rgb.to(torch.float32) @ w + 32768.0) * (1.0 / 65536.0))


def _lanczos(x: torch.Tensor) -> torch.Tensor:
    px = x * math.pi
    safe = torch.where(x == 0, torch.ones_like(px), px)
    sinc = torch.where(x == 0, torch.ones_like(x), torch.sin(safe) / safe)
    safe3 = safe / 3.0
    sinc3 = torch.where(x == 0, torch.ones_like(x), torch.sin(safe3) / safe3)
    inside = (x >= -_LANCZOS_SUPPORT) & (x < _LANCZOS_SUPPORT)
    return torch.where(inside, sinc * sinc3, torch.zeros_like(x))


@functools.lru_cache(maxsize=4096)
def _weights_for_length(length: int, out_size: int, device: str) -> torch.Tensor:
    """float64 [out_size, length]: Pillow's fixed-point LANCZOS weights for one input length (only the
    taps inside each output's support are evaluated, as Pillow's ``precompute_coeffs``). Cached: a
    collection holds few distinct lengths, and building the table costs more than the resize itself
    (hashes job, 48x64 images: 2/3 of the hashing time before the cache). Callers must not modify it."""
    dev = torch.device(device)
    size = float(length)
    scale = size / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    center = (torch.arange(out_size, device=dev, dtype=torch.float64) + 0.5) * scale  # [out]
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)
    xmax = torch.trunc(center + support + 0.5).clamp(max=size)
    taps = int((xmax - xmin).max().item())
    j = xmin[:, None] + torch.arange(taps, device=dev, dtype=torch.float64)  # [out, taps]
    w = _lanczos((j - center[:, None] + 0.5) * (1.0 / filterscale))
    w = torch.where(j < xmax[:, None], w, torch.zeros_like(w))
    total = w.sum(dim=-1, keepdim=True)
    w = torch.where(total != 0, w / torch.where(total != 0, total, 1.0), w)
    one = float(1 << _PRECISION_BITS)
    w = torch.where(w < 0, torch.trunc(-0.5 + w * one), torch.trunc(0.5 + w * one))
    dense = torch.zeros((out_size, length + taps), dtype=torch.float64, device=dev)
    dense.scatter_(1, j.to(torch.int64), w)  # taps past the image land in the dropped columns
    return dense[:, :length].contiguous()


def _resample_weights(in_sizes: torch.Tensor, out_size: int, in_max: int) -> torch.Tensor:
    """float64 [B, out_size, in_max]: Pillow's fixed-point LANCZOS weights for each input length, zero
    past each image's length (its padding), for the batched matmul."""
    dev = in_sizes.device
    lengths = in_sizes.tolist()
    if len(lengths) == 1:  # one image (the per-image path of jobs): no padding beyond its own size
        w = _weights_for_length(int(lengths[0]), out_size, str(dev))
        if w.shape[1] == in_max:
            return w[None]
    uniq = sorted(set(lengths))
    dense = torch.zeros((len(uniq), out_size, in_max), dtype=torch.float64, device=dev)
    for u, length in enumerate(uniq):
        dense[u, :, :length] = _weights_for_length(int(length), out_size, str(dev))
    slot = {length: u for u, length in enumerate(uniq)}
    inverse = torch.tensor([slot[x] for x in lengths], dtype=torch.int64, device=dev)
    return dense[inverse]


def _clip8(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's rounding of a fixed-point sum back to 0..255 (arithmetic shift = floor)."""
    return torch.floor((acc + float(1 << (_PRECISION_BITS - 1))) / float(1 << _PRECISION_BITS)).clamp_(0, 255)


def _resize_lanczos(gray: torch.Tensor, sizes: torch.Tensor, out_w: int, out_h: int) -> torch.Tensor:
    """Padded gray [B, Hmax, Wmax] (integer values, any float or uint8 dtype) with true (h, w) sizes
    [B, 2] -> float64 [B, out_h, out_w] in 0..255 (integer-valued), as PIL's
    ``resize((out_w, out_h), LANCZOS)`` of each unpadded image, passes in the installed Pillow's order."""
    _, hmax, wmax = gray.shape
    kx = _resample_weights(sizes[:, 1], out_w, wmax)  # [B, out_w, Wmax]
    ky = _resample_weights(sizes[:, 0], out_h, hmax)  # [B, out_h, Hmax]
    g = gray.to(torch.float64)
    vertical = _vertical_first(sizes, out_w, out_h)
    if not bool(vertical.any()):
        return _clip8(torch.bmm(ky, _clip8(torch.bmm(g, kx.transpose(1, 2)))))
    out = torch.empty((g.shape[0], out_h, out_w), dtype=torch.float64, device=g.device)
    h, v = ~vertical, vertical
    out[h] = _clip8(torch.bmm(ky[h], _clip8(torch.bmm(g[h], kx[h].transpose(1, 2)))))
    out[v] = _clip8(torch.bmm(_clip8(torch.bmm(ky[v], g[v])), kx[v].transpose(1, 2)))
    return out


def _vertical_first(sizes: torch.Tensor, out_w: int, out_h: int) -> torch.Tensor:
    """bool [B]: which images the installed Pillow resamples vertically first. Pillow up to 12 always
    runs the horizontal pass first (each pass rounds to uint8, so the order changes pixels); Pillow 13
    (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks by more than twice
    the width's shrink, ``h - out_h > 2 * max(w - out_w, 0)`` (fitted to Pillow 13 on 1,484 random
    shapes, all matched)."""
    if pillow_resize_order() == "horizontal-first":
        return torch.zeros(sizes.shape[0], dtype=torch.bool, device=sizes.device)
    h, w = sizes[:, 0], sizes[:, 1]
    return (h - out_h) > 2 * (w - out_w).clamp(min=0)


@functools.cache
def pillow_resize_order() -> str:
    """ "horizontal-first" or "larger-reduction-first": what the installed Pillow does, found once by
    resizing a probe image whose two pass orders give different pixels (behaviour, not version string)."""
    from PIL import Image

    rng = np.random.default_rng(12345)
    probe = rng.integers(0, 256, (200, 20), dtype=np.uint8)  # tall: the orders differ
    pil = torch.from_numpy(
        np.asarray(Image.fromarray(probe).resize((9, 8), Image.LANCZOS)).astype(np.float64)
    )
    sizes = torch.tensor([[200, 20]])
    g = torch.from_numpy(probe).to(torch.float64)[None]
    kx = _resample_weights(sizes[:, 1], 9, 20)
    ky = _resample_weights(sizes[:, 0], 8, 200)
    if torch.equal(_clip8(torch.bmm(ky, _clip8(torch.bmm(g, kx.transpose(1, 2)))))[0], pil):
        return "horizontal-first"
    if torch.equal(_clip8(torch.bmm(_clip8(torch.bmm(ky, g)), kx.transpose(1, 2)))[0], pil):
        return "larger-reduction-first"
    from .._errors import NeuroprintError

    raise NeuroprintError(
        "the installed Pillow resizes in neither known pass order; neuroprint's hashes would not match "
        "imagehash (please report the Pillow version)"
    )


def _dct_matrix(n: int, rows: int, device) -> torch.Tensor:
    """float64 [rows, n]: the first ``rows`` basis rows of scipy.fftpack's unnormalised DCT-II."""
    k = torch.arange(rows, device=device, dtype=torch.float64)[:, None]
    i = torch.arange(n, device=device, dtype=torch.float64)[None, :]
    return 2.0 * torch.cos(math.pi * k * (2 * i + 1) / (2 * n))


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [B, 64] (first bit most significant) -> int64 [B], the same 64 bits as imagehash's hex."""
    if bits.shape[-1] != HASH_BITS:
        raise ValueError(f"expected {HASH_BITS} bits per hash, got {bits.shape[-1]}")
    shifts = torch.arange(HASH_BITS - 1, -1, -1, device=bits.device, dtype=torch.int64)
    return (bits.to(torch.int64) << shifts).sum(dim=-1)  # wraps into the sign bit, as intended


def _phash_bits(px32: torch.Tensor) -> torch.Tensor:
    c = _dct_matrix(32, 8, px32.device)
    low = (c @ px32 @ c.T).reshape(px32.shape[0], 64)
    # Coefficients that are exactly 0 in scipy's FFT (flat or symmetric images) come out of the matrix
    # product as +-1e-11 noise, which would decide their bits against a median of 0; real coefficients of
    # integer pixels this small do not occur in practice.
    low = torch.where(low.abs() < 1e-6, torch.zeros_like(low), low)
    srt = low.sort(dim=1).values
    med = (srt[:, 31] + srt[:, 32]) / 2  # numpy's median of an even count
    return low > med[:, None]


def _dhash_bits(px: torch.Tensor) -> torch.Tensor:
    return (px[:, :, 1:] > px[:, :, :-1]).reshape(px.shape[0], 64)


def _as_gray_list(images, device) -> list[torch.Tensor]:
    """Images (a uint8 batch [B, H, W, 3] / [B, H, W], or a sequence of HxWx3 / HxW arrays; uint8, or
    floats on the 0..255 scale, rounded) -> list of integer-valued float32 gray [H, W] tensors on ``device``."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim in (3, 4):
        if images.ndim == 3 and images.shape[-1] in (3, 4):
            raise ValueError(
                f"a 3-d array is read as a batch of gray images [B, H, W]; got {tuple(images.shape)}, which "
                "looks like one HxWxC image: pass [image] for a single image"
            )
        if images.ndim == 4 and images.shape[-1] != 3:
            raise ValueError(
                f"a 4-d image batch must be [B, H, W, 3] (channels last), got {tuple(images.shape)}"
            )
        images = list(images)
    if not isinstance(images, Sequence) and not isinstance(images, list):
        raise TypeError(f"expected a batch tensor or a sequence of images, got {type(images).__name__}")
    out = []
    for img in images:
        if not isinstance(img, torch.Tensor):
            with warnings.catch_warnings():  # read-only arrays (PIL's) are only read here
                warnings.simplefilter("ignore", UserWarning)
                img = torch.as_tensor(np.asarray(img))
        t = img.to(device)
        if t.dtype != torch.uint8:
            if not t.is_floating_point():
                raise TypeError(f"images must be uint8 or float (0..255), got {t.dtype}")
            t = t.round().clamp(0, 255).to(torch.uint8)
        if t.ndim == 3 and t.shape[-1] == 3:
            t = _gray_float(t)
        elif t.ndim == 3 and t.shape[-1] == 1:
            t = t[..., 0]
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"each image must be HxW or HxWx3 with at least one pixel, got {tuple(t.shape)}")
        out.append(t)
    return out


_HASH_SIZES = {"phash": (32, 32), "dhash": (9, 8)}  # (width, height) of each hash's resized gray image


def _check_methods(methods) -> None:
    for m in methods:
        if m not in _HASH_SIZES:
            raise ValueError(f"unknown hash {m!r}; expected phash or dhash")


def image_hashes(
    images, methods: Sequence[str] = ("phash", "dhash"), *, device: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """{method: int64 [B]} for ``methods`` in ("phash", "dhash"), from one grayscale conversion.

    Images of different sizes are processed together: sorted by size and padded into chunks of at most
    ``_CHUNK_PIXELS`` pixels, with per-image resampling weights that ignore the padding.
    """
    _check_methods(methods)
    dev = torch.device(device) if device is not None else None
    grays = _as_gray_list(images, dev if dev is not None else "cpu")
    n = len(grays)
    out = {m: torch.zeros(n, dtype=torch.int64, device=dev) for m in methods}
    if n == 0:
        return out
    order = sorted(range(n), key=lambda i: (grays[i].shape[0] * grays[i].shape[1], i))
    start = 0
    while start < n:
        stop, hmax, wmax = start, 0, 0
        while stop < n:
            h, w = grays[order[stop]].shape
            nh, nw = max(hmax, h), max(wmax, w)
            if stop > start and (stop - start + 1) * nh * nw > _CHUNK_PIXELS:
                break
            hmax, wmax, stop = nh, nw, stop + 1
        idx = order[start:stop]
        device_ = grays[idx[0]].device
        # Only the padding is zeroed: a fresh zero-filled chunk costs more (page faults) than the hashes.
        padded = torch.empty((len(idx), hmax, wmax), dtype=torch.float64, device=device_)
        for row, i in enumerate(idx):
            g = grays[i]
            h, w = g.shape
            padded[row, :h, :w] = g
            padded[row, h:, :] = 0
            padded[row, :h, w:] = 0
        sizes = torch.tensor([tuple(grays[i].shape) for i in idx], dtype=torch.int64, device=device_)
        where = torch.tensor(idx, dtype=torch.int64, device=device_)
        if "phash" in methods:
            out["phash"][where] = pack_bits(_phash_bits(_resize_lanczos(padded, sizes, 32, 32)))
        if "dhash" in methods:
            out["dhash"][where] = pack_bits(_dhash_bits(_resize_lanczos(padded, sizes, 9, 8)))
        start = stop
    return out


def hash_pixels(img: np.ndarray, methods: Sequence[str] = ("phash", "dhash")) -> dict[str, np.ndarray]:
    """{method: uint8 [h, w]}: the small grayscale image each hash is read from, for one decoded uint8
    image (HxWx3 RGB or HxW gray): Pillow's ``convert("L")`` and LANCZOS ``resize``, bit for bit (what
    the batched `image_hashes` reproduces in torch). The per-image half of the jobs' hashes, run in the
    decode threads by `neuroprint.kernels.gray_lanczos`: one C pass over the image for every method, where
    torch would start an OpenMP team from every decoding thread and Pillow reads the image once per resize.
    `hashes_from_pixels` does the rest."""
    from ..kernels.gray_lanczos import gray_lanczos

    _check_methods(methods)
    methods = list(methods)  # gray_lanczos checks the image (uint8 HxWx3 or HxW, at least one pixel)
    return dict(zip(methods, gray_lanczos(img, [_HASH_SIZES[m] for m in methods])))


def hashes_from_pixels(
    pixels: Sequence[dict[str, np.ndarray]], methods: Sequence[str]
) -> dict[str, np.ndarray]:
    """{method: int64 [B]} from the `hash_pixels` of B images, the DCT and the bits for all of them at once
    (the batched path's own `_phash_bits` / `_dhash_bits`): the same bits as `image_hashes`."""
    _check_methods(methods)
    out = {}
    for m in methods:
        w, h = _HASH_SIZES[m]
        if not pixels:
            out[m] = np.zeros(0, dtype=np.int64)
            continue
        px = torch.from_numpy(np.stack([p[m] for p in pixels]).astype(np.float64)).reshape(-1, h, w)
        bits = _phash_bits(px) if m == "phash" else _dhash_bits(px)
        out[m] = pack_bits(bits).numpy()
    return out


def phash(images, *, device=None) -> torch.Tensor:
    """int64 [B] pHash of each image (see the module docstring)."""
    return image_hashes(images, ("phash",), device=device)["phash"]


def dhash(images, *, device=None) -> torch.Tensor:
    """int64 [B] dHash of each image (see the module docstring)."""
    return image_hashes(images, ("dhash",), device=device)["dhash"]


# --------------------------------------------------------------------------------------- Hamming search

HAMMING_METHODS = ("auto", "scan", "mih")


def hamming_pairs(
    hashes: torch.Tensor, max_distance: int, *, block: int = 2048, method: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs (i < j) with Hamming distance <= ``max_distance``: (i, j, distance) int64 tensors,
    sorted by (i, j). Exact with every method:

    "scan": all pairs, blocked over [block, block] tiles (memory O(block**2)); O(N**2) work.
    "mih": multi-index hashing (``neuroprint.dedup.mih``): substring buckets probed within
        floor(r / m) bits, candidates checked on all 64 bits; far less work for large N and small r.
    "auto": whichever the cost model of ``neuroprint.dedup.mih.plan`` says is cheaper.
    """
    if hashes.dim() != 1 or hashes.dtype != torch.int64:
        raise ValueError(f"hashes must be a 1-d int64 tensor, got {hashes.dtype} {tuple(hashes.shape)}")
    if not 0 <= int(max_distance) <= HASH_BITS:
        raise ValueError(f"max_distance must be within 0..{HASH_BITS}, got {max_distance}")
    if method not in HAMMING_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(HAMMING_METHODS)}")
    n = hashes.shape[0]
    if method != "scan":
        from .mih import mih_pairs, plan

        m, work = plan(int(n), int(max_distance))
        if method == "mih" or (m is not None and work < n * (n - 1) / 2):
            return mih_pairs(hashes, int(max_distance), m)
    found_i, found_j, found_d = [], [], []
    for q0 in range(0, n, block):
        q1 = min(n, q0 + block)
        rows = torch.arange(q0, q1, device=hashes.device)
        for d0 in range(q0, n, block):
            d1 = min(n, d0 + block)
            dist = hamming_distance(hashes[q0:q1, None], hashes[None, d0:d1])
            hit = dist <= max_distance
            if d0 == q0:  # the diagonal tile: keep the strict upper triangle
                hit &= torch.arange(d0, d1, device=hashes.device)[None, :] > rows[:, None]
            r, c = hit.nonzero(as_tuple=True)
            found_i.append(r + q0)
            found_j.append(c + d0)
            found_d.append(dist[r, c])
    if not found_i:
        empty = torch.zeros(0, dtype=torch.int64, device=hashes.device)
        return empty, empty.clone(), empty.clone()
    i, j, d = torch.cat(found_i), torch.cat(found_j), torch.cat(found_d)
    order = torch.argsort(i * max(n, 1) + j)
    return i[order], j[order], d[order]
