"""Multi-index hashing (Norouzi, Punjani & Fleet, 2012): every pair of 64-bit hashes within Hamming
distance r, without comparing all N^2 pairs.

Split the 64 bits into m substrings. If two hashes differ in at most r bits, at least one substring
differs in at most floor(r / m) bits (pigeonhole), so every such pair is found by probing, for each
substring, the buckets of all keys within floor(r / m) bits of each hash's own key. Each candidate is
then checked on all 64 bits, and kept only by the first substring that could have found it, so no pair
is reported twice. The result is exact: the same pairs as the all-pairs scan.

Buckets are a direct-address table (a counting sort of the substring keys: ``start[key]`` ..
``start[key + 1]``), so a probe is two gathers, not a binary search. Work is about
``N * m * probes * (1 + N / 2**b)`` for b-bit substrings; ``plan`` picks m by that estimate and
``hamming_pairs(method="auto")`` falls back to the all-pairs scan when it would be cheaper (small N,
or radii near 64 / m * b where the probes explode).
"""

from __future__ import annotations

import itertools
import math

import torch

from .bits import popcount64

__all__ = ["mih_pairs", "plan"]

_BITS = 64
_MAX_TABLE_BITS = 24  # direct-address table of 2**24 + 1 int64 starts (128 MB) at most
_CANDIDATES_PER_CHUNK = 1 << 22  # candidate pairs expanded at once (memory: a few int64 arrays of this)
_PROBES_PER_CHUNK = 1 << 22  # (query, mask) probes gathered at once


def _substrings(m: int) -> list[tuple[int, int]]:
    """(shift, bits) of m substrings covering 64 bits, the longer ones first."""
    base, extra = divmod(_BITS, m)
    out, shift = [], 0
    for k in range(m):
        bits = base + (1 if k < extra else 0)
        out.append((shift, bits))
        shift += bits
    return out


def _probes(bits: int, radius: int) -> int:
    return sum(math.comb(bits, i) for i in range(min(radius, bits) + 1))


def plan(n: int, max_distance: int) -> tuple[int | None, float]:
    """(m, estimated work) of the cheapest multi-index plan, or (None, inf) when none fits the table
    limit. The all-pairs scan costs about n * (n - 1) / 2 in the same units."""
    best: tuple[int | None, float] = (None, math.inf)
    for m in range(2, 17):
        subs = _substrings(m)
        if subs[0][1] > _MAX_TABLE_BITS:
            continue
        r = max_distance // m
        work = 0.0
        for _, bits in subs:
            work += 2.0**bits + 2e4  # the bucket table, and a fixed cost per substring pass
            probes = _probes(bits, r)
            work += n * probes * (2.0 + n / 2.0**bits)  # two gathers per probe, plus candidates
        if work < best[1]:
            best = (m, work)
    return best


def _masks(bits: int, radius: int) -> torch.Tensor:
    """All ``bits``-bit masks with at most ``radius`` set bits (0 first), as int64."""
    out = [0]
    for k in range(1, min(radius, bits) + 1):
        for combo in itertools.combinations(range(bits), k):
            out.append(sum(1 << b for b in combo))
    return torch.tensor(out, dtype=torch.int64)


def _popcount(x: torch.Tensor) -> torch.Tensor:
    return popcount64(x)


def mih_pairs(
    hashes: torch.Tensor, max_distance: int, m: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs (i < j) with Hamming distance <= ``max_distance``: (i, j, distance) int64 tensors,
    sorted by (i, j). ``m`` substrings (default: ``plan``'s choice)."""
    n = int(hashes.shape[0])
    empty = torch.zeros(0, dtype=torch.int64, device=hashes.device)
    if n < 2:
        return empty, empty.clone(), empty.clone()
    if m is None:
        m, _ = plan(n, max_distance)
        if m is None:
            raise ValueError(f"no multi-index plan for max_distance {max_distance}")
    subs = _substrings(int(m))
    if subs[0][1] > _MAX_TABLE_BITS:
        raise ValueError(
            f"{m} substrings are {subs[0][1]} bits: more than the {_MAX_TABLE_BITS}-bit table limit"
        )
    radius = int(max_distance) // int(m)
    h = hashes.to(torch.int64)
    found_i, found_j, found_d = [], [], []
    for c, (shift, bits) in enumerate(subs):
        keys = (h >> shift) & ((1 << bits) - 1)
        order = torch.argsort(keys, stable=True)
        counts = torch.bincount(keys, minlength=1 << bits)
        start = torch.zeros((1 << bits) + 1, dtype=torch.int64, device=h.device)
        start[1:] = torch.cumsum(counts, 0)
        masks = _masks(bits, radius).to(h.device)
        # Each unordered pair of distinct keys (k, k ^ f) is expanded from one side only: the key whose
        # bit at f's highest set bit is 0. Equal keys (f = 0) pair within their bucket, i < j.
        top = torch.tensor(
            [0] + [1 << (int(f).bit_length() - 1) for f in masks[1:].tolist()], dtype=torch.int64
        )
        top = top.to(h.device)
        # Queries in chunks, so the expanded candidates of one chunk stay within the memory budget.
        per_chunk = max(1, _PROBES_PER_CHUNK // masks.numel())
        q0 = 0
        while q0 < n:
            q1 = min(n, q0 + per_chunk)
            probe = keys[q0:q1, None] ^ masks[None, :]  # [q, P]
            lo, hi = start[probe], start[probe + 1]
            hi = torch.where((keys[q0:q1, None] & top[None, :]) == 0, hi, lo)
            sizes = (hi - lo).sum(1)
            csum = torch.cumsum(sizes, 0)
            if int(csum[-1]) > _CANDIDATES_PER_CHUNK and q1 - q0 > 1:
                q1 = q0 + max(1, int(torch.searchsorted(csum, _CANDIDATES_PER_CHUNK)))
                lo, hi = lo[: q1 - q0], hi[: q1 - q0]
            lo, hi = lo.reshape(-1), hi.reshape(-1)
            width = hi - lo
            total = int(width.sum())
            if total:
                # one entry per candidate: which probe (query, mask) it came from, and its bucket slot
                pid = torch.repeat_interleave(torch.arange(width.numel(), device=h.device), width)
                first = (torch.cumsum(width, 0) - width)[pid]
                qi = q0 + torch.div(pid, masks.numel(), rounding_mode="floor")
                cj = order[lo[pid] + torch.arange(total, device=h.device) - first]
                x = h[qi] ^ h[cj]
                same = ((x >> shift) & ((1 << bits) - 1)) == 0  # same bucket: f = 0
                keep = ~same | (qi < cj)  # within a bucket each pair shows up twice (and i with itself)
                qi, cj, x = qi[keep], cj[keep], x[keep]
                qi, cj = torch.minimum(qi, cj), torch.maximum(qi, cj)
                d = _popcount(x)
                keep = d <= max_distance
                # Found by an earlier substring already? Then that one reports it.
                for e_shift, e_bits in subs[:c]:
                    keep &= _popcount((x >> e_shift) & ((1 << e_bits) - 1)) > radius
                found_i.append(qi[keep])
                found_j.append(cj[keep])
                found_d.append(d[keep])
            q0 = q1
    if not found_i:
        return empty, empty.clone(), empty.clone()
    i, j, d = torch.cat(found_i), torch.cat(found_j), torch.cat(found_d)
    order = torch.argsort(i * n + j)
    return i[order], j[order], d[order]
