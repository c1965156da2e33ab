"""Metrics buffered in memory and sent to the tracking store in batches.

The training loop adds values (tensors stay on their device; no `.item()` per step);
`flush()` converts them with one transfer and hands the batch to a sink (MLflow's
`log_batch`). The full history stays in memory for end-of-run summaries and plots.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

Sink = Callable[[list[tuple[str, float, int, int]]], None]  # (key, value, step, timestamp ms)


class MetricBuffer:
    """Collects (key, value, step) and flushes them to `sink` in one call."""

    def __init__(self, sink: Sink | None = None):
        self.sink = sink
        self._pending: list[tuple[str, torch.Tensor | float, int, int]] = []
        self.unsent: list[tuple[str, float, int, int]] = []  # converted, not yet accepted by the sink
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

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
        """Convert queued values to floats (one device sync) and send everything not yet sent.

        A sink that fails (the tracking server is down) loses nothing: the rows stay in
        `unsent` and go with the next flush; training is never stopped by it. Returns the
        number of rows sent.
        """
        if self._pending:
            tensors = [v for _, v, _, _ in self._pending if isinstance(v, torch.Tensor)]
            floats = iter(torch.stack([t.float().reshape(()) for t in tensors]).cpu().tolist()) if tensors \
                else iter(())
            rows = [(k, next(floats) if isinstance(v, torch.Tensor) else float(v), s, ts)
                    for k, v, s, ts in self._pending]
            self._pending.clear()
            for key, value, step, _ in rows:
                self.history[key].append((step, value))
            self.unsent.extend(rows)
        if self.sink is None or not self.unsent:
            sent = 0 if self.sink is not None else len(self.unsent)
            if self.sink is None:
                self.unsent.clear()
            return sent
        try:
            self.sink(self.unsent)
        except Exception as err:  # any transport error: keep the rows, try again next time
            log.warning("tracking store unreachable (%s: %s); %d metric values kept for the next attempt",
                        err.__class__.__name__, str(err).splitlines()[0][:120] if str(err) else "", len(self.unsent))
            return 0
        sent = len(self.unsent)
        self.unsent = []
        return sent

    def spool(self, path: Path) -> int:
        """Write the rows the store never accepted as JSON lines (for `stx sync`)."""
        if not self.unsent:
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            for key, value, step, ts in self.unsent:
                handle.write(json.dumps({"key": key, "value": value, "step": step, "timestamp": ts}) + "\n")
        count = len(self.unsent)
        self.unsent = []
        return count

    def values(self, key: str) -> list[float]:
        """Flushed values of one metric, in step order."""
        return [v for _, v in self.history.get(key, [])]
