"""Split the full real CheXpert train.csv: time, prevalence deviation and patient leakage per method.

Usage: uv run --group bench python bench/bench_split.py [--repeat 3] [--csv PATH/TO/train.csv(.gz)]
Policy: uncertain = ones, the five competition findings; fractions 0.7 / 0.1 / 0.2.
Methods: cxrkit's iterative, labelset and random (patient-grouped), and the
iterative-stratification package's MultilabelStratifiedShuffleSplit (image-level, not
patient-aware: test 0.2, then val 0.125 of the rest), whose leaked patients are counted.
Goal (issue 3): iterative < 30 s, largest deviation <= 0.5 percentage points, zero leakage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, report  # noqa: E402
from cxrkit.data.adapters import build_index  # noqa: E402
from cxrkit.data.labels import LabelPolicy  # noqa: E402
from cxrkit.data.splits import make_splits, positives, split_report  # noqa: E402

FRACTIONS = (0.7, 0.1, 0.2)
NAMES = ["train", "val", "test"]


def leaked(patient: pd.Series, parts: np.ndarray) -> int:
    """Patients whose images are in more than one part."""
    per = pd.Series(parts).groupby(patient.to_numpy()).nunique()
    return int((per > 1).sum())


def iterstrat_parts(y: np.ndarray, seed: int) -> np.ndarray:
    """Image-level MultilabelStratifiedShuffleSplit: test 0.2, then val 0.1 / 0.8 of the rest."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    x = np.zeros((len(y), 1))
    parts = np.full(len(y), "train", dtype=object)
    first = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=FRACTIONS[2], random_state=seed)
    rest, test = next(first.split(x, y))
    parts[test] = "test"
    second = MultilabelStratifiedShuffleSplit(
        n_splits=1, test_size=FRACTIONS[1] / (FRACTIONS[0] + FRACTIONS[1]), random_state=seed
    )
    _, val = next(second.split(x[rest], y[rest]))
    parts[rest[val]] = "val"
    return parts


def row(method: str, seconds: float, rep: dict, leaks: int, patient_aware: bool) -> dict:
    worst = rep["max_dev_finding"]
    return {
        "method": method,
        "patient-grouped": "yes" if patient_aware else "no",
        "time s": f"{seconds:.2f}",
        "max dev pp": f"{rep['max_dev_pp']:.3f} ({worst})",
        "leaked patients": f"{leaks:,}",
        "images train/val/test": "/".join(f"{rep['images'][p]:,}" for p in NAMES),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--csv", type=Path, default=SHARED_DATA / "labels/chexpert/train.csv.gz")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-iterstrat", action="store_true", help="Skip the iterative-stratification package."
    )
    args = ap.parse_args()
    if not args.csv.is_file():
        sys.exit(f"CheXpert train.csv not found at {args.csv}: pass --csv")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "CheXpert-v1.0-small"
        root.mkdir()
        (root / ("train.csv.gz" if args.csv.suffix == ".gz" else "train.csv")).symlink_to(
            args.csv.resolve()
        )
        ix = build_index("chexpert", root, check_images=False)
    frame = ix.frame
    targets = LabelPolicy(uncertain="ones", findings="competition").apply(frame, ix.findings)
    rows = []
    for method in ("iterative", "labelset", "random"):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            splits = make_splits(frame, targets, method=method, fractions=FRACTIONS, seed=args.seed)
            best = min(best, time.perf_counter() - t0)
        parts = splits.frame["part"].to_numpy(object)
        rows.append(row(method, best, splits.report, leaked(frame["patient_id"], parts), True))
    # the same split over all 14 findings (the default policy): what iterative is for
    all14 = LabelPolicy().apply(frame, ix.findings)
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        splits = make_splits(frame, all14, fractions=FRACTIONS, seed=args.seed)
        best = min(best, time.perf_counter() - t0)
    parts = splits.frame["part"].to_numpy(object)
    rows.append(
        row(
            f"iterative, all {len(all14.findings)} findings",
            best,
            splits.report,
            leaked(frame["patient_id"], parts),
            True,
        )
    )
    if not args.no_iterstrat:
        try:
            import iterstrat  # noqa: F401
        except ImportError:
            sys.exit("iterative-stratification is not installed: uv run --group bench ...")
        y = np.zeros((len(frame), len(targets.findings)), np.int64)
        y[targets.rows] = positives(targets)
        t0 = time.perf_counter()
        parts = iterstrat_parts(y, args.seed)
        seconds = time.perf_counter() - t0
        rep = split_report(frame, targets, parts, NAMES)
        rows.append(
            row(
                "iterstrat MultilabelStratifiedShuffleSplit",
                seconds,
                rep,
                leaked(frame["patient_id"], parts),
                False,
            )
        )
    print(
        f"CheXpert train.csv: {len(frame):,} images, {frame['patient_id'].nunique():,} patients; "
        f"uncertain=ones, competition findings; fractions {FRACTIONS}; seed {args.seed}; "
        f"cxrkit's times are the best of {args.repeat} and include the report"
    )
    report("split", "uv run --group bench python bench/bench_split.py", rows)


if __name__ == "__main__":
    main()
