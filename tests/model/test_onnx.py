"""ONNX export of an artifact and its onnxruntime session (cxrkit.model.onnx)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import assert_one_line_error, tiny_artifact
from cxrkit.core.errors import CxrkitError
from cxrkit.model.artifact import load_artifact
from cxrkit.model.onnx import export_onnx, onnx_meta_path
from cxrkit.use.predict import Predictor, expand_inputs

LABELS = ("Atelectasis", "Cardiomegaly", "Pleural Effusion")


def make_artifact(folder: Path, *, arch="test_resnet", input_mode="gray3", size=48, seed=0):
    return tiny_artifact(
        folder,
        LABELS,
        arch=arch,
        input_mode=input_mode,
        size=size,
        seed=seed,
        thresholds={"Cardiomegaly": 0.5},
        head_scale=20,  # probabilities that differ between images
    )


def write_pngs(folder: Path, n: int) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (50, 70), dtype=np.uint8), (9, 9), 3)
        paths.append(folder / f"s{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


@pytest.mark.parametrize(
    ("arch", "input_mode", "size"),
    [
        ("test_resnet", "gray3", 48),
        ("test_efficientnet", "enhanced", 48),
        ("densenet121", "gray1", 32),
    ],
)
def test_onnx_matches_torch_at_batch_1_and_3(tmp_path, arch, input_mode, size) -> None:
    art = make_artifact(tmp_path / "m", arch=arch, input_mode=input_mode, size=size)
    path = export_onnx(art)
    assert path == art / "model.onnx"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "logits"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [
        1 if input_mode == "gray1" else 3,
        size,
        size,
    ]
    model, meta = load_artifact(art)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, dims[1].dim_value, size, size, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(["logits"], {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)

    facts = json.loads(onnx_meta_path(path).read_text())
    assert facts["labels"] == list(LABELS) and facts["input_mode"] == input_mode
    assert facts["weights_sha256"] == meta.weights_sha256
    assert facts["thresholds"] == {
        "Atelectasis": None,
        "Cardiomegaly": 0.5,
        "Pleural Effusion": None,
    }
    o = facts["onnx"]
    assert (o["input"], o["output"], o["opset"], o["exporter"]) == (
        "input",
        "logits",
        17,
        "torchscript",
    )
    assert o["output_shape"] == ["batch", 3] and o["max_abs_diff_vs_torch"] < 1e-4
    from cxrkit.core.fileio import sha256_file

    assert o["sha256"] == sha256_file(path)
    assert not list(art.glob(".*.tmp"))  # no temporary file left behind


def test_onnx_runtime_predictor_equals_torch_on_files(tmp_path) -> None:
    art = make_artifact(tmp_path / "m", input_mode="enhanced")
    export_onnx(art)
    paths = write_pngs(tmp_path / "imgs", 4)
    by_torch = Predictor.from_artifact(art, runtime="torch", batch_size=3).predict_paths(paths)
    by_onnx = Predictor.from_artifact(art, runtime="onnx", batch_size=3).predict_paths(paths)
    np.testing.assert_allclose(by_onnx[list(LABELS)], by_torch[list(LABELS)], atol=1e-5)
    assert by_onnx["Cardiomegaly_positive"].equals(by_torch["Cardiomegaly_positive"])


@pytest.mark.realdata
def test_onnx_runtime_equals_torch_on_real_images(shared_data, tmp_path) -> None:
    art = make_artifact(tmp_path / "m", input_mode="gray1", size=64)
    export_onnx(art)
    paths = expand_inputs([shared_data / "images"])
    by_torch = Predictor.from_artifact(art, runtime="torch").predict_paths(paths)
    by_onnx = Predictor.from_artifact(art, runtime="onnx").predict_paths(paths)
    assert by_torch["error"].isna().all()
    np.testing.assert_allclose(by_onnx[list(LABELS)], by_torch[list(LABELS)], atol=1e-5)


def test_onnx_export_elsewhere_and_stale_or_modified_exports_refused(tmp_path) -> None:
    art = make_artifact(tmp_path / "m")
    elsewhere = export_onnx(art, tmp_path / "deploy")
    assert elsewhere == tmp_path / "deploy" / "model.onnx"
    Predictor.from_artifact(art, runtime="onnx", onnx_path=elsewhere)
    with pytest.raises(CxrkitError, match="no ONNX export.*cxrkit export onnx"):
        Predictor.from_artifact(art, runtime="onnx")

    export_onnx(art)
    make_artifact(art, seed=1)  # the artifact's weights change after the export
    with pytest.raises(CxrkitError, match="stale export"):
        Predictor.from_artifact(art, runtime="onnx")

    export_onnx(art)
    with open(art / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CxrkitError, match="does not match the sha256"):
        Predictor.from_artifact(art, runtime="onnx")
    onnx_meta_path(art / "model.onnx").unlink()
    with pytest.raises(CxrkitError, match=r"no model\.onnx\.json"):
        Predictor.from_artifact(art, runtime="onnx")


def test_onnx_export_bad_settings(tmp_path) -> None:
    art = make_artifact(tmp_path / "m")
    with pytest.raises(CxrkitError, match="'opset' parameter must be"):
        export_onnx(art, opset=7)
    with pytest.raises(CxrkitError, match="did you mean 'dynamo'"):
        export_onnx(art, exporter="dynamic")
    with pytest.raises(CxrkitError, match=r"\.onnx"):
        export_onnx(art, tmp_path / "model.bin")


@pytest.mark.slow  # the dynamo exporter takes ~5 s even on test_resnet
def test_onnx_dynamo_exporter(tmp_path) -> None:
    art = make_artifact(tmp_path / "m", size=32)
    path = export_onnx(art, opset=18, exporter="dynamo")
    facts = json.loads(onnx_meta_path(path).read_text())["onnx"]
    assert facts["exporter"] == "dynamo" and facts["opset"] >= 18
    model, _ = load_artifact(art)
    x = torch.randn(3, 3, 32, 32)
    got = ort.InferenceSession(str(path)).run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_cli_export_onnx_then_predict(tmp_path, run_cli) -> None:
    art = make_artifact(tmp_path / "m")
    paths = write_pngs(tmp_path / "imgs", 2)
    code, _, err = run_cli("predict", art, *paths, "--runtime", "onnx")
    assert_one_line_error(code, err, "cxrkit export onnx")
    code, out, err = run_cli("export", "onnx", art)
    assert code == 0, err
    assert "model.onnx" in out and "opset 17" in out
    code, out, err = run_cli("predict", art, *paths, "--runtime", "onnx", "-o", tmp_path / "p.csv")
    assert code == 0, err
    assert "onnx" in out and (tmp_path / "p.csv").is_file()
    code, _, err = run_cli("export", "onnx", tmp_path / "nothing")
    assert_one_line_error(code, err, "does not exist")


def _rehash(art: Path) -> None:
    """Record the ONNX file's current sha256 in its JSON: a tampering that also fixed the hash."""
    from cxrkit.core.fileio import sha256_file

    meta_path = onnx_meta_path(art / "model.onnx")
    facts = json.loads(meta_path.read_text())
    facts["onnx"]["sha256"] = sha256_file(art / "model.onnx")
    meta_path.write_text(json.dumps(facts))


def test_tampered_onnx_with_a_matching_hash_is_one_line(tmp_path, run_cli) -> None:
    art = make_artifact(tmp_path / "m")
    export_onnx(art)
    (art / "model.onnx").write_bytes(b"\x08\x07 not a graph at all" * 10)
    _rehash(art)
    with pytest.raises(CxrkitError, match="not a model onnxruntime can run") as e:
        Predictor.from_artifact(art, runtime="onnx")
    assert "\n" not in str(e.value)
    img = write_pngs(tmp_path / "in", 1)[0]
    code, _, err = run_cli("predict", art, img, "--runtime", "onnx")
    assert_one_line_error(code, err, "onnxruntime can run")


def test_onnx_of_another_network_is_refused(tmp_path) -> None:
    art = make_artifact(tmp_path / "m")
    other = tiny_artifact(tmp_path / "o", ("A", "B", "C", "D", "E"), input_mode="gray3", size=48)
    export_onnx(art)
    export_onnx(other)
    (art / "model.onnx").write_bytes((other / "model.onnx").read_bytes())
    _rehash(art)
    with pytest.raises(CxrkitError, match="one output of 3 values"):
        Predictor.from_artifact(art, runtime="onnx")
