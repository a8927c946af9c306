"""Worker processes start the way that is safe on each platform."""

from __future__ import annotations

import pytest

from cxrkit.core.errors import CxrkitError
from cxrkit.core.parallel import START_METHOD_ENV, process_pool, start_method


def test_fork_only_on_linux(monkeypatch) -> None:
    monkeypatch.delenv(START_METHOD_ENV, raising=False)
    assert start_method("linux") == "fork"
    assert start_method("darwin") == "spawn"  # fork after threads can deadlock on macOS
    assert start_method("win32") == "spawn"


def test_the_environment_overrides_it(monkeypatch) -> None:
    monkeypatch.setenv(START_METHOD_ENV, "spawn")
    assert start_method("linux") == "spawn"
    monkeypatch.setenv(START_METHOD_ENV, "frok")
    with pytest.raises(CxrkitError, match="did you mean 'fork'"):
        start_method("linux")


def _square(x: int) -> int:
    return x * x


def test_a_spawned_pool_works(monkeypatch) -> None:
    monkeypatch.setenv(START_METHOD_ENV, "spawn")
    with process_pool(2) as pool:
        assert pool.map(_square, range(5)) == [0, 1, 4, 9, 16]
        assert pool._ctx.get_start_method() == "spawn"
