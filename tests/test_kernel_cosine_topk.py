"""Cosine top-k: Triton kernel (interpreter on CPU) vs the torch reference vs a brute-force full matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroprint.kernels.cosine_topk import (
    cosine_topk,
    keys_to_topk,
    merge_topk_keys,
    reference_cosine_topk,
    shift_keys,
    triton_cosine_topk,
)

# (dtype, atol on similarities) between kernel and reference when the data are not exactly representable.
TOLERANCES = [(torch.float32, 1e-5), (torch.float16, 1e-5), (torch.bfloat16, 1e-5)]


def brute_force(x: np.ndarray, y: np.ndarray, k: int, offset: int | None):
    """float64 full similarity matrix; top-k by (-similarity, index) with a stable sort."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    nx = np.linalg.norm(x, axis=1, keepdims=True)
    ny = np.linalg.norm(y, axis=1, keepdims=True)
    s = (x / np.where(nx > 0, nx, 1)) @ (y / np.where(ny > 0, ny, 1)).T
    if offset is not None:
        for i in range(x.shape[0]):
            if 0 <= offset + i < y.shape[0]:
                s[i, offset + i] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return s, order


def integer_data(n: int, d: int, seed: int) -> torch.Tensor:
    """Small integers: every dot product is exact in fp32/fp16/bf16, so kernel and reference keys agree
    bit for bit, and many similarities tie exactly (the tie rule is exercised)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, d), generator=g).float()
    x[n // 3] = x[1]  # exact duplicates: equal similarity to everything
    x[n // 2] = 0.0  # a zero row: similarity 0 with everything
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d,k", [(37, 20, 1), (37, 20, 5), (19, 33, 40), (50, 16, 16)])
def test_kernel_equals_reference_bitwise_on_exact_data(n, d, k, dtype):
    x = integer_data(n, d, seed=n + d + k).to(dtype)
    ref = reference_cosine_topk(x, x, k, 0, block_q=7, block_d=9)
    ker = triton_cosine_topk(x, x, k, 0)
    assert torch.equal(ker, ref)
    values, index = keys_to_topk(ker)
    if k > n - 1:  # more neighbours asked than exist: padded
        assert (index[:, n - 1 :] == -1).all() and torch.isinf(values[:, n - 1 :]).all()
    assert (index[:, : min(k, n - 1)] >= 0).all()
    assert not (index == torch.arange(n)[:, None]).any(), "self-match returned"


@pytest.mark.parametrize("dtype,atol", TOLERANCES)
def test_kernel_vs_reference_random_query_vs_database(dtype, atol):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(23, 40, generator=g).to(dtype)
    db = torch.randn(45, 40, generator=g).to(dtype)
    kv, ki = keys_to_topk(triton_cosine_topk(q, db, 6))
    rv, ri = keys_to_topk(reference_cosine_topk(q, db, 6, block_q=5, block_d=8))
    torch.testing.assert_close(kv, rv, atol=atol, rtol=0)
    # Indices agree except where two candidates are within rounding of each other.
    s, _ = brute_force(q.float().numpy(), db.float().numpy(), 6, None)
    chosen = np.take_along_axis(s, ki.numpy(), axis=1)
    np.testing.assert_allclose(chosen, np.sort(s, axis=1)[:, ::-1][:, :6], atol=1e-5)


def test_reference_equals_brute_force_random():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    s, order = brute_force(x, x, 7, 0)
    v, i = keys_to_topk(
        reference_cosine_topk(torch.from_numpy(x), torch.from_numpy(x), 7, 0, block_q=64, block_d=50)
    )
    assert (i.numpy() == order).mean() > 0.999  # random floats: no exact ties, rare near-ties
    np.testing.assert_allclose(v.numpy(), np.take_along_axis(s, order, axis=1), atol=1e-5)


def test_reference_query_offset_chunk_equals_full_search():
    x = torch.randn(60, 12, generator=torch.Generator().manual_seed(1))
    full = reference_cosine_topk(x, x, 4, 0)
    chunk = reference_cosine_topk(x[25:41], x, 4, 25)
    assert torch.equal(full[25:41], chunk)


def test_tie_rule_lower_index_first():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    for impl in (reference_cosine_topk, triton_cosine_topk):
        v, i = keys_to_topk(impl(x, x, 4, 0))
        assert i[0].tolist() == [2, 3, 4, 1]  # three exact ties at 1.0, by ascending index
        assert i[4].tolist() == [0, 2, 3, 1]
        assert v[0, :3].tolist() == [1.0, 1.0, 1.0] and v[0, 3].item() == 0.0


def test_public_op_self_search_and_errors():
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(2))
    v, i = cosine_topk(x, k=3)
    assert v.shape == (10, 3) and i.dtype == torch.int64
    assert not (i == torch.arange(10)[:, None]).any()
    v2, i2 = cosine_topk(x, x, k=3)  # explicit database, no exclusion: each row finds itself first
    assert (i2[:, 0] == torch.arange(10)).all()
    torch.testing.assert_close(v2[:, 0], torch.ones(10))
    with pytest.raises(ValueError, match="dimension mismatch"):
        cosine_topk(x, torch.randn(4, 7), k=2)
    with pytest.raises(ValueError, match="positive int"):
        cosine_topk(x, k=0)
    with pytest.raises(TypeError, match="dtypes"):
        cosine_topk(x.double(), k=2)


def test_op_composes_with_compile_fake():
    # register_fake gives the output shape without running the op (what torch.compile traces with).
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(5, 8)
        out = torch.ops.neuroprint.cosine_topk(q, q, 3, 0)
        assert out.shape == (5, 3) and out.dtype == torch.int64


def test_empty_inputs():
    v, i = cosine_topk(torch.zeros(0, 4), torch.randn(3, 4), k=2)
    assert v.shape == (0, 2)
    v, i = cosine_topk(torch.randn(2, 4), torch.zeros(0, 4), k=2)
    assert (i == -1).all()


@pytest.mark.parametrize("seed,integer", [(0, False), (1, True)])
def test_reference_fast_path_equals_definition(seed, integer):
    # Random floats take the float-topk shortcut; integer data (many ties at the k-th value) falls back.
    g = torch.Generator().manual_seed(seed)
    x = integer_data(200, 12, seed) if integer else torch.randn(200, 12, generator=g)
    for k in (1, 3, 8):
        fast = reference_cosine_topk(x, x, k, 0, block_q=33, block_d=40)
        slow = reference_cosine_topk(x, x, k, 0, block_q=33, block_d=40, fast=False)
        assert torch.equal(fast, slow)


@pytest.mark.parametrize("impl", [reference_cosine_topk, triton_cosine_topk])
def test_sharded_database_merge_equals_full_search(impl):
    # Database shards searched separately (self-exclusion through a possibly negative offset), keys
    # shifted to global indices and merged: identical to one search of the whole database.
    x = integer_data(45, 10, seed=5)
    full = reference_cosine_topk(x, x, 6, 0)
    q0, q1 = 10, 30
    parts = []
    for s0, s1 in [(0, 17), (17, 18), (18, 45)]:
        parts.append(shift_keys(impl(x[q0:q1], x[s0:s1], 6, q0 - s0), s0))
    assert torch.equal(merge_topk_keys(parts, 6), full[q0:q1])
