"""File-level tools of the image cache: the .npy header, a cheap checksum of a large file, and the
lock that keeps two builds of one cache apart."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.core.errors import CxrkitError

LOCK_FILE = ".lock"


def sample_digest(path: Path) -> dict[str, Any]:
    """Size and a cheap checksum of a large file: sha256 over 64 KiB blocks at 33 evenly spaced
    offsets (the first and the last included). Catches truncation, a zeroed or overwritten region
    of any real size, and a file swapped for another, in milliseconds whatever the cache's size."""
    size = path.stat().st_size
    block = 1 << 16
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for k in range(33):
            f.seek(max(0, (size - block) * k // 32))
            digest.update(f.read(block))
    return {"bytes": size, "sample_sha256": digest.hexdigest()}


def npy_layout(path: Path) -> tuple[tuple[int, ...] | None, int]:
    """The shape of a uint8 .npy file (None if it is not one) and where its data starts.

    Read from the header alone, so that a truncated file still tells what it should hold."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError):
        return None, 0
    ok = dtype == np.uint8 and not fortran
    return (tuple(int(s) for s in shape) if ok else None), offset


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Refuse a second build of the same cache at the same time (POSIX advisory lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(folder / LOCK_FILE, "w") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CxrkitError(
                f"another `cxrkit cache` is building '{folder}' now; wait for it to finish."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
