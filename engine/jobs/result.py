"""What a job returns, and its error (no heavy imports: a complete job's result is read without torch)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .._errors import NeuroprintError

__all__ = ["MANIFEST", "JobError", "JobResult", "SavedVDNAs", "finished_result"]

MANIFEST = "manifest.json"


class JobError(NeuroprintError, RuntimeError):
    """The output directory cannot be used for this job."""


class SavedVDNAs(Mapping):
    """{distribution: VDNA} of a job directory, each read from ``OUT_DIR/<name>.json/.npz`` on first
    access (so a complete job's result is returned without torch; reading a VDNA imports it)."""

    def __init__(self, out_dir: str | Path, names) -> None:
        self.out_dir = Path(out_dir)
        self._names = list(names)
        self._loaded: dict = {}

    def __getitem__(self, name: str):
        if name not in self._names:
            raise KeyError(name)
        if name not in self._loaded:
            from ..stats.vdna import load_vdna_from_files

            self._loaded[name] = load_vdna_from_files(self.out_dir / name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"SavedVDNAs({str(self.out_dir)!r}, {self._names!r})"


@dataclass
class JobResult:
    out_dir: Path
    vdnas: Mapping  # distribution -> VDNA (a dict, or `SavedVDNAs` for a job read back from its directory)
    images_in: int
    processed: int
    failed: int
    shards_run: int  # shards computed by this call (the others were finished by an earlier run)
    shards_total: int
    complete: bool = True  # False: some shards are left for a later run (max_shards); no VDNAs yet
    reused: bool = False  # True: the job was complete and unchanged; read from its directory, nothing run


def finished_result(out_dir: str | Path, manifest: dict) -> JobResult:
    """The result of the complete job whose manifest is ``manifest``, read from ``out_dir`` (nothing run)."""
    s = manifest["summary"]
    out = Path(out_dir)
    return JobResult(out, SavedVDNAs(out, manifest["outputs"]), s["images_in"], s["processed"], s["failed"],
                     0, len(manifest["finished"]), True, True)  # fmt: skip
