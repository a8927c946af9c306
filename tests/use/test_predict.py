"""Prediction from a model artifact: inputs, preprocessing equal to training's, rows, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_one_line_error, tiny_artifact
from cxrkit.core.errors import CxrkitError
from cxrkit.data.imaging import load_for_cache
from cxrkit.data.inputs import InputPipeline
from cxrkit.model.artifact import load_artifact
from cxrkit.model.networks import probabilities
from cxrkit.use.predict import (
    ERROR_COLUMN,
    Predictor,
    decision_column,
    expand_inputs,
)

LABELS = ("Atelectasis", "Cardiomegaly", "Pleural Effusion")


def make_artifact(
    folder: Path,
    *,
    arch: str = "test_resnet",
    input_mode: str = "gray3",
    size: int = 48,
    fit: str = "pad",
    output: str = "sigmoid",
    thresholds: dict | None = None,
    seed: int = 0,
) -> Path:
    """A tiny random artifact; its head is scaled up so probabilities differ between images."""
    return tiny_artifact(
        folder,
        LABELS,
        arch=arch,
        input_mode=input_mode,
        size=size,
        seed=seed,
        output=output,
        thresholds={"Cardiomegaly": 0.5, "Pleural Effusion": 0.3}
        if thresholds is None
        else thresholds,
        fit=fit,
        head_scale=20,
        clip_limit=3.0,
    )


def write_images(folder: Path, n: int, *, seed: int = 0, shape=(60, 80)) -> list[Path]:
    """Non-square 8-bit PNGs with structure (a blob at a random place) and noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    paths = []
    for i in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(5, 20) ** 2))
        img = np.clip(blob + rng.normal(40, 15, shape), 0, 255).astype(np.uint8)
        p = folder / f"img{i:03d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def reference_probs(artifact: Path, paths: list[Path]) -> np.ndarray:
    """What training's data path gives: the cache's resize, the eval pipeline, the model."""
    model, meta = load_artifact(artifact)
    batch = np.stack([load_for_cache(p, meta.image_size[0], meta.fit) for p in paths])
    pipe = InputPipeline(meta.input_mode, clip_limit=meta.clip_limit, mean=meta.mean, std=meta.std)
    with torch.no_grad():
        logits = model(pipe(torch.from_numpy(batch)))
    return probabilities(logits, meta.output).numpy()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("imgs"), 5)


# ---- expand_inputs -------------------------------------------------------------------------------


def test_expand_inputs_files_folders_globs(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for rel in ("a/x.PNG", "a/deep/y.jpeg", "a/deep/z.dcm", "a/.hidden/h.png", "a/.dot.png"):
        (tmp_path / rel).write_bytes(b"img")
    (tmp_path / "a" / "notes.txt").write_text("no")
    (tmp_path / "a" / "SERIES1").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)  # DICOM, no suffix
    (tmp_path / "a" / "README").write_text("not dicom")
    (tmp_path / "b.jpg").write_bytes(b"img")
    (tmp_path / "odd.bin").write_bytes(b"img")  # named explicitly: taken as it is

    found = expand_inputs([tmp_path / "a", tmp_path / "b.jpg", tmp_path / "odd.bin"])
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a/SERIES1", "a/x.PNG", "a/deep/y.jpeg", "a/deep/z.dcm", "b.jpg", "odd.bin"]

    globbed = expand_inputs([str(tmp_path / "**" / "*.jpeg"), str(tmp_path / "*.jpg")])
    assert [p.name for p in globbed] == ["y.jpeg", "b.jpg"]
    # duplicates are dropped, first occurrence kept
    assert expand_inputs([tmp_path / "b.jpg", str(tmp_path / "*.jpg")]) == [tmp_path / "b.jpg"]


def test_expand_inputs_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrkitError, match="does not exist"):
        expand_inputs([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(CxrkitError, match="no images found"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(CxrkitError, match="no images found"):
        expand_inputs([str(tmp_path / "*.png")])


# ---- predictions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_mode", "fit"), [("gray3", "pad"), ("enhanced", "crop"), ("gray1", "stretch")]
)
def test_predict_paths_equals_training_preprocessing(tmp_path, images, input_mode, fit) -> None:
    art = make_artifact(tmp_path / "m", input_mode=input_mode, fit=fit, size=40)
    frame = Predictor.from_artifact(art, batch_size=2).predict_paths(images)
    ref = reference_probs(art, images)
    np.testing.assert_allclose(frame[list(LABELS)].to_numpy(), ref, atol=1e-6)
    assert ref.std(axis=0).min() > 1e-3  # the images are told apart: the check is not vacuous


def test_rows_and_columns(artifact, images) -> None:
    progress = []
    frame = Predictor.from_artifact(artifact, batch_size=2).predict_paths(
        images, progress=progress.append
    )
    assert sum(progress) == len(images) and len(progress) == 3
    assert list(frame.columns) == [
        "path",
        "Atelectasis",
        "Cardiomegaly",
        "Cardiomegaly_positive",
        "Pleural Effusion",
        "Pleural Effusion_positive",
        "error",
    ]
    assert decision_column("Cardiomegaly") == "Cardiomegaly_positive"
    assert frame["path"].tolist() == [str(p) for p in images]
    assert frame[ERROR_COLUMN].isna().all()
    np.testing.assert_array_equal(
        frame["Pleural Effusion_positive"].to_numpy(bool), frame["Pleural Effusion"] >= 0.3
    )
    assert str(frame["Cardiomegaly_positive"].dtype) == "boolean"


def test_batch_size_does_not_change_results(artifact, images) -> None:
    one = Predictor.from_artifact(artifact, batch_size=1).predict_paths(images)
    many = Predictor.from_artifact(artifact, batch_size=16).predict_paths(images)
    np.testing.assert_allclose(one[list(LABELS)], many[list(LABELS)], atol=1e-6)


def test_predict_arrays_matches_files(artifact, images) -> None:
    predictor = Predictor.from_artifact(artifact)
    arrays = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in images]
    got = predictor.predict_arrays(arrays)
    assert got.shape == (len(images), len(LABELS)) and got.dtype == np.float32
    np.testing.assert_allclose(got, predictor.predict_paths(images)[list(LABELS)], atol=1e-6)
    # uint16 and float arrays are mapped to uint8 as the cache maps them
    assert np.isfinite(predictor.predict_arrays([arrays[0].astype(np.uint16) * 257])).all()
    assert predictor.predict_arrays([]).shape == (0, len(LABELS))
    with pytest.raises(CxrkitError, match="2-D grayscale"):
        predictor.predict_arrays([np.zeros((4, 4, 3), np.uint8)])


def test_multiclass_artifact_gives_one_probability_per_finding(tmp_path, images) -> None:
    art = make_artifact(tmp_path / "mc", output="multiclass", thresholds={})
    frame = Predictor.from_artifact(art).predict_paths(images[:2])
    np.testing.assert_allclose(frame[list(LABELS)], reference_probs(art, images[:2]), atol=1e-6)
    assert not any(c.endswith("_positive") for c in frame.columns)


def test_undecodable_image_is_recorded_and_others_go_on(tmp_path, artifact, images) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    paths = [images[0], bad, images[1]]
    frame = Predictor.from_artifact(artifact, batch_size=2).predict_paths(paths)
    assert frame[ERROR_COLUMN].isna().tolist() == [True, False, True]
    assert "broken.png" in frame.loc[1, ERROR_COLUMN]
    assert frame.loc[1, list(LABELS)].isna().all()
    assert frame["Cardiomegaly_positive"].isna().tolist() == [False, True, False]
    np.testing.assert_allclose(
        frame.loc[[0, 2], list(LABELS)],
        reference_probs(artifact, [images[0], images[1]]),
        atol=1e-6,
    )


def test_every_image_failing_is_an_error(tmp_path, artifact) -> None:
    bad = [tmp_path / "a.png", tmp_path / "b.jpg"]
    for p in bad:
        p.write_bytes(b"junk")
    predictor = Predictor.from_artifact(artifact)
    with pytest.raises(CxrkitError, match="none of the 2 images could be decoded"):
        predictor.predict_paths(bad)
    with pytest.raises(CxrkitError, match="cannot decode image .*a.png"):
        predictor.predict_paths(bad[:1])


def test_bad_settings(artifact) -> None:
    with pytest.raises(CxrkitError, match="did you mean 'onnx'"):
        Predictor.from_artifact(artifact, runtime="onx")
    with pytest.raises(CxrkitError, match="batch size"):
        Predictor.from_artifact(artifact, batch_size=0)
    with pytest.raises(CxrkitError, match="unknown device"):
        Predictor.from_artifact(artifact, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(CxrkitError, match="no CUDA device"):
            Predictor.from_artifact(artifact, device="cuda")


@pytest.mark.realdata
def test_real_images_png_jpeg_dicom(shared_data, tmp_path) -> None:
    folder = shared_data / "images"
    paths = expand_inputs([folder])
    kinds = {p.suffix.lower() for p in paths}
    assert {".png", ".jpg", ".dcm"} <= kinds
    art = make_artifact(tmp_path / "m", input_mode="enhanced", size=64)
    frame = Predictor.from_artifact(art, batch_size=4).predict_paths(paths)
    assert frame[ERROR_COLUMN].isna().all(), frame[ERROR_COLUMN].dropna().tolist()
    np.testing.assert_allclose(frame[list(LABELS)], reference_probs(art, paths), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_cuda_matches_cpu(artifact, images) -> None:
    cpu = Predictor.from_artifact(artifact).predict_paths(images)
    gpu = Predictor.from_artifact(artifact, device="cuda").predict_paths(images)
    np.testing.assert_allclose(cpu[list(LABELS)], gpu[list(LABELS)], atol=1e-4)


# ---- CLI -----------------------------------------------------------------------------------------


def test_cli_predict_table_and_outputs(tmp_path, run_cli, artifact, images) -> None:
    code, out, err = run_cli("predict", artifact, images[0].parent, "--out", tmp_path / "p.csv")
    assert code == 0, err
    assert "Cardiomegaly" in out and images[0].name in out and "wrote" in out
    csv = pd.read_csv(tmp_path / "p.csv")
    assert len(csv) == len(images) and "Cardiomegaly_positive" in csv.columns

    code, _, err = run_cli("predict", artifact, *images[:2], "--out", tmp_path / "p.json")
    assert code == 0, err
    payload = json.loads((tmp_path / "p.json").read_text())
    assert payload["model"]["labels"] == list(LABELS)
    assert payload["model"]["thresholds"]["Cardiomegaly"] == 0.5
    row = payload["predictions"][0]
    assert row["path"] == str(images[0]) and row["error"] is None
    assert isinstance(row["Cardiomegaly_positive"], bool)

    code, _, err = run_cli("predict", artifact, images[0], "-o", tmp_path / "p.parquet")
    assert code == 0, err
    assert pd.read_parquet(tmp_path / "p.parquet")["path"].tolist() == [str(images[0])]


def test_cli_predict_many_images_summary_and_failures(tmp_path, run_cli, artifact) -> None:
    paths = write_images(tmp_path / "many", 21, shape=(32, 32))
    (tmp_path / "many" / "zz_broken.jpg").write_bytes(b"junk")
    code, out, err = run_cli("predict", artifact, tmp_path / "many", "--batch-size", "8")
    assert code == 0, err
    assert f"{len(paths)} images scored" in out and "mean prob." in out
    assert "1 of 22 images could not be decoded" in err and "zz_broken.jpg" in err


def test_cli_predict_user_mistakes(tmp_path, run_cli, artifact, images) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    code, _, err = run_cli("predict", artifact, bad)
    assert_one_line_error(code, err, "cannot decode image", "bad.png")

    (tmp_path / "none").mkdir()
    code, _, err = run_cli("predict", artifact, tmp_path / "none")
    assert_one_line_error(code, err, "no images found")

    code, _, err = run_cli("predict", artifact, images[0], "--runtime", "onnx")
    assert_one_line_error(code, err, "no ONNX export", "cxrkit export onnx")

    code, _, err = run_cli("predict", artifact, images[0], "--out", tmp_path / "p.xlsx")
    assert_one_line_error(code, err, ".csv, .json or .parquet")

    code, _, err = run_cli("predict", artifact, images[0], "--out", artifact / "model.json")
    assert_one_line_error(code, err, "inside the model artifact")

    incomplete = make_artifact(tmp_path / "inc")
    (incomplete / "model.json").unlink()
    code, _, err = run_cli("predict", incomplete, images[0])
    assert_one_line_error(code, err, "incomplete artifact", "model.json")

    newer = make_artifact(tmp_path / "new")
    meta = json.loads((newer / "model.json").read_text())
    meta["format_version"] = 99
    (newer / "model.json").write_text(json.dumps(meta))
    code, _, err = run_cli("predict", newer, images[0])
    assert_one_line_error(code, err, "format 99", "upgrade cxrkit")


def test_predict_refuses_to_write_inside_the_artifact(tmp_path, run_cli):
    art = make_artifact(tmp_path / "model")
    img = tmp_path / "x.png"
    import cv2

    cv2.imwrite(str(img), np.full((40, 40), 120, np.uint8))
    code, _, err = run_cli("predict", art, img, "--out", art / "model.onnx.json")
    assert_one_line_error(code, err, "inside the model artifact")
    assert not (art / "model.onnx.json").exists()
