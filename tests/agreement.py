"""What the engine guarantees when two runs see the same images, stated once for every test.

- Same images, same batches, same torch thread count (a rerun, a resume): histogram counts and moments
  are bit-identical (`LEVEL_BITWISE`). Moments of runs that cut the same batches into other shards
  agree to float64 rounding of their merge order (`LEVEL_MERGE_ORDER`).
- Other batchings, thread counts, runners (local / Ray) or CPUs: the network's float32 activations
  move in their last bits (BLAS/oneDNN choose other kernels and summation orders), so the VDNAs agree
  to the float32 precision of the activations (`LEVEL_FLOAT32`):
  * an activation is a float32 sum of products; its error is a few ulps of the magnitude of the
    terms, which for a layer is bounded by the layer's largest RMS activation ``S`` (not by |x|,
    which cancellation can make small). ``FLOAT32_RTOL`` allows 64 ulps (sqrt of a 4096-term
    reduction): a mean moves by at most ``FLOAT32_RTOL * S``, a (co)variance by ``2 * FLOAT32_RTOL * S^2``,
    a min/max by ``FLOAT32_RTOL * S``;
  * a histogram count moves only where a value lies within that error of a bin edge, and then by one
    bin. For a neuron binned over [lo, hi] with B bins, the share of its values that can cross an
    edge is at most ``2 * FLOAT32_RTOL * B * max(|lo|, |hi|) / (hi - lo)``; the cumulative count
    difference summed over the edges (the number of values that changed bin) must stay below that
    share (with a factor 4 and 2 values of slack for small samples), and totals never change.
A bug (a dropped or doubled image, a wrong merge) moves a mean by about sigma/n, orders of magnitude
above these bounds, so the tolerances still catch real errors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

EPS32 = float(np.finfo(np.float32).eps)
FLOAT32_RTOL = 64 * EPS32
MERGE_ORDER_RTOL = 1e-12

LEVEL_BITWISE = "bitwise"
LEVEL_MERGE_ORDER = "merge-order"
LEVEL_FLOAT32 = "float32"
# Gaussian files store float32 (vdna's format): a VDNA read back from disk is float32-exact only.
LEVEL_FLOAT32_FILE = "float32-file"


def _moments_scale(d: dict) -> float:
    """Largest RMS activation of a layer, from whatever moments its VDNA holds."""
    if "mu" in d and "var" in d:
        second = d["mu"].double() ** 2 + d["var"].double().clamp_min(0)
    elif "mu" in d and "sigma" in d:
        second = d["mu"].double() ** 2 + torch.diagonal(d["sigma"].double()).clamp_min(0)
    else:  # activation ranges
        second = torch.maximum(d["min"].double().abs(), d["max"].double().abs()) ** 2
    return float(second.max().sqrt()) if second.numel() else 0.0


def _assert_moments(x: dict, y: dict, level: str, where) -> None:
    if level == LEVEL_BITWISE:
        for k in x:
            assert torch.equal(x[k], y[k]), (where, k)
        return
    if level == LEVEL_MERGE_ORDER:
        for k in x:
            torch.testing.assert_close(
                x[k].double(), y[k].double(), rtol=MERGE_ORDER_RTOL, atol=MERGE_ORDER_RTOL, msg=str(where)
            )
        return
    rtol = FLOAT32_RTOL if level == LEVEL_FLOAT32 else FLOAT32_RTOL + 4 * EPS32
    s = max(_moments_scale(x), _moments_scale(y))
    for k in x:
        second_order = k in ("var", "sigma")
        atol = 2 * rtol * s * s if second_order else rtol * s
        torch.testing.assert_close(x[k].double(), y[k].double(), rtol=0, atol=atol, msg=f"{where} {k}")


def moved_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per neuron, how many values changed bin between two [neurons, bins] count tables (each move to
    an adjacent bin counts once; a move over k edges counts k times)."""
    diff = a.to(torch.int64).cumsum(dim=1) - b.to(torch.int64).cumsum(dim=1)
    return diff[:, :-1].abs().sum(dim=1)


def _assert_counts(x: torch.Tensor, y: torch.Tensor, level: str, ranges, layer: str, where) -> None:
    if level != LEVEL_FLOAT32:  # counts are integers: files and merges keep them exactly
        assert torch.equal(x.to(torch.int64), y.to(torch.int64)), where
        return
    assert torch.equal(x.sum(dim=1).to(torch.int64), y.sum(dim=1).to(torch.int64)), (where, "totals")
    bins = x.shape[1]
    if ranges is None:
        share = torch.full((x.shape[0],), 2 * FLOAT32_RTOL * bins, dtype=torch.float64)
    else:
        lo = torch.as_tensor(ranges.mins[layer], dtype=torch.float64)
        hi = torch.as_tensor(ranges.maxs[layer], dtype=torch.float64)
        share = 2 * FLOAT32_RTOL * bins * torch.maximum(lo.abs(), hi.abs()) / (hi - lo).clamp_min(1e-30)
    allowed = 4 * share * x.sum(dim=1).double() + 2
    moved = moved_values(x, y)
    worst = int(torch.argmax(moved.double() - allowed))
    assert bool((moved.double() <= allowed).all()), (
        f"{where}: neuron {worst} moved {int(moved[worst])} values between bins, "
        f"float32 precision allows {float(allowed[worst]):.2f}"
    )


def assert_vdnas_agree(a, b, level: str) -> None:
    """Two VDNAs (or two {name: VDNA} dicts) agree at `level` (see the module docstring)."""
    if isinstance(a, Mapping):
        assert sorted(a) == sorted(b)
        for name in a:
            assert_vdnas_agree(a[name], b[name], level)
        return
    assert a.type == b.type and a.num_images == b.num_images
    assert list(a.neurons_list) == list(b.neurons_list)
    for layer in a.neurons_list:
        x, y = a.data[layer], b.data[layer]
        where = (a.name, layer)
        if isinstance(x, dict):
            _assert_moments(x, y, level, where)
        else:
            _assert_counts(x, y, level, a.ranges, layer, where)


def bitwise_equal(a, b) -> bool:
    """Whether two VDNA dicts are identical to the bit (used to show a test exercises a tolerance)."""
    for name in a:
        for layer in a[name].neurons_list:
            x, y = a[name].data[layer], b[name].data[layer]
            pairs = [(x[k], y[k]) for k in x] if isinstance(x, dict) else [(x, y)]
            if not all(torch.equal(p, q) for p, q in pairs):
                return False
    return True


def assert_rows_agree(a, b) -> None:
    """Two row tables (pyarrow) hold the same rows: every non-float column equal, float columns (pooled
    embeddings, FUNGI features, scores) to the float32 precision of the activations, scaled by the
    column's largest magnitude."""
    import pyarrow as pa

    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        while (
            pa.types.is_list(x.type) or pa.types.is_fixed_size_list(x.type) or pa.types.is_large_list(x.type)
        ):
            assert x.value_lengths().equals(y.value_lengths()), name
            x, y = x.flatten(), y.flatten()
        if not pa.types.is_floating(x.type):
            assert x.equals(y), name
            continue
        assert x.is_null().equals(y.is_null()), name
        fx = x.to_numpy(zero_copy_only=False).astype(np.float64)
        fy = y.to_numpy(zero_copy_only=False).astype(np.float64)
        s = max(np.nanmax(np.abs(fx), initial=0.0), np.nanmax(np.abs(fy), initial=0.0))
        np.testing.assert_allclose(fx, fy, rtol=0, atol=FLOAT32_RTOL * s, err_msg=name)
