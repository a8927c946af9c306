"""The data module end to end on a synthetic dataset: index → policy → split → cache → batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.core.config import DataSection
from cxrkit.data.adapters import build_index
from cxrkit.data.cache import build_cache, open_cache
from cxrkit.data.imaging import load_for_cache
from cxrkit.data.index import write_index
from cxrkit.data.labels import LabelPolicy
from cxrkit.data.loader import CacheDataset, CXRDataModule, balanced_weights
from cxrkit.data.splits import make_splits, write_splits
from cxrkit.synthetic.layouts import generate


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("data")
    folder = generate("nih", tmp / "nih", n=120, size=64, seed=4, workers=1)
    index = build_index("nih", folder)
    write_index(index, tmp / "index.parquet")
    policy = LabelPolicy(findings=("Cardiomegaly", "Pleural Effusion", "Lung Opacity"))
    targets = policy.apply(index.frame)
    splits = make_splits(index.frame, targets, fractions=(0.6, 0.2, 0.2), seed=0)
    write_splits(splits, tmp / "splits.parquet")
    info = build_cache(index, tmp / "cache", size=48, workers=1)
    return {"tmp": tmp, "index": index, "policy": policy, "splits": splits, "cache": info.path}


def module(prepared, seed: int = 0, **kw) -> CXRDataModule:
    t = prepared["tmp"]
    cfg = DataSection(
        index=str(t / "index.parquet"),
        cache=str(prepared["cache"]),
        splits=str(t / "splits.parquet"),
        policy=prepared["policy"].to_dict(),
        batch_size=16,
        **kw,
    )
    dm = CXRDataModule(cfg, seed=seed)
    dm.setup("fit")
    return dm


def test_parts_cover_the_index_without_leaks(prepared):
    dm = module(prepared)
    parts = {name: set(ds.rows.tolist()) for name, ds in dm.datasets.items()}
    assert sum(len(p) for p in parts.values()) == len(prepared["index"].frame)
    f = prepared["index"].frame
    patients = {name: set(f["patient_id"].iloc[sorted(rows)]) for name, rows in parts.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert dm.findings == ["Cardiomegaly", "Pleural Effusion", "Lung Opacity"]


def test_batches_are_uint8_with_targets_and_masks(prepared):
    dm = module(prepared)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (48, 48)
    assert batch["y"].shape == (16, 3) and batch["mask"].dtype == torch.bool
    assert not batch["mask"][:, 2].any()  # NIH has no Lung Opacity: masked, never negative
    index = prepared["index"]
    row = int(batch["row"][0])
    want = load_for_cache(index.root / index.frame["path"].iloc[row], 48, "pad")
    assert np.array_equal(batch["image"][0].numpy(), want)
    truth = index.frame[["Cardiomegaly", "Pleural Effusion"]].iloc[row].to_numpy(np.float32)
    assert np.array_equal(batch["y"][0, :2].numpy(), truth)


def test_input_pipeline_applied_after_transfer(prepared):
    dm = module(prepared, input_mode="enhanced", augment=True)
    batch = next(iter(dm.val_dataloader()))
    out = dm.on_after_batch_transfer(batch, 0)  # no trainer: evaluation pipeline, no augmentation
    assert out["input"].shape == (16, 3, 48, 48) and out["input"].dtype == torch.float32
    again = dm.on_after_batch_transfer(dict(batch), 0)
    assert torch.equal(out["input"], again["input"])


def test_training_loader_is_seeded(prepared):
    rows = [next(iter(module(prepared).train_dataloader()))["row"] for _ in range(2)]
    assert torch.equal(rows[0], rows[1])
    other = next(iter(module(prepared, seed=1).train_dataloader()))["row"]
    assert not torch.equal(rows[0], other)


def test_make_datamodule_takes_the_config_s_data_section_and_seed(prepared):
    from cxrkit.core.config import Config, TrainSection
    from cxrkit.data.inputs import AugmentConfig
    from cxrkit.data.loader import make_datamodule

    base = module(prepared, seed=1)
    cfg = Config(data=base.cfg, train=TrainSection(seed=1))
    dm = make_datamodule(cfg)
    assert dm.cfg is cfg.data and dm.seed == 1 and dm.train_part == "train"
    assert dm.train_pipe.aug == AugmentConfig() and dm.eval_pipe.aug is None
    first = next(iter(dm.train_dataloader()))["row"]
    assert torch.equal(first, next(iter(base.train_dataloader()))["row"])
    assert module(prepared, augment=False).train_pipe.aug is None


def test_balanced_sampler_draws_rare_findings_more():
    rng = np.random.default_rng(0)
    y = np.zeros((1000, 2), np.float32)
    y[:20, 0] = 1  # rare: 2 %
    y[rng.random(1000) < 0.3, 1] = 1
    mask = np.ones_like(y, bool)
    w = balanced_weights(y, mask)
    assert w.mean() == pytest.approx(1.0)
    assert w[:20].min() > w[20:].max()
    images = np.zeros((1000, 4, 4), np.uint8)
    ds = CacheDataset(images, np.arange(1000), y, mask, np.arange(1000))
    sampler = torch.utils.data.WeightedRandomSampler(
        torch.from_numpy(w), 5000, generator=torch.Generator().manual_seed(0)
    )
    drawn = np.fromiter(sampler, int)
    assert y[drawn, 0].mean() > 5 * y[:, 0].mean()
    assert len(ds) == 1000


def test_foreign_cache_is_refused(prepared, tmp_path: Path):
    from cxrkit.core.errors import CxrkitError

    other = build_index("nih", generate("nih", tmp_path / "o", n=30, size=32, seed=9, workers=1))
    with pytest.raises(CxrkitError):
        open_cache(prepared["cache"], other)


def test_balanced_training_loader(prepared):
    dm = module(prepared, balance=True)
    loader = dm.train_dataloader()
    from cxrkit.data.loader import EpochSampler

    assert isinstance(loader.sampler, EpochSampler) and loader.sampler.weights is not None
    rows = torch.cat([b["row"] for b in loader])
    assert len(rows) == len(dm.datasets["train"])
    assert set(rows.tolist()) <= set(dm.datasets["train"].rows.tolist())


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    from cxrkit.data.loader import EpochSampler

    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    b.set_epoch(1)
    first, second = list(a), list(b)
    assert sorted(first) == list(range(50)) and first != second
    a.set_epoch(1)
    assert list(a) == second  # a resumed run at epoch 1 replays epoch 1's order
