"""The uint8 image cache: equal to direct decoding, keyed by inputs and settings, resumable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_one_line_error
from cxrkit.core.errors import CxrkitError
from cxrkit.data.adapters import build_index
from cxrkit.data.cache import (
    IMAGES_FILE,
    JOURNAL_FILE,
    MANIFEST_FILE,
    ROWS_FILE,
    build_cache,
    open_cache,
)
from cxrkit.data.imaging import load_for_cache
from cxrkit.data.index import Index, write_index
from cxrkit.synthetic.layouts import generate

N = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate("nih", tmp_path_factory.mktemp("nih"), n=N, size=64, workers=1)


@pytest.fixture(scope="module")
def index(dataset: Path) -> Index:
    return build_index("nih", dataset)


def _counter():
    calls: list[int] = []
    return calls, calls.append


def test_cache_equals_direct_decoding(index: Index, tmp_path: Path):
    calls, progress = _counter()
    info = build_cache(index, tmp_path, size=48, fit="pad", workers=2, progress=progress)
    assert info.shape == (N, 48, 48) and info.n_ok == N and not info.failed
    assert info.decoded == N and sum(calls) == N
    assert info.path.parent == tmp_path and info.path.name.startswith("nih-48-pad-")
    assert {p.name for p in info.path.iterdir()} >= {IMAGES_FILE, ROWS_FILE, MANIFEST_FILE}
    assert not (info.path / JOURNAL_FILE).exists()
    cache = open_cache(info.path, index)
    assert cache.images.shape == (N, 48, 48) and cache.images.dtype == np.uint8
    with pytest.raises(ValueError):
        cache.images[0, 0, 0] = 1  # read-only
    for i, rel in enumerate(index.frame["path"]):
        assert np.array_equal(cache.images[i], load_for_cache(index.root / rel, 48, "pad"))
    rows = cache.rows
    assert rows["row"].tolist() == list(range(N))
    assert rows["path"].tolist() == index.frame["path"].tolist()
    assert (
        rows["ok"].all() and (rows["orig_height"] == 64).all() and (rows["orig_width"] == 64).all()
    )
    m = cache.manifest
    assert m["complete"] is True and m["shape"] == [N, 48, 48] and m["n_ok"] == N
    assert m["settings"] == {"size": 48, "fit": "pad"} and m["key"] == info.key
    assert np.load(info.path / IMAGES_FILE, mmap_mode="r").shape == (N, 48, 48)  # plain .npy
    # The folder that holds caches opens too when it holds one.
    assert open_cache(tmp_path, index).path == info.path


def test_unreadable_image_is_listed_and_the_build_finishes(dataset: Path, tmp_path: Path):
    copy = tmp_path / "data"
    copy.mkdir()
    for p in dataset.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(dataset)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(dataset)).write_bytes(p.read_bytes())
    index = build_index("nih", copy)
    bad = [3, 17]
    for i in bad:
        (copy / index.frame["path"][i]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    info = build_cache(index, tmp_path / "c", size=32, workers=1)
    assert info.n_ok == N - 2 and [f["row"] for f in info.failed] == bad
    assert (
        info.failed[0]["path"] == index.frame["path"][3]
        and "cannot decode" in info.failed[0]["error"]
    )
    cache = open_cache(info.path)
    assert cache.rows["ok"].tolist() == [i not in bad for i in range(N)]
    assert not cache.images[bad].any() and cache.images[0].any()
    assert cache.manifest["n_failed"] == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_build_resumes_and_equals_an_uninterrupted_one(
    index: Index, tmp_path: Path, workers
):
    whole = build_cache(index, tmp_path / "a", size=32, workers=1, chunk_size=8)

    done: list[int] = []

    def killer(k: int) -> None:
        done.append(k)
        if len(done) == 3:
            raise KeyboardInterrupt  # as Ctrl-C during the fourth chunk

    with pytest.raises(KeyboardInterrupt):
        build_cache(index, tmp_path / "b", size=32, workers=workers, chunk_size=8, progress=killer)
    folder = tmp_path / "b" / whole.path.name
    assert (folder / JOURNAL_FILE).is_file() and not (folder / MANIFEST_FILE).exists()
    with pytest.raises(CxrkitError, match="unfinished"):
        open_cache(folder)
    with open(folder / JOURNAL_FILE, "a") as f:
        f.write('{"rows": [1, 2')  # a line torn by the kill: ignored, its rows redone

    calls, progress = _counter()
    todo: list[int] = []
    info = build_cache(
        index,
        tmp_path / "b",
        size=32,
        workers=workers,
        chunk_size=8,
        progress=progress,
        on_start=todo.append,
    )
    finished_before = info.resumed
    assert finished_before >= 24  # at least the three journalled chunks
    assert todo == [N - finished_before] and sum(calls) == N - finished_before == info.decoded
    assert (folder / IMAGES_FILE).read_bytes() == (whole.path / IMAGES_FILE).read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(folder / ROWS_FILE), pd.read_parquet(whole.path / ROWS_FILE)
    )
    a = json.loads((folder / MANIFEST_FILE).read_text())
    b = json.loads((whole.path / MANIFEST_FILE).read_text())
    a.pop("created"), b.pop("created")
    assert a == b and not (folder / JOURNAL_FILE).exists()


_KILL_SCRIPT = """
import os, signal, sys
from cxrkit.data.cache import build_cache
from cxrkit.data.index import read_index
done = []
def progress(k):
    done.append(k)
    if len(done) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # no finally block, no atexit: a real kill
build_cache(read_index(sys.argv[1]), sys.argv[2], size=32, workers=int(sys.argv[3]),
            chunk_size=8, progress=progress)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkilled_build_resumes_to_the_same_bytes(index: Index, tmp_path: Path, workers):
    write_index(index, tmp_path / "index.parquet")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILL_SCRIPT,
            str(tmp_path / "index.parquet"),
            str(tmp_path / "b"),
            str(workers),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folders = list((tmp_path / "b").iterdir())
    assert len(folders) == 1 and not (folders[0] / MANIFEST_FILE).exists()
    calls, progress = _counter()
    info = build_cache(
        index, tmp_path / "b", size=32, workers=workers, chunk_size=8, progress=progress
    )
    assert info.resumed >= 24 and sum(calls) == N - info.resumed
    whole = build_cache(index, tmp_path / "a", size=32, workers=1)
    assert (info.path / IMAGES_FILE).read_bytes() == (whole.path / IMAGES_FILE).read_bytes()
    pd.testing.assert_frame_equal(open_cache(info.path).rows, open_cache(whole.path).rows)


def test_rerun_on_a_complete_cache_does_nothing(index: Index, tmp_path: Path):
    first = build_cache(index, tmp_path, size=32, workers=1)
    stamp = (first.path / IMAGES_FILE).stat().st_mtime_ns
    calls, progress = _counter()
    again = build_cache(index, tmp_path, size=32, workers=2, progress=progress)
    assert again.path == first.path and again.decoded == 0 and again.resumed == 0
    assert calls == [] and (first.path / IMAGES_FILE).stat().st_mtime_ns == stamp


def test_other_settings_get_another_cache(index: Index, tmp_path: Path):
    a = build_cache(index, tmp_path, size=32, fit="pad", workers=1)
    b = build_cache(index, tmp_path, size=40, fit="pad", workers=1)
    c = build_cache(index, tmp_path, size=32, fit="crop", workers=1)
    subset = Index(index.frame.iloc[:30].reset_index(drop=True), dict(index.meta), index.boxes)
    d = build_cache(subset, tmp_path, size=32, fit="pad", workers=1)
    assert len({a.key, b.key, c.key, d.key}) == 4
    assert len({a.path, b.path, c.path, d.path}) == 4
    assert d.shape == (30, 32, 32)
    with pytest.raises(CxrkitError, match="holds 4 caches"):
        open_cache(tmp_path)


def test_open_cache_with_another_index_is_refused(index: Index, tmp_path: Path):
    info = build_cache(index, tmp_path, size=32, workers=1)
    reordered = Index(index.frame.iloc[::-1].reset_index(drop=True), dict(index.meta), index.boxes)
    with pytest.raises(CxrkitError, match="built for another index") as e:
        open_cache(info.path, reordered)
    assert "cxrkit cache" in str(e.value) and "\n" not in str(e.value)
    moved = Index(index.frame, {**index.meta, "root": str(tmp_path / "elsewhere")}, index.boxes)
    with pytest.raises(CxrkitError, match="built for another index"):
        open_cache(info.path, moved)
    with pytest.raises(CxrkitError, match="built for another index"):
        open_cache(tmp_path, reordered)
    with pytest.raises(CxrkitError, match="no cache"):
        open_cache(tmp_path / "nothing")


def test_bad_settings_are_refused(index: Index, tmp_path: Path):
    with pytest.raises(CxrkitError, match="did you mean 'stretch'"):
        build_cache(index, tmp_path, fit="strech")
    with pytest.raises(CxrkitError, match="--size"):
        build_cache(index, tmp_path, size=0)
    info = build_cache(index, tmp_path, size=32, workers=1)
    with pytest.raises(CxrkitError, match="a cache folder itself"):
        build_cache(index, info.path, size=32)


def test_cli_cache(index: Index, tmp_path: Path, run_cli):
    write_index(index, tmp_path / "index.parquet")
    code, out, err = run_cli(
        "cache",
        tmp_path / "index.parquet",
        "--size",
        "32",
        "--workers",
        "1",
        "--out",
        tmp_path / "c",
    )
    assert code == 0, err
    assert "nih-32-pad-" in out and f"{N} of {N} images ok, 0 failed" in out
    assert "bytes per image" in out and "img/s" in out
    code, out, err = run_cli(
        "cache", tmp_path / "index.parquet", "--size", "32", "--out", tmp_path / "c"
    )
    assert code == 0 and "nothing to do" in out
    code, _, err = run_cli("cache", tmp_path / "index.parquet", "--fit", "croop")
    assert_one_line_error(code, err, "croop", "did you mean 'crop'")
    code, _, err = run_cli("cache", tmp_path / "missing.parquet")
    assert_one_line_error(code, err, "missing.parquet")


@pytest.mark.realdata
def test_real_nih_images_cache_like_direct_decoding(shared_data: Path, tmp_path: Path):
    folder = shared_data / "nih-993-64px"
    if not folder.is_dir():
        pytest.skip("nih-993-64px not in ../shared/data")
    full = build_index("nih", folder, drop_missing=True)
    index = Index(full.frame.iloc[:120].reset_index(drop=True), dict(full.meta), full.boxes)
    info = build_cache(index, tmp_path, size=48, fit="crop", workers=2)
    cache = open_cache(info.path, index)
    assert info.n_ok == 120
    for i in (0, 59, 119):
        expected = load_for_cache(index.root / index.frame["path"][i], 48, "crop")
        assert np.array_equal(cache.images[i], expected)


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "grow"])
def test_a_damaged_cache_is_refused_on_open_and_rebuilt_by_build(
    index: Index, tmp_path: Path, damage: str
):
    info = build_cache(index, tmp_path, size=32, workers=1)
    good = np.array(open_cache(info.path).images)
    images = info.path / IMAGES_FILE
    raw = images.read_bytes()
    if damage == "truncate":  # the case: a kill or a full disk while copying
        images.write_bytes(raw[: len(raw) // 2])
    elif damage == "overwrite":  # same size, a region zeroed
        images.write_bytes(raw[: len(raw) - 5000] + b"\x00" * 5000)
    else:
        images.write_bytes(raw + b"\x00" * 100)
    with pytest.raises(CxrkitError, match="is damaged") as e:
        open_cache(info.path)
    assert "\n" not in str(e.value) and "cxrkit cache" in str(e.value)
    again = build_cache(index, tmp_path, size=32, workers=1)
    assert again.path == info.path and again.decoded == len(index)
    np.testing.assert_array_equal(np.array(open_cache(info.path).images), good)


def test_the_manifest_records_the_arrays_checksum(index: Index, tmp_path: Path):
    info = build_cache(index, tmp_path, size=32, workers=1)
    manifest = json.loads((info.path / MANIFEST_FILE).read_text())
    digest = manifest["images_digest"]
    assert digest["bytes"] == (info.path / IMAGES_FILE).stat().st_size
    assert len(digest["sample_sha256"]) == 64
