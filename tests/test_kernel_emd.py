"""Batched EMD and per-image EMD kernels vs their torch references, vs the foundation's EMD and vs vdna's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroprint.kernels import emd as ke
from neuroprint.kernels import image_emd as ki
from neuroprint.kernels.histogram import norm_params, reference_neuron_histogram

pytestmark = pytest.mark.skipif(ke.triton is None, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _sets(pa, pb, r, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 40, (pa, r, n), generator=g)
    b = torch.randint(0, 40, (pb, r, n), generator=g)
    if n > 2:
        a[0, 0, : n // 2] = 0  # mass concentrated at one end
        b[-1, -1, n // 2 :] = 0
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "pa,pb,r,n", [(3, 2, 7, 17), (1, 4, 5, 1000), (2, 2, 3, 1), (2, 3, 65, 300), (1, 1, 1, 257)]
)
def test_batched_emd_kernel_equals_reference(dtype, pa, pb, r, n):
    a, b = _sets(pa, pb, r, n, dtype)
    want = ke.reference_batched_emd(a, b)
    got = ke.triton_batched_emd(a.to(DEVICE), b.to(DEVICE)).cpu()
    assert got.shape == (pa * pb, r) and got.dtype == torch.float64
    # A neuron with an empty histogram has no distribution: NaN in both, as in vdna.
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_given_pairs_and_mean():
    a, b = _sets(3, 4, 6, 50, torch.int64)
    pairs = torch.tensor([[2, 0], [0, 3], [2, 0]])
    full = ke.batched_emd(a, b, neuron_wise=True)
    got = ke.batched_emd(a, b, pairs, neuron_wise=True)
    for m, (i, j) in enumerate(pairs.tolist()):
        torch.testing.assert_close(got[m], full[i * 4 + j], rtol=0, atol=0)
    torch.testing.assert_close(ke.batched_emd(a, b, pairs), got.mean(1))
    torch.testing.assert_close(ke.triton_batched_emd(a, b, pairs), got, rtol=1e-12, atol=1e-12)
    with pytest.raises(IndexError):
        ke.batched_emd(a, b, torch.tensor([[3, 0]]))
    with pytest.raises(ValueError, match="neurons or bins"):
        ke.batched_emd(a, b[:, :, :10])


def test_batched_emd_equals_vdna_and_foundation():
    from vdna.utils.stats import earth_movers_distance as vdna_emd

    from neuroprint import earth_movers_distance

    a, b = _sets(2, 3, 9, 100, torch.int32)
    got = ke.triton_batched_emd(a, b)
    for m, (i, j) in enumerate(ke.all_pairs(2, 3).tolist()):
        torch.testing.assert_close(got[m], vdna_emd(a[i], b[j]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[m], earth_movers_distance(a[i], b[j]), rtol=1e-12, atol=1e-12)


def _acts(b, p, c, dtype, seed=0):
    x = torch.randn(b, p, c, generator=torch.Generator().manual_seed(seed)) * 2
    x[0, 0, 0] = 10.0  # beyond the range end
    if p > 1:
        x[0, 1, 0] = float("inf")
        x[-1, 0, -1] = float("nan")  # one NaN: not counted
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,p,c,n", [(3, 13, 7, 17), (2, 1, 5, 1000), (4, 9, 3, 1), (2, 150, 19, 100)])
def test_per_image_emd_kernel_vs_reference_vs_explicit(dtype, b, p, c, n):
    x = _acts(b, p, c, dtype)
    mean, std = norm_params(-np.full(c, 3.0), np.full(c, 3.0))
    ref = torch.randint(0, 30, (c, n), generator=torch.Generator().manual_seed(2))
    want = ki.reference_per_image_emd(x, mean, std, ref)
    got = ki.triton_per_image_emd(x.to(DEVICE), mean, std, ref.to(DEVICE)).cpu()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    # Explicit per-image histogram + EMD, one image at a time.
    for i in range(b):
        own = reference_neuron_histogram(x[i : i + 1], mean, std, n)
        explicit = ke.reference_batched_emd(own[None], ref[None])[0]
        torch.testing.assert_close(want[i], explicit, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_per_image_emd_all_nan_neuron_is_nan_and_shapes_checked():
    x = torch.full((1, 1, 2), float("nan"))
    mean, std = norm_params(-np.ones(2), np.ones(2))
    ref = torch.ones(2, 5, dtype=torch.int64)
    assert torch.isnan(ki.per_image_emd(x, mean, std, ref)).all()
    with pytest.raises(ValueError, match="reference histograms"):
        ki.per_image_emd(torch.zeros(1, 3, 2), mean, std, torch.ones(3, 5))
