"""Metrics buffered in memory and sent to the tracking store in batches.

The training loop adds values (tensors stay on their device; no `.item()` per step);
`flush()` converts them with one transfer and hands the batch to a sink (MLflow's
`log_batch`). The full history stays in memory for end-of-run summaries and plots.

With `background=True` the sink is called from a sender thread, so a slow or unreachable
store never stalls a training step: rows the store did not accept stay queued and go with
the next attempt (backing off while it is down), in their original order. `close()` gives
the store a last grace period and returns what it never accepted, for the run's outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from stx.tracking.store import describe_error

log = logging.getLogger(__name__)

Row = tuple[str, float, int, int]  # (key, value, step, timestamp ms)
Sink = Callable[[list[Row]], None]
MAX_BACKOFF_S = 15.0


class MetricBuffer:
    """Collects (key, value, step) and sends them to `sink` in batches."""

    def __init__(self, sink: Sink | None = None, background: bool = False):
        self.sink = sink
        self._pending: list[tuple[str, torch.Tensor | float, int, int]] = []
        self._unsent: list[Row] = []  # converted, not yet accepted by the sink
        self._lock = threading.Lock()  # guards _unsent between the loop and the sender
        self._send_lock = threading.Lock()  # one sink call at a time, rows in order
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.down_since: float | None = None  # wall time of the first failed send of an outage
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if sink is not None and background:
            self._thread = threading.Thread(target=self._sender, name="stx-metrics", daemon=True)
            self._thread.start()

    @property
    def unsent(self) -> list[Row]:
        """Rows the store has not accepted yet (a copy)."""
        with self._lock:
            return list(self._unsent)

    def add(self, key: str, value: torch.Tensor | float, step: int) -> None:
        """Queue one value; tensors are detached, not synchronised."""
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self._pending.append((key, value, int(step), int(time.time() * 1000)))

    def add_many(self, values: dict[str, torch.Tensor | float], step: int) -> None:
        """Queue several values of one step."""
        for key, value in values.items():
            self.add(key, value, step)

    def flush(self) -> int:
        """Convert queued values to floats (one device sync) and send what is not sent yet.

        A sink that fails (the store is down) loses nothing and never stops training: the
        rows stay queued for the next attempt. Returns the number of rows sent by this call
        (0 in background mode, where the sender thread sends them).
        """
        self._convert()
        if self.sink is None:
            with self._lock:
                count = len(self._unsent)
                self._unsent.clear()
            return count
        if self._thread is not None:
            self._wake.set()
            return 0
        return self._send()

    def close(self, timeout: float) -> list[Row]:
        """Stop the sender and keep trying for up to `timeout` seconds; returns (and forgets)
        the rows the store never accepted."""
        deadline = time.monotonic() + timeout
        self._convert()
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            # a call already in flight may still land its rows: then they are sent twice, and the
            # store keeps one copy (MLflow ignores a metric row with the same key, step, value and time)
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
            self._thread = None
        delay = 0.5
        while self.sink is not None and self.unsent and time.monotonic() < deadline:
            if self._send():
                break
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, MAX_BACKOFF_S)
        with self._lock:
            rest, self._unsent = self._unsent, []
        return rest

    def values(self, key: str) -> list[float]:
        """Flushed values of one metric, in step order."""
        return [v for _, v in self.history.get(key, [])]

    def _convert(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        tensors = [v for _, v, _, _ in pending if isinstance(v, torch.Tensor)]
        floats = iter(torch.stack([t.float().reshape(()) for t in tensors]).cpu().tolist()) if tensors else iter(())
        rows = [(k, next(floats) if isinstance(v, torch.Tensor) else float(v), s, ts) for k, v, s, ts in pending]
        for key, value, step, _ in rows:
            self.history[key].append((step, value))
        with self._lock:
            self._unsent.extend(rows)

    def _send(self) -> int:
        """One attempt to send everything queued; the number of rows accepted."""
        with self._send_lock:
            with self._lock:
                batch = list(self._unsent)
            if not batch:
                return 0
            try:
                self.sink(batch)
            except Exception as err:  # any transport error: keep the rows for the next attempt
                if self.down_since is None:
                    self.down_since = time.time()
                    log.warning("tracking store unreachable (%s): training goes on; %d metric values are kept "
                                "and resent when it answers", describe_error(err), len(batch))
                return 0
            with self._lock:
                del self._unsent[:len(batch)]  # only appends happened meanwhile
            if self.down_since is not None:
                log.warning("tracking store reachable again after %.0f s: %d held metric values sent",
                            time.time() - self.down_since, len(batch))
                self.down_since = None
            return len(batch)

    def _sender(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if delay:  # the store is down: retry on a schedule, not on every flush
                self._stop.wait(delay)
            else:
                self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                queued = bool(self._unsent)
            delay = 0.0 if not queued or self._send() else min(max(delay * 2, 1.0), MAX_BACKOFF_S)
