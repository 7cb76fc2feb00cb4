"""Frechet distance: both trace paths (Cholesky, and PSD square root for singular S1) against scipy sqrtm."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from neuroprint import frechet_distance
from neuroprint.stats.distances import _sqrt_psd


def scipy_fd(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean[0] if isinstance(covmean, tuple) else covmean)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def stats(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d) + rng.normal(size=d)
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("n,d", [(400, 64), (40, 64), (64, 1), (300, 7)])
def test_fd_matches_scipy_sqrtm(n, d):
    mu1, s1 = stats(n, d, 0)
    mu2, s2 = stats(n, d, 1)
    got = float(frechet_distance(mu1, s1, mu2, s2))
    want = scipy_fd(mu1, np.atleast_2d(s1), mu2, np.atleast_2d(s2))
    # n < d: S1 is singular and takes the square-root path; sqrtm itself is less accurate there.
    rel = 1e-9 if n > d else 1e-6
    assert got == pytest.approx(want, rel=rel, abs=1e-9)


def test_both_trace_paths_agree_on_a_definite_matrix():
    mu1, s1 = stats(500, 32, 2)
    mu2, s2 = stats(500, 32, 3)
    a = torch.from_numpy(s1)
    b = torch.from_numpy(s2)
    r = _sqrt_psd(a)
    via_sqrt = torch.linalg.eigvalsh(r @ b @ r).clamp(min=0).sqrt().sum()
    chol = torch.linalg.cholesky(a)
    via_chol = torch.linalg.eigvalsh(chol.T @ b @ chol).clamp(min=0).sqrt().sum()
    assert float(via_chol) == pytest.approx(float(via_sqrt), rel=1e-12)


def test_identical_gaussians_have_zero_distance():
    mu, s = stats(300, 16, 4)
    assert abs(float(frechet_distance(mu, s, mu, s))) < 1e-9
