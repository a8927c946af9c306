"""Loader throughput: images/s of normalised 3x224x224 ``enhanced`` batches on this machine.

(a) from the cxrkit cache (memory-mapped uint8, input mode computed per batch);
(b) decoding the image files each time with the same transforms (cxrkit's decoder + the same
    input pipeline), the way most reference repositories load;
(c) torchxrayvision's CheX_Dataset / NIH_Dataset on the same files with its usual transforms
    (XRayCenterCrop + XRayResizer(224): a 1x224x224 tensor, less work than (a) and (b)).

Usage: uv run --group bench python bench/bench_loader.py [--n 2000] [--batches 30]
Goal (issue 3): (a) >= 20x (c) and >= 3,000 images/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from cxrkit.data.adapters import build_index  # noqa: E402
from cxrkit.data.cache import build_cache, open_cache  # noqa: E402
from cxrkit.data.imaging import load_for_cache  # noqa: E402
from cxrkit.data.inputs import InputPipeline  # noqa: E402
from cxrkit.data.loader import CacheDataset, _collate  # noqa: E402
from cxrkit.synthetic.layouts import generate  # noqa: E402


class FileDataset(Dataset):
    """(b): decode and resize every image on every access."""

    def __init__(self, root: Path, paths: list[str], size: int) -> None:
        self.root, self.paths, self.size = root, paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_for_cache(self.root / self.paths[i], self.size, "pad"))


def throughput(loader, pipe, batches: int, batch_size: int) -> float:
    it = iter(loader)
    x = next(it)  # warm-up: workers started, caches filled
    if pipe is not None:
        pipe(x["image"] if isinstance(x, dict) else x)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            x = next(it)
        if isinstance(x, dict) and "img" in x:
            out = x["img"]
        else:
            out = pipe(x["image"] if isinstance(x, dict) else x)
        n += out.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    torch.set_num_threads(args.workers)
    import torchvision
    import torchxrayvision as xrv

    rows = []
    bs = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for layout, size_px in (("chexpert", 320), ("nih", 1024)):
            n = args.n if layout == "chexpert" else max(200, args.n // 8)
            folder = generate(layout, tmp / layout, n=n, size=size_px, seed=0)
            index = build_index(layout, folder if layout == "nih" else folder.parent)
            cache = open_cache(build_cache(index, tmp / f"cache-{layout}", size=224).path, index)
            pipe = InputPipeline("enhanced")
            m = len(index.frame)
            ds_a = CacheDataset(
                cache.images, np.arange(m), np.zeros((m, 1)), np.ones((m, 1), bool), np.arange(m)
            )
            loader_a = DataLoader(
                ds_a,
                batch_size=bs,
                shuffle=True,
                collate_fn=_collate,
                num_workers=0,
                generator=torch.Generator().manual_seed(0),
            )
            a = throughput(loader_a, pipe, args.batches, bs)
            paths = index.frame["path"].tolist()
            loader_b = DataLoader(
                FileDataset(index.root, paths, 224),
                batch_size=bs,
                shuffle=True,
                num_workers=args.workers,
                persistent_workers=True,
            )
            b = throughput(loader_b, pipe, max(3, args.batches // 6), bs)
            tf = torchvision.transforms.Compose(
                [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)]
            )
            if layout == "chexpert":
                ds_c = xrv.datasets.CheX_Dataset(
                    imgpath=str(folder),
                    csvpath=str(folder / "train.csv"),
                    views=["PA", "AP"],
                    transform=tf,
                    unique_patients=False,
                )
            else:
                ds_c = xrv.datasets.NIH_Dataset(
                    imgpath=str(folder / "images"),
                    csvpath=str(folder / "Data_Entry_2017_v2020.csv"),
                    bbox_list_path=str(folder / "BBox_List_2017.csv"),
                    views=["PA", "AP"],
                    transform=tf,
                    unique_patients=False,
                )
            loader_c = DataLoader(
                ds_c, batch_size=bs, shuffle=True, num_workers=args.workers, persistent_workers=True
            )
            c = throughput(loader_c, None, max(3, args.batches // 6), bs)
            src = f"{layout} {size_px}px {'JPEG' if layout != 'nih' else 'PNG'}"
            for name, v in (
                ("(a) cxrkit cache, enhanced", a),
                ("(b) decode files each time, enhanced", b),
                ("(c) torchxrayvision, 1x224 gray", c),
            ):
                rows.append(
                    {
                        "source": src,
                        "loader": name,
                        "images/s": f"{v:,.0f}",
                        "vs (c)": f"{v / c:.1f}x",
                    }
                )
                print(rows[-1], flush=True)
    report(
        "loader",
        "uv run --group bench python bench/bench_loader.py " + " ".join(sys.argv[1:]),
        rows,
    )


if __name__ == "__main__":
    main()
