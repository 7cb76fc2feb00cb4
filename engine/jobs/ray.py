"""Ray runner: a pool of actors, each owning a device, computing job shards.

Each actor builds its decoder and (compiled) backbone once, in ``__init__``; shards are the work units.
An actor returns a shard's rows and exact reducer state to the driver, which alone writes files and the
manifest (so the output is the local runner's, byte for byte). A shard whose actor dies is resubmitted
to a live actor at once, or waits for its own actor's restart, which is probed with backoff before it
gets work again; only the driver commits, and each shard once, so no row is lost or duplicated.
Actor deaths (``RayActorError``: killed, restarting, out of memory) and the shard's own exceptions
(``RayTaskError``) are counted apart per shard, with the limits below; past a limit, or when no actor
answers for ``WAIT_LIMIT_S`` seconds, the job stops with a one-line `RayJobError`. A rerun resumes it.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import time
from collections import deque

import torch

logger = logging.getLogger(__name__)

ACTOR_PREFIX = "neuroprint-shard-worker-"
# A shard whose own code raises (a bug, a full disk) is tried this many times in all.
MAX_FAILURES = 3
# A shard whose actor died under it this many times is the likely cause (e.g. one image that runs the
# actor out of memory) and fails the job rather than kill actors for ever.
MAX_DEATHS = 5
# A dead actor is probed (a cheap call) until Ray has restarted it: first after this many seconds,
# doubling up to the cap. No actor answering for WAIT_LIMIT_S seconds, with work left, fails the job.
PROBE_FIRST_S = 0.25
PROBE_MAX_S = 8.0
WAIT_LIMIT_S = 300.0


def _require_ray():
    try:
        import ray
    except ImportError as err:  # pragma: no cover - depends on the install
        from .._errors import NeuroprintError

        raise NeuroprintError("the Ray runner needs ray: pip install 'neuroprint[ray]'") from err
    return ray


def _start_lean_head():
    """A local Ray head node without the autoscaler's monitor and the log monitor, or None where this Ray's
    (private) node API is not the one this was written against (Ray 2.60), and the caller starts Ray's
    default head instead.

    A job on one machine uses neither: nothing autoscales, and its workers' logs stay in their files
    (``log_to_driver=False``). They are two Python processes of about 80 MiB each (monitor.py and
    log_monitor.py: 467 -> 309 MiB of Ray daemons in a 2-actor job). ``ray.init`` has no switch for them,
    ``ray start --no-monitor --include-log-monitor=false`` does; this starts the head the way both do
    (``ray._private.node.Node``), with ``ray.init``'s defaults otherwise: token authentication as for any
    new local cluster, no usage statistics, no dashboard, and the node's processes dying with this one.
    ``NEUROPRINT_RAY_HEAD=default`` asks for Ray's default head (``ray.init``'s) instead."""
    if os.environ.get("NEUROPRINT_RAY_HEAD", "lean") == "default":
        return None
    try:
        from ray._common.usage import usage_lib
        from ray._private.authentication.authentication_token_setup import (
            enable_token_auth_by_default,
            ensure_token_if_auth_enabled,
        )
        from ray._private.node import Node
        from ray._private.parameter import RayParams

        params = RayParams(include_dashboard=False, include_log_monitor=False, no_monitor=True)
        enable_token_auth_by_default()
        ensure_token_if_auth_enabled({}, create_token_if_missing=True)
        usage_lib.set_usage_stats_enabled_via_env_var(False)
        # another signature raises TypeError before any process starts
        return Node(params, head=True, shutdown_at_exit=False, spawn_reaper=True, ray_init_cluster=True)
    except (ImportError, TypeError) as err:
        logger.info("starting Ray's default head (its node API differs here: %s)", err)
        return None


@contextlib.contextmanager
def ray_session(address: str | None = None):
    """Yields the ray module, connected: to ``address`` (an existing cluster) or, when Ray is not yet
    initialised, to a local instance started here (`_start_lean_head`) and shut down on exit. Without
    ``address``, ``RAY_ADDRESS`` names the cluster, as for ``ray.init()``."""
    ray = _require_ray()
    started, node = False, None
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            # Actors inherit this process's environment (TORCHDYNAMO_DISABLE, TRITON_INTERPRET, caches).
            node = _start_lean_head()
            try:
                if node is not None:
                    ray.init(address=node.address, log_to_driver=False)
                else:
                    ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
            except BaseException:
                if node is not None:
                    node.kill_all_processes(check_alive=False, allow_graceful=False)
                raise
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
        if node is not None:
            node.kill_all_processes(check_alive=False, allow_graceful=True)


def describe_on_ray(extractor: str, *, weights, layers, seed: int):
    """The `ExtractorInfo` of an extractor, built in a one-off Ray worker process (``max_calls=1``: the
    process exits afterwards, with the network and its libraries), so that the driver of a Ray job never
    holds a model. Needs a connected Ray (`ray_session`). The extractor's own error (an unknown name, a
    bad checkpoint) is raised as itself."""
    ray = _require_ray()
    from ..extractors import describe_extractor

    task = ray.remote(num_cpus=1, num_gpus=0, max_calls=1, max_retries=0)(describe_extractor)
    try:
        return ray.get(task.remote(extractor, weights=weights, layers=layers, seed=seed))
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


def run_shards_on_ray(
    make_worker, device, shards, todo, commit, bar, *, num_actors=None, address=None
) -> None:
    """Compute shards ``todo`` on Ray actors, each holding one ``make_worker()`` (a picklable callable; the
    worker's ``run(k, items)`` returns what ``commit(k, *result)`` takes), on ``device``'s kind."""
    with ray_session(address) as ray:
        _run(ray, make_worker, device, shards, todo, commit, bar, num_actors)


def _run(ray, make_worker, device, shards, todo, commit, bar, num_actors) -> None:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    on_gpu = torch.device(device).type == "cuda"
    if num_actors is None:
        num_actors = gpus if on_gpu and gpus else max(1, int(ray.cluster_resources().get("CPU", 1)))
    num_actors = max(1, min(int(num_actors), len(todo) or 1))
    # On CPU each actor gets an equal share of the cores for torch's threads.
    cpus_each = 1
    threads = max(1, (os.cpu_count() or 1) // num_actors)

    @ray.remote(num_cpus=cpus_each, num_gpus=1 if on_gpu else 0, max_restarts=-1, max_task_retries=0)
    class Worker:
        def __init__(self, make_worker):
            if not on_gpu:
                torch.set_num_threads(threads)
            self.worker = make_worker()

        def pid(self) -> int:
            return os.getpid()

        def run(self, k, items):
            return self.worker.run(k, items)

    actors = [Worker.options(name=f"{ACTOR_PREFIX}{i}").remote(make_worker) for i in range(num_actors)]
    try:
        _schedule(ray, actors, shards, todo, commit, bar)
    finally:
        for a in actors:
            ray.kill(a)


def _one_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err  # RayTaskError carries the shard's own exception
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _init_failed(err) -> str | None:
    """The last line of the error an actor's constructor raised (None when the actor died otherwise)."""
    if not getattr(err, "actor_init_failed", False):
        return None
    lines = [ln.strip() for ln in str(getattr(err, "error_msg", "") or err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _schedule(ray, actors, shards, todo, commit, bar) -> None:
    """Runs every shard of ``todo`` on the actors and commits each result once (see the module docstring)."""
    from .._errors import RayJobError

    died = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)
    queue = deque(todo)
    failures = dict.fromkeys(todo, 0)
    deaths = dict.fromkeys(todo, 0)
    running = {}  # future -> (shard, actor)
    probes = {}  # future -> (actor, delay): is the restarted actor back?
    later = []  # heap of (when, tie, actor, delay): actors to probe again
    tie = itertools.count()
    idle = deque(actors)
    last_progress = time.monotonic()

    def probe_later(actor, delay):
        heapq.heappush(later, (time.monotonic() + delay, next(tie), actor, delay))

    while queue or running:
        while queue and idle:
            k, actor = queue.popleft(), idle.popleft()
            running[actor.run.remote(k, shards[k])] = (k, actor)
        now = time.monotonic()
        while later and later[0][0] <= now:
            _, _, actor, delay = heapq.heappop(later)
            probes[actor.pid.remote()] = (actor, delay)
        if not running and not probes:
            if now - last_progress > WAIT_LIMIT_S:
                raise RayJobError(
                    f"no Ray actor came back within {WAIT_LIMIT_S:.0f} s; {len(queue)} shard(s) left "
                    "(rerun the command to resume)"
                )
            time.sleep(max(0.0, later[0][0] - now) if later else PROBE_FIRST_S)
            continue
        timeout = max(0.0, later[0][0] - now) if later else None
        done, _ = ray.wait([*running, *probes], num_returns=1, timeout=timeout)
        if not done:
            continue
        fut = done[0]
        if fut in probes:
            actor, delay = probes.pop(fut)
            try:
                ray.get(fut)
            except died as err:
                if _init_failed(err):
                    raise RayJobError(f"a Ray actor could not start the job: {_init_failed(err)}") from err
                probe_later(actor, min(2 * delay, PROBE_MAX_S))
                continue
            idle.append(actor)
            last_progress = time.monotonic()
            continue
        k, actor = running.pop(fut)
        try:
            table, state, failed = ray.get(fut)
        except died as err:
            if _init_failed(err):  # the worker's constructor failed: it will fail on every restart
                raise RayJobError(f"a Ray actor could not start the job: {_init_failed(err)}") from err
            deaths[k] += 1
            if deaths[k] >= MAX_DEATHS:
                raise RayJobError(
                    f"shard {k}: its Ray actor died {deaths[k]} times while running it (last: "
                    f"{type(err).__name__}); an image of this shard may exhaust the actor's memory"
                ) from err
            logger.warning("shard %d: actor died (%s); the shard goes to a live actor", k, type(err).__name__)
            queue.appendleft(k)
            probe_later(actor, PROBE_FIRST_S)
            continue
        except ray.exceptions.RayTaskError as err:
            failures[k] += 1
            if failures[k] >= MAX_FAILURES:
                raise RayJobError(
                    f"shard {k} failed {failures[k]} times; last error: {_one_line(err)}"
                ) from err
            logger.warning("shard %d failed (%s); retrying", k, _one_line(err))
            queue.appendleft(k)
            idle.append(actor)
            continue
        commit(k, table, state, failed)
        bar.update(table.num_rows)
        last_progress = time.monotonic()
        idle.append(actor)
