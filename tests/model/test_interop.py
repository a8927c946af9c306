"""ONNX export and import of CheXNet / torchxrayvision weights into cxrkit artifacts."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from conftest import assert_one_line_error, tiny_artifact
from cxrkit.core.errors import CxrkitError
from cxrkit.data.inputs import IMAGENET_MEAN, IMAGENET_STD, InputPipeline
from cxrkit.model.artifact import load_artifact
from cxrkit.model.interop import (
    XRV_TARGETS,
    export_onnx,
    from_torchxrayvision_model,
    import_chexnet,
    import_torchxrayvision,
    onnx_meta_path,
)
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


# ---- ONNX export ---------------------------------------------------------------------------------


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


# ---- CheXNet -------------------------------------------------------------------------------------


def _old_densenet_key(key: str) -> str:
    """torchvision's key → the pre-0.4 style CheXNet checkpoints use (norm1 → norm.1)."""
    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BN statistics and head, so that equal outputs mean equal weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, torch.nn.Linear):
                m.bias.copy_(torch.randn(m.out_features, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def chexnet_reference() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomised(torchvision.models.densenet121(weights=None, num_classes=14), 0)


def _chexnet_checkpoint(reference: torch.nn.Module, path: Path) -> Path:
    state = {}
    for k, v in reference.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # PyTorch 0.3 checkpoints have none
        k = _old_densenet_key(k).replace("classifier.", "classifier.0.")
        state[f"module.densenet121.{k}"] = v
    # as arnoweng/CheXNet's model.pth.tar: a dict with the state dict, in the legacy format
    torch.save(
        {"epoch": 7, "arch": "densenet121", "state_dict": state},
        path,
        _use_new_zipfile_serialization=False,
    )
    return path


def test_import_chexnet_gives_torchvisions_logits(tmp_path, chexnet_reference) -> None:
    ckpt = _chexnet_checkpoint(chexnet_reference, tmp_path / "model.pth.tar")
    out = import_chexnet(ckpt, tmp_path / "chexnet")
    model, meta = load_artifact(out)
    assert meta.architecture == "densenet121" and meta.input_mode == "gray3"
    assert meta.labels[:3] == ("Atelectasis", "Cardiomegaly", "Pleural Effusion")
    assert meta.labels[12] == "Pleural Thickening" and len(meta.labels) == 14
    assert meta.image_size == (256, 256) and meta.fit == "crop"
    assert meta.mean == IMAGENET_MEAN and meta.std == IMAGENET_STD
    assert all(t is None for t in meta.thresholds.values())
    assert meta.extra["source"] == "chexnet" and len(meta.extra["source_sha256"]) == 64
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), chexnet_reference(x).numpy(), atol=1e-4)


def test_import_chexnet_plain_torchvision_safetensors(tmp_path, chexnet_reference) -> None:
    path = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in chexnet_reference.state_dict().items()}, str(path))
    model, _ = load_artifact(import_chexnet(path, tmp_path / "a"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), chexnet_reference(x).numpy(), atol=1e-4)


def test_import_chexnet_mistakes(tmp_path, chexnet_reference) -> None:
    pickled = tmp_path / "whole.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(CxrkitError, match=r"pickled Python object \(torch\.nn.*state_dict"):
        import_chexnet(pickled, tmp_path / "a")
    other = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(CxrkitError, match="not a DenseNet state dict"):
        import_chexnet(other, tmp_path / "a")
    wrong_head = tmp_path / "d15.pt"
    torch.save(torchvision.models.densenet121(num_classes=15).state_dict(), wrong_head)
    with pytest.raises(CxrkitError, match="expected a Linear head with 14 outputs"):
        import_chexnet(wrong_head, tmp_path / "a")
    ok = _chexnet_checkpoint(chexnet_reference, tmp_path / "ok.pth.tar")
    import_chexnet(ok, tmp_path / "a")
    with pytest.raises(CxrkitError, match="already holds a model artifact"):
        import_chexnet(ok, tmp_path / "a")
    import_chexnet(ok, tmp_path / "a", overwrite=True)


def test_cli_import_chexnet(tmp_path, run_cli, chexnet_reference) -> None:
    ckpt = _chexnet_checkpoint(chexnet_reference, tmp_path / "model.pth.tar")
    code, out, err = run_cli("import", "chexnet", ckpt, "--out", tmp_path / "c")
    assert code == 0, err
    assert "densenet121, 14 findings" in out and "gray3 256 px" in out
    code, _, err = run_cli("import", "chexnet", ckpt, "--out", tmp_path / "c")
    assert_one_line_error(code, err, "already holds", "--force")
    pickled = tmp_path / "whole.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)
    code, _, err = run_cli("import", "chexnet", pickled, "--out", tmp_path / "d")
    assert_one_line_error(code, err, "never unpickles", "state_dict()")


# ---- torchxrayvision -----------------------------------------------------------------------------


def _xrv_densenet(seed: int = 0) -> torch.nn.Module:
    """A network with xrv's DenseNet layout: torchvision's, 1 input channel, 18 outputs."""
    torch.manual_seed(seed)
    net = torchvision.models.densenet121(weights=None, num_classes=18)
    net.features.conv0 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return _randomised(net, seed)


def _op_threshs() -> torch.Tensor:
    op = torch.linspace(0.01, 0.3, 18)
    op[[2, 5]] = float("nan")
    return op


@pytest.fixture(scope="module")
def xrv_reference() -> torch.nn.Module:
    return _xrv_densenet()


def _xrv_state(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {"op_threshs": _op_threshs(), **reference.state_dict()}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_import_torchxrayvision_all(tmp_path, xrv_reference, suffix) -> None:
    path = tmp_path / f"xrv{suffix}"
    state = _xrv_state(xrv_reference)
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model, meta = load_artifact(import_torchxrayvision(path, tmp_path / "a"))
    assert meta.architecture == "densenet121" and meta.input_mode == "gray1"
    assert meta.image_size == (224, 224) and meta.fit == "crop" and len(meta.labels) == 18
    assert meta.labels[7] == "Pleural Effusion" and meta.labels[9] == "Pleural Thickening"
    op = _op_threshs()
    assert meta.thresholds[meta.labels[2]] is None and meta.thresholds[meta.labels[5]] is None
    assert math.isclose(meta.thresholds["Atelectasis"], float(op[0]), rel_tol=1e-6)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3)) * 500
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), xrv_reference(x).numpy(), atol=1e-4, rtol=1e-5)


def test_xrv_normalisation_is_xrvs_pixel_scale() -> None:
    from cxrkit.model.interop import XRV_MEAN, XRV_STD

    v = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    for backend in ("opencv", "torch"):
        got = InputPipeline("gray1", mean=XRV_MEAN, std=XRV_STD, backend=backend)(v)
        expected = (2 * (v.float() / 255) - 1) * 1024  # xrv.utils.normalize(img, 255)
        torch.testing.assert_close(got[:, 0], expected, atol=2e-3, rtol=0)


def test_import_torchxrayvision_drops_untrained_outputs(tmp_path, xrv_reference) -> None:
    path = tmp_path / "chex.pt"
    torch.save(_xrv_state(xrv_reference), path)
    model, meta = load_artifact(
        import_torchxrayvision(path, tmp_path / "a", name="densenet121-res224-chex")
    )
    kept = [
        i
        for i, t in enumerate(XRV_TARGETS)
        if t
        not in {
            "Infiltration",
            "Emphysema",
            "Fibrosis",
            "Pleural_Thickening",
            "Nodule",
            "Mass",
            "Hernia",
        }
    ]
    assert len(meta.labels) == 11 and meta.extra["dropped_outputs"] == [2, 5, 6, 9, 11, 12, 13]
    assert "Lung Opacity" in meta.labels and "Infiltration" not in meta.labels
    x = torch.randn(1, 1, 48, 48) * 500
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), xrv_reference(x)[:, kept].numpy(), atol=1e-4)
    # the short names xrv accepts work too; thresholds follow the kept outputs
    _, meta2 = load_artifact(import_torchxrayvision(path, tmp_path / "b", name="chex"))
    assert meta2.thresholds == meta.thresholds
    assert math.isclose(meta.thresholds["Lung Opacity"], float(_op_threshs()[16]), rel_tol=1e-6)


def test_import_torchxrayvision_resnet_wrapper_layout(tmp_path) -> None:
    torch.manual_seed(0)
    inner = torchvision.models.resnet50(weights=None, num_classes=18)
    inner.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    inner = _randomised(inner, 1)
    state = {
        "op_threshs": _op_threshs(),
        **{f"model.{k}": v for k, v in inner.state_dict().items()},
    }
    torch.save(state, tmp_path / "r.pt")
    model, meta = load_artifact(
        import_torchxrayvision(tmp_path / "r.pt", tmp_path / "a", name="resnet50-res512-all")
    )
    assert meta.architecture == "resnet50" and meta.image_size == (512, 512)
    x = torch.randn(1, 1, 64, 64) * 500
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), inner(x).numpy(), atol=1e-3, rtol=1e-5)


def test_from_torchxrayvision_model_object(tmp_path, xrv_reference) -> None:
    class DenseNet(torch.nn.Module):  # stands in for xrv.models.DenseNet: same names
        def __init__(self) -> None:
            super().__init__()
            self.features, self.classifier = xrv_reference.features, xrv_reference.classifier
            self.register_buffer("op_threshs", _op_threshs())
            self.weights = "densenet121-res224-all"
            self.targets = list(XRV_TARGETS)

    model, meta = load_artifact(from_torchxrayvision_model(DenseNet(), tmp_path / "a"))
    assert meta.extra["source_name"] == "densenet121-res224-all" and len(meta.labels) == 18
    assert meta.thresholds["Pleural Effusion"] == pytest.approx(float(_op_threshs()[7]))
    x = torch.randn(1, 1, 32, 32) * 500
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), xrv_reference(x).numpy(), atol=1e-4)
    with pytest.raises(CxrkitError, match="not a torchxrayvision DenseNet or ResNet"):
        from_torchxrayvision_model(torch.nn.Linear(2, 2), tmp_path / "b")


def test_import_torchxrayvision_mistakes(tmp_path, xrv_reference) -> None:
    path = tmp_path / "xrv.pt"
    torch.save(_xrv_state(xrv_reference), path)
    with pytest.raises(CxrkitError, match="did you mean 'densenet121-res224-nih'"):
        import_torchxrayvision(path, tmp_path / "a", name="densenet121-res224-nhi")
    with pytest.raises(CxrkitError, match="holds a densenet121 but --name resnet50-res512-all"):
        import_torchxrayvision(path, tmp_path / "a", name="resnet50-res512-all")
    no_op = tmp_path / "no_op.pt"
    torch.save(xrv_reference.state_dict(), no_op)  # weights without operating points
    _, meta = load_artifact(import_torchxrayvision(no_op, tmp_path / "c"))
    assert all(t is None for t in meta.thresholds.values())


def test_cli_import_torchxrayvision(tmp_path, run_cli, xrv_reference) -> None:
    path = tmp_path / "xrv.pt"
    torch.save(_xrv_state(xrv_reference), path)
    code, out, err = run_cli(
        "import",
        "torchxrayvision",
        path,
        "--out",
        tmp_path / "x",
        "--name",
        "densenet121-res224-rsna",
    )
    assert code == 0, err
    assert "2 findings" in out and "2 thresholds" in out and "gray1 224 px (fit crop)" in out

    whole = tmp_path / "whole.pt"  # a whole pickled module, as xrv publishes its weights
    torch.save(torch.nn.Sequential(torch.nn.Linear(1, 1)), whole)
    code, _, err = run_cli("import", "torchxrayvision", whole, "--out", tmp_path / "y")
    assert_one_line_error(code, err, "pickled Python object", "torch.save(m.state_dict()")
    code, _, err = run_cli(
        "import", "torchxrayvision", path, "--out", tmp_path / "z", "--name", "foo"
    )
    assert_one_line_error(code, err, "unknown torchxrayvision weights name 'foo'")
