"""Jobs at scale on one driver (issue 18): memory, partial states, the final merge and the resume.

Sections (each prints a table; ``--json`` writes every figure):

- ``jobs``: a model-free hashes job (dHash, PIL decoder) and a small-model VDNA job (timm
  test_efficientnet, random weights, histogram-1000 + gaussian) over folders of N distinct names
  (hard links to a few small images, so 1M files cost inodes, not disk), each in a fresh process:
  wall time, images/s and the driver's peak RSS; ``--max-shards`` stops a job after that many shards
  (the listing, the digest and the claim of all N items are done whatever the number of shards).
  Then the finished job asked again: in-process time of the same call, and the wall time of a new
  process making it (interpreter start and imports included, as ``neuroprint profile --resume``).
- ``ray``: the hashes job on the local runner and on Ray with 2 actors: peak RSS summed over the
  driver and every process under it (raylet, GCS and the actors included; shared pages count once
  per process).
- ``partials``: the partial state of one 1,024-image shard of mugs_vit_base's taps (13 layers x 768,
  197 tokens) for histogram-1000, computed by the reducer from synthetic activations (no ViT run):
  bytes as before (np.savez of int64 counts), as the job now writes them (delta-coded, deflated), and the
  checkpoint of 8 merged shards; two synthetic laws: Gaussian with ranges at +-6 sigma (dense: most
  bins hold counts) and Laplace with ranges at the extremes of 1M images (the bulk in fewer bins).
- ``merge``: the final merge's time against the number of shards: one partial file per shard (as
  before) against the merged checkpoint (one file), for test_efficientnet's histogram-1000 state.

    python bench/bench_scale.py --sections jobs ray partials merge --items 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _proc_name(pid: int) -> str:
    """A short name for a process: Ray's process title (``ray::ShardActor``, ``raylet``, ...) or the
    program's base name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    first = argv[0].decode(errors="replace").split(" ")[0] if argv and argv[0] else "?"
    name = os.path.basename(first)
    if name.startswith("python") and len(argv) > 1:  # a Python helper: name it by its script
        for a in argv[1:]:
            a = a.decode(errors="replace")
            if a.endswith(".py"):
                return f"python {os.path.basename(a)}"
    return name


def tree_rss_mb(pid: int, breakdown: dict | None = None) -> tuple[float, float]:
    """(RSS of ``pid``, RSS summed over ``pid`` and all its descendants), MiB, from /proc; ``breakdown``
    (when given) is filled with the RSS summed per process name."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))

    def rss(p: int) -> float:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        r = rss(p)
        total += r
        if breakdown is not None:
            name = "driver" if p == pid else _proc_name(p)
            breakdown[name] = breakdown.get(name, 0.0) + r
        stack.extend(children.get(p, []))
    return rss(pid), total


def make_folder(root: Path, n: int, seed_images: list[Path]) -> Path:
    """``root`` holding ``n`` hard links (10,000 per sub-folder) to ``seed_images`` in turn."""
    marker = root / f".made-{n}"
    if marker.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t = time.time()
    for i in range(n):
        sub = root / f"d{i // 10000:04d}"
        if i % 10000 == 0:
            sub.mkdir()
        src = seed_images[i % len(seed_images)]
        os.link(src, sub / f"img_{i:08d}{src.suffix}")
    marker.touch()
    print(f"  made {n} links in {time.time() - t:.1f} s", flush=True)
    return root


def seed_images(folder: Path, k: int = 64) -> list[Path]:  # ext4: at most 65,000 links per file
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        p = folder / f"seed_{i}.png"
        if not p.exists():
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


_CHILD = r"""
import json, os, resource, sys, threading, time
sys.path.insert(0, {bench!r})
from bench_scale import tree_rss_mb
peak = [0.0, 0.0]
at_peak = {{}}
stop = False
def sample():
    global at_peak
    while not stop:
        parts = {{}}
        a, b = tree_rss_mb(os.getpid(), parts)
        if b > peak[1]:
            at_peak = parts
        peak[0], peak[1] = max(peak[0], a), max(peak[1], b)
        time.sleep(0.25)
th = threading.Thread(target=sample, daemon=True); th.start()
import torch
torch.set_num_threads(2)
from neuroprint.jobs import run_job
kw = json.loads({kw!r})
t = time.perf_counter()
res = run_job(**kw)
wall = time.perf_counter() - t
t = time.perf_counter()
again = run_job(**{{**kw, "max_shards": None}}) if res.complete else None
resume = time.perf_counter() - t
stop = True; th.join()
print("RESULT " + json.dumps(dict(
    wall_s=wall, images=res.images_in, processed=res.processed, failed=res.failed, shards_run=res.shards_run,
    shards_total=res.shards_total, complete=res.complete, driver_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    tree_peak_rss_mb=peak[1], tree_at_peak_mb={{k: round(v) for k, v in sorted(at_peak.items(), key=lambda kv: -kv[1])}},
    resume_in_process_s=resume if again is not None else None,
    resume_reused=bool(again is not None and again.reused))))
"""


def run_child(kw: dict, env: dict | None = None) -> dict:
    code = _CHILD.format(bench=str(HERE), kw=json.dumps(kw))
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def fresh_resume_s(kw: dict) -> tuple[float, bool]:
    """(wall time, whether torch was imported) of a new process asking ``run_job`` for the finished job
    again: interpreter start, imports, the call's digest and the check of the manifest."""
    code = (
        "import json, sys; from neuroprint.jobs import run_job; "
        "r = run_job(**json.loads(sys.argv[1])); assert r.reused, 'the job ran again'; "
        "print('TORCH', 'torch' in sys.modules)"
    )
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, json.dumps({**kw, "max_shards": None})],
                          capture_output=True, text=True, env=env)  # fmt: skip
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"the fresh resume failed: {proc.stderr[-2000:]}")
    return wall, "TORCH True" in proc.stdout


def cli_resume_s(out: Path) -> float:
    """Wall time of ``neuroprint profile --resume --out-dir OUT`` in a new process on a finished job (it
    answers from the manifest before torch is imported)."""
    code = "import sys; from neuroprint.cli import main; sys.exit(main(sys.argv[1:]))"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, "profile", "--resume", "--out-dir", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t
    if proc.returncode or "already complete" not in proc.stdout:
        raise RuntimeError(
            f"the CLI resume did not answer from the manifest: {proc.stdout} {proc.stderr[-2000:]}"
        )
    return wall


def job_kwargs(kind: str, folder: Path, out: Path, max_shards, shard_size: int, **extra) -> dict:
    kw = dict(source=str(folder), out_dir=str(out), shard_size=shard_size, num_workers=2, device="cpu",
              progress=False, max_shards=max_shards, batch_size=64)  # fmt: skip
    if kind == "hashes":
        kw.update(distributions=[], extractor=None, hashes=["dhash"], decoder="pil")
    else:
        kw.update(distributions=["histogram-1000", "gaussian"], extractor="timm:test_efficientnet",
                  weights="random", ranges="auto")  # fmt: skip
    kw.update(extra)
    return kw


def section_jobs(args, work: Path, rows: list) -> None:
    seeds = seed_images(work / "seeds")
    print("\n## jobs (fresh process each; 2 torch threads, 2 decode threads)")
    print(
        "| job | items | shards run | wall (s) | images/s | driver peak RSS (MiB) | resume in-process (s) "
        "| resume, new process: run_job (s) | resume, new process: CLI profile --resume (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.items:
        folder = make_folder(work / f"folder-{n}", n, seeds)
        for kind in args.jobs:
            cap = args.max_shards.get(f"{kind}:{n}")
            out = work / f"job-{kind}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            extra = {"ranges": args.vdna_ranges} if kind == "vdna" and args.vdna_ranges else {}
            kw = job_kwargs(kind, folder, out, cap, args.shard_size, **extra)
            got = run_child(kw)
            fresh, fresh_torch = fresh_resume_s(kw) if got["complete"] else (None, None)
            cli = cli_resume_s(out) if got["complete"] else None
            done = got["processed"] + got["failed"]
            ran = (
                min(done, got["shards_run"] * args.shard_size)
                if got["complete"]
                else got["shards_run"] * args.shard_size
            )
            rate = ran / got["wall_s"]
            row = dict(section="jobs", job=kind, items=n, fresh_resume_s=fresh, fresh_resume_torch=fresh_torch,
                       cli_resume_s=cli,
                       images_per_s=rate, **got)  # fmt: skip
            rows.append(row)
            res_ip = f"{got['resume_in_process_s']:.3f}" if got["resume_in_process_s"] is not None else "-"
            print(f"| {kind} | {n} | {got['shards_run']} of {got['shards_total']} | {got['wall_s']:.1f} | {rate:.0f} | "
                  f"{got['driver_peak_rss_mb']:.0f} | {res_ip} | {'-' if fresh is None else f'{fresh:.2f}' + (' (torch)' if fresh_torch else ' (no torch)')} | "
                  f"{'-' if cli is None else f'{cli:.2f}'} |", flush=True)  # fmt: skip
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)


def section_ray(args, work: Path, rows: list) -> None:
    seeds = seed_images(work / "seeds")
    n = args.ray_items
    folder = make_folder(work / f"folder-{n}", n, seeds)
    for kind in args.ray_jobs:
        cap = args.max_shards.get(f"{kind}:{n}")
        extra = {"ranges": args.vdna_ranges} if kind == "vdna" and args.vdna_ranges else {}
        shards = f", {cap} shards" if cap else ""
        print(f"\n## local runner vs Ray (2 actors), {kind} job over {n} items{shards}")
        print(
            "| runner | wall (s) | driver peak RSS (MiB) | peak RSS, driver + every process under it (MiB) |"
        )
        print("|---|---|---|---|")
        parts, trees = [], {}
        on_ray = {"ray": True, "num_actors": 2}
        # Ray's default head (ray.init's: with the autoscaler monitor and the log monitor) for comparison
        runners = [("local", {}, None), ("ray, 2 actors", on_ray, None)]
        runners += [("ray, 2 actors, Ray's default head", on_ray, {"NEUROPRINT_RAY_HEAD": "default"})]
        for runner, how, env in runners:
            out = work / f"ray-{kind}-{len(parts)}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            got = run_child(job_kwargs(kind, folder, out, cap, args.shard_size, **extra, **how), env)
            rows.append(dict(section="ray", job=kind, runner=runner, items=n, **got))
            print(
                f"| {runner} | {got['wall_s']:.1f} | {got['driver_peak_rss_mb']:.0f} | {got['tree_peak_rss_mb']:.0f} |",
                flush=True,
            )
            parts.append((runner, got["tree_at_peak_mb"]))
            trees[runner] = got
            shutil.rmtree(out, ignore_errors=True)
        print("\nRSS at the peak, per process (MiB): " + "; ".join(
            f"{runner}: " + ", ".join(f"{k} {v}" for k, v in split.items()) for runner, split in parts))  # fmt: skip
        for runner in ("ray, 2 actors", "ray, 2 actors, Ray's default head"):
            actors = [v for k, v in trees[runner]["tree_at_peak_mb"].items() if k.startswith("ray::Worker")]
            if actors:
                local, ray_tree = trees["local"]["tree_peak_rss_mb"], trees[runner]["tree_peak_rss_mb"]
                print(
                    f"{runner}: Ray tree / (local tree + the actors' own RSS {sum(actors):.0f}) = {ray_tree:.0f} / "
                    f"{local + sum(actors):.0f} = {ray_tree / (local + sum(actors)):.3f}"
                )


def _vit_ranges(law: str, layers: dict, rng):
    from neuroprint.stats.ranges import Ranges

    mins, maxs, params = {}, {}, {}
    for k, c in layers.items():
        mu, s = rng.normal(0, 1, c), rng.uniform(0.2, 2.0, c)
        # ranges as a dataset's min / max would be: a Gaussian's over ~2e8 values reach about 6 sigma; a
        # Laplace's (scale s) reach s * ln(2e8 / 2), about 18 s
        half = 6.0 * s if law == "gaussian" else 18.4 * s
        mins[k], maxs[k], params[k] = mu - half, mu + half, (mu, s)
    return Ranges(mins, maxs, origin=f"synthetic:{law}"), params


def section_partials(args, work: Path, rows: list) -> None:
    import io

    import torch

    from neuroprint.extractors._vit import vit_layers
    from neuroprint.jobs.job import _savez_compact
    from neuroprint.stats.reducers import HistogramReducer

    layers = vit_layers(12, 768)  # mugs_vit_base's taps: 13 x 768 = 9,984 neurons
    tokens, per_shard, batch = 197, args.shard_images, 64
    print(
        f"\n## partial state of one {per_shard}-image shard, mugs_vit_base taps (9,984 neurons x 1,000 bins), synthetic activations"
    )
    print(
        "| law | nonzero bins | np.savez int64 (before) MB | job's partial (delta-coded byte planes, deflated) MB | write s | checkpoint of 8 merged shards MB |"
    )
    print("|---|---|---|---|---|---|")
    for law in ("gaussian", "laplace"):
        rng = np.random.default_rng(0)
        ranges, params = _vit_ranges(law, layers, rng)
        g = torch.Generator().manual_seed(1)
        r = HistogramReducer(layers, 1000, ranges)
        t = time.time()
        for _ in range(per_shard // batch):
            feats = {}
            for k, (mu, s) in params.items():
                z = (
                    torch.randn(batch, tokens, len(mu), generator=g)
                    if law == "gaussian"
                    else (torch.distributions.Laplace(0.0, 1.0).sample((batch, tokens, len(mu))))
                )
                feats[k] = z * torch.as_tensor(s, dtype=torch.float32) + torch.as_tensor(
                    mu, dtype=torch.float32
                )
            r.update(feats)
        reduce_s = time.time() - t
        state = r.state()
        buf = io.BytesIO()
        np.savez(buf, **state)
        before = buf.tell()
        t = time.time()
        path = work / f"partial-{law}.npz"
        _savez_compact(path, state)
        write_s = time.time() - t
        now = path.stat().st_size
        merged = HistogramReducer(layers, 1000, ranges)
        for _ in range(8):  # 8 shards of the same law: counts grow, the checkpoint stays one file
            merged.merge(HistogramReducer(layers, 1000, ranges).load_state(state))
        _savez_compact(work / "ckpt.npz", merged.state())
        ckpt = (work / "ckpt.npz").stat().st_size
        nz = float(np.mean([(state[f"counts/{k}"] > 0).mean() for k in layers]))
        rows.append(dict(section="partials", law=law, nonzero=nz, before_mb=before / 1e6, now_mb=now / 1e6,
                         write_s=write_s, checkpoint8_mb=ckpt / 1e6, reduce_s=reduce_s))  # fmt: skip
        print(
            f"| {law} | {nz:.0%} | {before / 1e6:.1f} | {now / 1e6:.2f} | {write_s:.2f} | {ckpt / 1e6:.2f} |",
            flush=True,
        )


def section_merge(args, work: Path, rows: list) -> None:
    import torch

    from neuroprint.extractors import get_extractor_config
    from neuroprint.jobs.job import _loadz, _savez, _savez_compact
    from neuroprint.stats.ranges import Ranges
    from neuroprint.stats.reducers import HistogramReducer

    layers = dict(get_extractor_config("timm:test_efficientnet").layers)
    ranges = Ranges(
        {k: np.full(c, -3.0) for k, c in layers.items()}, {k: np.full(c, 3.0) for k, c in layers.items()}
    )
    r = HistogramReducer(layers, 1000, ranges)
    g = torch.Generator().manual_seed(0)
    r.update({k: torch.randn(64, 49, c, generator=g) for k, c in layers.items()})
    state = r.state()
    neurons = sum(layers.values())
    print(f"\n## final merge vs shard count, test_efficientnet histogram-1000 ({neurons} neurons)")
    print(
        "| shards | per-shard files (before): files | MB | merge s | merged checkpoint: files | MB | merge s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.merge_shards:
        d = work / f"merge-{n}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        for k in range(n):
            _savez(d / f"shard-{k:05d}.npz", state)
        size = sum(p.stat().st_size for p in d.iterdir())
        t = time.time()
        m = HistogramReducer(layers, 1000, ranges)
        for k in range(n):
            m.merge(HistogramReducer(layers, 1000, ranges).load_state(_loadz(d / f"shard-{k:05d}.npz")))
        before = time.time() - t
        _savez_compact(d / "merged.npz", m.state())
        t = time.time()
        m2 = HistogramReducer(layers, 1000, ranges).load_state(_loadz(d / "merged.npz"))
        after = time.time() - t
        assert all(torch.equal(m.counts[k], m2.counts[k]) for k in layers)
        ck = (d / "merged.npz").stat().st_size
        rows.append(
            dict(
                section="merge",
                shards=n,
                before_s=before,
                before_mb=size / 1e6,
                after_s=after,
                after_mb=ck / 1e6,
            )
        )
        print(
            f"| {n} | {n} | {size / 1e6:.1f} | {before:.2f} | 1 | {ck / 1e6:.2f} | {after:.3f} | {before / after:.0f}x |",
            flush=True,
        )
        shutil.rmtree(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=["jobs", "ray", "partials", "merge"])
    ap.add_argument("--items", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--jobs", nargs="+", default=["hashes", "vdna"], choices=["hashes", "vdna"])
    ap.add_argument("--max-shards", nargs="*", default=[], metavar="JOB:ITEMS=K",
                    help="stop that job after K shards, e.g. vdna:100000=4 hashes:1000000=8")  # fmt: skip
    ap.add_argument(
        "--vdna-ranges", default=None, help="ranges for the VDNA job (default: auto, a first pass)"
    )
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--ray-items", type=int, default=20_000)
    ap.add_argument("--ray-jobs", nargs="+", default=["hashes"], choices=["hashes", "vdna"])
    ap.add_argument("--shard-images", type=int, default=1024)
    ap.add_argument("--merge-shards", nargs="+", type=int, default=[16, 64, 256])
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the job directories")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.max_shards = {k: int(v) for k, v in (s.split("=") for s in args.max_shards)}
    work = Path(args.work or tempfile.mkdtemp(prefix="np-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list = []
    print(f"neuroprint bench_scale: {os.cpu_count()} cores, work folder {work}")
    for name in args.sections:
        {"jobs": section_jobs, "ray": section_ray, "partials": section_partials, "merge": section_merge}[
            name
        ](args, work, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
