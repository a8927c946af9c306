"""Peak memory of the commands on decompression bombs and lying files (issue 11's "no command above
2 GB"). Each command runs in a fresh process; its peak RSS is read from the kernel after it exits.

    uv run python bench/bench_bombs.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "data"))
from test_image_gate import jpeg_claiming, png_bomb  # noqa: E402

from common import report  # noqa: E402
from conftest import tiny_artifact, write_dicom  # noqa: E402

_WRAPPER = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"rc": r.returncode, "err": r.stderr, "peak_mb": peak}))
    """
)


def _run(args: list[str], cwd: Path) -> dict:
    cmd = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "cxrkit", *args]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, cwd=cwd).stdout)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {
            "PNG 30000² (875 KB)": ("bomb.png", png_bomb(30000, 30000)),
            "JPEG claiming 30000², truncated": ("liar.jpg", jpeg_claiming(30000, 30000)),
            "DICOM Rows×Columns 30000²": (
                "bomb.dcm",
                write_dicom(None, np.zeros((4, 4), np.uint16), Rows=30000, Columns=30000),
            ),
            "DICOM NumberOfFrames = DOE^JOHN": (
                "frames.dcm",
                write_dicom(None, np.zeros((8, 8), np.uint16), NumberOfFrames="77777777").replace(
                    b"77777777", b"DOE^JOHN"
                ),
            ),
        }
        model = tiny_artifact(tmp / "model", ("Edema", "Cardiomegaly"), size=32)
        rows = []
        for label, (name, data) in files.items():
            (tmp / name).write_bytes(data)
            for verb in ("explain", "predict"):
                r = _run([verb, str(model), str(tmp / name)], tmp)
                err = r["err"].strip().splitlines()
                rows.append(
                    {
                        "file": label,
                        "command": verb,
                        "exit": r["rc"],
                        "stderr lines": len(err),
                        "traceback": "yes" if "Traceback" in r["err"] else "no",
                        "peak RSS (MB)": f"{r['peak_mb']:.0f}",
                    }
                )
        floor = _run(["--version"], tmp)
        rows.append(
            {
                "file": "(none: `cxrkit --version`)",
                "command": "--version",
                "exit": floor["rc"],
                "stderr lines": 0,
                "traceback": "no",
                "peak RSS (MB)": f"{floor['peak_mb']:.0f}",
            }
        )
    report("Hostile images: peak memory", "uv run python bench/bench_bombs.py", rows)


if __name__ == "__main__":
    main()
