"""Stamps of the files a job was asked for (no heavy imports: the CLI checks a complete job before torch).

A stamp is a flat list of (absolute path, size, modification time in ns) triples; a folder's size is -1.
A folder is stamped with every folder under it (a folder's mtime moves when an entry is added, removed
or renamed directly in it, so a new image anywhere in the tree moves one of them), found without reading
the entries of leaf folders: where a folder's link count says it has no sub-folders (2 on ext4, xfs and
tmpfs), it is not listed. What a stamp does not see: a file rewritten in place under the same name, and
folders reached through a symbolic link from a leaf folder; ``--rebuild`` redoes such a job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["complete_job", "finished_manifest", "path_stamp", "stamps_unchanged"]


def path_stamp(x):
    """What identifies a path argument without reading it whole: its absolute path, and for a file its
    size and modification time (a folder: its own mtime, which moves when an entry is added or removed
    at its top level); a VDNA named without its extension: both of its files; URLs as given; None for
    anything else (in-memory data) or a path that is not there."""
    if isinstance(x, str) and "://" in x:
        return x
    if not isinstance(x, (str, os.PathLike)):
        return None
    path = os.path.abspath(os.fspath(x))
    candidates = [path] if os.path.exists(path) else [path + ".json", path + ".npz"]
    stamp = []
    for p in candidates:
        try:
            st = os.stat(p)
        except OSError:
            return None
        if os.path.isdir(p):
            stamp += _folder_stamp(p, st)
        else:
            stamp += [p, int(st.st_size), int(st.st_mtime_ns)]
    return stamp


def _folder_stamp(root: str, st: os.stat_result) -> list:
    """(path, -1, mtime) for ``root`` and every folder under it (hidden ones skipped, as the folder
    source skips them; symbolic links followed once per chain of ancestors, as it follows them)."""
    out = []
    stack = [(root, st, frozenset({os.path.realpath(root)}))]
    while stack:
        folder, fst, ancestors = stack.pop()
        out.append((folder, int(fst.st_mtime_ns)))
        if fst.st_nlink == 2:  # "." and the entry in its parent: no sub-folder, nothing to list
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable: the folder source skips it too; its own mtime is stamped
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_dir():
                    continue
                sub = os.stat(entry.path)
            except OSError:
                continue
            real = os.path.realpath(entry.path)
            if real not in ancestors:
                stack.append((entry.path, sub, ancestors | {real}))
    out.sort()
    return [v for path, mtime in out for v in (path, -1, mtime)]


def _triples(obj):
    """Every (path, size, mtime) triple inside a JSON value (the stamps of a job's request)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _triples(v)
    elif isinstance(obj, list):
        if (
            obj
            and len(obj) % 3 == 0
            and all(
                isinstance(obj[i], str)
                and os.path.isabs(obj[i])
                and type(obj[i + 1]) is int
                and type(obj[i + 2]) is int
                for i in range(0, len(obj), 3)
            )
        ):
            for i in range(0, len(obj), 3):
                yield obj[i], obj[i + 1], obj[i + 2]
        else:
            for v in obj:
                yield from _triples(v)


def stamps_unchanged(request) -> bool:
    """Whether every file stamped in ``request`` still has its size and modification time."""
    for path, size, mtime in _triples(request):
        try:
            st = os.stat(path)
        except OSError:
            return False
        if (-1 if os.path.isdir(path) else int(st.st_size)) != size or int(st.st_mtime_ns) != mtime:
            return False
    return True


def finished_manifest(out_dir) -> dict | None:
    """The manifest in ``out_dir`` when it records a complete job whose outputs (the VDNAs it names and
    ``failures.parquet``) are all in place; else None. Says nothing about whether its inputs changed."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    names = manifest.get("outputs")
    if not (manifest.get("complete") and isinstance(names, list)):
        return None
    files = [out / "failures.parquet"] + [out / f"{n}.{e}" for n in names for e in ("json", "npz")]
    return manifest if all(f.is_file() for f in files) else None


def complete_job(out_dir) -> dict | None:
    """The manifest of the complete job in ``out_dir`` when its request's files are unchanged and its
    outputs are in place (so asking for it again has nothing to do); else None."""
    manifest = finished_manifest(out_dir)
    if manifest is None or manifest.get("request") is None or not stamps_unchanged(manifest["request"]):
        return None
    return manifest
