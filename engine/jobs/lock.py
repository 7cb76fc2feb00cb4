"""One process at a time per job directory: a lock file holding the holder's pid, host and start time.

Created with ``O_CREAT | O_EXCL``, so of two processes starting together exactly one wins. A lock whose
holder is gone (same host, pid no longer alive) is taken over with a warning; a live holder's lock, or
one from another host (whose pid cannot be checked from here), makes the second process fail at once
with a message saying who holds it. The lock is removed when the holder ends, by return, error or
KeyboardInterrupt; only a SIGKILL leaves it behind, and the next run takes it over.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from pathlib import Path

from .._errors import NeuroprintError

logger = logging.getLogger(__name__)

LOCK_NAME = "job.lock"


class JobLockedError(NeuroprintError, RuntimeError):
    """Another live process is running a job in this directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text())
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}  # half written by a holder killed while creating it: treated as stale


@contextlib.contextmanager
def job_lock(out_dir: str | os.PathLike):
    """Holds ``OUT_DIR/job.lock`` for the duration of the block (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    for _ in range(3):  # a takeover can race with another takeover: try again from the top
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read(path)
            pid, host = held.get("pid"), held.get("host")
            if not held or (isinstance(pid, int) and host == me["host"] and not _alive(pid)):
                logger.warning("taking over the stale lock of %s (holder %s is gone)", out, pid or "unknown")
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise JobLockedError(
                f"job directory {out} is in use by pid {pid} on host {host} since {held.get('started')}; "
                f"wait for it to finish (or, if that process is dead, remove {path})"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise JobLockedError(f"could not take the lock {path}: other processes keep taking it")
    try:
        yield path
    finally:
        if _read(path).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
