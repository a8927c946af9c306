"""Inference latency and throughput: cxrkit (torch eager, onnxruntime) beside torchxrayvision.

DenseNet-121, 224 px, random weights, on the CPU with each library's default thread count:
(a) cxrkit ``Predictor`` with ``runtime="torch"`` (timm network, eager, ``gray3`` and ``gray1``);
(b) cxrkit ``Predictor`` with ``runtime="onnx"`` after ``export_onnx`` (onnxruntime's default
    session, as ``cxrkit.model.onnx.open_onnx_session`` opens it);
(c) torchxrayvision's ``xrv.models.DenseNet(weights=None)`` (1 channel, 18 outputs) in
    ``torch.inference_mode()``.

Two levels, each measured for every path:
- ``forward``: the network alone on an input already prepared (cxrkit: what ``Predictor`` feeds its
  network, a normalised (B, C, 224, 224) float32; xrv: its (B, 1, 224, 224) float32 in
  [-1024, 1024]);
- ``end-to-end``: from a decoded uint8 grayscale image (a synthetic frontal film, ``--source-size``
  px square) to the outputs. cxrkit: ``Predictor.predict_arrays`` (resize, input pipeline, network,
  sigmoid). xrv: the preprocessing its README shows (``xrv.datasets.normalize(img, 255)``,
  ``XRayCenterCrop``, ``XRayResizer(224)``, skimage by default; the ``cv2`` engine is a second row),
  then the network. The two preprocessings do comparable work (map to float, crop/pad, antialiased
  resize), so the end-to-end rows include them.

Latency: batch 1, ``--calls`` timed calls after ``--warmup`` untimed ones; p50 and p99 over all
rounds' calls. Throughput: images/s over ``--batches`` timed batches of 32 after one warm-up batch,
summed over the rounds. ``--rounds`` passes over all the paths interleave them, so a slow spell of
the shared machine hits every path alike. Before each path of each round the script waits until
the 1-minute load average is below ``--max-load`` (up to ``--max-wait`` s) and records it (the
table gives the range), and it records the CPU time other processes used while the path ran (from
/proc/stat minus this process; the table gives the largest), so a disturbed row can be recognised.

Usage: uv run --group bench python bench/bench_predict.py [--rounds 3] [--calls 100] [--batches 3]
       [--source-size 1024]
Goal (issue 6): cxrkit's fastest path >= 2x torchxrayvision's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from cxrkit.core.findings import CHEXPERT_FINDINGS  # noqa: E402
from cxrkit.data.inputs import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from cxrkit.model.artifact import save_artifact  # noqa: E402
from cxrkit.model.networks import create_model  # noqa: E402
from cxrkit.model.onnx import export_onnx  # noqa: E402
from cxrkit.synthetic.render import render, sample_anatomy  # noqa: E402
from cxrkit.use.predict import Predictor  # noqa: E402

log = logging.getLogger("bench_predict")
SIZE = 224
BATCH = 32
_TICK = os.sysconf("SC_CLK_TCK")


# ---- the machine's other users ----------------------------------------------------------------


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_quiet(max_load: float, max_wait: float, poll: float = 10.0) -> float:
    """Wait until the 1-minute load is below ``max_load`` (at most ``max_wait`` s); return it."""
    deadline = time.monotonic() + max_wait
    load = load1()
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(poll)
        load = load1()
    return load


def _busy_s() -> float:
    """CPU seconds all processes on the machine have used (busy jiffies of /proc/stat)."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    return (sum(f[:8]) - idle) / _TICK


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class OthersCpu:
    """Cores other processes kept busy while a block ran (ours: this process and ``pids``)."""

    def __init__(self, pids: tuple[int, ...] = ()) -> None:
        self.pids = (os.getpid(), *pids)
        self.cores = float("nan")

    def _ours(self) -> float:
        return sum(proc_cpu_s(p) for p in self.pids)

    def __enter__(self) -> OthersCpu:
        self._t, self._busy, self._ours0 = time.perf_counter(), _busy_s(), self._ours()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        others = (_busy_s() - self._busy) - (self._ours() - self._ours0)
        self.cores = max(0.0, others / wall)


# ---- timing -----------------------------------------------------------------------------------


def call_times(fn: Callable[[], object], calls: int, warmup: int) -> np.ndarray:
    """Seconds of each of ``calls`` timed calls of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times


# ---- the paths --------------------------------------------------------------------------------


def make_artifact(folder: Path, input_mode: str) -> Path:
    model = create_model("densenet121", pretrained=False, num_classes=14, input_mode=input_mode)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if input_mode != "gray1" else ((0.5,), (0.25,))
    save_artifact(
        model.eval(),
        folder,
        arch="densenet121",
        findings=CHEXPERT_FINDINGS,
        input_mode=input_mode,
        image_size=SIZE,
        mean=mean,
        std=std,
    )
    export_onnx(folder)
    return folder


def synthetic_films(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Decoded frontal films, (size, size) uint8."""
    rng = np.random.default_rng(seed)
    return [render(sample_anatomy(rng), [], size=size, rng=rng)[0] for _ in range(n)]


def cxrkit_paths(
    predictor: Predictor, films: list[np.ndarray]
) -> dict[str, tuple[Callable, Callable]]:
    """level → (batch-1 call, batch-32 call)."""
    one = predictor.prepare_array(films[0])[None]  # (1, S, S) uint8
    many = np.stack([predictor.prepare_array(films[i % len(films)]) for i in range(BATCH)])
    with torch.inference_mode():
        x1, x32 = (
            predictor.pipeline(torch.from_numpy(one)),
            predictor.pipeline(torch.from_numpy(many)),
        )
    # Predictor's own network call (torch module or onnxruntime session), as predict_uint8 makes it
    forward = predictor._forward
    batch = [films[i % len(films)] for i in range(BATCH)]

    def fwd1() -> None:
        with torch.inference_mode():
            forward(x1)

    def fwd32() -> None:
        with torch.inference_mode():
            forward(x32)

    return {
        "forward": (fwd1, fwd32),
        "end-to-end": (
            lambda: predictor.predict_arrays(films[:1]),
            lambda: predictor.predict_arrays(batch),
        ),
    }


def xrv_paths(films: list[np.ndarray], engine: str) -> dict[str, tuple[Callable, Callable]]:
    import torchvision
    import torchxrayvision as xrv

    model = xrv.models.DenseNet(weights=None).eval()
    tf = torchvision.transforms.Compose(
        [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(SIZE, engine=engine)]
    )

    def prepare(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(tf(xrv.datasets.normalize(img, 255, reshape=True)))  # (1, S, S)

    batch = [films[i % len(films)] for i in range(BATCH)]
    x1 = prepare(films[0])[None]
    x32 = torch.stack([prepare(f) for f in batch])

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return {
        "forward": (lambda: run(x1), lambda: run(x32)),
        "end-to-end": (
            lambda: run(prepare(films[0])[None]),
            lambda: run(torch.stack([prepare(f) for f in batch])),
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3, help="passes over all the paths")
    ap.add_argument("--calls", type=int, default=100, help="timed batch-1 calls per round")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls before each timing")
    ap.add_argument("--batches", type=int, default=3, help="timed batches of 32 per round")
    ap.add_argument("--source-size", type=int, default=1024, help="side of the decoded film")
    ap.add_argument("--max-load", type=float, default=0.8)
    ap.add_argument("--max-wait", type=float, default=240.0)
    ap.add_argument("--modes", default="gray3,gray1", help="cxrkit input modes to measure")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import onnxruntime as ort
    import torchxrayvision as xrv

    log.info(
        "torch %s (%d intra-op threads), onnxruntime %s (default session), torchxrayvision %s",
        torch.__version__,
        torch.get_num_threads(),
        ort.__version__,
        xrv.__version__,
    )
    films = synthetic_films(8, args.source_size)
    results: dict[tuple[str, str], dict] = {}  # (level, path) → timings
    with tempfile.TemporaryDirectory() as tmp:
        paths: list[tuple[str, dict]] = []
        for mode in args.modes.split(","):
            art = make_artifact(Path(tmp) / mode, mode)
            for runtime in ("torch", "onnx"):
                p = Predictor.from_artifact(art, runtime=runtime, batch_size=BATCH)
                paths.append((f"cxrkit {runtime}, {mode}", cxrkit_paths(p, films)))
        paths.append(("torchxrayvision, skimage resize", xrv_paths(films, "skimage")))
        paths.append(("torchxrayvision, cv2 resize", xrv_paths(films, "cv2")))
        # Rounds interleave the paths, so a slow spell of the shared machine hits all of them.
        for rnd in range(args.rounds):
            for level in ("forward", "end-to-end"):
                for name, calls in paths:
                    if level == "forward" and name == "torchxrayvision, cv2 resize":
                        continue  # the same network call as the skimage row
                    one, many = calls[level]
                    load = wait_quiet(args.max_load, args.max_wait)
                    with OthersCpu() as others:
                        lat = call_times(one, args.calls, args.warmup)
                        bat = call_times(many, args.batches, 1)
                    r = results.setdefault(
                        (level, name), {"lat": [], "bat": [], "load": [], "others": []}
                    )
                    r["lat"].append(lat)
                    r["bat"].append(bat)
                    r["load"].append(load)
                    r["others"].append(others.cores)
                    log.info(
                        "round %d %s %s: p50 %.1f ms, %.1f images/s, load %.2f, others %.2f",
                        rnd,
                        level,
                        name,
                        np.median(lat) * 1000,
                        BATCH * len(bat) / bat.sum(),
                        load,
                        others.cores,
                    )
        for r in results.values():
            lat = np.concatenate(r["lat"]) * 1000
            r["p50"], r["p99"] = np.percentile(lat, [50, 99])
            bat = np.concatenate(r["bat"])
            r["ips"] = BATCH * len(bat) / bat.sum()

    rows = []
    for (level, name), r in results.items():
        ref = results[(level, "torchxrayvision, skimage resize")]
        if level == "forward" and name.startswith("torchxrayvision"):
            name = "torchxrayvision"  # no preprocessing at this level: the resizer does not matter
        rows.append(
            {
                "level": level,
                "path": name,
                "batch-1 p50 ms": f"{r['p50']:.1f}",
                "batch-1 p99 ms": f"{r['p99']:.1f}",
                "batch-32 images/s": f"{r['ips']:.1f}",
                "vs xrv, latency": f"{ref['p50'] / r['p50']:.2f}x",
                "vs xrv, throughput": f"{r['ips'] / ref['ips']:.2f}x",
                "load (1 min) before": f"{min(r['load']):.2f}–{max(r['load']):.2f}",
                "others' CPU, cores": f"{max(r['others']):.2f}",
            }
        )
    report(
        "predict",
        "uv run --group bench python bench/bench_predict.py " + " ".join(sys.argv[1:]),
        rows,
    )


if __name__ == "__main__":
    main()
