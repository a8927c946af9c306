"""A process pool for the CPU-bound stages (synthetic rendering, cache building).

On Linux workers are forked (cheap, and a user's script needs no ``if __name__ == "__main__"``
guard) with OpenCV set to one thread *in the parent* before the fork: calling ``cv2.setNumThreads`` in a forked
child can hang for ever when the parent's OpenCV thread pool was busy at the fork. One process per
core; OpenCV's own threads would only compete with the other workers. Workers ignore Ctrl-C (the
parent handles it and ends the pool) and, on Linux, die with the parent.

Elsewhere fork is not safe: on macOS a process that has started threads (OpenCV's, torch's,
Accelerate's) can deadlock in a forked child, which is why Python 3.8 made spawn macOS's default.
There, and on Windows, workers are spawned (``start_method()``; ``CXRKIT_START_METHOD`` overrides it
for experiments, e.g. ``forkserver``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Iterator
from multiprocessing.pool import Pool

#: Environment variable that picks the start method (fork, spawn or forkserver).
START_METHOD_ENV = "CXRKIT_START_METHOD"


def start_method(platform: str | None = None) -> str:
    """How worker processes start: ``fork`` on Linux, ``spawn`` elsewhere (see the module doc)."""
    import sys

    chosen = os.environ.get(START_METHOD_ENV, "").strip().lower()
    if chosen:
        if chosen not in mp.get_all_start_methods():
            from cxrkit.core.errors import CxrkitError, did_you_mean

            raise CxrkitError(
                did_you_mean(chosen, mp.get_all_start_methods(), what=f"{START_METHOD_ENV} value")
            )
        return chosen
    return "fork" if (platform or sys.platform).startswith("linux") else "spawn"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def one_cv2_thread() -> Iterator[None]:
    """OpenCV single-threaded inside the block, then as before."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _worker_init() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    import cv2

    if cv2.getNumThreads() != 1:  # a spawned worker (no fork): nothing inherited, nothing to hang
        cv2.setNumThreads(1)


def _die_with_parent() -> None:
    """Linux: end this worker when the parent is killed, instead of finishing work for nobody."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, ValueError):  # not Linux: workers stop on a broken pipe
        pass


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[Pool]:
    """A pool of ``workers`` processes, set up as the module docstring says; closed on exit."""
    ctx = mp.get_context(start_method())
    with one_cv2_thread():  # inherited by the forked workers
        pool = ctx.Pool(workers, initializer=_worker_init)
    try:
        yield pool
        pool.close()
    finally:
        _shut_down(pool)


def _shut_down(pool: Pool, timeout: float = 20.0) -> None:
    """Stop a pool without risking a hang.

    ``Pool.terminate()`` can wait forever when the pool's task-feeding thread is blocked writing to
    a full task pipe whose readers are gone (seen when a build was interrupted with many chunks
    still queued). ``terminate``/``join`` therefore get a deadline in a helper thread; past it the
    workers are killed and the pool's own daemon threads are left behind, never the caller.
    """

    def stop() -> None:
        pool.terminate()
        pool.join()

    t = threading.Thread(target=stop, name="cxrkit-pool-shutdown", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for proc in list(getattr(pool, "_pool", None) or []):
            with contextlib.suppress(Exception):
                proc.kill()
        logging.getLogger(__name__).debug(
            "worker pool did not stop in %.0f s; left behind", timeout
        )
