"""Ensemble artifacts: weighted mean of members, TTA, and use wherever one artifact is used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, tiny_artifact
from cxrkit.core.errors import CxrkitError
from cxrkit.model.artifact import load_artifact
from cxrkit.model.ensemble import make_ensemble
from cxrkit.use.predict import Predictor

LABELS = ("Cardiomegaly", "Edema", "Pleural Effusion")


def _member(folder: Path, seed: int, mode: str, labels=LABELS, size=48, output="sigmoid"):
    return tiny_artifact(folder, labels, input_mode=mode, size=size, seed=seed, output=output)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ens")
    a = _member(tmp / "a", 0, "gray1")
    b = _member(tmp / "b", 1, "enhanced", labels=("Edema", "Pleural Effusion", "Cardiomegaly"))
    c = _member(tmp / "c", 2, "gray3", output="multiclass")
    return tmp, [a, b, c]


def _images(n=5, size=60):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size + 7), dtype=np.uint8) for _ in range(n)]


def test_ensemble_is_the_weighted_mean_of_its_members(members):
    tmp, folders = members
    out = make_ensemble(folders, tmp / "ens", weights=[1, 2, 1])
    images = _images()
    got = Predictor.from_artifact(out).predict_arrays(images)
    each = []
    for f in folders:
        p = Predictor.from_artifact(f)
        probs = p.predict_arrays(images)
        each.append(probs[:, [list(p.labels).index(x) for x in LABELS]])  # align by name
    expected = (each[0] + 2 * each[1] + each[2]) / 4
    assert np.allclose(got, expected, atol=2e-5)
    model, meta = load_artifact(out)  # an ordinary artifact: sha-checked, loadable
    assert meta.architecture == "cxrkit-ensemble" and list(meta.labels) == list(LABELS)


def test_hflip_tta_averages_the_mirror_image(members):
    tmp, folders = members
    out = make_ensemble(folders[:2], tmp / "tta", tta="hflip")
    images = _images(3, 48)
    got = Predictor.from_artifact(out).predict_arrays(images)
    plain = Predictor.from_artifact(make_ensemble(folders[:2], tmp / "plain"))
    mirrored = plain.predict_arrays([im[:, ::-1].copy() for im in images])
    expected = (plain.predict_arrays(images) + mirrored) / 2
    # the mean over members of (mean over views) equals the mean over views of the member mean
    assert np.allclose(got, expected, atol=2e-5)


def test_ensembles_explain_export_and_serve(members, tmp_path):
    from fastapi.testclient import TestClient

    from cxrkit.model.onnx import export_onnx
    from cxrkit.use.explain import Explainer
    from cxrkit.use.serve import create_app

    tmp, folders = members
    out = make_ensemble(folders, tmp / "e2")  # gray1 + enhanced (HE and CLAHE inside) + gray3
    r = Explainer(out).explain_array(_images(1)[0], "Edema")
    assert r["heatmap"].shape == (48, 48) and 0 <= r["heatmap"].min() <= r["heatmap"].max() <= 1
    export_onnx(out)
    img = _images(2)
    onnx = Predictor.from_artifact(out, runtime="onnx").predict_arrays(img)
    torch_ = Predictor.from_artifact(out).predict_arrays(img)
    assert np.allclose(onnx, torch_, atol=1e-4)
    import cv2

    client = TestClient(create_app(out))
    png = cv2.imencode(".png", img[0])[1].tobytes()
    body = client.post("/predict", files={"file": ("x.png", png, "image/png")}).json()
    assert list(body["probabilities"]) == list(LABELS)


def test_ensemble_mistakes(members, run_cli, tmp_path):
    tmp, folders = members
    other = _member(tmp_path / "o", 3, "gray1", labels=("Nodule", "Mass", "Edema"))
    with pytest.raises(CxrkitError, match="same findings"):
        make_ensemble([folders[0], other], tmp_path / "x")
    big = _member(tmp_path / "big", 3, "gray1", size=64)
    with pytest.raises(CxrkitError, match="same image size"):
        make_ensemble([folders[0], big], tmp_path / "y")
    code, _, err = run_cli("ensemble", folders[0], "--out", tmp_path / "z")
    assert_one_line_error(code, err, "at least two")
    code, _, err = run_cli("ensemble", *folders[:2], "--weights", "1,x", "--out", tmp_path / "z")
    assert_one_line_error(code, err, "--weights")
    code, _, err = run_cli("ensemble", *folders[:2], "--tta", "rotate", "--out", tmp_path / "z")
    assert_one_line_error(code, err, "hflip")
    code, out, err = run_cli("ensemble", *folders[:2], "--out", tmp_path / "ok")
    assert code == 0, err
    assert (tmp_path / "ok" / "model.json").is_file()
