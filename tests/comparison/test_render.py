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


@FORK
def test_every_draw_runs_once_and_workers_share_them(tmp_path):
    render.draw_all([_writer(tmp_path, f"fig{k}", 0.2) for k in range(6)], workers=3)
    calls = [(tmp_path / f"fig{k}").read_text().splitlines() for k in range(6)]
    assert all(len(c) == 1 for c in calls)
    assert len({c[0] for c in calls}) >= 2  # shared out (0.2 s each: one process does not take all six)


@FORK
def test_a_draw_that_fails_in_a_worker_is_redrawn_by_the_parent(tmp_path):
    parent = os.getpid()
    (tmp_path / "calls").mkdir()

    def flaky():
        (tmp_path / "calls" / str(os.getpid())).touch()
        if os.getpid() != parent:
            raise RuntimeError("worker only")
        (tmp_path / "flaky.png").write_text("ok")

    slow = [_writer(tmp_path, f"slow{k}") for k in range(4)]
    render.draw_all([*slow, flaky], workers=2)
    assert (tmp_path / "flaky.png").read_text() == "ok"


@FORK
def test_a_worker_that_dies_mid_draw_leaves_it_to_the_parent(tmp_path):
    parent = os.getpid()

    def dies():
        if os.getpid() != parent:
            os._exit(3)
        (tmp_path / "done").write_text("parent")

    render.draw_all([dies, dies, dies], workers=2)
    assert (tmp_path / "done").read_text() == "parent"


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
    render.draw_all([lambda k=k: order.append((k, os.getpid())) for k in range(4)], workers=1)
    assert order == [(k, os.getpid()) for k in range(4)]
