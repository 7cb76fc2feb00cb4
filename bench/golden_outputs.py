"""Before/after check for refactors: the same fixture through two commits' code, outputs compared.

    python bench/golden_outputs.py --before <commit> [--after WORKTREE|<commit>] [--keep DIR]

Each side is imported from its own tree (assembled from that tree's setup.cfg ``package_dir``, so a
moved package layout is followed), on the same machine and thread count, in subprocesses. The fixture is
a folder of varied images (sizes, modes, near-duplicate edits) with bad files (corrupt, truncated, not an
image). Run on it: ``profile -o`` (a reference VDNA), ``profile --out-dir`` with histograms,
layer-gaussian, embeddings, hashes, FUNGI and the reference's EMD column; ``dedup`` of that job;
``explain``; ``visualize``. Every output file is compared: Parquet tables (schema and every value), npz
arrays, JSON (keys naming times, hosts and pids dropped), other files byte for byte. Prints one line per
difference and exits 1 on any; exits 0 when every file is identical.
"""

from __future__ import annotations

import argparse
import configparser
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {
    "time_of_compute",
    "created",
    "created_at",
    "timestamp",
    "time",
    "date",
    "started",
    "finished_at",
    "host",
    "pid",
}
VOLATILE_SUFFIXES = ("_s", "_seconds", "_time", "_at")


def package_tree(src: Path, dest: Path) -> Path:
    """An importable copy of ``src``'s packages, laid out by its setup.cfg's package_dir."""
    cfg = configparser.ConfigParser()
    cfg.read(src / "setup.cfg")
    mapping = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, path = line.partition("=")
        mapping[name.strip()] = path.strip()
    # parents first, so that a sub-package mapped elsewhere lands inside its parent's copy
    for name in sorted(mapping, key=lambda n: n.count(".")):
        target = dest.joinpath(*name.split("."))
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src / mapping[name], target, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def make_fixture(folder: Path) -> None:
    from PIL import Image, ImageFilter

    rng = np.random.RandomState(7)
    folder.mkdir(parents=True)
    bases = []
    for i in range(6):
        h, w = [(48, 64), (64, 48), (40, 40), (72, 56), (33, 47), (64, 64)][i]
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack(
            [np.sin(xx / (3 + i) + c) * 80 + np.cos(yy / (2 + c + i)) * 60 + 128 for c in range(3)], -1
        )
        img += rng.randn(h, w, 3) * 12
        bases.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    for i, im in enumerate(bases):
        im.save(folder / f"base_{i}.png")
    # near-duplicate edits of two bases, and other modes
    bases[0].resize((96, 128), Image.BICUBIC).save(folder / "base_0_up.png")
    bases[0].save(folder / "base_0_q60.jpg", quality=60)
    bases[1].filter(ImageFilter.GaussianBlur(1.5)).save(folder / "base_1_blur.png")
    bases[1].transpose(Image.FLIP_LEFT_RIGHT).save(folder / "base_1_flip.png")
    bases[2].convert("L").save(folder / "gray.png")
    bases[3].convert("RGBA").save(folder / "rgba.png")
    bases[4].convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    # bad files
    (folder / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG\n" * 4)
    good = (folder / "base_5.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    jpg = bytearray((folder / "base_0_q60.jpg").read_bytes())
    jpg[20:200] = bytes(180)
    (folder / "corrupt.jpg").write_bytes(bytes(jpg))


COMMANDS = [
    # activation ranges, then a reference histogram VDNA binned with them (as the job is)
    "profile {src} -o rng --extractor timm:test_resnet --weights random --device cpu -d activation-ranges "
    "--num-workers 2 -q",
    "profile {src} -o ref --extractor timm:test_resnet --weights random --device cpu -d histogram-32 "
    "--ranges rng.json --num-workers 2 -q",
    "profile {src} --out-dir job --extractor timm:test_resnet --weights random --device cpu --shard-size 5 "
    "-d histogram-32 -d layer-gaussian --ranges rng.json --embeddings --hashes phash,dhash --reference ref=ref "
    "--fungi kl,dino --fungi-model vit_tiny_patch16_224 --fungi-input-dim 32 --num-workers 2 -q",
    "dedup job --out-dir dedup --method both --max-distance 12 --threshold 0.9 --keep largest -q",
    "explain {src} --out-dir explain --extractor timm:test_resnet --weights random --device cpu "
    "--layer layer2 --units 0:4 --method actmap -q",
    "visualize --extractor timm:test_resnet --weights random --device cpu --layer layer2 --units 0-2 "
    "--steps 4 --size 32 --out-dir visualize --no-progress",
]


def run_side(tree: Path, workdir: Path, src: Path) -> None:
    workdir.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(tree), TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="2")
    env.pop("PYTHONSTARTUP", None)
    for cmd in COMMANDS:
        argv = cmd.format(src=src).split()
        code = "import sys; from neuroprint.cli import main; sys.exit(main(sys.argv[1:]))"
        res = subprocess.run(
            [sys.executable, "-c", code, *argv], cwd=workdir, env=env, capture_output=True, text=True
        )
        if res.returncode != 0:
            raise SystemExit(
                f"{tree}: `{' '.join(argv[:1])}` failed ({res.returncode}):\n{res.stderr[-3000:]}"
            )


def _clean(obj):
    if isinstance(obj, dict):
        return {
            k: _clean(v)
            for k, v in obj.items()
            if k not in VOLATILE and not (k.endswith(VOLATILE_SUFFIXES) and isinstance(v, (int, float)))
        }
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return a == b


def compare_file(a: Path, b: Path, roots: tuple[Path, Path]) -> str | None:
    if a.suffix == ".parquet":
        import pyarrow.parquet as pq

        ta, tb = pq.read_table(a), pq.read_table(b)
        if not ta.schema.equals(tb.schema):
            return f"schema differs:\n  {ta.schema}\n  {tb.schema}"
        for name in ta.column_names:
            va, vb = ta[name].to_pylist(), tb[name].to_pylist()
            if not _same_value(va, vb):
                bad = next(i for i, (x, y) in enumerate(zip(va, vb)) if not _same_value(x, y))
                return f"column {name!r} differs (first at row {bad})"
        return None
    if a.suffix == ".npz":
        with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
            if sorted(za.files) != sorted(zb.files):
                return f"arrays differ: {sorted(set(za.files) ^ set(zb.files))}"
            for k in za.files:
                x, y = za[k], zb[k]
                if (
                    x.dtype != y.dtype
                    or x.shape != y.shape
                    or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
                ):
                    return f"array {k!r} differs"
        return None
    if a.suffix == ".json":
        # each side ran in its own folder: its absolute path (recorded commands) is not a difference
        ja = _clean(json.loads(a.read_text().replace(str(roots[0]), "<OUT>")))
        jb = _clean(json.loads(b.read_text().replace(str(roots[1]), "<OUT>")))
        return None if _same_value(ja, jb) else "JSON differs"
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def compare_dirs(a: Path, b: Path) -> list[str]:
    fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    diffs = [f"only in before: {p}" for p in sorted(fa - fb)] + [
        f"only in after: {p}" for p in sorted(fb - fa)
    ]
    for rel in sorted(fa & fb):
        why = compare_file(a / rel, b / rel, (a, b))
        if why:
            diffs.append(f"{rel}: {why}")
    return diffs


def _checkout(commit: str, dest: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(dest), commit],
        check=True,
        capture_output=True,
    )
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="commit whose outputs are the expected ones")
    p.add_argument(
        "--after", default=str(ROOT), help="a commit, or a source tree (default: this working tree)"
    )
    p.add_argument("--keep", help="write the two output folders here instead of a temporary folder")
    args = p.parse_args(argv)
    base = Path(args.keep or tempfile.mkdtemp(prefix="neuroprint-golden-"))
    base.mkdir(parents=True, exist_ok=True)
    worktrees = []
    try:
        src_before = _checkout(args.before, base / "src-before")
        worktrees.append(src_before)
        if Path(args.after).is_dir():
            src_after = Path(args.after)
        else:
            src_after = _checkout(args.after, base / "src-after")
            worktrees.append(src_after)
        fixture = base / "images"
        make_fixture(fixture)
        outs = {}
        for side, src in (("before", src_before), ("after", src_after)):
            tree = package_tree(src, base / f"py-{side}")
            outs[side] = base / f"out-{side}"
            run_side(tree, outs[side], fixture)
        diffs = compare_dirs(outs["before"], outs["after"])
        files = sum(1 for p in outs["before"].rglob("*") if p.is_file())
        for d in diffs:
            print(d)
        print(f"{files} output files compared: {'identical' if not diffs else f'{len(diffs)} differences'}")
        return 1 if diffs else 0
    finally:
        for wt in worktrees:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], capture_output=True
            )
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
