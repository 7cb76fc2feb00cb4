"""Launch plans: everything a launcher passes to its Triton kernel, computed from shapes alone.

Each launcher of this package builds a `Launch` from the shapes, dtypes and strides of its inputs (its
``plan_*`` function) and calls it with the tensors. Because a plan needs no tensor, the same function
builds the plans of shapes too large to allocate here, and those are what `neuroprint.kernels.aot`
compiles ahead of time for sm_90 / sm_80 (registers, spills, shared memory) and checks for index widths
(`Launch.extents`: how many elements each pointer reaches) and grid limits (`GRID_LIMITS`).

A plan's arguments are specialised as Triton's JIT specialises them at launch (`specialization`): an
integer equal to 1 becomes a constexpr, other integers are ``i32`` when they fit in 32 bits and ``i64``
otherwise, and integers divisible by 16 and pointers (torch allocations are 16-byte aligned) carry the
divisibility hint; that is what the ahead-of-time compile uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["GRID_LIMITS", "INT32_MAX", "Launch", "LaunchError", "extent", "triton_dtype"]

INT32_MAX = 2**31 - 1
# CUDA's grid limits (x, y, z) for compute capability 3.0 and later.
GRID_LIMITS = (2**31 - 1, 65535, 65535)

_TRITON_DTYPES = {
    torch.float64: "fp64",
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
}


class LaunchError(ValueError):
    """A launch that CUDA would refuse (grid too large) or that the plan does not describe."""


def triton_dtype(dtype: torch.dtype) -> str:
    try:
        return _TRITON_DTYPES[dtype]
    except KeyError:
        raise TypeError(f"no Triton pointer type for {dtype}") from None


def extent(shape, strides) -> int:
    """Elements a strided view reaches from its first one: 1 + sum((size - 1) * stride); 0 if empty."""
    if any(int(s) == 0 for s in shape):
        return 0
    return 1 + sum((int(n) - 1) * abs(int(st)) for n, st in zip(shape, strides))


def _scalar_type(value: int) -> str:
    return "i32" if -(2**31) <= value <= INT32_MAX else "i64"


@dataclass(frozen=True)
class Launch:
    """One kernel launch: grid, pointer element types, scalar values, constexprs and launch options.

    ``extents``: elements reachable through each pointer argument (the size of what it indexes), used to
    decide where 64-bit offsets are needed. Call it with the tensors by argument name.
    """

    kernel: Any
    grid: tuple
    pointers: dict
    extents: dict
    scalars: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 3
    label: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return getattr(self.kernel, "__name__", None) or self.kernel.fn.__name__

    def check_grid(self) -> None:
        if len(self.grid) > 3 or any(int(g) < 1 for g in self.grid):
            raise LaunchError(f"{self.name}: grid {self.grid} is not 1 to 3 positive dimensions")
        for axis, (g, lim) in enumerate(zip(self.grid, GRID_LIMITS)):
            if int(g) > lim:
                raise LaunchError(f"{self.name}: grid axis {axis} is {g} programs, above CUDA's {lim}")

    def specialization(self) -> tuple[dict, dict, dict]:
        """(signature, constexprs, attrs) as Triton's JIT specialises this launch: signature
        {argument: '*fp32' | 'i32' | 'i64' | 'constexpr'}, every constexpr's value (the plan's and the
        integer arguments equal to 1), and the divisibility-by-16 hints {(index,): [[...]]}."""
        sig, consts, attrs = {}, dict(self.constexprs), {}
        for i, arg in enumerate(self.kernel.arg_names):
            if arg in self.pointers:
                sig[arg] = "*" + triton_dtype(self.pointers[arg])
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif arg in self.scalars:
                v = int(self.scalars[arg])
                if v == 1:
                    sig[arg], consts[arg] = "constexpr", 1
                    continue
                sig[arg] = _scalar_type(v)
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
            elif arg in self.constexprs:
                sig[arg] = "constexpr"
            else:
                raise LaunchError(f"{self.name}: the plan gives no value for argument {arg!r}")
        return sig, consts, attrs

    def signature(self) -> dict:
        return self.specialization()[0]

    def max_index(self) -> int:
        """The largest program index times block size along any grid axis (an i32 bound in kernels)."""
        blocks = [v for k, v in self.constexprs.items() if k.startswith("BLOCK") and isinstance(v, int)]
        return max(int(g) for g in self.grid) * max(blocks, default=1)

    def __call__(self, **tensors) -> None:
        self.check_grid()
        for name, t in tensors.items():
            want = self.pointers.get(name)
            if want is None:
                raise LaunchError(f"{self.name}: {name!r} is not a pointer argument of the plan")
            if t.dtype != want:
                raise LaunchError(f"{self.name}: {name} is {t.dtype}, the plan was made for {want}")
        missing = set(self.pointers) - set(tensors)
        if missing:
            raise LaunchError(f"{self.name}: no tensor for {sorted(missing)}")
        self.kernel[tuple(int(g) for g in self.grid)](
            **tensors, **self.scalars, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages
        )


def numel(shape) -> int:
    return math.prod(int(s) for s in shape)
