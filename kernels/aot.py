"""Ahead-of-time compilation of the kernels for a GPU this machine does not have.

`compile_launch` compiles one `Launch` (the plan a launcher really uses: its pointer types, scalar
widths, constexprs and num_warps) with Triton for ``GPUTarget("cuda", arch, 32)``, then runs the ptxas
Triton ships with (``-v``) on the PTX to read registers, spill stores / loads, stack frame and shared
memory. No GPU and no CUDA driver is needed; only Triton's bundled ptxas (`ptxas_path`).

`narrow_offsets` reads the kernel's Triton IR and lists every pointer offset that is 32-bit, or 64-bit
but computed from a 32-bit product of two runtime values, into a buffer that can hold 2**31 elements or
more: the overflow a large input would hit.

`production_plans` lists the plans of the shapes the product runs (and the largest each launcher must
accept), for `tests/test_kernel_aot.py` and `python -m neuroprint.kernels.aot` (a table).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch

from ._launch import INT32_MAX, Launch

__all__ = ["KernelReport", "compile_launch", "narrow_offsets", "production_plans", "ptxas_path"]


@dataclass
class KernelReport:
    kernel: str
    label: str
    arch: int
    registers: int
    spill_stores: int  # bytes per thread
    spill_loads: int
    stack: int  # bytes of stack frame per thread
    shared: int  # bytes of shared memory per program (Triton's allocation)
    num_warps: int
    ttir: str = dataclasses.field(repr=False, default="")

    def row(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("ttir")
        return d


def ptxas_path(arch: int = 90) -> str | None:
    """Triton's bundled ptxas (or TRITON_PTXAS_PATH), or None when this install has none."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(arch).path
    except Exception:  # noqa: BLE001 - no NVIDIA backend in this Triton build
        return None
    return path if path and os.path.exists(path) else None


_PTXAS_LINE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def compile_launch(plan: Launch, arch: int = 90) -> KernelReport:
    """Compile ``plan`` for sm_``arch`` without a GPU; raises on a compile or ptxas error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    plan.check_grid()
    sig, consts, attrs = plan.specialization()
    src = ASTSource(plan.kernel, sig, constexprs=consts, attrs=attrs)
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": plan.num_warps, "num_stages": plan.num_stages},
    )
    ptxas = ptxas_path(arch)
    if ptxas is None:
        raise RuntimeError("Triton's ptxas is not installed")
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        res = subprocess.run(
            [ptxas, "-v", f"--gpu-name={gpu}", ptx, "-o", os.path.join(d, "kernel.cubin")],
            capture_output=True,
            text=True,
            check=False,
        )
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed for {plan.name} ({plan.label}): {res.stderr.strip()[-2000:]}")
    info = {k: int(m.group(1)) if (m := rx.search(res.stderr)) else 0 for k, rx in _PTXAS_LINE.items()}
    return KernelReport(
        kernel=plan.name,
        label=plan.label,
        arch=arch,
        shared=int(compiled.metadata.shared),
        num_warps=plan.num_warps,
        ttir=compiled.asm["ttir"],
        **info,
    )


# ----------------------------------------------------------------------------------------- index widths

_DEF = re.compile(r"^\s*(%[\w.]+)(?::\d+)?\s*=\s*([\w.]+)\s*(.*)$")
_OPERAND = re.compile(r"%[\w.]+")


def _defs(ttir: str) -> dict:
    """SSA name -> (op, operand names, result type text) for every definition of the IR."""
    out = {}
    for line in ttir.splitlines():
        m = _DEF.match(line)
        if not m:
            continue
        name, op, rest = m.groups()
        body, _, types = rest.partition(" : ")
        body = body.split(" loc(")[0]
        out[name] = (op, _OPERAND.findall(body), types.split(" loc(")[0])
    return out


def _is_i32(types: str) -> bool:
    """Whether an op's result type (the text after ' : ') is i32 or a tensor of i32."""
    last = types.split("->")[-1].split(",")[-1].strip()
    return last == "i32" or last.endswith("xi32>")


def _root(name: str, defs: dict) -> str:
    seen = set()
    while name in defs and name not in seen:
        seen.add(name)
        op, ops, _ = defs[name]
        if op in ("tt.addptr", "tt.splat", "tt.broadcast", "tt.expand_dims", "tt.reshape") and ops:
            name = ops[0]
        else:
            break
    return name


def _is_constant(name: str, defs: dict) -> bool:
    seen = set()
    while name in defs and name not in seen:
        seen.add(name)
        op, ops, _ = defs[name]
        if op == "arith.constant":
            return True
        if op in ("tt.splat", "tt.broadcast", "tt.expand_dims") and ops:
            name = ops[0]
            continue
        return False
    return False


def _narrow_products(name: str, defs: dict) -> list:
    """The 32-bit multiplications of two non-constant values in the computation of ``name``."""
    found, stack, seen = [], [name], set()
    while stack:
        n = stack.pop()
        if n in seen or n not in defs:
            continue
        seen.add(n)
        op, ops, types = defs[n]
        if op == "arith.muli" and _is_i32(types) and len(ops) == 2:
            if not (_is_constant(ops[0], defs) or _is_constant(ops[1], defs)):
                found.append(n)
        if op in ("tt.addptr",):
            stack.extend(ops[1:])  # the pointer operand is checked at its own addptr
        else:
            stack.extend(ops)
    return found


def narrow_offsets(ttir: str, extents: dict) -> list[str]:
    """Pointer offsets that can overflow: into a buffer of >= 2**31 elements (``extents`` by argument
    name), an offset (32- or 64-bit) computed with a 32-bit product of two runtime values, such as a
    32-bit index times a stride. Products by a constant (program id times block size) are bounded by the
    grid (`Launch.max_index`) and sums of in-range indices stay in range, so neither is reported.
    Returns a description per offending ``tt.addptr`` (empty when the kernel is safe for those sizes)."""
    defs = _defs(ttir)
    bad = []
    for name, (op, ops, _types) in defs.items():
        if op != "tt.addptr" or len(ops) < 2:
            continue
        root = _root(ops[0], defs).lstrip("%")
        if int(extents.get(root, 0)) <= INT32_MAX:
            continue
        for prod in _narrow_products(ops[1], defs):
            bad.append(
                f"{name}: offset into {root} ({extents[root]:,} elements) uses the 32-bit product {prod}"
            )
    return bad


# ----------------------------------------------------------------------------------- production shapes


def production_plans(dtypes=(torch.float32, torch.bfloat16, torch.float16)) -> list[Launch]:
    """The plans the product launches: every kernel, every dtype its launcher accepts, the block-size
    choices its shapes select, up to the largest shapes (labels say which)."""
    from . import cosine_topk, emd, grad_projection, histogram, image_emd

    plans = []

    def add(plan: Launch, label: str) -> None:
        plans.append(dataclasses.replace(plan, label=label))

    # Histogram binning: ViT-B/16 tokens [256, 197, 768], VGG relu_1_1 maps [256, 64, 224, 224] as
    # [B, P, C] views with channel-major strides, and a batch too large for 32-bit offsets.
    for dt in dtypes:
        for bins in (1000, 64):
            for precision in histogram.PRECISIONS:
                add(
                    histogram.plan_neuron_histogram(
                        (256, 197, 768), (197 * 768, 768, 1), dt, bins, precision
                    ),
                    f"vit tokens {dt} bins={bins} {precision}",
                )
        add(
            histogram.plan_neuron_histogram((256, 224 * 224, 64), (64 * 224 * 224, 1, 224 * 224), dt, 1000),
            f"vgg relu_1_1 {dt}",
        )
    add(
        histogram.plan_neuron_histogram(
            (1024, 224 * 224, 64), (64 * 224 * 224, 1, 224 * 224), torch.float32, 1000
        ),
        "vgg relu_1_1 batch 1024 (3.3G values)",
    )
    # Batched EMD: mugs_vit_base VDNAs (9,984 neurons x 1,000 bins), int32 counts and float; 4,096 pairs
    # of 64 x 64 sets, and bins of other sizes.
    for dt in (torch.int32, torch.float32, torch.float64):
        add(emd.plan_batched_emd(4096, 9984, 1000, dt, 64, 64), f"9984x1000 {dt} 4096 pairs")
    for n in (64, 200, 1000, 5000):
        add(emd.plan_batched_emd(1024, 9984, n, torch.int32, 32, 32), f"9984x{n} int32")
    add(emd.plan_batched_emd(65536, 9984, 1000, torch.int32, 256, 256), "256x256 sets (6.5e11 cells)")
    # Cosine top-k: k up to 256, D up to 2048, 1M-row databases, contiguous and strided.
    for dt in dtypes:
        for k in (1, 10, 32, 64, 128, 256):
            for d in (768, 2048):
                add(cosine_topk.plan_cosine_topk(65536, 1 << 20, d, k, dt), f"1M x {d} k={k} {dt}")
    add(
        cosine_topk.plan_cosine_topk(65536, 1 << 20, 2048, 10, torch.float32, exclude=True),
        "self-search 1M x 2048 k=10",
    )
    n = 1 << 20  # strided rows (every other row of a [2M, 2048] buffer); column-major views are copied
    add(
        cosine_topk.plan_cosine_topk(n, n, 2048, 10, torch.bfloat16, False, (4096, 1), (4096, 1)),
        "1M x 2048 k=10 bf16, rows of stride 4096",
    )
    # FUNGI's per-sample gradient projection: ViT-B/16 attn.proj-like layers, projections to 768 / 4096.
    for dt in dtypes:
        for d_in, d_out, e in ((768, 768, 768), (768, 768, 4096), (2048, 1000, 1024)):
            add(
                grad_projection.plan_grad_projection(256, 197, d_in, d_out, e, dt, torch.int8),
                f"{d_in}->{d_out} E={e} {dt}",
            )
    b, r = 4096, 197 * 16  # 16 views of 197 tokens, sliced from a wider buffer (strided rows)
    add(
        grad_projection.plan_grad_projection(
            b, r, 768, 768, 1024, torch.bfloat16, torch.int8, True, (r * 2304, 2304, 1), (r * 768, 768, 1)
        ),
        "768->768 E=1024 bf16, 4096 images x 3152 rows, strided x (2.2G elements)",
    )
    # Per-image EMD: ViT-B tokens and CNN maps against 1,000-bin reference histograms.
    for dt in dtypes:
        add(image_emd.plan_per_image_emd((256, 197, 768), (197 * 768, 768, 1), dt, 1000), f"vit {dt}")
        add(
            image_emd.plan_per_image_emd((256, 224 * 224, 64), (64 * 224 * 224, 1, 224 * 224), dt, 1000),
            f"vgg relu_1_1 {dt}",
        )
    return plans


def report(archs=(90, 80)) -> list[dict]:
    """Compile every production plan for each arch (identical specialisations once): one row per
    (plan, arch) with registers, spills, shared memory, the narrow offsets and the grid's bound."""
    rows, cache = [], {}
    for plan in production_plans():
        sig, consts, _ = plan.specialization()
        for arch in archs:
            key = (plan.name, tuple(sig.items()), tuple(sorted(consts.items())), plan.num_warps, arch)
            if key not in cache:
                r = compile_launch(plan, arch)
                cache[key] = (r, narrow_offsets(r.ttir, plan.extents))
            r, narrow = cache[key]
            row = dict(r.row(), label=plan.label, grid=list(plan.grid), max_index=plan.max_index())
            row["largest_buffer"] = max(plan.extents.values())
            row["narrow_offsets"] = narrow
            rows.append(row)
    return rows


def main(argv=None) -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(
        description="AOT-compile every kernel plan for a GPU; print registers/spills"
    )
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--json", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    rows = report(tuple(args.arch))
    print("| kernel | plan | sm | warps | registers | spill stores / loads (B) | stack (B) | shared (B) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['kernel']} | {r['label']} | {r['arch']} | {r['num_warps']} | {r['registers']} | "
            f"{r['spill_stores']} / {r['spill_loads']} | {r['stack']} | {r['shared']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
