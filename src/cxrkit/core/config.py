"""Training configuration: dataclasses loaded from YAML, dotted command-line overrides, validation.

A config file mirrors :class:`Config`; any value can be overridden on the command line as
``section.key=value`` (the value is read as YAML: ``train.max_epochs=3``, ``model.pretrained=false``,
``data.policy.views=frontal``). Unknown keys are errors with a suggestion, wrong types are errors
naming the expected type; the resolved config is saved in every run folder and checkpoint.
Relative paths in a config are relative to the folder the command runs in, as on the command line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxrkit.core.errors import CxrkitError, did_you_mean


@dataclass
class DataSection:
    """What to train on: the artifacts of ``cxrkit index``, ``split`` and ``cache``, and how to batch.

    The one description of a data module's inputs: :class:`cxrkit.data.loader.CXRDataModule` takes
    this section (and ``train.seed``).

    Attributes:
        index, splits, cache: the index Parquet, the splits Parquet and the cache folder.
        policy: the label policy: a preset name, a YAML path, or a mapping of LabelPolicy fields.
        input_mode: ``gray1``, ``gray3`` or ``enhanced``.
        batch_size, num_workers: the loaders' batch size and worker processes.
        augment: augment training batches (the default :class:`~cxrkit.data.inputs.AugmentConfig`).
        balance: draw training images of rare findings more often.
    """

    index: str = "index.parquet"
    splits: str = "splits.parquet"
    cache: str = "cache"
    policy: Any = "default"  # a preset name, a YAML path, or a mapping of LabelPolicy fields
    input_mode: str = "enhanced"
    batch_size: int = 32
    num_workers: int = 0
    augment: bool = True
    balance: bool = False


@dataclass
class ModelSection:
    arch: str = "densenet121"
    pretrained: bool = False
    weights: str | None = None
    drop_rate: float = 0.0


@dataclass
class LossSection:
    name: str = "weighted_bce"
    gamma: float = 2.0  # focal
    margin: float = 1.0  # auc_margin
    # LibAUC's PESG epoch decay: + epoch_decay/2 · ||θ − θ_epoch start||² (0: off)
    epoch_decay: float = 0.0


@dataclass
class OptimSection:
    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass
class ScheduleSection:
    name: str = "triangular"
    base_lr: float = 1e-5
    max_lr: float = 1e-3
    step_size: int | None = None  # iterations per half cycle; default: 2 epochs' worth (Smith 2017)
    warmup_steps: int = 0
    pct_start: float = 0.3


@dataclass
class TrainSection:
    max_epochs: int = 10
    seed: int = 0
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on a GPU that has it, 32 on CPU
    channels_last: bool | None = None  # None: on for GPUs
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    early_stopping_patience: int | None = None
    deterministic: bool = False
    limit_train_batches: float | int | None = None
    limit_val_batches: float | int | None = None
    log_every_n_steps: int = 10
    out: str = "runs"
    name: str | None = None
    # Hierarchy-aware training (Pham et al. 2019; the thesis's future work): first train on the
    # parent findings, then fine-tune on the targets starting from that backbone.
    hierarchy: bool = False
    stage1_epochs: int | None = None  # default: half of max_epochs
    freeze: str = "none"  # "none", or "head": train the classifier only (the backbone is frozen)


@dataclass
class Config:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """SHA-256 of the resolved config (what the model artifact records)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


#: Declared ranges of the numeric settings: dotted key → (low, high, low included); None = open.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "data.batch_size": (1, 65536, True),
    "data.num_workers": (0, 256, True),
    "model.drop_rate": (0, 1, True),
    "loss.gamma": (0, 100, True),
    "loss.margin": (0, 100, True),
    "loss.epoch_decay": (0, 10, True),
    "optim.lr": (0, 100, False),
    "optim.weight_decay": (0, 10, True),
    "optim.momentum": (0, 1, True),
    "schedule.base_lr": (0, 100, False),
    "schedule.max_lr": (0, 100, False),
    "schedule.step_size": (1, None, True),
    "schedule.warmup_steps": (0, None, True),
    "schedule.pct_start": (0, 1, False),
    "train.max_epochs": (1, 100_000, True),
    "train.num_nodes": (1, None, True),
    "train.accumulate_grad_batches": (1, None, True),
    "train.gradient_clip_val": (0, None, False),
    "train.early_stopping_patience": (1, None, True),
    "train.limit_train_batches": (0, None, False),
    "train.limit_val_batches": (0, None, False),
    "train.log_every_n_steps": (1, None, True),
    "train.stage1_epochs": (1, None, True),
}


def _check_range(value: Any, where: str) -> None:
    """Refuse a number outside its declared range (None passes: "not set")."""
    if where not in RANGES or value is None or isinstance(value, bool):
        return
    lo, hi, lo_in = RANGES[where]
    low_ok = lo is None or (value >= lo if lo_in else value > lo)
    high_ok = hi is None or value <= hi
    if value != value or not (low_ok and high_ok) or value in (float("inf"), float("-inf")):
        low = "" if lo is None else (f"at least {lo:g}" if lo_in else f"above {lo:g}")
        high = "" if hi is None else f"at most {hi:g}"
        rule = " and ".join(x for x in (low, high) if x)
        raise CxrkitError(f"config '{where}' must be {rule}; got {value!r}.")


def _check_type(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except CxrkitError:
                continue
        names = " or ".join("null" if a is type(None) else a.__name__ for a in args)
        raise CxrkitError(f"config '{where}' must be {names}; got {value!r}.")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool):
        if isinstance(value, bool) != (hint is bool) or not isinstance(value, hint):
            raise CxrkitError(f"config '{where}' must be {hint.__name__}; got {value!r}.")
        return value
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CxrkitError(f"config '{where or 'root'}' must be a mapping; got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise CxrkitError(
                f"config: {did_you_mean(path, [f'{where}.{k}' if where else k for k in fields], what='key')}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, path)
        else:
            kwargs[key] = _check_type(value, hint, path)
            _check_range(kwargs[key], path)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise CxrkitError(f"override '{dotted}': '{k}' is not a section.")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.max_epochs=3", ...]`` → [("train.max_epochs", 3), ...] (values read as YAML)."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CxrkitError(
                f"override '{item}' must look like section.key=value, e.g. train.max_epochs=3."
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from the defaults) and apply dotted overrides."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise CxrkitError(f"config file '{p}' does not exist; see configs/ for examples.")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise CxrkitError(f"config file '{p}' is not valid YAML{where}.") from None
        if not isinstance(tree, dict):
            raise CxrkitError(
                f"config file '{p}' must hold a mapping of sections (data:, model:, train: ...); "
                f"it holds a {type(tree).__name__}."
            )
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    return _build(Config, tree, "")


def save_config(cfg: Config, path: str | Path) -> None:
    from cxrkit.core.fileio import write_text_atomic

    write_text_atomic(path, cfg.to_yaml())
