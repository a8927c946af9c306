"""Shared fixtures. Tests that read ../shared/data skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrkit import cli

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real label files and images beside the repository; skip when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (a user's clone has none)")
    return SHARED_DATA


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the console script in-process; return (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.argv", ["cxrkit", *map(str, args)])
        code = 0
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """A user's mistake: non-zero exit, one line on stderr, no traceback, naming what matters."""
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), (fragment, err)


CHROMIUM = Path(os.environ.get("CXRKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright. Skipped where Chromium is absent (a user's
    laptop) unless CXRKIT_REQUIRE_CHROMIUM is set, as .ci/run does: there it must run."""
    if not CHROMIUM.is_file():
        if os.environ.get("CXRKIT_REQUIRE_CHROMIUM"):
            pytest.fail(f"Chromium not found at {CHROMIUM} but CXRKIT_REQUIRE_CHROMIUM is set")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


#: Where browser tests keep their screenshots (test artifacts; ignored by git).
ARTIFACTS = REPO / "tests" / "artifacts"
