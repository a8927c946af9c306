"""`cxrkit report`: the HTML/Markdown/JSON report shows what evaluation wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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


# ---- what was evaluated (issue 12) ---------------------------------------------------------------


def _capture_figures(monkeypatch) -> list:
    """Keep the matplotlib figures the report draws (instead of rendering them to PNG)."""
    import cxrkit.report.figures as figures

    kept: list = []

    def keep(fig) -> bytes:
        kept.append(fig)
        return b""

    monkeypatch.setattr(figures, "_png", keep)
    return kept


def test_report_tells_which_model_and_training(runs, evaluated, tmp_path):
    from cxrkit.model.artifact import read_artifact_meta

    _, a, _ = runs
    page, summary = build_report(a, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert summary["sections"][0] == "Model and training"
    meta = read_artifact_meta(a / "model")
    for text in (
        "| architecture | test_resnet |",
        "| input mode | gray1 |",
        "| image size | 48×48 px |",
        f"| fit | {meta.fit} |",
        "| loss | weighted_bce |",
        "| optimiser | adam, lr 0.0001, weight decay 0 |",
        "| schedule | triangular (base lr 1e-05, max lr 0.001) |",
        f"| epochs | {meta.extra['epochs']} of 1 planned |",
        "| dataset(s) | chexpert |",
        f"| label policy | findings: {FINDINGS} |",
        "| synthetic data | yes: cxrkit's generator (synthetic.json, synthetic_truth.csv in",
        f"| weights SHA-256 | {meta.weights_sha256} |",
        f"| config hash | {meta.config_hash} (matches config.yaml) |",
    ):
        assert text in md, text
    assert "| training time | " in md and "| training time | — |" not in md
    assert "Model and training" in page.read_text()


def test_report_says_when_the_data_were_not_synthetic(runs, evaluated, tmp_path):
    _, a, _ = runs
    copy = tmp_path / "run"
    shutil.copytree(a, copy)
    results = read_results(copy / "eval-test")
    plain = tmp_path / "plain-images"
    plain.mkdir()
    results.data.image_root = str(plain)
    (copy / "eval-test" / "metrics.json").write_text(json.dumps(results.to_dict()))
    build_report(copy, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"| synthetic data | no ({plain} holds no synthetic.json) |" in md


def _files_evaluation(a: Path, tmp_path: Path, sha: bool) -> Path:
    """Score the run's predictions as files (the labels from its own table)."""
    import pandas as pd

    from cxrkit.evaluate.files import score_files
    from cxrkit.evaluate.results import LABEL_PREFIX

    pred = pd.read_parquet(a / "eval-test" / "predictions.parquet")
    img = pred[pred["level"] == "image"]
    labels = img[["path"]].copy()
    for f in FINDINGS.split(","):
        labels[f] = img[LABEL_PREFIX + f].to_numpy()
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "files"
    score_files(
        a / "eval-test" / "predictions.parquet", tmp_path / "labels.csv", n_boot=20, out=out
    )
    results = read_results(out)
    results.predictions_sha256 = "ab" * 32 if sha else None
    results.labels_sha256 = "cd" * 32 if sha else None
    results.notes = ["3 rows without a label were left out."] if sha else None
    (out / "metrics.json").write_text(json.dumps(results.to_dict()))
    return out


@pytest.mark.parametrize("sha", [True, False], ids=["recorded", "older-file"])
def test_report_of_scored_files_names_them(runs, evaluated, tmp_path, sha):
    _, a, _ = runs
    folder = _files_evaluation(a, tmp_path, sha)
    page, summary = build_report(folder, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert summary["sections"][0] == "Scored files"
    assert "Model and training" not in summary["sections"]
    assert "| predictions | predictions.parquet |" in md
    assert "| labels | labels.csv |" in md
    if sha:
        assert f"| predictions SHA-256 | {'ab' * 32} |" in md
        assert f"| labels SHA-256 | {'cd' * 32} |" in md
        assert "- 3 rows without a label were left out." in md
    else:
        assert "| predictions SHA-256 | not recorded (an older metrics.json) |" in md
        assert "What was left out was not recorded" in md
    assert "3 rows without a label" not in md or sha


def test_gallery_shows_every_finding_or_says_why(runs, evaluated, tmp_path):
    """A finding with no true positive at its threshold gets a line; none is silently skipped."""
    import pandas as pd

    from cxrkit.report.sections import gallery_section

    _, a, _ = runs
    results = read_results(a / "eval-test")
    pred = pd.read_parquet(a / "eval-test" / "predictions.parquet")
    findings = list(results.main.findings)
    thresholds = dict.fromkeys(findings, 0.0) | {"Cardiomegaly": 1.01}  # nothing reaches 1.01
    sec = gallery_section(pred, findings, a / "model", thresholds, Path(results.data.image_root))
    text = "\n".join(sec.md)
    captions = [fig.caption for fig in sec.figures]
    for f in findings:
        shown = any(c.startswith(f"{f}: ") for c in captions)
        said = f"- {f}: " in text
        assert shown or said, f
    assert (
        "- Cardiomegaly: not shown: no true positive at the operating point (threshold 1.010); "
        "no false positive at the operating point (threshold 1.010)." in text
    )
    # at threshold 0 every labelled image is a true or a false positive: the others are drawn
    for f in (
        findings[1:]
        if findings[0] == "Cardiomegaly"
        else [x for x in findings if x != "Cardiomegaly"]
    ):
        assert any(c.startswith(f"{f}: true positives") for c in captions), f


def test_coarse_grad_cam_maps_carry_a_caveat(runs, evaluated, tmp_path):
    from cxrkit.report.sections import CAM_MIN_MAP_SIDE, cam_caveat
    from cxrkit.use.explain import Explainer

    _, a, _ = runs
    assert cam_caveat(None) is None
    assert cam_caveat((CAM_MIN_MAP_SIDE, CAM_MIN_MAP_SIDE)) is None
    assert cam_caveat((14, 14)) is None
    assert "7×8" in cam_caveat((7, 8))
    # the feature map the CAM weighs: test_resnet's layer4 on 48 px input is 48/32 → 2×2
    ex = Explainer(a / "model")
    assert ex.cam.map_size is None
    ex.explain_array(np.full((64, 64), 128, np.uint8), "Edema")
    assert ex.cam.map_size == (2, 2) == ex.cam.cam.map_size
    page, summary = build_report(a, tmp_path / "report")
    text = page.read_text()
    galleries = [f for f in summary["figures"] if f.startswith("gallery")]
    assert galleries
    assert text.count("from a 2×2 feature map (coarser than 8×8)") == len(galleries)


def test_grad_cam_map_size_is_the_target_layers_output():
    import torch
    from torch import nn

    from cxrkit.model.cam import GradCAM

    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),  # 32 → 16
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # 16 → 8
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    cam = GradCAM(net, "2")
    heat = cam(torch.randn(1, 1, 32, 32), 0)
    assert heat.shape == (1, 32, 32) and cam.map_size == (8, 8)
    cam = GradCAM(net, "0")
    cam(torch.randn(1, 1, 40, 40), 1)
    assert cam.map_size == (20, 20)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legends_never_hide_markers(runs, evaluated, monkeypatch):
    """Every legend lies outside every axes (and off the x label), so no marker is under it."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from cxrkit.report import figures

    _, a, _ = runs
    results = read_results(a / "eval-test")
    pred = pd.read_parquet(a / "eval-test" / "predictions.parquet")
    lv = pred[pred["level"] == results.primary]
    main = results.main
    findings = list(main.findings)
    kept = _capture_figures(monkeypatch)
    figures.fig_roc(lv, main, findings, 0.95)
    figures.fig_pr(lv, main, findings)
    figures.fig_calibration(results.calibration)
    figures.fig_training(pd.read_csv(a / "logs" / "metrics.csv"))
    figures.fig_prevalence(results.data.split_report)
    assert len(kept) == 5
    legends = markers = op_points = 0
    try:
        for fig in kept:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            for ax in fig.axes:
                leg = ax.get_legend()
                if leg is None:
                    continue
                legends += 1
                box = leg.get_window_extent(renderer)
                for other in fig.axes:
                    if other.axison:
                        assert not _overlap(box, other.get_window_extent(renderer))
                assert not _overlap(box, ax.xaxis.label.get_window_extent(renderer))
                for line in ax.lines:
                    if line.get_marker() in (None, "None", "", " "):
                        continue
                    for x, y in ax.transData.transform(line.get_xydata()):
                        markers += 1
                        assert not box.contains(x, y), line.get_label()
                    op_points += line.get_label().startswith("t = ")
    finally:
        for fig in kept:
            plt.close(fig)
    assert legends >= 2 * len(findings) and markers and op_points >= 2


def test_parts_are_in_train_val_test_order(runs, evaluated, monkeypatch):
    from cxrkit.report.figures import ordered_parts
    from cxrkit.report.sections import data_sections

    assert ordered_parts(["test", "fold0", "val", "train"]) == ["train", "val", "test", "fold0"]
    _, a, _ = runs
    results = read_results(a / "eval-test")
    rep = results.data.split_report
    assert sorted(rep["parts"]) == ["test", "train", "val"]

    def reverse(d):
        if isinstance(d, dict):
            return {k: reverse(d[k]) for k in reversed(list(d))}
        return d

    shuffled = reverse(rep) | {"parts": ["test", "val", "train"]}
    results.data.split_report = shuffled
    kept = _capture_figures(monkeypatch)
    try:
        _, split = data_sections(results.data)
        counts, per_finding = split.md
        rows = [line.split("|")[1].strip() for line in counts.splitlines() if line.startswith("| ")]
        assert rows == ["part", "train", "val", "test"]
        head = per_finding.splitlines()[2]
        assert head.index("pos train") < head.index("pos val") < head.index("pos test")
        assert head.index("prev train") < head.index("prev val") < head.index("prev test")
        (fig,) = kept
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels == ["train", "val", "test"]
    finally:
        import matplotlib.pyplot as plt

        for fig in kept:
            plt.close(fig)


def test_sections_come_in_the_stated_order(runs, evaluated, tmp_path):
    """A full report, one without data/calibration, and one of scored files: same order."""
    import re

    from cxrkit.report.sections import SECTION_ORDER, section_rank

    _, a, _ = runs
    _, full = build_report(a, tmp_path / "full")
    copy = tmp_path / "run"
    shutil.copytree(a, copy)
    results = read_results(copy / "eval-test")
    results.data = None
    results.calibration = None
    (copy / "eval-test" / "metrics.json").write_text(json.dumps(results.to_dict()))
    _, bare = build_report(copy, tmp_path / "bare")
    _, files = build_report(_files_evaluation(a, tmp_path, True), tmp_path / "files")
    assert [s for s in full["sections"] if not s.startswith("Metrics")] == [
        "Model and training",
        "Data",
        "Split",
        "Curves",
        "Calibration",
        "Gallery",
    ]
    assert [s for s in bare["sections"] if not s.startswith("Metrics")] == [
        "Model and training",
        "Curves",
    ]
    assert files["sections"][0] == "Scored files" and files["sections"][-1] == "Curves"
    for name, summary in (("full", full), ("bare", bare), ("files", files)):
        ranks = [section_rank(s) for s in summary["sections"]]
        assert ranks == sorted(ranks), summary["sections"]
        assert all(SECTION_ORDER[r] in s for r, s in zip(ranks, summary["sections"], strict=True))
        text = (tmp_path / name / "report.html").read_text()
        assert re.findall(r"<h2 id='[^']*'>([^<]*)</h2>", text) == summary["sections"]
        md = (tmp_path / name / "report.md").read_text()
        assert f"Sections, in this order: {' · '.join(summary['sections'])}." in md


def test_an_ensembles_map_size_is_its_coarsest_members(tmp_path):
    import torch

    from conftest import tiny_artifact
    from cxrkit.model.artifact import build_pipeline, load_artifact
    from cxrkit.model.cam import ArtifactCAM
    from cxrkit.model.ensemble import make_ensemble

    labels = ("Cardiomegaly", "Edema")
    a = tiny_artifact(tmp_path / "a", labels, seed=0)
    b = tiny_artifact(tmp_path / "b", labels, seed=1)
    model, meta = load_artifact(make_ensemble([a, b], tmp_path / "ens"))
    cam = ArtifactCAM(model, meta)
    small = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    cam(small, build_pipeline(meta)(torch.from_numpy(small)[None]), 0)
    sizes = [member.map_size for member, *_ in cam.members]
    assert all(sizes) and cam.map_size == min(sizes, key=lambda hw: hw[0] * hw[1])
