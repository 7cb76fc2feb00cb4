"""Ray runner: a pool of actors, each owning a device, computing job shards.

Each actor builds its decoder and (compiled) backbone once, in ``__init__``; shards are the work units.
An actor returns a shard's rows and exact reducer state to the driver, which alone writes files and the
manifest (so the output is the local runner's, byte for byte). A shard whose actor dies is resubmitted
to the restarted actor; no shard is committed twice, so no row is lost or duplicated.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque

import torch

logger = logging.getLogger(__name__)

ACTOR_PREFIX = "neuroprint-shard-worker-"
MAX_ATTEMPTS = 4


def _require_ray():
    try:
        import ray
    except ImportError as err:  # pragma: no cover - depends on the install
        from ._errors import NeuroprintError

        raise NeuroprintError("the Ray runner needs ray: pip install 'neuroprint[ray]'") from err
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None):
    """Yields the ray module, connected: to ``address`` (an existing cluster) or, when Ray is not yet
    initialised, to a local instance started here and shut down on exit."""
    ray = _require_ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            # Actors inherit this process's environment (TORCHDYNAMO_DISABLE, TRITON_INTERPRET, caches).
            ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_shards_on_ray(spec, shards, todo, commit, bar, *, num_actors=None, address=None) -> None:
    with ray_session(address) as ray:
        _run(ray, spec, shards, todo, commit, bar, num_actors)


def _run(ray, spec, shards, todo, commit, bar, num_actors) -> None:
    from ._job import ShardWorker

    gpus = int(ray.cluster_resources().get("GPU", 0))
    on_gpu = torch.device(spec.device).type == "cuda"
    if num_actors is None:
        num_actors = gpus if on_gpu and gpus else max(1, int(ray.cluster_resources().get("CPU", 1)))
    num_actors = max(1, min(int(num_actors), len(todo) or 1))
    # On CPU each actor gets an equal share of the cores for torch's threads.
    cpus_each = 1
    threads = max(1, (os.cpu_count() or 1) // num_actors)

    @ray.remote(num_cpus=cpus_each, num_gpus=1 if on_gpu else 0, max_restarts=-1, max_task_retries=0)
    class Worker:
        def __init__(self, spec):
            if not on_gpu:
                torch.set_num_threads(threads)
            self.worker = ShardWorker(spec)

        def pid(self) -> int:
            return os.getpid()

        def run(self, k, items):
            return self.worker.run(k, items)

    actors = [Worker.options(name=f"{ACTOR_PREFIX}{i}").remote(spec) for i in range(num_actors)]
    queue = deque(todo)
    attempts = dict.fromkeys(todo, 0)
    running = {}  # future -> (k, actor)
    idle = deque(actors)

    def submit():
        while queue and idle:
            k = queue.popleft()
            actor = idle.popleft()
            attempts[k] += 1
            running[actor.run.remote(k, shards[k])] = (k, actor)

    submit()
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            fut = done[0]
            k, actor = running.pop(fut)
            try:
                table, state, failed = ray.get(fut)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                if attempts[k] >= MAX_ATTEMPTS:
                    raise RuntimeError(f"shard {k} failed {attempts[k]} times; last error: {err}") from err
                logger.warning("shard %d: actor died (%s); resubmitting", k, type(err).__name__)
                queue.appendleft(k)
                idle.append(actor)  # max_restarts: Ray brings the actor back
                submit()
                continue
            commit(k, table, state, failed)
            bar.update(table.num_rows)
            idle.append(actor)
            submit()
    finally:
        for a in actors:
            ray.kill(a)
