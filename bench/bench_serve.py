"""The web service under load: ``cxrkit serve`` on loopback, 20 concurrent clients, POST /predict.

For each architecture (random weights, 224 px, ``gray3``, 14 findings, torch runtime on the CPU, as
``cxrkit serve`` runs by default) the script writes an artifact, starts ``python -m cxrkit serve
ARTIFACT --host 127.0.0.1 --port P`` as a subprocess (one uvicorn process, one worker), waits for
``GET /health``, sends 20 warm-up requests, then ``--requests`` ``POST /predict`` requests from
``--clients`` concurrent httpx ``AsyncClient`` tasks, each uploading the same 8-bit PNG (a synthetic
frontal film, ``--png-size`` px square). A probe asks ``GET /health`` every 0.5 s during the run, to
show whether the server still answers other requests while it is busy. The server is stopped with
SIGINT (uvicorn's graceful shutdown) and its exit status is reported.

Every response must be 200 with one probability per finding; anything else counts as an error.
Before each run the script waits until the 1-minute load is below ``--max-load`` and records it,
and the CPU time other processes used during the run (client and server are ours).

Usage: uv run python bench/bench_serve.py [--archs densenet121,resnet18] [--requests 1000]
       [--clients 20]
Goal (issue 6): 1,000 requests from 20 concurrent clients with zero errors; report requests/s and
p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import OthersCpu, proc_cpu_s, synthetic_films, wait_quiet  # noqa: E402
from common import report  # noqa: E402
from cxrkit.core.findings import CHEXPERT_FINDINGS  # noqa: E402
from cxrkit.data.inputs import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from cxrkit.model.artifact import save_artifact  # noqa: E402
from cxrkit.model.networks import create_model  # noqa: E402
from cxrkit.model.onnx import export_onnx  # noqa: E402

log = logging.getLogger("bench_serve")
SIZE = 224


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_artifact(folder: Path, arch: str) -> Path:
    model = create_model(arch, pretrained=False, num_classes=14, input_mode="gray3")
    save_artifact(
        model.eval(),
        folder,
        arch=arch,
        findings=CHEXPERT_FINDINGS,
        input_mode="gray3",
        image_size=SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    return folder


def start_server(artifact: Path, port: int, logfile: Path, runtime: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cxrkit", "serve", str(artifact), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--runtime", runtime]
    out = logfile.open("w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before serving")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer {base}/health within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> int | str:
    """SIGINT (uvicorn shuts down gracefully); the exit status, or how it had to be stopped."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
            return "SIGTERM needed"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return "SIGKILL needed"


async def load(base: str, png: bytes, requests: int, clients: int) -> dict:
    latencies: list[float] = []
    health: list[float] = []
    errors: list[str] = []
    sent = 0
    done = asyncio.Event()

    def ok(r: httpx.Response) -> bool:
        return r.status_code == 200 and len(r.json()["probabilities"]) == len(CHEXPERT_FINDINGS)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests:
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await http.post(
                    f"{base}/predict", files={"file": ("film.png", png, "image/png")}
                )
                if not ok(r):
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(repr(e))
            latencies.append(time.perf_counter() - t0)

    async def probe(http: httpx.AsyncClient) -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            try:
                await http.get(f"{base}/health")
                health.append(time.perf_counter() - t0)
            except httpx.HTTPError as e:
                errors.append(f"health: {e!r}")
            await asyncio.sleep(0.5)

    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        prober = asyncio.create_task(probe(http))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
        done.set()
        await prober
    return {
        "latencies": np.array(latencies),
        "health": np.array(health),
        "errors": errors,
        "wall": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archs", default="densenet121,resnet18")
    ap.add_argument("--runtimes", default="torch,onnx", help="serve --runtime values to compare")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--png-size", type=int, default=512)
    ap.add_argument("--max-load", type=float, default=0.8)
    ap.add_argument("--max-wait", type=float, default=240.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    ok_png, buf = cv2.imencode(".png", synthetic_films(1, args.png_size)[0])
    assert ok_png
    png = buf.tobytes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, runtime in itertools.product(args.archs.split(","), args.runtimes.split(",")):
            art = Path(tmp) / arch
            if not (art / "model.json").is_file():
                make_artifact(art, arch)
            if runtime == "onnx" and not (art / "model.onnx").is_file():
                export_onnx(art)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start_server(art, port, Path(tmp) / f"{arch}-{runtime}.log", runtime)
            try:
                wait_healthy(base, proc)
                for _ in range(20):  # warm-up: first calls allocate, oneDNN picks kernels
                    httpx.post(
                        f"{base}/predict", files={"file": ("w.png", png, "image/png")}, timeout=120
                    ).raise_for_status()
                before = wait_quiet(args.max_load, args.max_wait)
                server_cpu0 = proc_cpu_s(proc.pid)
                with OthersCpu((proc.pid,)) as others:
                    res = asyncio.run(load(base, png, args.requests, args.clients))
                server_cpu = proc_cpu_s(proc.pid) - server_cpu0
            finally:
                status = stop_server(proc)
            lat = res["latencies"] * 1000
            hl = res["health"] * 1000
            n = len(lat)
            log.info("%s: %d errors %s", arch, len(res["errors"]), res["errors"][:3])
            rows.append(
                {
                    "model": f"{arch} 224 px",
                    "runtime": runtime,
                    "requests": n,
                    "clients": args.clients,
                    "errors": len(res["errors"]),
                    "wall s": f"{res['wall']:.1f}",
                    "requests/s": f"{n / res['wall']:.1f}",
                    "p50 ms": f"{np.percentile(lat, 50):.0f}",
                    "p99 ms": f"{np.percentile(lat, 99):.0f}",
                    "GET /health during load, p50 / max ms": (
                        f"{np.percentile(hl, 50):.0f} / {hl.max():.0f}" if len(hl) else "none"
                    ),
                    "server CPU ms/request": f"{server_cpu * 1000 / n:.0f}",
                    "server exit": status,
                    "load (1 min) before": f"{before:.2f}",
                    "others' CPU, cores": f"{others.cores:.2f}",
                }
            )
            log.info("%s", rows[-1])
    log.info(
        "server: 1 uvicorn process, 1 worker (cxrkit serve --runtime R), torch %s, %d threads, "
        "PNG %d bytes",
        torch.__version__,
        torch.get_num_threads(),
        len(png),
    )
    report(
        "serve",
        "uv run python bench/bench_serve.py " + " ".join(sys.argv[1:]),
        rows,
    )


if __name__ == "__main__":
    main()
