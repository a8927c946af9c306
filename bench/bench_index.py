"""Index the full real CheXpert train.csv (no image check) and apply a label policy.

Usage: uv run python bench/bench_index.py [--repeat 3] [--csv PATH/TO/train.csv(.gz)]
Goal (issue 2): index + policy < 5 s on the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, report  # noqa: E402
from cxrkit.data.adapters import build_index  # noqa: E402
from cxrkit.data.labels import PRESETS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--csv", type=Path, default=SHARED_DATA / "labels/chexpert/train.csv.gz")
    ap.add_argument(
        "--nih", type=Path, default=SHARED_DATA / "labels/nih/Data_Entry_2017_v2020.csv.gz"
    )
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not args.csv.is_file():
        sys.exit(f"CheXpert train.csv not found at {args.csv}: pass --csv")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "CheXpert-v1.0-small"
        root.mkdir()
        (root / ("train.csv.gz" if args.csv.suffix == ".gz" else "train.csv")).symlink_to(
            args.csv.resolve()
        )
        nih_root = Path(tmp) / "nih"
        nih_root.mkdir()
        if args.nih.is_file():
            (nih_root / args.nih.name).symlink_to(args.nih.resolve())
        for policy in ("default", "chexpert-competition"):
            best_ix, best_pol = float("inf"), float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                ix = build_index("chexpert", root, check_images=False)
                t1 = time.perf_counter()
                targets = PRESETS[policy].apply(ix.frame, ix.findings)
                t2 = time.perf_counter()
                best_ix, best_pol = min(best_ix, t1 - t0), min(best_pol, t2 - t1)
            rows.append(
                {
                    "dataset": "CheXpert train.csv (223,414 rows)",
                    "policy": policy,
                    "index s": f"{best_ix:.2f}",
                    "policy s": f"{best_pol:.3f}",
                    "total s": f"{best_ix + best_pol:.2f}",
                    "targets": f"{targets.y.shape}",
                }
            )
        if args.nih.is_file():
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                ix = build_index("nih", nih_root, check_images=False)
                targets = PRESETS["default"].apply(ix.frame, ix.findings)
                best = min(best, time.perf_counter() - t0)
            rows.append(
                {
                    "dataset": "NIH Data_Entry_2017_v2020 (112,120 rows)",
                    "policy": "default",
                    "index s": "",
                    "policy s": "",
                    "total s": f"{best:.2f}",
                    "targets": f"{targets.y.shape}",
                }
            )
    report("index", "uv run python bench/bench_index.py", rows)


if __name__ == "__main__":
    main()
