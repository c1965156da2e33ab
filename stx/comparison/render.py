"""Draw independent figures side by side.

Matplotlib holds the GIL while it lays out and rasterises, so threads do not help; a compare's
six figures took 6 s one after another (500 runs, 2 cores). Here they are drawn by forked
processes that share the parent's memory copy-on-write (nothing is pickled: the cell arrays
of a real data set are hundreds of MB), one per free core, each taking the next figure from a
shared counter. Every figure a worker did not finish (it raised, died or hung) is drawn
again by the parent, so an error reaches the user exactly as it would without workers, and
the files are the same either way. Draws that must not run in a forked child (UMAP: numba's
OpenMP aborts in a child forked from a process that used it) are passed as `here`. Where
fork is unsafe or missing (macOS, Windows) or one core is free, the parent draws in order.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence

Draw = Callable[[], object]
WORKER_TIMEOUT_S = 600.0  # a worker still drawing this long after the parent is done is stopped


def free_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def draw_all(draws: Sequence[Draw], workers: int | None = None, here: Sequence[Draw] = ()) -> None:
    """Call every draw once: `here` in this process first, `draws` shared with forked workers
    (the costliest first is best: they are handed out in order)."""
    workers = min(free_cores() if workers is None else workers, len(draws) + 1 if here else len(draws))
    if workers <= 1 or not draws or sys.platform != "linux":
        for draw in (*here, *draws):
            draw()
        return
    ctx = multiprocessing.get_context("fork")
    claimed = ctx.Value("i", 0)  # the next draw to take
    done = ctx.Array("b", len(draws), lock=False)  # 1 once a worker's draw returned; one writer per index
    children = [ctx.Process(target=_worker, args=(draws, claimed, done), daemon=True) for _ in range(workers - 1)]
    for child in children:
        child.start()
    try:
        for draw in here:
            draw()
        _take(draws, claimed, done, raise_errors=True)
    finally:
        for child in children:
            child.join(WORKER_TIMEOUT_S)
            if child.is_alive():  # hung (a lock held at fork time): its draw is redrawn below
                child.kill()
                child.join()
    for k, draw in enumerate(draws):
        if not done[k]:
            draw()


def _worker(draws: Sequence[Draw], claimed, done) -> None:  # noqa: ANN001 - shared values
    try:
        _take(draws, claimed, done)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: stop quietly, the parent is stopping
        pass


def _take(draws: Sequence[Draw], claimed, done, raise_errors: bool = False) -> None:  # noqa: ANN001 - shared values
    """Take draws off the counter until none is left. A worker's failure is left for the parent
    to redo; the parent's own is raised (after the workers finish)."""
    while True:
        with claimed.get_lock():
            k = claimed.value
            claimed.value += 1
        if k >= len(draws):
            return
        try:
            draws[k]()
        except Exception:
            if raise_errors:
                raise
            continue
        done[k] = 1
