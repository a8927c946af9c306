"""`cxrkit explain` and `cxrkit evaluate --localization` on synthetic NIH-layout data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import assert_one_line_error, tiny_artifact
from cxrkit.evaluate.localization import evaluate_localization
from cxrkit.synthetic.layouts import generate
from cxrkit.use.explain import Explainer

LABELS = ("Cardiomegaly", "Pleural Effusion", "Nodule", "Mass")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("explain")
    folder = generate("nih", tmp / "data", n=40, size=96, seed=2, workers=1)
    art = tiny_artifact(tmp / "model", LABELS, size=64, thresholds={"Cardiomegaly": 0.4})
    return folder, art


def test_explain_writes_an_overlay(setup, run_cli, tmp_path):
    folder, art = setup
    image = next((folder / "images").glob("*.png"))
    out = tmp_path / "overlay.png"
    code, stdout, err = run_cli("explain", art, image, "--finding", "cardiomegaly", "--out", out)
    assert code == 0, err
    assert "Cardiomegaly: p = " in stdout and "at 0.400" in stdout
    overlay = cv2.imread(str(out))
    original = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
    assert overlay.shape[:2] == original.shape  # drawn on the original image, not the 64 px input
    assert not np.array_equal(overlay[..., 0], overlay[..., 2])  # coloured by the heatmap


def test_explain_mistakes_are_one_line(setup, run_cli, tmp_path):
    folder, art = setup
    image = next((folder / "images").glob("*.png"))
    code, _, err = run_cli("explain", art, image, "--finding", "Cardiomegally")
    assert_one_line_error(code, err, "Cardiomegaly")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, _, err = run_cli("explain", art, bad)
    assert_one_line_error(code, err, "cannot decode")
    code, _, err = run_cli("explain", tmp_path / "nothing", image)
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli("explain", art, image, "--out", art / "overlay.png")
    assert_one_line_error(code, err, "inside the model artifact")


def test_explainer_default_is_the_most_probable_finding(setup):
    folder, art = setup
    ex = Explainer(art)
    image = next((folder / "images").glob("*.png"))
    r = ex.explain_file(image)
    assert r["finding"] == LABELS[int(np.argmax(r["probabilities"]))]
    assert r["heatmap"].shape == (64, 64) and 0 <= r["heatmap"].min() <= r["heatmap"].max() <= 1
    assert r.finding == r["finding"] and r.heatmap_image.shape == r.gray.shape


def test_localization_scores_on_the_synthetic_boxes(setup, run_cli, tmp_path):
    folder, art = setup
    boxes = folder / "BBox_List_2017.csv"
    result = evaluate_localization(art, boxes, out=tmp_path / "loc")
    assert result["images"] > 0 and result["missing"] == 0
    assert result["overall"]["n"] > 0
    assert 0.0 <= result["overall"]["hit_rate"] <= 1.0
    assert 0.0 <= result["overall"]["mean_iou"] <= 1.0
    assert set(result["findings"]) <= set(LABELS)
    saved = json.loads((tmp_path / "loc" / "localization.json").read_text())
    assert saved["overall"] == result["overall"]
    code, out, err = run_cli("evaluate", art, "--localization", boxes, "--out", tmp_path / "c")
    assert code == 0, err
    assert "pointing-game hit rate" in out
    code, _, err = run_cli("evaluate", art, "--localization", boxes, "--images-root", tmp_path)
    assert_one_line_error(code, err, "--images-root")
