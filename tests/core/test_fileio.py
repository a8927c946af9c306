"""Atomic writes: files land with the mode a plain open() gives, whoever wrote the temporary file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from cxrkit.core.errors import CxrkitError
from cxrkit.core.fileio import atomic_path, write_text_atomic
from cxrkit.model.artifact import META_FILE, WEIGHTS_FILE, save_artifact


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[None, 0o027], ids=["umask-as-is", "umask-027"])
def umask(request) -> int:
    """The umask in force during the test (the process's own, or 027), restored afterwards."""
    old = os.umask(0)
    os.umask(old if request.param is None else request.param)
    try:
        yield old if request.param is None else request.param
    finally:
        os.umask(old)


def test_saved_artifact_files_share_the_umask_mode(tmp_path: Path, umask: int):
    folder = save_artifact(
        torch.nn.Linear(2, 1),
        tmp_path / "model",
        arch="resnet18",
        findings=["Edema"],
        input_mode="gray1",
        image_size=8,
        mean=(0.5,),
        std=(0.25,),
    )
    weights, meta = _mode(folder / WEIGHTS_FILE), _mode(folder / META_FILE)
    assert weights == meta == 0o666 & ~umask


def test_atomic_path_resets_a_writer_s_own_mode(tmp_path: Path, umask: int):
    target = tmp_path / "f.bin"
    with atomic_path(target) as tmp:
        tmp.unlink()  # a writer that makes its own file, as safetensors does (0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x")
        os.close(fd)
    assert target.read_bytes() == b"x" and _mode(target) == 0o666 & ~umask
    write_text_atomic(tmp_path / "t.txt", "y")
    assert _mode(tmp_path / "t.txt") == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_atomic_path_keeps_nothing_when_the_block_fails(tmp_path: Path):
    target = tmp_path / "f.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CxrkitError, match="is a folder"), atomic_path(tmp_path):
        pass
