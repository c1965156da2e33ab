"""MetricBuffer: batching, history, and an unreachable store that loses nothing."""

import threading

import torch

from stx.tracking.buffer import MetricBuffer


class FlakySink:
    """A store that can be down, and that can hang mid-call."""

    def __init__(self, down: bool = False):
        self.down = down
        self.received: list = []
        self.calls = 0
        self.gate: threading.Event | None = None

    def __call__(self, rows):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(30)
        if self.down:
            raise ConnectionError("connection refused")
        self.received.extend(rows)


def test_buffer_flushes_in_one_batch_and_keeps_history():
    calls = []
    buffer = MetricBuffer(sink=calls.append)
    for step in range(5):
        buffer.add("train/loss", torch.tensor(float(step)), step)
        buffer.add("lr", 0.1, step)
    assert calls == []  # nothing leaves before a flush
    assert buffer.flush() == 10
    assert len(calls) == 1 and len(calls[0]) == 10
    assert buffer.values("train/loss") == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert buffer.flush() == 0 and len(calls) == 1


def test_an_outage_loses_no_metric_and_training_goes_on():
    sink = FlakySink(down=True)
    buffer = MetricBuffer(sink=sink)
    for step in range(3):
        buffer.add("train/loss", torch.tensor(float(step)), step)
    assert buffer.flush() == 0  # no exception reaches the training loop
    buffer.add("train/loss", 3.0, 3)
    assert buffer.flush() == 0 and len(buffer.unsent) == 4
    sink.down = False
    assert buffer.flush() == 4
    assert [r[2] for r in sink.received] == [0, 1, 2, 3] and buffer.unsent == []


def test_background_sender_never_blocks_the_training_loop():
    sink = FlakySink()
    sink.gate = threading.Event()  # the store hangs until released
    buffer = MetricBuffer(sink=sink, background=True)
    for step in range(50):
        buffer.add("train/loss", float(step), step)
        buffer.flush()  # returns although the sink is stuck in a call
    assert buffer.values("train/loss") == [float(s) for s in range(50)]
    sink.gate.set()
    assert buffer.close(timeout=10) == []
    assert [r[2] for r in sink.received] == list(range(50))  # in order, each once


def test_background_outage_then_recovery_sends_everything_once_in_order():
    sink = FlakySink(down=True)
    buffer = MetricBuffer(sink=sink, background=True)
    for step in range(20):
        buffer.add("train/loss", float(step), step)
        if step % 5 == 4:
            buffer.flush()
    assert _until(lambda: buffer.down_since is not None)
    sink.down = False
    buffer.add("train/loss", 20.0, 20)
    assert buffer.close(timeout=20) == []
    assert [r[2] for r in sink.received] == list(range(21))
    assert buffer.down_since is None


def test_close_returns_what_the_store_never_took():
    sink = FlakySink(down=True)
    buffer = MetricBuffer(sink=sink, background=True)
    buffer.add("train/loss", 1.5, 7)
    buffer.flush()
    rest = buffer.close(timeout=0.5)
    assert [(k, v, s) for k, v, s, _ in rest] == [("train/loss", 1.5, 7)]
    assert buffer.unsent == [] and sink.received == []


def _until(predicate, timeout=10.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False
