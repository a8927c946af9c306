"""Histogram equalisation and CLAHE on a batch: cxrkit's batched torch code vs kornia vs OpenCV.

Why ``cxrkit.data.inputs`` writes its own: it must give what OpenCV gives (the reference the cache-side
path and the tests use) on any device. Each contender gets the same (B, H, W) uint8 batch of synthetic
films; times are the median of ``--repeat`` runs after one warm-up; "max |diff|" is the largest
difference from OpenCV's output in grey levels (0-255).

    uv run python bench/bench_inputs.py --batch 64 --size 224 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import kornia.enhance as KE
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from cxrkit.data.inputs import clahe, equalize_hist  # noqa: E402
from cxrkit.synthetic.render import render, sample_anatomy  # noqa: E402


def _films(batch: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(batch):
        img, _ = render(sample_anatomy(rng), [], size=size, rng=rng)
        out.append(img)
    return np.stack(out).astype(np.uint8)


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def _diff(out: object, reference: np.ndarray) -> float:
    """Largest difference in grey levels; float outputs in [0, 1] are scaled to 0-255."""
    if isinstance(out, list):
        arr = np.stack(out).astype(np.float64)
    else:
        t = out.squeeze(1) if out.ndim == 4 else out
        arr = t.double().numpy() * (255.0 if t.is_floating_point() else 1.0)
    return float(np.abs(arr - reference).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    films = _films(a.batch, a.size)
    x = torch.from_numpy(films)  # (B, H, W) uint8
    xf = x.float().div(255).unsqueeze(1)  # (B, 1, H, W) in [0, 1] for kornia
    cl = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    contenders = {
        "equalize: cxrkit (batched torch)": lambda: equalize_hist(x),
        "equalize: kornia.enhance.equalize": lambda: KE.equalize(xf),
        "equalize: OpenCV equalizeHist (loop)": lambda: [cv2.equalizeHist(f) for f in films],
        "CLAHE: cxrkit (batched torch)": lambda: clahe(x, 2.0, (8, 8)),
        "CLAHE: kornia.enhance.equalize_clahe": lambda: KE.equalize_clahe(xf, 2.0, (8, 8)),
        "CLAHE: OpenCV createCLAHE (loop)": lambda: [cl.apply(f) for f in films],
    }
    times = {k: _time(fn, a.repeat) for k, fn in contenders.items()}
    reference = {
        "equalize": np.stack([cv2.equalizeHist(f) for f in films]).astype(np.float64),
        "CLAHE": np.stack([cl.apply(f) for f in films]).astype(np.float64),
    }
    rows = []
    for k, t in times.items():
        op = k.split(":")[0]
        kornia = times[next(n for n in times if n.startswith(op) and "kornia" in n)]
        rows.append(
            {
                "operation": k,
                "ms per batch": f"{t * 1e3:.1f}",
                "images/s": f"{a.batch / t:,.0f}",
                "kornia time / this": f"{kornia / t:.2f}x",
                "max |diff| vs OpenCV": f"{_diff(contenders[k](), reference[op]):.2f}",
            }
        )
    report(
        "Histogram equalisation and CLAHE",
        f"uv run python bench/bench_inputs.py --batch {a.batch} --size {a.size} --repeat {a.repeat}"
        f" (torch threads {a.threads})",
        rows,
    )


if __name__ == "__main__":
    main()
