"""Cache build rate: images/s (and per core) decoding + resizing to 224 px, and bytes per cached image.

Usage: uv run python bench/bench_cache.py [--n-jpeg 2000] [--n-png 300] [--size 224] [--workers 1 2]
Datasets are synthetic (``cxrkit.synthetic.layouts.generate``, not timed): CheXpert layout at 320 px
(JPEG, like CheXpert-small) and NIH layout at 1024 px (PNG, like ChestX-ray14). Each build starts
from an empty folder; the source files are in the page cache (just written), so the figures are
decode + resize + write, not disk reads. With one worker OpenCV is held to one thread, so "per core"
means one core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from cxrkit.data.adapters import build_index  # noqa: E402
from cxrkit.data.cache import build_cache  # noqa: E402
from cxrkit.synthetic.layouts import generate  # noqa: E402

DATASETS = (("chexpert", 320, "JPEG", "n_jpeg"), ("nih", 1024, "PNG", "n_png"))


def _disk_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-jpeg", type=int, default=2000, help="320-px JPEGs (fast: more of them)")
    ap.add_argument("--n-png", type=int, default=300, help="1024-px PNGs")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fit", default="pad")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout, px, fmt, n_arg in DATASETS:
            folder = generate(layout, Path(tmp) / layout, n=getattr(args, n_arg), size=px, seed=0)
            index = build_index(layout, folder)
            for workers in args.workers:
                out = Path(tmp) / f"cache-{layout}-{workers}"
                threads = cv2.getNumThreads()
                if workers == 1:
                    cv2.setNumThreads(1)
                try:
                    t0 = time.perf_counter()
                    info = build_cache(index, out, size=args.size, fit=args.fit, workers=workers)
                    dt = time.perf_counter() - t0
                finally:
                    cv2.setNumThreads(threads)
                apparent, allocated = _disk_bytes(info.path)
                n = len(index)
                rows.append(
                    {
                        "source": f"{layout} {px} px {fmt}",
                        "images": n,
                        "cache px": args.size,
                        "workers": workers,
                        "seconds": f"{dt:.2f}",
                        "images/s": f"{n / dt:,.0f}",
                        "images/s per core": f"{n / dt / workers:,.0f}",
                        "bytes/image (file sizes)": f"{apparent / n:,.0f}",
                        "bytes/image (allocated)": f"{allocated / n:,.0f}",
                    }
                )
                print(rows[-1], flush=True)
    cmd = "uv run python bench/bench_cache.py " + " ".join(sys.argv[1:])
    report("cache", cmd.strip(), rows)


if __name__ == "__main__":
    main()
