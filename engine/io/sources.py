"""Sources: where images come from, as a deterministic list of items with stable ids.

Listing never opens an image, so a source of millions of files is listed in one pass over names; a
listed file that is missing or unreadable fails when it is read (a per-item failure), never when the
source is opened. Ids are unique within a source (duplicates get "#2", "#3", ... suffixes) so that
every input row maps to exactly one output row.

Differences from vdna 0.1.1's ``get_files_list`` (none changes a fingerprint of the same images):

- Folder extensions are matched case-insensitively; vdna's glob only finds the exact spellings in its
  list, so it skips e.g. ``.JPG`` and ``.PNG`` files on case-sensitive file systems. Hidden files and
  folders (name starting with ".") are skipped, as vdna's glob does.
- A .txt list keeps its written order (vdna sorts it), skips blank and "#" lines (vdna fails on them)
  and turns a missing or non-image entry into a failed item (vdna stops with an assertion).
- ``num_images`` also applies to lists of arrays (vdna ignores it there).
"""

from __future__ import annotations

import bisect
import copy
import logging
import os
import posixpath
import random
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import DecodeError, EmptySourceError, SourceError

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "Item", "ItemList", "Source", "open_source"]

# vdna's IM_EXTENSIONS, lower-cased (the match is case-insensitive).
IMAGE_EXTENSIONS = ("bmp", "jpeg", "jpg", "npy", "pgm", "png", "ppm", "tif", "tiff", "webp")
_EXTENSION_SET = frozenset(IMAGE_EXTENSIONS)
_LIST_EXTENSIONS = ("txt",)
_PARQUET_EXTENSIONS = ("parquet", "pq")

_AUTO_PATH_COLUMNS = ("path", "file", "filename", "uri")
_AUTO_BYTES_COLUMNS = ("image", "bytes", "image_bytes", "content")


@dataclass(frozen=True)
class Item:
    """One image of a source."""

    id: str  # stable, unique within the source: the key of every output row
    uri: str  # where the image came from, for humans and the output tables
    ref: Any = field(default=None, repr=False)  # the source's private handle: a path or a row/array index


class ItemList(Sequence):
    """A source's items stored column-wise (Arrow strings), made into `Item` objects only when read.

    About 16 bytes per item plus the id and uri text (a folder's uris are its root plus the id, stored
    once), where a list of `Item` objects costs about 0.4 KB per item; slicing shares the buffers, so a
    job's shards are views. ``refs``: None (each item's ref is its uri), "index" (the item's position in
    the list it was first built as), or one value per item (an Arrow array, or a list for other objects).
    """

    __slots__ = ("_ids", "_uris", "_prefix", "_refs", "_base")
    _CHUNK = 8192

    def __init__(self, ids, uris=None, refs=None, *, uri_prefix: str | None = None, base: int = 0) -> None:
        import pyarrow as pa

        def strings(values):
            return values if isinstance(values, pa.Array) else pa.array(values, type=pa.large_string())

        self._ids = strings(ids)
        if (uris is None) == (uri_prefix is None):
            raise ValueError("give exactly one of uris and uri_prefix")
        self._uris = None if uris is None else strings(uris)
        self._prefix = uri_prefix
        if refs is not None and not isinstance(refs, str) and len(refs) != len(self._ids):
            raise ValueError(f"{len(refs)} refs for {len(self._ids)} items")
        if refs is not None and not isinstance(refs, (str, pa.Array, list)):
            refs = list(refs)
        self._refs, self._base = refs, int(base)

    @classmethod
    def from_items(cls, items) -> ItemList:
        """The columns of a list of `Item` (refs stored as an Arrow array when they are all str or all int)."""
        import pyarrow as pa

        if isinstance(items, ItemList):
            return items
        items = list(items)
        ids = [it.id for it in items]
        uris = [it.uri for it in items]
        refs = [it.ref for it in items]
        if all(r == u for r, u in zip(refs, uris)):
            return cls(ids, uris)
        if all(type(r) is int for r in refs) and refs == list(range(len(refs))):
            return cls(ids, uris, "index")
        if all(type(r) is str for r in refs):
            return cls(ids, uris, pa.array(refs, type=pa.large_string()))
        if all(type(r) is int for r in refs):
            return cls(ids, uris, pa.array(refs, type=pa.int64()))
        return cls(ids, uris, refs)

    def __len__(self) -> int:
        return len(self._ids)

    def _slice(self, start: int, stop: int) -> ItemList:
        new = object.__new__(ItemList)
        new._ids = self._ids.slice(start, stop - start)
        new._uris = None if self._uris is None else self._uris.slice(start, stop - start)
        new._prefix = self._prefix
        if self._refs is None or isinstance(self._refs, str):
            new._refs = self._refs
        elif isinstance(self._refs, list):
            new._refs = self._refs[start:stop]
        else:
            new._refs = self._refs.slice(start, stop - start)
        new._base = self._base + start
        return new

    def _chunk(self, start: int, stop: int) -> list[Item]:
        ids = self._ids.slice(start, stop - start).to_pylist()
        if self._uris is None:
            uris = [self._prefix + i for i in ids]
        else:
            uris = self._uris.slice(start, stop - start).to_pylist()
        if self._refs is None:
            refs = uris
        elif isinstance(self._refs, str):
            refs = range(self._base + start, self._base + stop)
        elif isinstance(self._refs, list):
            refs = self._refs[start:stop]
        else:
            refs = self._refs.slice(start, stop - start).to_pylist()
        return [Item(i, u, r) for i, u, r in zip(ids, uris, refs)]

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                return ItemList.from_items([self[k] for k in range(start, stop, step)])
            return self._slice(start, max(start, stop))
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"item index {i} out of range for {n} items")
        return self._chunk(i, i + 1)[0]

    def __iter__(self) -> Iterator[Item]:
        for s in range(0, len(self), self._CHUNK):
            yield from self._chunk(s, min(len(self), s + self._CHUNK))

    def take(self, indices) -> ItemList:
        """The items at ``indices`` (in that order), as a new list (refs "index" keep their positions)."""
        import pyarrow as pa

        idx = pa.array(np.asarray(indices, dtype=np.int64))
        new = object.__new__(ItemList)
        new._ids = self._ids.take(idx)
        new._uris = None if self._uris is None else self._uris.take(idx)
        new._prefix = self._prefix
        if self._refs is None:
            new._refs = None
        elif isinstance(self._refs, str):
            new._refs = pa.array(np.asarray(indices, dtype=np.int64) + self._base)
        elif isinstance(self._refs, list):
            new._refs = [self._refs[int(k)] for k in np.asarray(indices)]
        else:
            new._refs = self._refs.take(idx)
        new._base = 0
        return new

    def ids_sha256(self) -> str:
        """sha256 of the ids joined by newlines (UTF-8), computed chunk by chunk."""
        import hashlib

        h = hashlib.sha256()
        for s in range(0, len(self), self._CHUNK):
            ids = self._ids.slice(s, self._CHUNK).to_pylist()
            h.update((("\n" if s else "") + "\n".join(ids)).encode())
        return h.hexdigest()

    def nbytes(self) -> int:
        """Bytes held by the columns (Arrow buffers; a list of other refs is not counted)."""
        n = self._ids.nbytes + (0 if self._uris is None else self._uris.nbytes)
        if self._refs is not None and not isinstance(self._refs, (str, list)):
            n += self._refs.nbytes
        return n

    def __getstate__(self):
        # compact copies: a pickled slice carries only its own items
        def copy_of(a):
            return None if a is None else a.to_pylist()

        refs = self._refs
        if refs is not None and not isinstance(refs, (str, list)):
            refs = ("arrow", str(refs.type), refs.to_pylist())
        return (copy_of(self._ids), copy_of(self._uris), self._prefix, refs, self._base)

    def __setstate__(self, state) -> None:
        import pyarrow as pa

        ids, uris, self._prefix, refs, self._base = state
        self._ids = pa.array(ids, type=pa.large_string())
        self._uris = None if uris is None else pa.array(uris, type=pa.large_string())
        if isinstance(refs, tuple):
            refs = pa.array(refs[2], type=pa.large_string() if "string" in refs[1] else pa.int64())
        self._refs = refs

    def __eq__(self, other) -> bool:
        if isinstance(other, (ItemList, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"<ItemList of {len(self)} items>"


class _ItemsElsewhere(Sequence):
    """What a worker's copy of a source holds instead of its items: their count (shards bring their own)."""

    __slots__ = ("_n",)

    def __init__(self, n: int) -> None:
        self._n = int(n)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        raise SourceError(
            "this copy of the source holds no items (a job worker receives each shard's items with the shard)"
        )


def _extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _unique_ids(ids: Sequence[str]) -> list[str]:
    used: set[str] = set()
    out = []
    duplicates = 0
    for id_ in ids:
        candidate, n = id_, 1
        while candidate in used:
            n += 1
            candidate = f"{id_}#{n}"
        duplicates += n > 1
        used.add(candidate)
        out.append(candidate)
    if duplicates:
        logger.warning("%d duplicated ids were made unique with a '#N' suffix", duplicates)
    return out


def _read_file(path: str | None, what: str) -> bytes:
    if path is None:
        raise DecodeError(f"{what} has no path")
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DecodeError(f"file not found: {path}") from None
    except PermissionError:
        raise DecodeError(f"permission denied: {path}") from None
    except IsADirectoryError:
        raise DecodeError(f"is a directory, not an image file: {path}") from None
    except OSError as e:
        raise DecodeError(f"cannot read {path}: {' '.join(str(e.strerror or e).split())}") from None


class Source:
    """A deterministic, indexable list of items and a way to read each item's raw payload."""

    kind = "source"

    def __init__(self, items) -> None:
        self._items = ItemList.from_items(items)  # columnar: about 16 bytes per item plus its text
        self._selection: dict | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def read(self, item: Item) -> bytes | np.ndarray:
        """The raw payload of ``item``: encoded file bytes or an image array. Raises DecodeError."""
        raise NotImplementedError

    def _describe(self) -> dict:
        return {}

    def describe(self) -> dict:
        """A json-able description for output metadata."""
        return {"kind": self.kind, **self._describe(), "num_items": len(self), "selection": self._selection}

    def shard(self, num_shards: int, index: int) -> list[Item]:
        """Shard ``index`` of ``num_shards`` contiguous shards; together they hold every item once."""
        if num_shards < 1 or not 0 <= index < num_shards:
            raise ValueError(f"need num_shards >= 1 and 0 <= index < num_shards, got {num_shards}, {index}")
        n = len(self._items)
        return self._items[n * index // num_shards : n * (index + 1) // num_shards]

    def _select(self, num_images: int, shuffle: bool, seed: int) -> None:
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)):
            raise SourceError(f"num_images must be an integer (-1 for all), got {num_images!r}")
        if num_images == 0 or num_images < -1:
            raise SourceError(f"num_images must be -1 (all images) or at least 1, got {num_images}")
        # vdna shuffles only when it keeps a strict subset, with random.seed(seed); random.shuffle(files).
        # A private Random seeded the same way draws the same permutation without touching global state.
        if 0 < num_images < len(self._items):
            order = list(range(len(self._items)))  # a new list: open_source(some_source) keeps the original
            if shuffle:
                random.Random(seed).shuffle(order)
            self._items = self._items.take(order[:num_images])
            self._selection = {"num_images": int(num_images), "shuffle": bool(shuffle), "seed": int(seed)}

    def item_list(self) -> ItemList:
        """The items, column-wise (slices are views; iterate to get `Item` objects)."""
        return self._items

    def ids_sha256(self) -> str:
        """sha256 of the item ids joined by newlines (the job's ``item_ids_sha256``), chunk by chunk."""
        return self._items.ids_sha256()

    def for_workers(self) -> Source:
        """A copy without the item list (its count only), for job workers: each shard brings its items."""
        slim = copy.copy(self)
        slim._items = _ItemsElsewhere(len(self))
        return slim

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r} items={len(self)}>"


class _FileSource(Source):
    def read(self, item: Item) -> bytes:
        return _read_file(item.ref, item.id)


class FolderSource(_FileSource):
    """Every image file under a folder, recursively; id = posix path relative to the folder."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.abspath(root)
        rel_paths = _scan_folder(self.root)
        if not rel_paths:
            raise EmptySourceError(
                f"no images found in {root} (looked for extensions {', '.join(IMAGE_EXTENSIONS)}, any case)"
            )
        # uri = ref = root + "/" + id (os.path.join of the id's parts, on POSIX), stored once as a prefix
        prefix = os.path.join(self.root, "")
        if os.sep == "/":
            super().__init__(ItemList(rel_paths, uri_prefix=prefix))
        else:  # pragma: no cover - Windows separators
            full = [os.path.join(self.root, *rel.split("/")) for rel in rel_paths]
            super().__init__(ItemList(rel_paths, full))

    def _describe(self) -> dict:
        return {"path": self.root}


def _scan_folder(root: str) -> list[str]:
    try:
        os.listdir(root)
    except OSError as e:
        raise SourceError(f"cannot list folder {root}: {e.strerror or e}") from None
    found: list[str] = []
    # (folder, its relative prefix, the real paths of it and its ancestors: a symlink cycle guard that
    # still lets two links reach the same folder, as vdna's glob does)
    stack = [(root, "", frozenset({os.path.realpath(root)}))]
    while stack:
        folder, prefix, ancestors = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            logger.warning("skipping unreadable folder %s: %s", folder, e.strerror or e)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real not in ancestors:
                    stack.append((entry.path, f"{prefix}{entry.name}/", ancestors | {real}))
            elif _extension(entry.name) in _EXTENSION_SET:
                found.append(prefix + entry.name)
    found.sort()
    return found


class ListFileSource(_FileSource):
    """A .txt list of paths, one a line; relative paths resolve against the list's folder."""

    kind = "list"

    def __init__(self, list_path: str | os.PathLike) -> None:
        self.path = os.path.abspath(list_path)
        base = os.path.dirname(self.path)
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise SourceError(f"cannot read list {list_path}: not UTF-8 text ({e.reason})") from None
        except OSError as e:
            raise SourceError(f"cannot read list {list_path}: {e.strerror or e}") from None
        entries = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
        if not entries:
            raise EmptySourceError(
                f"no images found in {list_path} (no paths listed; blank lines and '#' comments are skipped)"
            )
        ids = _unique_ids([posixpath.normpath(e) for e in entries])
        full = [os.path.normpath(os.path.join(base, e)) for e in entries]
        del entries, lines
        super().__init__(ItemList(ids, full))

    def _describe(self) -> dict:
        return {"path": self.path}


class PathsSource(_FileSource):
    """Image paths given in code (or one image file); id = the path as given."""

    kind = "paths"

    def __init__(self, paths: Sequence[str | os.PathLike], *, kind: str = "paths") -> None:
        self.kind = kind
        given = []
        for p in paths:
            if not isinstance(p, (str, os.PathLike)):
                raise SourceError(
                    f"a list source must hold only paths or only arrays; found {type(p).__name__}"
                )
            given.append(os.fspath(p))
        if not given:
            raise EmptySourceError("no images found in the given list (it is empty)")
        # Resolved now, so that a later change of working directory cannot change what is read.
        items = [
            Item(id=i, uri=os.path.abspath(p), ref=os.path.abspath(p))
            for i, p in zip(_unique_ids(given), given)
        ]
        super().__init__(items)

    def _describe(self) -> dict:
        return {"path": self._items[0].uri} if self.kind == "file" else {}


class ArraySource(Source):
    """In-memory image arrays; validated when decoded, so a bad array is a failed item."""

    kind = "arrays"

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self._arrays = arrays
        if len(arrays) == 0:
            raise EmptySourceError("no images found in the given list of arrays (it is empty)")
        items = [Item(id=f"array:{i:08d}", uri=f"array:{i:08d}", ref=i) for i in range(len(arrays))]
        super().__init__(items)

    def read(self, item: Item) -> np.ndarray:
        arr = self._arrays[item.ref]
        if not isinstance(arr, np.ndarray):
            raise DecodeError(f"{item.id} is a {type(arr).__name__}, not a numpy array")
        return arr


def _is_string_type(t) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", bool)(t)
    )


def _is_binary_type(t) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_binary(t) or pa.types.is_large_binary(t) or getattr(pa.types, "is_binary_view", bool)(t)
    )


def _bytes_field_of(t) -> bool:
    """A binary column, or a struct with a binary "bytes" field (the Hugging Face datasets Image layout)."""
    import pyarrow as pa

    if _is_binary_type(t):
        return True
    if pa.types.is_struct(t):
        i = t.get_field_index("bytes")
        return i >= 0 and _is_binary_type(t.field(i).type)
    return False


class ParquetSource(Source):
    """A Parquet table with a path column or an image-bytes column; bytes are read one row group at a time."""

    kind = "parquet"
    _CACHED_ROW_GROUPS = 2

    def __init__(
        self,
        table_path: str | os.PathLike,
        *,
        path_column: str | None = None,
        bytes_column: str | None = None,
        id_column: str | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        self.path = os.path.abspath(table_path)
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...: all mean "not a usable table"
            raise SourceError(f"cannot read Parquet table {table_path}: {' '.join(str(e).split())}") from None
        schema = pf.schema_arrow
        names = list(schema.names)
        by_lower = {n.lower(): n for n in reversed(names)}

        def column(name: str | None, what: str, ok, auto: tuple[str, ...], type_name: str) -> str | None:
            if name is not None:
                if name not in names:
                    raise SourceError(f"no column {name!r} in {table_path}; columns: {', '.join(names)}")
                if not ok(schema.field(name).type):
                    raise SourceError(
                        f"{what} column {name!r} in {table_path} has type {schema.field(name).type}, "
                        f"expected {type_name}"
                    )
                return name
            for cand in auto:
                real = by_lower.get(cand)
                if real is not None and ok(schema.field(real).type):
                    return real
            return None

        path_col = column(path_column, "path", _is_string_type, _AUTO_PATH_COLUMNS, "string")
        bytes_col = column(bytes_column, "bytes", _bytes_field_of, _AUTO_BYTES_COLUMNS, "binary")
        id_col = column(id_column, "id", lambda t: True, (), "")
        if path_column is not None and bytes_column is None:
            bytes_col = None  # asked for paths: an image column that also exists is not the payload
        if path_col is None and bytes_col is None:
            raise SourceError(
                f"no usable column in {table_path}: need a string path column "
                f"({'/'.join(_AUTO_PATH_COLUMNS)}, or path_column=) or a binary image column "
                f"({'/'.join(_AUTO_BYTES_COLUMNS)}, or bytes_column=); columns: {', '.join(names)}"
            )
        self.path_column, self.bytes_column, self.id_column = path_col, bytes_col, id_col

        n_rows = pf.metadata.num_rows
        if n_rows == 0:
            raise EmptySourceError(f"no images found in {table_path} (the table has no rows)")
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()

        listing = [c for c in dict.fromkeys([path_col, id_col]) if c is not None]
        table = pf.read(columns=listing) if listing else None
        paths = table.column(path_col).to_pylist() if path_col else [None] * n_rows
        if id_col:
            raw_ids = table.column(id_col).to_pylist()
        else:
            raw_ids = paths
        ids = _unique_ids([f"row:{i:08d}" if v is None else str(v) for i, v in enumerate(raw_ids)])
        del table
        base = os.path.dirname(self.path)
        items = []
        for i, (id_, p) in enumerate(zip(ids, paths)):
            full = None if p is None else os.path.normpath(os.path.join(base, p))
            if bytes_col is not None:
                items.append(Item(id=id_, uri=full or f"{self.path}#row={i}", ref=i))
            else:
                items.append(Item(id=id_, uri=full or f"{self.path}#row={i}", ref=full))
        super().__init__(items)
        self._pf = pf
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, Any] = OrderedDict()

    def read(self, item: Item) -> bytes:
        if self.bytes_column is None:
            return _read_file(item.ref, item.id)
        row = item.ref
        group = bisect.bisect_right(self._starts, row) - 1
        value = self._row_group(group)[row - self._starts[group]].as_py()
        if value is None:
            raise DecodeError(f"row {row} of {self.path} has no image bytes")
        return value

    def _row_group(self, group: int):
        # One lock: the loader reads rows in order, so concurrent threads nearly always want the same row
        # group, and the lock makes the first one read it while the others wait for the cached copy.
        with self._lock:
            arr = self._cache.get(group)
            if arr is not None:
                self._cache.move_to_end(group)
                return arr
            if self._pf is None:
                import pyarrow.parquet as pq

                self._pf = pq.ParquetFile(self.path)
            arr = self._pf.read_row_group(group, columns=[self.bytes_column]).column(0).combine_chunks()
            if not _is_binary_type(arr.type):
                arr = arr.field("bytes")
            self._cache[group] = arr
            while len(self._cache) > self._CACHED_ROW_GROUPS:
                self._cache.popitem(last=False)
            return arr

    def __getstate__(self) -> dict:
        # File handles and locks do not travel to other processes (Ray actors); they are reopened there.
        state = self.__dict__.copy()
        state.update(_pf=None, _lock=None, _cache=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cache = OrderedDict()

    def _describe(self) -> dict:
        return {
            "path": self.path,
            "path_column": self.path_column,
            "bytes_column": self.bytes_column,
            "id_column": self.id_column,
        }


class TarSource(Source):
    """WebDataset-style tar shards (``.tar``, or a folder / list of them): every image member is an item.

    Ids are ``<tar file name>/<member path>`` (WebDataset's sample key plus the image extension), in
    shard order and member order. The member offsets are read once when the source opens; reading an
    item seeks straight to its bytes, so a shard is never unpacked.
    """

    kind = "webdataset"

    def __init__(self, tars: Sequence[str | os.PathLike]) -> None:
        import tarfile

        self.tars = [os.path.abspath(t) for t in tars]
        if not self.tars:
            raise EmptySourceError("no .tar shards given")
        items: list[Item] = []
        for t in self.tars:
            name = os.path.basename(t)
            try:
                tf = tarfile.open(t, "r:")
            except (OSError, tarfile.TarError) as e:
                raise SourceError(f"cannot read tar shard {t}: {e}") from None
            with tf:
                try:
                    for m in tf:
                        if m.isfile() and _extension(m.name) in _EXTENSION_SET:
                            items.append(
                                Item(
                                    id=f"{name}/{m.name}", uri=f"{t}#{m.name}", ref=(t, m.offset_data, m.size)
                                )
                            )
                except (OSError, EOFError, tarfile.TarError) as e:
                    # A shard cut short (an interrupted copy): the complete members before the damage are
                    # items; the damaged tail is one item that fails with the reason, so it is reported.
                    at = tf.offset
                    why = f"damaged or truncated tar {t} after byte {at}: {e}"
                    items.append(Item(id=f"{name}/#damaged-tail@{at}", uri=f"{t}#@{at}", ref=(t, at, why)))
        if not items:
            raise EmptySourceError(f"no images found in the tar shards {', '.join(self.tars)}")
        ids = _unique_ids([it.id for it in items])
        super().__init__([Item(id=i, uri=it.uri, ref=it.ref) for i, it in zip(ids, items)])

    def read(self, item: Item) -> bytes:
        path, offset, size = item.ref
        if isinstance(size, str):  # the damaged tail of a cut shard
            raise DecodeError(size)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as e:
            raise DecodeError(f"cannot read {item.uri}: {e.strerror or e}") from None
        if len(data) != size:
            raise DecodeError(f"truncated tar member {item.uri}: {len(data)} of {size} bytes")
        return data

    def _describe(self) -> dict:
        return {"shards": self.tars}


class FsspecSource(Source):
    """Images behind an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``, ...).

    The URL names a folder (every image below it, recursively, hidden names skipped; id = the path
    relative to it), one image, or a ``.txt`` list (relative entries resolve against the list's folder
    on the same filesystem; entries with their own ``scheme://`` are used as they are). The filesystem
    package of the scheme must be installed (``s3fs``, ``gcsfs``, ``adlfs``, ...); credentials come from
    the usual places of that package. Each read is one ``cat_file``; a missing or unreadable object is
    that item's failure. Parquet tables and tar shards behind URLs are not read (download them first).
    """

    kind = "fsspec"

    def __init__(self, url: str) -> None:
        self.url = url
        fs, root = _url_to_fs(url)
        self.fs = fs
        try:
            is_dir = fs.isdir(root)
            exists = is_dir or fs.exists(root)
        except Exception as e:  # a backend's own errors (auth, network) name no common class
            raise SourceError(f"cannot open {url}: {type(e).__name__}: {' '.join(str(e).split())}") from None
        if not exists:
            raise SourceError(f"source not found: {url}")
        if is_dir:
            rels = self._scan(root)
            if not rels:
                raise EmptySourceError(
                    f"no images found in {url} (looked for extensions {', '.join(IMAGE_EXTENSIONS)}, any case)"
                )
            base = root.rstrip("/")
            items = [Item(id=r, uri=fs.unstrip_protocol(f"{base}/{r}"), ref=f"{base}/{r}") for r in rels]
        elif _extension(root) in _LIST_EXTENSIONS:
            items = self._list(root)
        elif _extension(root) in _EXTENSION_SET:
            items = [Item(id=posixpath.basename(root), uri=fs.unstrip_protocol(root), ref=root)]
        else:
            raise SourceError(
                f"cannot use {url} as a source: behind a URL, expected a folder, an image file or a .txt list"
            )
        super().__init__(items)

    def _scan(self, root: str) -> list[str]:
        base = root.rstrip("/") + "/"
        found = []
        for path in self.fs.find(root):
            rel = path[len(base) :] if path.startswith(base) else posixpath.relpath(path, root)
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            if _extension(rel) in _EXTENSION_SET:
                found.append(rel)
        return sorted(found)

    def _list(self, root: str) -> list[Item]:
        try:
            text = self.fs.cat_file(root).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"cannot read list {self.url}: not UTF-8 text ({e.reason})") from None
        except Exception as e:
            raise SourceError(f"cannot read list {self.url}: {type(e).__name__}: {e}") from None
        entries = [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]
        if not entries:
            raise EmptySourceError(
                f"no images found in {self.url} (no paths listed; blank lines and '#' comments are skipped)"
            )
        folder = posixpath.dirname(root)
        items = []
        ids = _unique_ids([e if "://" in e else posixpath.normpath(e) for e in entries])
        for id_, entry in zip(ids, entries):
            if "://" in entry:
                items.append(Item(id=id_, uri=entry, ref=entry))
            else:
                path = posixpath.normpath(posixpath.join(folder, entry))
                items.append(Item(id=id_, uri=self.fs.unstrip_protocol(path), ref=path))
        return items

    def read(self, item: Item) -> bytes:
        fs, path = (self.fs, item.ref) if "://" not in item.ref else _url_to_fs(item.ref, per_item=True)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            raise DecodeError(f"file not found: {item.uri}") from None
        except IsADirectoryError:
            raise DecodeError(f"is a directory, not an image file: {item.uri}") from None
        except Exception as e:
            raise DecodeError(
                f"cannot read {item.uri}: {type(e).__name__}: {' '.join(str(e).split())}"
            ) from None

    def _describe(self) -> dict:
        return {"url": self.url}


def _url_to_fs(url: str, per_item: bool = False):
    """fsspec's (filesystem, path) for ``url``; a missing backend package is a clear error."""
    try:
        import fsspec
    except ImportError:
        raise SourceError(f"reading {url} needs fsspec: pip install fsspec") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:  # fsspec names the package the scheme needs
        msg = f"cannot open {url}: {' '.join(str(e).split())}"
        raise (DecodeError(msg) if per_item else SourceError(msg)) from None
    except ValueError as e:  # unknown protocol
        msg = f"cannot open {url}: {e}"
        raise (DecodeError(msg) if per_item else SourceError(msg)) from None


def _is_url(path: str) -> bool:
    head = path.split("://", 1)[0]
    return "://" in path and head.isascii() and head.replace("+", "").replace("-", "").isalnum()


def open_source(
    source,
    *,
    num_images: int = -1,
    shuffle: bool = False,
    seed: int = 0,
    path_column: str | None = None,
    bytes_column: str | None = None,
    id_column: str | None = None,
) -> Source:
    """Open anything that names a set of images as a :class:`Source`.

    ``source`` is a folder, one image file, a ``.txt`` list of paths, a ``.parquet``/``.pq`` table, a
    WebDataset ``.tar`` shard (or a folder or list of them), an fsspec URL (``s3://...``: see
    :class:`FsspecSource`), a list of paths, a list of uint8 image arrays (or one N x H x W x C array), or a Source. With
    ``num_images > 0`` only the first ``num_images`` items are kept, after a shuffle seeded by ``seed``
    when ``shuffle`` is true; as in vdna, the shuffle happens only when a strict subset is kept.
    """
    if isinstance(source, Source):
        src = copy.copy(source)
    elif isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise SourceError(
                f"an array source must be N x H x W x C (got shape {source.shape}); pass one image as [image]"
            )
        src = ArraySource(source)
    elif isinstance(source, (list, tuple)):
        if source and all(isinstance(a, np.ndarray) for a in source):
            src = ArraySource(list(source))
        elif any(isinstance(a, np.ndarray) for a in source):
            raise SourceError("a list source must hold only paths or only arrays, not both")
        elif source and all(str(a).lower().endswith(".tar") for a in source):
            src = TarSource(source)
        else:
            src = PathsSource(source)
    elif isinstance(source, str) and _is_url(source) and not source.startswith("file://"):
        src = FsspecSource(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.startswith("file://"):
            path = path[len("file://") :]  # a local file: the local sources read it (tar, parquet, ...)
        src = _open_path(path, path_column, bytes_column, id_column)
    else:
        raise SourceError(
            f"cannot use a {type(source).__name__} as a source: expected a path, a list of paths or of arrays"
        )
    src._select(num_images, shuffle, seed)
    logger.info("source %s: %d images", src.kind, len(src))
    return src


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a symlink loop or a vanished entry: not a tar shard; the folder scan decides
        return False


def _open_path(path: str, path_column, bytes_column, id_column) -> Source:
    if not os.path.exists(path):
        raise SourceError(f"source not found: {path}")
    if os.path.isdir(path):
        try:
            files = [e for e in os.scandir(path) if _is_file(e)]
        except OSError as e:
            raise SourceError(f"cannot list folder {path}: {e.strerror or e}") from None
        tars = sorted(e.path for e in files if e.name.lower().endswith(".tar"))
        if tars and not any(_extension(e.name) in _EXTENSION_SET for e in files):
            return TarSource(tars)  # a folder of WebDataset shards
        return FolderSource(path)
    ext = _extension(os.path.basename(path))
    if ext in _PARQUET_EXTENSIONS:
        return ParquetSource(path, path_column=path_column, bytes_column=bytes_column, id_column=id_column)
    if ext in _LIST_EXTENSIONS:
        return ListFileSource(path)
    if ext == "tar":
        return TarSource([path])
    if ext in _EXTENSION_SET:
        return PathsSource([path], kind="file")
    raise SourceError(
        f"cannot use {path} as a source: expected a folder, an image file ({', '.join(IMAGE_EXTENSIONS)}), "
        f"a .txt list, a .parquet/.pq table or a WebDataset .tar shard"
    )
