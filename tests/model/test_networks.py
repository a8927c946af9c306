"""Models: tiny random inputs, pretrained=False, no network."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from cxrkit.core.errors import CxrkitError
from cxrkit.model.artifact import (
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    load_artifact,
    save_artifact,
)
from cxrkit.model.networks import create_model, read_state_dict

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion")


def _x(channels: int, size: int = 64, b: int = 2) -> torch.Tensor:
    return torch.randn(b, channels, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mode,channels", [("gray1", 1), ("gray3", 3), ("enhanced", 3)])
@pytest.mark.parametrize(
    "arch",
    [
        "resnet18",
        "densenet121",
        # the other documented architectures: correct too, kept out of the default run for time
        pytest.param("resnet50", marks=pytest.mark.slow),
        pytest.param("efficientnet_b4", marks=pytest.mark.slow),
        pytest.param("convnext_tiny", marks=pytest.mark.slow),
    ],
)
def test_create_model_logits(arch: str, mode: str, channels: int) -> None:
    model = create_model(arch, num_classes=len(FINDINGS), input_mode=mode).eval()
    with torch.no_grad():
        out = model(_x(channels))
    assert out.shape == (2, len(FINDINGS))  # (B, L) logits
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_no_sigmoid_inside() -> None:
    model = create_model("resnet18", num_classes=2, input_mode="gray3").eval()
    with torch.no_grad():
        model.fc.bias.fill_(-5.0)
        out = model(_x(3, 32))
    assert (out < 0).all()


def test_unknown_arch_suggests() -> None:
    with pytest.raises(CxrkitError, match="did you mean 'densenet121'") as e:
        create_model("densenet12l", num_classes=2)
    assert "\n" not in str(e.value)


def test_unknown_input_mode() -> None:
    with pytest.raises(CxrkitError, match="'input_mode' parameter must be one of"):
        create_model("resnet18", num_classes=2, input_mode="rgb")


def _no_network(monkeypatch) -> None:
    """Fail any socket use at once, so that a test can never reach (or wait on) the network."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_pretrained_download_failure_is_one_clear_error(monkeypatch) -> None:
    import timm.models._builder as builder

    _no_network(monkeypatch)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(builder, name, unreachable)
    with pytest.raises(CxrkitError) as e:
        create_model("densenet121", pretrained=True, num_classes=2)
    msg = str(e.value)
    assert msg.startswith("pretrained ImageNet weights for densenet121 could not be downloaded")
    assert "network is unreachable" in msg
    assert "model.weights=PATH" in msg and "model.pretrained=false" in msg and "\n" not in msg


@pytest.mark.parametrize("pretrained,name", [(True, "resnet18"), ("tv_in1k", "resnet18.tv_in1k")])
def test_pretrained_hf_offline_is_one_clear_error(monkeypatch, tmp_path, pretrained, name) -> None:
    import huggingface_hub.constants

    _no_network(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    with pytest.raises(CxrkitError, match=f"weights for {name} could not be downloaded") as e:
        create_model("resnet18", pretrained=pretrained, num_classes=2, input_mode="gray1")
    assert "model.weights=PATH" in str(e.value) and "\n" not in str(e.value)


def test_pretrained_and_weights_conflict(tmp_path) -> None:
    with pytest.raises(CxrkitError, match="not both"):
        create_model("resnet18", pretrained=True, weights=tmp_path / "w.pth", num_classes=2)


def test_gray1_sums_rgb_filters_and_reinitialises_head(tmp_path) -> None:
    src = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = create_model("resnet18", num_classes=3, input_mode="gray1", weights=path)
    rgb = src.conv1.weight
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(model.conv1.weight, rgb.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert model.fc.weight.shape == (3, 512)


def _torchvision_densenet() -> torch.nn.Module:
    torch.manual_seed(0)
    tv = torchvision.models.densenet121(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so the eval outputs test them too
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return tv.eval()


@pytest.mark.parametrize("prefix,old_keys", [("", False), ("module.", True)])
def test_torchvision_densenet_state_dict(tmp_path, prefix: str, old_keys: bool) -> None:
    tv = _torchvision_densenet()
    sd = tv.state_dict()
    if old_keys:  # the 'norm.1' naming of old DenseNet checkpoints
        sd = {
            k.replace("norm1", "norm.1").replace("conv2", "conv.2") if "denselayer" in k else k: v
            for k, v in sd.items()
        }
    path = tmp_path / "densenet121_tv.pth"
    torch.save({prefix + k: v for k, v in sd.items()}, path)

    model = create_model("densenet121", num_classes=1000, input_mode="gray3", weights=path).eval()
    x = _x(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=1e-4, atol=1e-5)

    headless = create_model("densenet121", num_classes=3, weights=path).eval()
    with torch.no_grad():
        pooled = headless.forward_head(headless.forward_features(x), pre_logits=True)  # (B, 1024)
        tv_pooled = torch.flatten(
            torch.nn.functional.adaptive_avg_pool2d(torch.relu(tv.features(x)), 1), 1
        )
    torch.testing.assert_close(pooled, tv_pooled, rtol=1e-4, atol=1e-5)


def test_weights_of_another_arch_refused(tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=2).state_dict(), path)
    with pytest.raises(CxrkitError, match=r"do not fit densenet121: missing \d+ \(") as e:
        create_model("densenet121", num_classes=2, weights=path)
    assert "\n" not in str(e.value)


def test_pickled_objects_refused(tmp_path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module: needs unpickling
    with pytest.raises(CxrkitError, match="plain state dicts"):
        read_state_dict(path)


def test_missing_weights_file(tmp_path) -> None:
    with pytest.raises(CxrkitError, match="does not exist"):
        create_model("resnet18", num_classes=2, weights=tmp_path / "nope.pth")


def _save(tmp_path, mode: str = "gray1"):
    model = create_model("resnet18", num_classes=len(FINDINGS), input_mode=mode).eval()
    folder = save_artifact(
        model,
        tmp_path / "artifact",
        arch="resnet18",
        findings=FINDINGS,
        input_mode=mode,
        image_size=32,
        mean=(0.449,),
        std=(0.226,),
        thresholds={"Cardiomegaly": 0.31},
        config_hash="abc123",
        extra={"epochs": 1},
    )
    return model, folder


def test_artifact_round_trip(tmp_path) -> None:
    model, folder = _save(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [META_FILE, WEIGHTS_FILE]
    loaded, meta = load_artifact(folder)
    assert not loaded.training
    x = _x(1, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert meta.labels == FINDINGS and meta.input_mode == "gray1"
    assert meta.image_size == (32, 32) and meta.mean == (0.449,)
    assert meta.thresholds == {"Atelectasis": None, "Cardiomegaly": 0.31, "Effusion": None}
    assert meta.config_hash == "abc123" and meta.format_version == FORMAT_VERSION
    assert meta.extra == {"epochs": 1}
    raw = json.loads((folder / META_FILE).read_text())
    assert raw["architecture"] == "resnet18" and len(raw["weights_sha256"]) == 64
    assert raw["timm_version"] == meta.timm_version == timm.__version__
    del raw["timm_version"]  # an older model.json: the installed timm's version, as before
    (folder / META_FILE).write_text(json.dumps(raw))
    assert load_artifact(folder)[1].timm_version == timm.__version__


def test_artifact_findings_must_match_outputs(tmp_path) -> None:
    model = create_model("resnet18", num_classes=2, input_mode="gray3")
    with pytest.raises(CxrkitError, match="2 outputs but 3 findings"):
        save_artifact(
            model, tmp_path, arch="resnet18", findings=FINDINGS, input_mode="gray3",
            image_size=32, mean=(0.5,) * 3, std=(0.2,) * 3,
        )  # fmt: skip


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, META_FILE])
def test_incomplete_artifact_refused(tmp_path, missing: str) -> None:
    _, folder = _save(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(CxrkitError, match=f"incomplete artifact .*missing {missing}") as e:
        load_artifact(folder)
    assert "\n" not in str(e.value)


def test_artifact_missing_field_refused(tmp_path) -> None:
    _, folder = _save(tmp_path)
    raw = json.loads((folder / META_FILE).read_text())
    del raw["labels"]
    (folder / META_FILE).write_text(json.dumps(raw))
    with pytest.raises(CxrkitError, match="incomplete artifact .*lacks labels"):
        load_artifact(folder)


def test_newer_format_refused(tmp_path) -> None:
    _, folder = _save(tmp_path)
    raw = json.loads((folder / META_FILE).read_text())
    raw.update(format_version=FORMAT_VERSION + 1, cxrkit_version="9.0.0")
    (folder / META_FILE).write_text(json.dumps(raw))
    with pytest.raises(CxrkitError, match=r"made by cxrkit 9\.0\.0 \(format 2\); .*upgrade") as e:
        load_artifact(folder)
    assert "\n" not in str(e.value)


def test_tampered_weights_refused(tmp_path) -> None:
    _, folder = _save(tmp_path)
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CxrkitError, match="does not match the sha256") as e:
        load_artifact(folder)
    assert "\n" not in str(e.value)


def test_missing_artifact_folder(tmp_path) -> None:
    with pytest.raises(CxrkitError, match="does not exist"):
        load_artifact(tmp_path / "nope")


def test_offline_goes_straight_to_the_local_cache(monkeypatch) -> None:
    """Unreachable hub: timm is called once in huggingface_hub's offline mode (no minute of
    retries), and the mode is put back afterwards."""
    import huggingface_hub.constants as hub

    import cxrkit.model.networks as networks

    seen = []

    def fake_create(*args, **kwargs):
        seen.append(hub.HF_HUB_OFFLINE)
        raise OSError("LocalEntryNotFoundError: not in the cache (test)")

    monkeypatch.setattr(networks, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(networks.timm, "create_model", fake_create)
    before = hub.HF_HUB_OFFLINE
    with pytest.raises(CxrkitError, match="model.weights=PATH"):
        create_model("resnet18", pretrained=True, num_classes=2)
    assert seen == [True] and before == hub.HF_HUB_OFFLINE
    monkeypatch.setattr(networks, "hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(CxrkitError):
        create_model("resnet18", pretrained=True, num_classes=2)
    assert seen == [True, before]
