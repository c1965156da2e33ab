"""Figures drawn side by side: every draw runs, a worker's failure is redone by the parent and
an error still reaches the caller as itself."""

from __future__ import annotations

import os
import sys
import time

import pytest

from stx.comparison import render

FORK = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")


def _writer(folder, name, seconds=0.0):
    def draw():
        time.sleep(seconds)
        with open(folder / name, "a") as f:  # one line per call
            f.write(f"{os.getpid()}\n")
    return draw


def _wait_for(path, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _fails_in_a_worker(folder, k, how):
    """A draw that fails in a forked worker (`how`: raise or die) and succeeds in the parent,
    which first waits for a worker to have failed one (so the parent cannot take them all)."""
    parent = os.getpid()

    def draw():
        if os.getpid() != parent:
            (folder / "failed").touch()
            if how == "die":
                os._exit(3)
            raise RuntimeError("worker only")
        _wait_for(folder / "failed")
        (folder / f"drawn{k}").write_text(str(os.getpid()))
    return draw


@FORK
def test_every_draw_runs_once_and_workers_share_them(tmp_path):
    render.draw_all([_writer(tmp_path, f"fig{k}", 0.2) for k in range(6)], workers=3)
    calls = [(tmp_path / f"fig{k}").read_text().splitlines() for k in range(6)]
    assert all(len(c) == 1 for c in calls)
    assert len({c[0] for c in calls}) >= 2  # shared out (0.2 s each: one process does not take all six)


@FORK
@pytest.mark.parametrize("how", ["raise", "die"])
def test_a_draw_a_worker_fails_or_dies_in_is_redrawn_by_the_parent(tmp_path, how):
    render.draw_all([_fails_in_a_worker(tmp_path, k, how) for k in range(2)], workers=2)
    assert (tmp_path / "failed").exists()  # the worker took one (the parent could not finish before)
    assert [(tmp_path / f"drawn{k}").read_text() for k in range(2)] == [str(os.getpid())] * 2


@FORK
def test_draws_kept_here_run_in_this_process(tmp_path):
    render.draw_all([_writer(tmp_path, f"shared{k}", 0.1) for k in range(3)], workers=2,
                    here=[_writer(tmp_path, "here")])
    assert (tmp_path / "here").read_text() == f"{os.getpid()}\n"
    assert all((tmp_path / f"shared{k}").exists() for k in range(3))


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_reaches_the_caller_as_itself(tmp_path, workers):
    class Broken(ValueError):
        pass

    def broken():
        raise Broken("bad figure")

    with pytest.raises(Broken, match="bad figure"):
        render.draw_all([_writer(tmp_path, "a"), broken, _writer(tmp_path, "b")], workers=workers)


def test_one_worker_draws_in_order_in_this_process(tmp_path):
    order = []
    render.draw_all([lambda k=k: order.append((k, os.getpid())) for k in range(4)], workers=1,
                    here=[lambda: order.append(("here", os.getpid()))])
    assert order == [("here", os.getpid())] + [(k, os.getpid()) for k in range(4)]
