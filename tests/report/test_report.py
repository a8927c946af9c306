"""`cxrkit report`: the HTML/Markdown/JSON report shows what evaluation wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrkit.core.config import load_config
from cxrkit.data.adapters import build_index
from cxrkit.data.cache import build_cache
from cxrkit.data.index import write_index
from cxrkit.data.labels import LabelPolicy
from cxrkit.data.splits import make_splits, write_splits
from cxrkit.evaluate.evaluate import EvalOptions, evaluate_model
from cxrkit.evaluate.results import read_results
from cxrkit.report.build import build_report
from cxrkit.synthetic.layouts import generate
from cxrkit.train.loop import train

FINDINGS = "Cardiomegaly,Pleural Effusion,Edema"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, None]:
    """(workdir, an evaluated tiny CheXpert-layout run, None)."""
    tmp = tmp_path_factory.mktemp("report")
    folder = generate("chexpert", tmp / "data", n=200, size=48, seed=5, workers=1)
    index = build_index("chexpert", folder)
    write_index(index, tmp / "index.parquet")
    targets = LabelPolicy(findings=FINDINGS).apply(index.frame)
    write_splits(
        make_splits(index.frame, targets, fractions=(0.5, 0.25, 0.25), seed=0),
        tmp / "splits.parquet",
    )
    build_cache(index, tmp / "cache", size=48, workers=1)
    cfg = load_config(
        None,
        [
            f"data.index={tmp / 'index.parquet'}",
            f"data.splits={tmp / 'splits.parquet'}",
            f"data.cache={tmp / 'cache'}",
            f"data.policy={{findings: '{FINDINGS}'}}",
            "data.batch_size=32",
            "data.input_mode=gray1",
            "model.arch=test_resnet",
            "train.max_epochs=1",
            "train.accelerator=cpu",
            "train.devices=1",
            f"train.out={tmp / 'runs'}",
            "train.name=a",
        ],
    )
    a = train(cfg)
    return tmp, a, None


@pytest.fixture(scope="module")
def evaluated(runs):
    _, a, _ = runs
    return evaluate_model(a, EvalOptions(n_boot=50, seed=0))


def test_evaluation_writes_what_the_report_shows(runs, evaluated):
    result, folder = evaluated
    on_disk = read_results(folder)
    assert on_disk.data is not None and on_disk.data.split_report["parts"]
    assert {r["finding"] for r in on_disk.data.label_table} == set(FINDINGS.split(","))
    bands = on_disk.main.roc_bands
    assert bands and set(bands) <= set(FINDINGS.split(","))
    for band in bands.values():
        assert len(band.fpr) == len(band.tpr_lo) == len(band.tpr_hi) == 101


def test_report_has_every_figure(runs, evaluated, tmp_path):
    _, a, _ = runs
    page, summary = build_report(a, tmp_path / "report")
    text = page.read_text()
    for fig in ("training", "roc", "pr", "confusion", "calibration", "prevalence"):
        assert fig in summary["figures"]
        assert f"id='fig-{fig}'" in text
    assert text.count("data:image/png;base64,") == len(summary["figures"])
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network
    assert "not a medical device" in text
    assert (tmp_path / "report" / "report.md").is_file()
    assert json.loads((tmp_path / "report" / "report.json").read_text())["figures"]


def test_report_renders_in_headless_chromium(runs, evaluated, browser, tmp_path):
    """Every figure is decoded by a real browser (naturalWidth > 0) and the page screenshots."""
    from conftest import ARTIFACTS

    _, a, _ = runs
    page_path, summary = build_report(a, tmp_path / "report")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        figures = page.eval_on_selector_all(
            "figure img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])"
        )
        assert len(figures) == len(summary["figures"]) > 0
        assert all(ok and w > 0 and h > 0 for ok, w, h in figures)
        assert page.locator("text=not a medical device").count() == 1
        assert all(u.startswith(("file:", "data:")) for u in requests), requests
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "report.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] > 900 and img.std() > 5  # a non-blank full page


def test_gallery_says_so_when_the_original_images_are_gone(runs, evaluated, tmp_path):
    _, a, _ = runs
    copy = tmp_path / "run"
    shutil.copytree(a, copy)
    results = read_results(copy / "eval-test")
    results.data.image_root = str(tmp_path / "no-such-folder")
    (copy / "eval-test" / "metrics.json").write_text(json.dumps(results.to_dict()))
    page, summary = build_report(copy, tmp_path / "report")
    assert "Gallery" in summary["sections"]
    assert "original images are not available" in page.read_text()
    assert not [f for f in summary["figures"] if f.startswith("gallery")]
