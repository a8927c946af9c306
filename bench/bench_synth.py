"""Synthetic generator throughput: images/s written (render + encode + CSVs), end to end.

Usage: uv run python bench/bench_synth.py [--n 2000] [--size 256] [--workers 2]
Goal (issue 2): >= 200 images/s at 256 px on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from cxrkit.synthetic.layouts import generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, nargs="+", default=[256])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--layouts", nargs="+", default=["chexpert", "nih", "mimic"])
    args = ap.parse_args()
    rows = []
    for size in args.size:
        for layout in args.layouts:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                generate(layout, Path(tmp) / "d", n=args.n, size=size, seed=0, workers=args.workers)
                dt = time.perf_counter() - t0
            rows.append(
                {
                    "layout": layout,
                    "size px": size,
                    "images": args.n,
                    "workers": args.workers,
                    "seconds": f"{dt:.2f}",
                    "images/s": f"{args.n / dt:,.0f}",
                }
            )
            print(rows[-1], flush=True)
    cmd = "uv run python bench/bench_synth.py " + " ".join(sys.argv[1:])
    report("synth", cmd.strip(), rows)


if __name__ == "__main__":
    main()
