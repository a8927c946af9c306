"""Networks: one factory and a registry of builders.

:func:`create_model` builds any timm classifier for an input mode (``gray1`` → 1 input channel,
``gray3``/``enhanced`` → 3) and fills it from timm's pretrained weights or a local state dict (timm or
torchvision layout). The network returns logits (B, L); the sigmoid is never inside ``forward``.

:func:`build_network` builds the network an artifact's metadata describes: a timm name goes to
:func:`create_model`; any other architecture (the ensemble, ``cxrkit-ensemble``) to the builder that
registered itself for it with :func:`register_builder`. The model artifact (files, metadata, the one
resolver) is :mod:`cxrkit.model.artifact`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import pickle
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import adapt_input_conv

from cxrkit.core.errors import CxrkitError, closest, preview
from cxrkit.data.inputs import INPUT_MODES

logger = logging.getLogger(__name__)

#: Architectures the project trains and documents; any other timm name works too.
RECOMMENDED_ARCHS = ("densenet121", "efficientnet_b4", "resnet50", "convnext_tiny")

#: What the network's outputs mean: ``sigmoid`` = one logit per finding; ``multiclass`` = three
#: logits per finding (negative, positive, uncertain; finding-major), the ``multiclass`` policy's head.
OUTPUTS = ("sigmoid", "multiclass")

# Old DenseNet checkpoints (torchvision's own URLs among them) name layers 'norm.1', 'conv.2', ...
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def input_channels(input_mode: str) -> int:
    """Number of network input channels for an input mode (``gray1`` → 1, else 3)."""
    if input_mode not in INPUT_MODES:
        raise CxrkitError(
            f"The 'input_mode' parameter must be one of {{{', '.join(INPUT_MODES)}}}. "
            f"Got '{input_mode}' instead."
        )
    return 1 if input_mode == "gray1" else 3


def _check_arch(arch: str) -> None:
    base = arch.split(".", 1)[0]  # timm accepts 'name.pretrained_tag'
    names = timm.list_models()  # ~1,400 names, a few ms
    if base in names:
        return
    close = closest(base, names)
    hint = f" did you mean '{close}'?" if close else ""
    raise CxrkitError(
        f"unknown architecture '{arch}':{hint} Recommended: {', '.join(RECOMMENDED_ARCHS)}; "
        f"any of timm's {len(names)} models works (see timm.list_models())."
    )


def create_model(
    arch: str,
    *,
    pretrained: bool | str = False,
    num_classes: int,
    input_mode: str = "enhanced",
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
) -> torch.nn.Module:
    """Build a timm classifier for chest X-rays.

    Args:
        arch: a timm architecture name (``densenet121``, ``efficientnet_b4``, ``resnet50``,
            ``convnext_tiny``, ...), optionally with a pretrained tag (``densenet121.tv_in1k``).
        pretrained: ``True`` for timm's default ImageNet weights (downloaded or from the cache), a
            string for a specific timm pretrained tag (``"tv_in1k"``), ``False`` for a random start.
        num_classes: number of outputs L (findings).
        input_mode: ``gray1`` (1 input channel), ``gray3`` or ``enhanced`` (3 channels). With
            pretrained or local weights a 1-channel model gets the first convolution's RGB filters
            summed over the input channels.
        weights: a local state dict (``.pth``/``.pt`` or ``.safetensors``) in timm or torchvision
            layout; the classifier is reinitialised when its shape differs from ``num_classes``.
        drop_rate: dropout before the classifier.

    Returns:
        The model in train mode: (B, C, H, W) float → (B, L) logits (no sigmoid).

    Raises:
        CxrkitError: unknown architecture or input mode, pretrained weights that cannot be
            downloaded, or a weights file that does not fit the architecture.
    """
    in_chans = input_channels(input_mode)
    _check_arch(arch)
    if num_classes < 1:
        raise CxrkitError(f"num_classes must be at least 1. Got {num_classes}.")
    if pretrained and weights is not None:
        raise CxrkitError(
            "both model.pretrained and model.weights are set: set one of them, not both."
        )
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    if drop_rate:
        kwargs["drop_rate"] = drop_rate
    if pretrained:
        name = f"{arch.split('.', 1)[0]}.{pretrained}" if isinstance(pretrained, str) else arch
        return _create_pretrained(name, kwargs)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


#: Where timm's pretrained weights come from (probed before a download is tried).
HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the weights' hub be reached? One TCP connection, ``timeout`` seconds at most."""
    import socket

    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode for the block: cached weights only, no retries."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _create_pretrained(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    fix = (
        "set model.weights=PATH to a local timm or torchvision state dict, "
        "or model.pretrained=false to train from scratch"
    )
    try:
        # Offline, the hub's client would retry for about a minute before failing: probe first,
        # and then look in the local cache only (weights downloaded before still load).
        # timm adapts the first convolution (in_chans) and drops the ImageNet classifier itself.
        with _hub_offline(not hub_reachable()):
            return timm.create_model(name, pretrained=True, **kwargs)
    except RuntimeError as e:
        if "No pretrained weights" in str(e) or "Invalid pretrained" in str(e):
            raise CxrkitError(f"timm has no pretrained weights for {name}: {fix}.") from None
        raise
    except (OSError, ValueError) as e:
        # OSError covers requests/urllib/huggingface_hub failures (offline, DNS, HTTP errors,
        # LocalEntryNotFoundError with HF_HUB_OFFLINE=1); ValueError an unknown pretrained tag.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CxrkitError(
            f"pretrained ImageNet weights for {name} could not be downloaded ({reason}): {fix}."
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, never unpickling objects.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints, strips ``module.`` prefixes
    (DataParallel) and a ``model.`` prefix shared by every key (Lightning), and renames old
    DenseNet keys (``norm.1`` → ``norm1``) as torchvision's own loader does.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrkitError(f"weights file '{path}' does not exist. Pass the path of a state dict.")
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0]
        raise CxrkitError(
            f"'{path}' holds Python objects besides tensors ({first}); cxrkit only loads plain "
            "state dicts: save model.state_dict() instead."
        ) from None
    except (RuntimeError, OSError, SafetensorError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CxrkitError(f"cannot read weights file '{path}': {first}.") from None
    except Exception as e:  # noqa: BLE001 - torch's restricted unpickler on junk: KeyError, IndexError...
        raise CxrkitError(
            f"cannot read weights file '{path}': not a PyTorch (.pt/.pth) or safetensors file "
            f"({type(e).__name__} while reading it)."
        ) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CxrkitError(
            f"'{path}' is not a state dict (a mapping of names to tensors): "
            "save model.state_dict() instead."
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    if out and all(k.startswith("model.") for k in out):
        out = {k[len("model.") :]: v for k, v in out.items()}
    renamed = {}
    for k, v in out.items():
        m = _OLD_DENSENET_KEY.match(k)
        renamed[m.group(1) + m.group(2) if m else k] = v
    return renamed


def _module_names(cfg_value: str | Sequence[str] | None) -> list[str]:
    if not cfg_value:
        return []
    return [cfg_value] if isinstance(cfg_value, str) else list(cfg_value)


def load_weights(model: torch.nn.Module, weights: str | Path) -> None:
    """Load a local timm- or torchvision-layout state dict into a timm ``model`` in place.

    The first convolution is adapted to the model's input channels (RGB filters summed for one
    channel); a classifier whose shape differs from the model's is left at its fresh initialisation.
    Any other missing, unexpected or mis-shaped key is an error.
    """
    state = read_state_dict(weights)
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    heads = tuple(f"{n}." for n in _module_names(cfg.get("classifier")))
    for conv in _module_names(cfg.get("first_conv")):
        key = f"{conv}.weight"
        if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
            if state[key].shape[1] != 3:
                raise CxrkitError(
                    f"'{weights}': the first convolution {key} takes {state[key].shape[1]} "
                    f"channels; cxrkit adapts only 3-channel (RGB) weights to "
                    f"{own[key].shape[1]} channels."
                )
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    head_skipped = [
        k for k in state if k.startswith(heads) and k in own and state[k].shape != own[k].shape
    ]
    for k in head_skipped:
        del state[k]
    if head_skipped:
        logger.info("classifier %s reinitialised (shape differs from the weights file)", heads)
    missing = [
        k
        for k in own
        if k not in state and not k.startswith(heads) and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in own]
    bad_shape = [
        f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or bad_shape:
        arch = cfg.get("architecture", type(model).__name__)
        parts = [
            f"{label} {len(keys)} ({preview(keys, 3)})"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", bad_shape),
            )
            if keys
        ]
        raise CxrkitError(
            f"weights '{weights}' do not fit {arch}: {'; '.join(parts)}. "
            "Pass a timm or torchvision state dict of the same architecture."
        )
    missing_head = [k for k in own if k.startswith(heads) and k not in state]
    if missing_head and not head_skipped:
        logger.info("weights file has no classifier: %s initialised fresh", heads)
    model.load_state_dict(state, strict=False)


def outputs_per_label(output: str) -> int:
    """1 for a ``sigmoid`` head, 3 for a ``multiclass`` one; any other name is an error."""
    if output not in OUTPUTS:
        raise CxrkitError(
            f"model output must be one of {', '.join(OUTPUTS)}. Got '{output}' instead."
        )
    return 3 if output == "multiclass" else 1


def probabilities(
    logits: torch.Tensor, output: str = "sigmoid", temperature: float = 1.0
) -> torch.Tensor:
    """(B, L·k) logits → (B, L) probabilities that each finding is present.

    ``sigmoid``: the sigmoid of each logit. ``multiclass``: the softmax over the negative and
    positive logits with the uncertain class left out, as Irvin et al. (2019) score U-MultiClass
    models: p = sigmoid(l_pos − l_neg). The score is divided by ``temperature`` first (an
    artifact's ``meta.temperature``; pass it wherever an artifact's model is run).
    """
    logits = logits.float()
    if outputs_per_label(output) == 3:
        z = logits.reshape(logits.shape[0], -1, 3)
        return torch.sigmoid((z[..., 1] - z[..., 0]) / temperature)
    return torch.sigmoid(logits / temperature)


#: architecture → builder(meta) → untrained network, for architectures that are not timm names
_BUILDERS: dict[str, Callable[[Any], torch.nn.Module]] = {}
#: where the built-in builders live; imported on first use, as entry points are, so that a builder's
#: module may itself use this one (the ensemble builds its members with :func:`create_model`)
_BUILTIN_BUILDERS = {"cxrkit-ensemble": "cxrkit.model.ensemble"}


def register_builder(architecture: str) -> Callable[[Callable[[Any], torch.nn.Module]], Callable]:
    """Decorator: ``@register_builder("name")`` makes ``build_network`` use the function for ``name``."""

    def add(fn: Callable[[Any], torch.nn.Module]) -> Callable[[Any], torch.nn.Module]:
        _BUILDERS[architecture] = fn
        return fn

    return add


def build_network(meta: Any) -> torch.nn.Module:
    """The untrained network an :class:`~cxrkit.model.artifact.ArtifactMeta` describes (no download)."""
    if meta.architecture not in _BUILDERS and meta.architecture in _BUILTIN_BUILDERS:
        importlib.import_module(_BUILTIN_BUILDERS[meta.architecture])
    if meta.architecture in _BUILDERS:
        return _BUILDERS[meta.architecture](meta)
    return create_model(
        meta.architecture,
        pretrained=False,
        num_classes=len(meta.labels) * outputs_per_label(meta.output),
        input_mode=meta.input_mode,
    )
