"""Shared pieces of the benchmark scripts: demo data, timed training runs, activation memory."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from stx.config import Config, load_config
from stx.data.load import CellTable, load_cells
from stx.data.split import Split, make_split
from stx.experiment import build_model
from stx.tracking.buffer import MetricBuffer
from stx.train.fit import fit
from stx.train.module import STSystem
from stx.variants import resolve_variant


class Clock(L.Callback):
    """Wall and CPU (this process, every thread) timestamps of every optimizer step's end."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_end(self, *args, **kwargs):
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def median_step(self, skip: int = 5) -> float:
        return statistics.median(np.diff(self.times[skip:]))

    def median_cpu(self, skip: int = 5) -> float:
        return statistics.median(np.diff(self.cpu[skip:]))


def random_checkpoint(out: Path, hidden: int, layers: int, heads: int, mlp: int) -> Path:
    """An untrained ST of a given size in the demo's space, as a run directory (for sizing)."""
    from stx.data.demo import EMBED_KEY
    from stx.model.checkpoint import load_pretrained, write_run_dir
    from stx.model.st import ModelSpec, StateTransition

    mini = load_pretrained("stx-mini").spec
    spec = ModelSpec(input_dim=mini.input_dim, output_dim=mini.output_dim, hidden_dim=hidden,
                     pert_names=mini.pert_names, dropout=0.0,
                     backbone={"intermediate_size": mlp, "num_hidden_layers": layers, "num_attention_heads": heads,
                               "num_key_value_heads": heads, "head_dim": hidden // heads, "vocab_size": 32})
    return write_run_dir(StateTransition(spec), out, control_pert="DMSO_TF", embed_key=EMBED_KEY)


def demo(overrides: list[str]) -> tuple[Config, CellTable, Split]:
    """The embedded demo config with overrides, its data and split."""
    os.environ.setdefault("STX_CACHE_DIR", str(Path(tempfile.gettempdir()) / "stx-bench-cache"))
    cfg = load_config(None, ["trainer.val_every_n_steps=100000", "trainer.checkpoint_every_n_steps=100000",
                             *overrides])
    table = load_cells(cfg)
    return cfg, table, make_split(table, cfg)


def model_for(cfg: Config, table: CellTable, variant: str) -> torch.nn.Module:
    """The model `stx run` would train (covariate inputs included)."""
    from stx.data.covariates import plan_covariates

    return build_model(cfg, resolve_variant(variant), table, plan_covariates(table, cfg))


def timed_fit(cfg: Config, table: CellTable, split: Split, variant: str, out: Path,
              sink=None, monitor: bool = False) -> float:
    """Median step time (s) of one training run of `variant`."""
    return timed_fit_cpu(cfg, table, split, variant, out, sink, monitor)[0]


def timed_fit_cpu(cfg: Config, table: CellTable, split: Split, variant: str, out: Path,
                  sink=None, monitor: bool = False) -> tuple[float, float]:
    """Median wall and CPU time (s) of a step of one training run of `variant`."""
    from stx.data.covariates import plan_covariates
    from stx.train.sets import SetSource

    model = model_for(cfg, table, variant)
    clock = Clock()
    buffer = MetricBuffer(sink=sink, background=sink is not None)  # as stx run sends them
    system = STSystem(model, cfg.trainer, buffer)
    fit(system, table, split, cfg.trainer, out, progress=False, monitor=monitor, extra_callbacks=(clock,),
        source=SetSource(covariates=plan_covariates(table, cfg)))
    buffer.close(timeout=60)
    return clock.median_step(), clock.median_cpu()


def activation_bytes(cfg: Config, table: CellTable, split: Split, variant: str) -> int:
    """Bytes of tensors autograd saves for backward in one training step (activation memory)."""
    from stx.data.covariates import plan_covariates
    from stx.train.sets import SetSource, make_loaders

    model = model_for(cfg, table, variant)
    system = STSystem(model, cfg.trainer, MetricBuffer())
    batch = next(iter(make_loaders(table, split, cfg.trainer, SetSource(covariates=plan_covariates(table, cfg)))[0]))
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[id(t.untyped_storage())] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = system.shared_step(batch)
    loss.backward()
    return sum(seen.values())
