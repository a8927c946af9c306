"""Import of CheXNet / torchxrayvision weights into cxrkit artifacts (cxrkit.model.importers)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from conftest import assert_one_line_error
from cxrkit.core.errors import CxrkitError
from cxrkit.data.inputs import IMAGENET_MEAN, IMAGENET_STD, InputPipeline
from cxrkit.model.artifact import load_artifact
from cxrkit.model.importers import (
    XRV_MEAN,
    XRV_STD,
    XRV_TARGETS,
    from_torchxrayvision_model,
    import_chexnet,
    import_torchxrayvision,
)

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
