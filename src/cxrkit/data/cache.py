"""The image cache: every image of an index decoded once, resized, stored as one uint8 array.

``build_cache(index, "cache", size=224, fit="pad")`` writes ``cache/<name>/``::

    images.npy      (N, size, size) uint8, a NumPy .npy file: np.load(..., mmap_mode="r") reads it
    rows.parquet    one row per index row, in index order: row, path, ok, orig_height, orig_width
    manifest.json   key, settings, shape, n_ok, failed [{row, path, error}], index fingerprint and
                    root, cxrkit version, complete: true; written last, so it marks a finished cache
    journal.jsonl   while building only: one line per finished chunk (its rows, sizes and errors)

``<name>`` is ``<dataset>-<size>-<fit>-<12 hex>`` where the hex opens the key, the SHA-256 of the
index fingerprint, the absolute image root, the size, the fit, the cxrkit version and
:data:`CACHE_FORMAT`: other images or settings get another folder, never a stale cache.

Workers decode chunks of rows and write them straight into ``images.npy`` at their rows, sync the
file, and hand back the chunk's results; the parent then appends the chunk to the journal and syncs
it. A killed build therefore resumes where it stopped: rows in the journal are never decoded again.
An image that cannot be decoded is stored as zeros, marked ``ok=False`` and listed in the manifest's
``failed``; it never stops the build.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, preview
from cxrkit.core.fileio import atomic_path, write_text_atomic
from cxrkit.core.parallel import process_pool, usable_cores
from cxrkit.data.imaging import ImageReadError, check_fit, read_image, resize_square, to_uint8
from cxrkit.data.index import Index, index_fingerprint
from cxrkit.data.npy import build_lock, npy_layout, sample_digest

log = logging.getLogger(__name__)

#: Version of the on-disk layout and decoding rules; bumping it makes every old cache a miss.
CACHE_FORMAT = 1
IMAGES_FILE = "images.npy"
ROWS_FILE = "rows.parquet"
MANIFEST_FILE = "manifest.json"
JOURNAL_FILE = "journal.jsonl"
#: Rows per chunk: the unit of work of a worker and of the journal.
DEFAULT_CHUNK = 64
MAX_SIZE = 4096


@dataclass
class CacheInfo:
    """What :func:`build_cache` did.

    Attributes:
        path: the cache folder (``OUT/<name>``).
        key: the full cache key (hex SHA-256).
        shape: ``(N, size, size)``.
        n_ok: images decoded and stored.
        failed: ``{row, path, error}`` for each image that could not be decoded.
        decoded: images decoded by this call (0 when the cache was already complete).
        resumed: rows found done by an earlier, interrupted build.
        seconds: wall time of this call.
        bytes_on_disk: the cache folder's files, summed (apparent sizes).
    """

    path: Path
    key: str
    shape: tuple[int, int, int]
    n_ok: int
    failed: list[dict[str, Any]] = field(default_factory=list)
    decoded: int = 0
    resumed: int = 0
    seconds: float = 0.0
    bytes_on_disk: int = 0

    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def bytes_per_image(self) -> float:
        return self.bytes_on_disk / max(1, self.n)


@dataclass
class Cache:
    """An opened, complete cache.

    Attributes:
        path: the cache folder.
        images: ``(N, H, W)`` uint8 read-only memory map, row ``i`` = index row ``i``.
        rows: one row per image: ``row``, ``path``, ``ok``, ``orig_height``, ``orig_width``.
        manifest: the manifest dict (key, settings, shape, failed, provenance).
    """

    path: Path
    images: np.memmap
    rows: pd.DataFrame
    manifest: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.manifest["settings"]["size"])

    @property
    def fit(self) -> str:
        return str(self.manifest["settings"]["fit"])

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ---- key -----------------------------------------------------------------------------------------


def check_settings(size: int, fit: str) -> None:
    """Refuse a size or fit the cache cannot use, with one clear line."""
    check_fit(fit)
    if (
        not isinstance(size, (int, np.integer))
        or isinstance(size, bool)
        or not 8 <= size <= MAX_SIZE
    ):
        raise CxrkitError(
            f"--size must be a whole number of pixels from 8 to {MAX_SIZE}; got {size!r}. "
            "224 or 320 are the usual choices."
        )


def cache_key(index: Index, *, size: int, fit: str) -> str:
    """The hex SHA-256 that names a cache: index rows, image root, settings, version, format."""
    payload = {
        "format": CACHE_FORMAT,
        "index_fingerprint": index_fingerprint(index.frame),
        "root": str(Path(index.meta.get("root", ".")).resolve()),
        "size": int(size),
        "fit": fit,
        "cxrkit_version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_name(index: Index, key: str, *, size: int, fit: str) -> str:
    """The folder name: readable settings, then the key's first 12 hex digits."""
    dataset = (
        "".join(c for c in str(index.meta.get("dataset") or "index") if c.isalnum()) or "index"
    )
    return f"{dataset}-{int(size)}-{fit}-{key[:12]}"


# ---- build ---------------------------------------------------------------------------------------


def build_cache(
    index: Index,
    out_dir: str | os.PathLike[str],
    *,
    size: int = 224,
    fit: str = "pad",
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> CacheInfo:
    """Decode every image of ``index`` once into ``out_dir/<name>/`` (see the module docstring).

    Resumes an interrupted build of the same key; returns at once when it is already complete.

    Args:
        index: the index whose images to cache; paths are relative to ``index.root``.
        out_dir: the folder that holds caches, one sub-folder per key.
        size: side of the square images, pixels.
        fit: ``pad``, ``crop`` or ``stretch`` (see :func:`cxrkit.data.imaging.resize_square`).
        workers: processes (default: the usable cores); 1 decodes in this process.
        chunk_size: rows per work unit (default: up to 64, smaller for small indexes so all
            workers get work).
        progress: called with the number of images finished after each chunk.
        on_start: called once with the number of images left to decode, before decoding.

    Returns:
        a :class:`CacheInfo`.

    Raises:
        CxrkitError: bad settings, an index without a root, or another build of the same cache
            running now.
    """
    check_settings(size, fit)
    t0 = time.perf_counter()
    if "root" not in index.meta:
        raise CxrkitError(
            "the index has no image root folder (meta['root']); make it with `cxrkit index`."
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CxrkitError(f"--out '{out_dir}' is a file: give a folder to hold caches.")
    if (out_dir / MANIFEST_FILE).is_file():
        raise CxrkitError(
            f"'{out_dir}' is a cache folder itself; pass the folder that holds caches "
            f"(its parent, '{out_dir.parent}') as --out."
        )
    key = cache_key(index, size=size, fit=fit)
    folder = out_dir / cache_name(index, key, size=size, fit=fit)
    n = len(index)
    if n == 0:
        raise CxrkitError("the index has no rows: there is nothing to cache.")
    shape = (n, int(size), int(size))

    done = _complete_manifest(folder, key)
    if done is not None:
        return _info(folder, done, decoded=0, resumed=0, seconds=time.perf_counter() - t0)

    folder.mkdir(parents=True, exist_ok=True)
    with build_lock(folder):
        journal = _open_journal(folder, key, shape)
        todo = [i for i in range(n) if i not in journal]
        resumed = n - len(todo)
        if resumed:
            log.info("resuming %s: %d of %d images already done", folder, resumed, n)
        if on_start:
            on_start(len(todo))
        root = str(Path(index.meta["root"]).resolve())
        paths = index.frame["path"].astype(str).tolist()
        if todo:
            _decode_all(
                folder, root, paths, todo, shape, fit, workers, chunk_size, journal, progress
            )
        manifest = _finish(folder, index, key, shape, fit, paths, journal)
    return _info(
        folder, manifest, decoded=len(todo), resumed=resumed, seconds=time.perf_counter() - t0
    )


def _info(
    folder: Path, manifest: dict[str, Any], *, decoded: int, resumed: int, seconds: float
) -> CacheInfo:
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return CacheInfo(
        path=folder,
        key=manifest["key"],
        shape=tuple(manifest["shape"]),  # type: ignore[arg-type]
        n_ok=int(manifest["n_ok"]),
        failed=list(manifest["failed"]),
        decoded=decoded,
        resumed=resumed,
        seconds=seconds,
        bytes_on_disk=total,
    )


def _damage(folder: Path, manifest: dict[str, Any]) -> str | None:
    """What is wrong with a complete cache's array on disk, or None when it is as it was written."""
    images = folder / IMAGES_FILE
    shape, offset = npy_layout(images)
    if shape is None or list(shape) != list(manifest.get("shape", [])):
        return f"{IMAGES_FILE} is not the {manifest.get('shape')} uint8 array its manifest names"
    want = offset + int(np.prod(shape))
    have = images.stat().st_size
    if have != want:
        return f"{IMAGES_FILE} has {have:,} bytes, {want:,} expected (truncated or overwritten)"
    recorded = manifest.get("images_digest")
    if recorded and sample_digest(images) != recorded:
        return f"{IMAGES_FILE} differs from what was written (its checksum does not match)"
    return None


def _complete_manifest(folder: Path, key: str) -> dict[str, Any] | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key or manifest.get("complete") is not True:
        return None
    if not (folder / IMAGES_FILE).is_file() or not (folder / ROWS_FILE).is_file():
        return None
    problem = _damage(folder, manifest)
    if problem is not None:
        # a damaged complete cache is built again from the start (its journal is gone)
        log.warning("cache '%s' is damaged (%s): building it again", folder, problem)
        for name in (MANIFEST_FILE, IMAGES_FILE, ROWS_FILE, JOURNAL_FILE):
            (folder / name).unlink(missing_ok=True)
        return None
    # A journal left by a kill between the manifest and the clean-up.
    (folder / JOURNAL_FILE).unlink(missing_ok=True)
    return manifest


# The journal: {row: (orig_height, orig_width, error or None)} of every finished row.
_Journal = dict[int, tuple[int, int, "str | None"]]


def _open_journal(folder: Path, key: str, shape: tuple[int, int, int]) -> _Journal:
    """Read the journal of an interrupted build, or start a fresh build (array + journal)."""
    images, jpath = folder / IMAGES_FILE, folder / JOURNAL_FILE
    journal: _Journal = {}
    if jpath.is_file() and images.is_file() and npy_layout(images)[0] == shape:
        lines = jpath.read_text().splitlines()
        header = _json_or_none(lines[0]) if lines else None
        if header and header.get("key") == key:
            for line in lines[1:]:
                rec = _json_or_none(line)
                if rec is None:  # a line torn by a kill: that chunk is redone
                    continue
                try:
                    errors = rec.get("errors", {})
                    for r, h, w in zip(rec["rows"], rec["h"], rec["w"], strict=True):
                        journal[int(r)] = (int(h), int(w), errors.get(str(r)))
                except (KeyError, ValueError, TypeError):
                    continue
            return journal
    # Fresh start: the array first (sparse, zero-filled), then the journal that vouches for it.
    for stale in (folder / MANIFEST_FILE, folder / ROWS_FILE):
        stale.unlink(missing_ok=True)
    with atomic_path(images) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        del arr
    with atomic_path(jpath) as tmp:
        tmp.write_text(json.dumps({"key": key, "shape": list(shape)}) + "\n")
    return journal


def _json_or_none(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _chunks(todo: Sequence[int], n_chunks_hint: int, chunk_size: int | None) -> list[list[int]]:
    if chunk_size is None:
        chunk_size = max(1, min(DEFAULT_CHUNK, -(-len(todo) // max(1, n_chunks_hint))))
    return [list(todo[i : i + chunk_size]) for i in range(0, len(todo), chunk_size)]


def _decode_all(
    folder: Path,
    root: str,
    paths: list[str],
    todo: list[int],
    shape: tuple[int, int, int],
    fit: str,
    workers: int | None,
    chunk_size: int | None,
    journal: _Journal,
    progress: Callable[[int], None] | None,
) -> None:
    workers = max(1, int(workers) if workers else usable_cores())
    chunks = _chunks(todo, workers * 4, chunk_size)
    workers = min(workers, len(chunks))
    images = folder / IMAGES_FILE
    job = _Job(str(images), npy_layout(images)[1], shape[1], fit, root)
    tasks = [(job, [(i, paths[i]) for i in chunk]) for chunk in chunks]
    with open(folder / JOURNAL_FILE, "a") as jf:
        if workers == 1:
            results: Iterator[list[_RowResult]] = map(_decode_chunk, tasks)
            _record_all(results, jf, journal, progress)
        else:
            with process_pool(workers) as pool:
                _record_all(pool.imap_unordered(_decode_chunk, tasks), jf, journal, progress)


def _record_all(
    results: Iterator[list[_RowResult]],
    jf: Any,
    journal: _Journal,
    progress: Callable[[int], None] | None,
) -> None:
    for chunk in results:
        rec = {
            "rows": [r[0] for r in chunk],
            "h": [r[1] for r in chunk],
            "w": [r[2] for r in chunk],
            "errors": {str(r[0]): r[3] for r in chunk if r[3] is not None},
        }
        jf.write(json.dumps(rec) + "\n")
        jf.flush()
        os.fsync(jf.fileno())
        for r, h, w, err in chunk:
            journal[r] = (h, w, err)
        if progress:
            progress(len(chunk))


@dataclass(frozen=True)
class _Job:
    images: str  # the .npy file
    offset: int  # where its data starts
    size: int
    fit: str
    root: str


_RowResult = tuple[int, int, int, "str | None"]  # row, orig height, orig width, error


def _decode_chunk(task: tuple[_Job, list[tuple[int, str]]]) -> list[_RowResult]:
    """Decode a chunk's rows into the array at their positions; sync; report per row."""
    job, rows = task
    item = job.size * job.size
    out: list[_RowResult] = []
    with open(job.images, "r+b") as f:
        for row, rel in rows:
            h = w = 0
            err: str | None = None
            try:
                img = read_image(os.path.join(job.root, rel))
                h, w = img.shape
                pixels = resize_square(to_uint8(img), job.size, job.fit)
            except ImageReadError as e:
                err = str(e)
            except Exception as e:  # a decoder bug on one odd file must not end the build
                err = f"cannot decode image '{rel}': {type(e).__name__}: {e}"
            if err is not None:
                pixels = np.zeros((job.size, job.size), np.uint8)
                h = w = 0
            f.seek(job.offset + row * item)
            f.write(pixels.tobytes())
            out.append((row, h, w, err))
        f.flush()
        os.fsync(f.fileno())  # the pixels reach the disk before the journal says they are there
    return out


def _finish(
    folder: Path,
    index: Index,
    key: str,
    shape: tuple[int, int, int],
    fit: str,
    paths: list[str],
    journal: _Journal,
) -> dict[str, Any]:
    n = shape[0]
    dims = np.array([journal[i][:2] for i in range(n)], np.int32).reshape(n, 2)
    errors = [journal[i][2] for i in range(n)]
    ok = np.array([e is None for e in errors], bool)
    rows = pd.DataFrame(
        {
            "row": np.arange(n, dtype=np.int64),
            "path": pd.array(paths, dtype="string"),
            "ok": ok,
            "orig_height": dims[:, 0],
            "orig_width": dims[:, 1],
        }
    )
    with atomic_path(folder / ROWS_FILE) as tmp:
        rows.to_parquet(tmp, index=False)
    failed = [{"row": i, "path": paths[i], "error": e} for i, e in enumerate(errors) if e]
    manifest = {
        "key": key,
        "format": CACHE_FORMAT,
        "settings": {"size": shape[1], "fit": fit},
        "images": IMAGES_FILE,
        "shape": list(shape),
        "dtype": "uint8",
        "n_rows": n,
        "n_ok": int(ok.sum()),
        "n_failed": len(failed),
        "failed": failed,
        "index_fingerprint": index_fingerprint(index.frame),
        "index_root": str(Path(index.meta["root"]).resolve()),
        "dataset": index.meta.get("dataset"),
        "cxrkit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "images_digest": sample_digest(folder / IMAGES_FILE),
        "complete": True,
    }
    write_text_atomic(folder / MANIFEST_FILE, json.dumps(manifest, indent=2))
    (folder / JOURNAL_FILE).unlink(missing_ok=True)
    if failed:
        log.debug(
            "%d of %d images could not be decoded and are stored as zeros (first: %s)",
            len(failed),
            n,
            preview([f["path"] for f in failed], 3),
        )
    return manifest


# ---- open ----------------------------------------------------------------------------------------


def open_cache(path: str | os.PathLike[str], index: Index | None = None) -> Cache:
    """Open a complete cache read-only.

    Args:
        path: a cache folder (with ``manifest.json``), or the folder that holds caches when it
            holds exactly one that fits (``index`` narrows the choice).
        index: when given, the cache must have been built for it (same rows, same image root).

    Raises:
        CxrkitError: no cache there, an unfinished one, or one built for another index.
    """
    path = Path(path)
    folder = _find_cache(path, index)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    if index is not None:
        fp = index_fingerprint(index.frame)
        root = str(Path(index.meta.get("root", ".")).resolve())
        if manifest.get("index_fingerprint") != fp or manifest.get("index_root") != root:
            raise CxrkitError(
                f"cache '{folder}' was built for another index/settings ({manifest.get('n_rows')} rows "
                f"under '{manifest.get('index_root')}'; this index has {len(index)} rows under "
                f"'{root}'); build one with `cxrkit cache INDEX --size {manifest['settings']['size']} "
                f"--fit {manifest['settings']['fit']} --out {folder.parent}`."
            )
    problem = _damage(folder, manifest)
    if problem is not None:
        raise CxrkitError(
            f"cache '{folder}' is damaged: {problem}. Run the same `cxrkit cache` command again "
            "to rebuild it."
        )
    images = np.load(folder / IMAGES_FILE, mmap_mode="r")
    rows = pd.read_parquet(folder / ROWS_FILE)
    return Cache(path=folder, images=images, rows=rows, manifest=manifest)


def _find_cache(path: Path, index: Index | None) -> Path:
    if (path / MANIFEST_FILE).is_file():
        return _check_complete(path)
    if (path / JOURNAL_FILE).is_file():
        raise _unfinished(path)
    if not path.is_dir():
        raise CxrkitError(
            f"no cache at '{path}': build one with `cxrkit cache INDEX --out {path}`."
        )
    found = sorted(p.parent for p in path.glob(f"*/{MANIFEST_FILE}"))
    if index is not None and found:
        key_fp = index_fingerprint(index.frame)
        found = [p for p in found if _manifest_fp(p) == key_fp]
        if not found:
            raise CxrkitError(
                f"cache '{path}' was built for another index/settings: none of its caches "
                f"matches this index's {len(index)} rows; build one with `cxrkit cache INDEX --out {path}`."
            )
    if len(found) == 1:
        return _check_complete(found[0])
    if not found:
        unfinished = sorted(p.parent for p in path.glob(f"*/{JOURNAL_FILE}"))
        if unfinished:
            raise _unfinished(unfinished[0])
        raise CxrkitError(
            f"no cache in '{path}': build one with `cxrkit cache INDEX --out {path}`."
        )
    raise CxrkitError(
        f"'{path}' holds {len(found)} caches ({preview([p.name for p in found], 3)}); "
        "give the folder of the one to open."
    )


def _manifest_fp(folder: Path) -> str | None:
    try:
        return json.loads((folder / MANIFEST_FILE).read_text()).get("index_fingerprint")
    except (OSError, ValueError):
        return None


def _check_complete(folder: Path) -> Path:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        raise _unfinished(folder) from None
    if manifest.get("complete") is not True or not (folder / IMAGES_FILE).is_file():
        raise _unfinished(folder)
    return folder


def _unfinished(folder: Path) -> CxrkitError:
    return CxrkitError(
        f"cache '{folder}' is unfinished (its build was interrupted); run the same "
        "`cxrkit cache` command again to finish it."
    )
