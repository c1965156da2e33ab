"""Tracking calls a run could not deliver, kept beside its outputs until `stx sync` sends them.

While the tracking store is unreachable at the end of a run, every record that would have
gone to it (metric rows, artifacts, tags, the model registration, the final status) is
appended here in order, one JSON object per line, and written through to disk at once: a
run that dies after this point still leaves a complete, replayable record. `stx sync` sends
the operations in order and drops each one as it lands, so a sync that is itself cut off
resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stx.errors import StxError

FILENAME = "outbox.jsonl"
OPS = ("metrics", "artifact", "tags", "register", "terminate")


class Outbox:
    """Append-only JSON-lines file of pending tracking operations of one run."""

    def __init__(self, path: Path, run_id: str):
        self.path = path
        self.run_id = run_id

    def add(self, op: str, **fields: object) -> None:
        """Record one operation; it is on disk when this returns."""
        if op not in OPS:
            raise ValueError(f"unknown outbox operation {op!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"op": op, "run_id": self.run_id, **fields}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def count(self) -> int:
        """Operations waiting (a method, not __len__: an empty outbox must still be truthy)."""
        return len(self.load()) if self.path.exists() else 0

    def load(self) -> list[dict]:
        """The pending operations, in order."""
        try:
            ops = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        except (OSError, ValueError) as err:
            raise StxError(f"{self.path}: not an outbox written by stx ({err.__class__.__name__}: {err})") from None
        for i, op in enumerate(ops, 1):
            if not isinstance(op, dict) or op.get("op") not in OPS or "run_id" not in op:
                raise StxError(f"{self.path}, line {i}: not an outbox operation (expected 'op' in {', '.join(OPS)} "
                               f"and 'run_id')")
        return ops

    def rewrite(self, ops: list[dict]) -> None:
        """Replace the file with `ops` (what is still pending), atomically."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in ops))
        os.replace(tmp, self.path)

    @classmethod
    def find(cls, where: Path) -> Outbox:
        """The outbox in a run's output folder, or the file itself."""
        path = where / FILENAME if where.is_dir() else where
        if not path.is_file():
            raise StxError(f"{where}: no {FILENAME} here; pass a run's output folder (stx_outputs/RUN_ID) or its "
                           f"{FILENAME}")
        box = cls(path, "")
        ops = box.load()
        if not ops:
            raise StxError(f"{path}: empty, nothing to send")
        box.run_id = ops[0]["run_id"]
        return box
