"""Atomic writes and content hashes: an interrupted run never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from cxrkit.core.errors import CxrkitError

#: new file, never an existing one; the mode argument of os.open is then masked by the umask
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _new_temp_file(path: Path) -> Path:
    """Create an empty, new temporary file beside ``path``, with the mode a plain ``open()`` gives.

    ``os.open(..., 0o666)`` lets the kernel apply the current umask (``tempfile.mkstemp`` would give
    0600), without changing the process's umask to read it (not thread-safe).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, _TEMP_FLAGS, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside '{path}'")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary file lives in the same folder so that the final ``os.replace`` is atomic. The final
    file has the mode a plain ``open()`` would give (0666 less the umask), even when the block's
    writer replaced the temporary file with one of its own mode (safetensors writes 0600).
    """
    path = Path(path)
    if path.is_dir():
        raise CxrkitError(f"'{path}' is a folder: give the path of a file to write.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _new_temp_file(path)
    except OSError as e:
        raise CxrkitError(
            f"cannot write '{path}': {e.strerror or e}. Choose a folder you can write to."
        ) from None
    mode = stat.S_IMODE(tmp_path.stat().st_mode)
    try:
        yield tmp_path
        if stat.S_IMODE(tmp_path.stat().st_mode) != mode:
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_tagged_parquet(frame, path: str | os.PathLike[str], key: bytes, meta: dict) -> Path:
    """Write a DataFrame to Parquet atomically with ``meta`` as JSON under schema-metadata ``key``."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[key] = json.dumps(meta).encode()
    table = table.replace_schema_metadata(schema_meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_tagged_parquet(path: str | os.PathLike[str], key: bytes, what: str, make: str):
    """Read a file written by :func:`write_tagged_parquet`: (DataFrame, meta dict).

    Args:
        what: what the file should be, for messages ("index", "splits file").
        make: the command that makes one, for messages.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise CxrkitError(f"{what} '{path}' does not exist. Make one with `{make}`.")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CxrkitError(f"'{path}' is not a Parquet {what} ({e}).") from None
    raw = (table.schema.metadata or {}).get(key)
    if raw is None:
        raise CxrkitError(
            f"'{path}' is a Parquet file but not a cxrkit {what} (no cxrkit metadata). "
            f"Make one with `{make}`."
        )
    return table.to_pandas(), json.loads(raw)
