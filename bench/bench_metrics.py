"""Time the full evaluation (`cxrkit.evaluate.metrics.evaluate`) on a CheXpert-sized synthetic test set.

Usage: uv run python bench/bench_metrics.py [--images 200000] [--patients 65000] [--boot 1000]
    [--workers 1,2] [--repeat 1]

Random data: 14 findings with prevalences from 1 % to 40 %, about 10 % of entries unlabelled,
several images per patient (patient sizes drawn at random, each patient with its own offset so
that the patient bootstrap matters), float32 probabilities (so some scores tie). Timed: the whole
`evaluate` call (DeLong, confusion counts and the 1,000-resample patient bootstrap of per-finding
AUROC and AUPRC, macro, micro and competition means).
Goal (issue 5): 200,000 images x 14 findings x 1,000 resamples in < 60 s on 2 cores.
"seconds" is wall time (best of --repeat); "CPU seconds" adds up this process's and its worker
processes' time (user + system).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from cxrkit.core.findings import CHEXPERT_FINDINGS  # noqa: E402
from cxrkit.core.parallel import usable_cores  # noqa: E402
from cxrkit.evaluate.metrics import evaluate  # noqa: E402


def synthetic(n_images: int, n_patients: int, seed: int = 0):
    """(y, mask, probs, groups) for ``n_images`` images of about ``n_patients`` patients."""
    rng = np.random.default_rng(seed)
    findings = list(CHEXPERT_FINDINGS)
    n_labels = len(findings)
    # every patient has one image or more; sizes uneven, mean n_images / n_patients
    groups = np.sort(
        np.r_[np.arange(n_patients), rng.integers(0, n_patients, n_images - n_patients)]
    )
    prevalence = np.linspace(0.01, 0.40, n_labels)
    patient_risk = rng.normal(0.0, 1.0, (n_patients, n_labels))
    # A patient's images share most of their labels: positives come from the patient's risk.
    cut = np.array([np.quantile(patient_risk[:, j], 1.0 - prevalence[j]) for j in range(n_labels)])
    noisy = patient_risk[groups] + rng.normal(0.0, 0.3, (n_images, n_labels))
    y = (noisy > cut).astype(np.float32)
    mask = rng.random((n_images, n_labels)) > 0.1
    # a mediocre model (AUROC about 0.8) whose errors are shared by a patient's images
    offset = rng.normal(0.0, 0.7, (n_patients, n_labels))
    logit = 1.45 * y - 2.0 + offset[groups] + rng.normal(0.0, 1.0, y.shape)
    probs = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return y, mask, probs, groups, findings


def cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--patients", type=int, default=65_000)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument(
        "--workers", default=None, help="comma-separated worker counts (default: usable cores)"
    )
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    y, mask, probs, groups, findings = synthetic(args.images, args.patients)
    counts = [int(w) for w in args.workers.split(",")] if args.workers else [usable_cores()]
    rows = []
    for workers in counts:
        best, cpu, out = float("inf"), float("inf"), None
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), cpu_seconds()
            out = evaluate(
                y, mask, probs, findings, groups=groups, n_boot=args.boot, seed=0, workers=workers
            )
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, cpu_seconds() - c0)
        json.dumps(out, allow_nan=False)
        rows.append(
            {
                "images": f"{args.images:,}",
                "findings": len(findings),
                "patients (groups)": f"{out['n_groups']:,}",
                "resamples": args.boot,
                "workers": workers,
                "seconds": f"{best:.1f}",
                "CPU seconds": f"{cpu:.1f}",
            }
        )
    avg = out["average"]
    ci = avg["macro_auroc_ci"]
    print(
        f"macro AUROC {avg['macro_auroc']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] over {avg['macro_n']}; "
        f"micro {avg['micro_auroc']:.4f}; rarest finding "
        f"{findings[0]}: {out['findings'][findings[0]]['positives']} positives"
    )
    command = "uv run python bench/bench_metrics.py" + "".join(f" {a}" for a in sys.argv[1:])
    report("metrics", command, rows)


if __name__ == "__main__":
    main()
