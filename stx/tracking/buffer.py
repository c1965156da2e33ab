"""Metrics buffered in memory and sent to the tracking store in batches.

The training loop adds values (tensors stay on their device; no `.item()` per step);
`flush()` converts them with one transfer and hands the batch to a sink (MLflow's
`log_batch`). The full history stays in memory for end-of-run summaries and plots.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch

Sink = Callable[[list[tuple[str, float, int, int]]], None]  # (key, value, step, timestamp ms)


class MetricBuffer:
    """Collects (key, value, step) and flushes them to `sink` in one call."""

    def __init__(self, sink: Sink | None = None):
        self.sink = sink
        self._pending: list[tuple[str, torch.Tensor | float, int, int]] = []
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
        """Convert queued values to floats (one device sync) and send them; returns the count."""
        if not self._pending:
            return 0
        tensors = [v for _, v, _, _ in self._pending if isinstance(v, torch.Tensor)]
        floats = iter(torch.stack([t.float().reshape(()) for t in tensors]).cpu().tolist()) if tensors else iter(())
        rows = [(k, next(floats) if isinstance(v, torch.Tensor) else float(v), s, ts)
                for k, v, s, ts in self._pending]
        self._pending.clear()
        for key, value, step, _ in rows:
            self.history[key].append((step, value))
        if self.sink is not None:
            self.sink(rows)
        return len(rows)

    def values(self, key: str) -> list[float]:
        """Flushed values of one metric, in step order."""
        return [v for _, v in self.history.get(key, [])]
