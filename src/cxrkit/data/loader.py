"""Dataset and LightningDataModule over the uint8 cache, label-policy targets and splits.

Batches leave the loader as uint8 (B, H, W) with their targets and masks; the input mode and the
augmentation run on the device that trains (``on_after_batch_transfer``), so a GPU does that work
and the CPU only copies bytes out of the memory-mapped cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrkit.core.config import Config, DataSection
from cxrkit.core.errors import CxrkitError
from cxrkit.data.inputs import AugmentConfig, InputPipeline
from cxrkit.data.labels import LabelPolicy, Targets


class EpochSampler(torch.utils.data.Sampler[int]):
    """A random order (or weighted draw) that is a function of (seed, epoch) alone.

    Lightning calls :meth:`set_epoch` before each epoch, so a resumed run replays the same order.
    """

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            return iter(torch.randperm(self.n, generator=g).tolist())
        return iter(torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist())


class Batch(dict):
    """A batch: ``image`` uint8 (B, H, W), ``y`` float32 (B, L), ``mask`` bool (B, L), ``row`` int64 (B,)."""


class CacheDataset(Dataset):
    """Images from the cache's memory-mapped array with their targets.

    Args:
        images: (N, H, W) uint8 array (the cache).
        positions: (n,) positions in ``images`` of this dataset's samples.
        y, mask: (n, L) targets and mask of the same samples.
        rows: (n,) index row of each sample (carried along for predictions).
    """

    def __init__(
        self,
        images: np.ndarray,
        positions: np.ndarray,
        y: np.ndarray,
        mask: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        if not (len(positions) == len(y) == len(mask) == len(rows)):
            raise ValueError("positions, y, mask and rows must have the same length")
        self.images, self.positions = images, np.asarray(positions, np.int64)
        self.y = torch.from_numpy(np.ascontiguousarray(y, np.float32))
        self.mask = torch.from_numpy(np.ascontiguousarray(mask, bool))
        self.rows = torch.from_numpy(np.asarray(rows, np.int64))

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """A whole batch in one read of the memory map (sorted positions read sequentially)."""
        idx = np.asarray(indices, np.int64)
        pos = self.positions[idx]
        order = np.argsort(pos, kind="stable")
        imgs = np.empty((len(idx), *self.images.shape[1:]), np.uint8)
        imgs[order] = self.images[pos[order]]
        t = torch.from_numpy(idx)
        return Batch(image=torch.from_numpy(imgs), y=self.y[t], mask=self.mask[t], row=self.rows[t])


def _collate(batch: Batch | list[Batch]) -> Batch:
    if isinstance(batch, Batch):
        return batch
    return Batch(
        {k: torch.cat([b[k] if b[k].dim() else b[k][None] for b in batch]) for k in batch[0]}
    )


def balanced_weights(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-sample weights that draw images of rare findings more often.

    An image's weight is ``1 / prevalence`` of the rarest finding it is positive for (its own
    prevalence in this split), and 1 for an image positive for none; weights are normalised to
    mean 1. Prevalences count only labelled entries.
    """
    pos = (y >= 0.5) & mask
    prevalence = pos.sum(0) / np.maximum(mask.sum(0), 1)
    inv = np.where(prevalence > 0, 1 / np.maximum(prevalence, 1e-12), 0.0)
    w = np.where(pos, inv[None], 0.0).max(1)
    w = np.where(w > 0, w, 1.0)
    return w / w.mean()


class CXRDataModule(L.LightningDataModule):
    """Index + policy + splits + cache → train / val / test loaders of uint8 batches.

    The input pipeline (mode, augmentation for training only, normalisation) is applied in
    :meth:`on_after_batch_transfer`, on the device the batch was moved to.

    Args:
        data: what to read and how to batch: a training config's ``data`` section.
        seed: seeds the training order and the augmentation (a function of seed and epoch).
        train_part, val_part, test_part: the names of the splits' parts to load.
    """

    def __init__(
        self,
        data: DataSection,
        seed: int = 0,
        *,
        train_part: str = "train",
        val_part: str = "val",
        test_part: str = "test",
    ) -> None:
        super().__init__()
        self.cfg, self.seed = data, seed
        self.train_part, self.val_part, self.test_part = train_part, val_part, test_part
        augment = AugmentConfig() if data.augment else None
        self.train_pipe = InputPipeline(data.input_mode, augment=augment)
        self.eval_pipe = InputPipeline(data.input_mode)
        self.generator = torch.Generator().manual_seed(seed)
        self.datasets: dict[str, CacheDataset] = {}
        self.targets: Targets | None = None

    def set_epoch(self, epoch: int) -> None:
        """Re-seed the augmentation generator: augmentation is a function of (seed, epoch)."""
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from cxrkit.data.cache import open_cache
        from cxrkit.data.index import read_index
        from cxrkit.data.splits import read_splits

        cfg = self.cfg
        index = read_index(cfg.index)
        self.index_frame = index.frame
        policy = (
            LabelPolicy.from_dict(cfg.policy)
            if isinstance(cfg.policy, dict)
            else LabelPolicy.from_spec(cfg.policy)
        )
        self.targets = targets = policy.apply(index.frame, index.findings)
        splits = read_splits(cfg.splits, index.frame)
        cache = open_cache(cfg.cache, index)
        self.images = cache.images
        self.cache_fit = cache.fit  # recorded in the model artifact: new images are resized alike
        part_of_row = splits.frame["part"].to_numpy()
        cache_pos = np.full(len(index.frame), -1, np.int64)
        ok = cache.rows["ok"].to_numpy(bool)
        cache_pos[cache.rows["row"].to_numpy(np.int64)[ok]] = np.flatnonzero(ok)
        for name in (self.train_part, self.val_part, self.test_part):
            sel = (part_of_row[targets.rows] == name) & (cache_pos[targets.rows] >= 0)
            rows = targets.rows[sel]
            self.datasets[name] = CacheDataset(
                self.images, cache_pos[rows], targets.y[sel], targets.mask[sel], rows
            )
        if len(self.datasets[self.train_part]) == 0:
            raise CxrkitError(
                f"the '{self.train_part}' part is empty under this policy and cache: check --splits and the views policy."
            )

    @property
    def findings(self) -> list[str]:
        return list(self.targets.findings) if self.targets is not None else []

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[name]
        sampler = None
        if shuffle:
            w = balanced_weights(ds.y.numpy(), ds.mask.numpy()) if self.cfg.balance else None
            sampler = EpochSampler(len(ds), self.seed, w)
            shuffle = False
        return DataLoader(
            ds,
            batch_size=self.cfg.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            collate_fn=_collate,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_part, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_part, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_part, shuffle=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        training = self.trainer is not None and self.trainer.training
        pipe = self.train_pipe if training else self.eval_pipe
        pipe.to(batch["image"].device)
        batch["input"] = pipe(batch["image"], self.generator if training else None)
        return batch


def make_datamodule(cfg: Config) -> CXRDataModule:
    """The data module a training config names (index, policy, splits, cache), set up for fitting."""
    dm = CXRDataModule(cfg.data, seed=cfg.train.seed)
    dm.setup("fit")
    return dm
