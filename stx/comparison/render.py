"""Draw independent figures side by side.

Matplotlib holds the GIL while it lays out and rasterises, so threads do not help; a compare's
six figures took 6 s one after another (500 runs, 2 cores). Here they are drawn by forked
processes that share the parent's memory copy-on-write (nothing is pickled: the cell arrays
of a real data set are hundreds of MB), one per free core, each taking the next figure from a
shared counter. Every figure a worker did not finish (it raised, or the worker died) is drawn
again by the parent, so an error reaches the user exactly as it would without workers, and
the files are the same either way. Where fork is unsafe or missing (macOS, Windows) or one
core is free, the parent draws them in order.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence

Draw = Callable[[], object]


def free_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def draw_all(draws: Sequence[Draw], workers: int | None = None) -> None:
    """Call every draw once (the costliest first is best: they are handed out in order)."""
    workers = min(free_cores() if workers is None else workers, len(draws))
    if workers <= 1 or sys.platform != "linux":
        for draw in draws:
            draw()
        return
    ctx = multiprocessing.get_context("fork")
    claimed = ctx.Value("i", 0)  # the next draw to take
    done = ctx.Array("b", len(draws))  # 1 once a worker's draw returned
    children = [ctx.Process(target=_work, args=(draws, claimed, done), daemon=True) for _ in range(workers - 1)]
    for child in children:
        child.start()
    try:
        _work(draws, claimed, done, raise_errors=True)
    finally:
        for child in children:
            child.join()
    for k, draw in enumerate(draws):
        if not done[k]:
            draw()


def _work(draws: Sequence[Draw], claimed, done, raise_errors: bool = False) -> None:  # noqa: ANN001 - shared values
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
        except KeyboardInterrupt:
            if raise_errors:
                raise
            return  # Ctrl-C reaches every worker: stop, the parent is stopping
        except Exception:
            if raise_errors:
                raise
            continue
        done[k] = 1
