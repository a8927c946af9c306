"""Config loading, overrides and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrkit.core.config import Config, load_config
from cxrkit.core.errors import CxrkitError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  arch: resnet18\ntrain:\n  max_epochs: 2\n")
    cfg = load_config(
        p,
        [
            "train.max_epochs=5",
            "optim.lr=3e-4",
            "data.policy.views=frontal",
            "train.gradient_clip_val=1",
        ],
    )
    assert isinstance(cfg, Config)
    assert cfg.model.arch == "resnet18" and cfg.train.max_epochs == 5
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.train.gradient_clip_val == 1.0
    assert cfg.data.policy == {"views": "frontal"}
    assert cfg.loss.name == "weighted_bce"  # untouched default
    again = load_config(None, [f"{k}={v}" for k, v in [("model.arch", "resnet18")]])
    assert again.model.arch == "resnet18" and len(cfg.hash()) == 64 and cfg.hash() != again.hash()


def test_mistyped_key_and_wrong_type(tmp_path: Path):
    with pytest.raises(CxrkitError, match="did you mean 'train.max_epochs'"):
        load_config(None, ["train.max_epoch=3"])
    with pytest.raises(CxrkitError, match="did you mean 'optim'"):
        load_config(None, ["optm.lr=1"])
    with pytest.raises(CxrkitError, match="'train.max_epochs' must be int"):
        load_config(None, ["train.max_epochs=three"])
    with pytest.raises(CxrkitError, match="section.key=value"):
        load_config(None, ["train.max_epochs"])
    p = tmp_path / "bad.yaml"
    p.write_text("train: [1\n")
    with pytest.raises(CxrkitError, match="not valid YAML at line"):
        load_config(p)
    with pytest.raises(CxrkitError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_shipped_configs_load():
    from cxrkit.train.grid import read_grid

    files = sorted((REPO / "configs").glob("*.yaml"))
    grids = [f for f in files if f.stem.endswith("_grid")]
    assert len(files) > len(grids) >= 1
    for f in files:
        if f in grids:
            base, name, combos, fixed = read_grid(f)
            assert len(combos) == 4  # the thesis's 2 x 2 grid
            for combo in combos:
                load_config(base, fixed + [f"{k}={v}" for k, v in combo.items()])
        else:
            load_config(f)
