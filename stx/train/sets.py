"""The sets training draws, without Lightning: the seeded stream of training batches, the
fixed validation batches, the seeding of every random generator, and the check that a
batch of sets fits in memory. A run that trains nothing (the baseline) uses these alone
and never imports the training stack."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from stx.config import TrainerConfig
from stx.data.covariates import CovariatePlan
from stx.data.load import CellTable
from stx.data.sampler import SetSampler
from stx.data.split import TRAIN, VAL, Split

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and tell DataLoader workers and DDP processes the seed:
    exactly what `lightning.seed_everything(seed, workers=True)` does, without importing it."""
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PL_SEED_WORKERS"] = "1"


class SetStream(IterableDataset):
    """An endless stream of batches; each DDP rank draws with its own seed.

    It remembers the sampler's random state before each of its last draws, so a checkpoint
    can store the state of the next batch training will consume (Lightning prefetches one
    batch ahead), and `restore()` makes a resumed run draw exactly the sets an
    uninterrupted run would.
    """

    def __init__(self, sampler: SetSampler, seed: int):
        self.sampler = sampler
        self.seed = seed
        self.draws = 0
        self._history: dict[int, torch.Tensor] = {}
        self._restored: tuple[int, torch.Tensor] | None = None

    def state_at(self, batch_index: int) -> torch.Tensor | None:
        """The sampler state just before batch `batch_index` was drawn (recent batches only)."""
        return self._history.get(batch_index)

    def restore(self, batch_index: int, state: torch.Tensor) -> None:
        """Continue at batch `batch_index` from `state` at the next iteration."""
        self._restored = (batch_index, state)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._restored is not None:
            self.draws, state = self._restored
            self.sampler.generator.set_state(state)
            self._restored = None
        else:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self.sampler.generator.manual_seed(self.seed + 7919 * rank)
            self.draws = 0
        while True:
            self._history[self.draws] = self.sampler.generator.get_state()
            self._history.pop(self.draws - 8, None)
            self.draws += 1
            yield self.sampler.sample()



@dataclass(frozen=True)
class SetSource:
    """How sets are drawn besides the trainer settings: whose velocity travels with them, the
    covariate inputs, and whether held-out groups get target-free sets for the velocity prior."""

    velocity_source: str = "control"
    covariates: CovariatePlan = field(default_factory=CovariatePlan)
    unseen_tasks: bool = False


def make_loaders(table: CellTable, split: Split, tcfg: TrainerConfig,
                 source: SetSource | None = None) -> tuple[DataLoader, DataLoader | None]:
    """The training stream and the fixed validation batches (validation never draws
    target-free sets, so val/energy_loss means the same for every variant)."""
    source = source or SetSource()
    train = SetSampler(table, split.mask(TRAIN), tcfg.batch_size, tcfg.cell_set_len, seed=tcfg.seed,
                       velocity_source=source.velocity_source, covariates=source.covariates,
                       unseen_tasks=source.unseen_tasks)
    train_loader = DataLoader(SetStream(train, tcfg.seed), batch_size=None, num_workers=0)
    val_loader = None
    if np.any(split.mask(VAL)):
        try:
            val = SetSampler(table, split.mask(VAL), tcfg.batch_size, tcfg.cell_set_len, seed=10_000 + tcfg.seed,
                             velocity_source=source.velocity_source, covariates=source.covariates)
            val_loader = DataLoader(val.fixed_batches(tcfg.val_batches), batch_size=None, num_workers=0)
        except ValueError:
            log.warning("the validation split has no group with both control and perturbed cells: "
                        "no val/loss will be logged")
    return train_loader, val_loader


def check_memory(tcfg: TrainerConfig, hidden: int, layers: int, heads: int) -> None:
    """Refuse a batch that cannot fit: a rough count of the activations one step keeps."""
    import psutil

    from stx.errors import StxError

    cells = tcfg.batch_size * tcfg.cell_set_len
    per_layer = cells * hidden * 24 + tcfg.batch_size * heads * tcfg.cell_set_len ** 2 * 3
    need = 4 * layers * per_layer * 2  # fp32, forward and backward
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        where = "GPU"
    else:
        free, where = psutil.virtual_memory().available, "RAM"
    if need > 0.8 * free:
        raise StxError(f"trainer.batch_size x trainer.cell_set_len = {tcfg.batch_size} x {tcfg.cell_set_len} needs "
                       f"about {need / 2**30:.1f} GiB of activations but only {free / 2**30:.1f} GiB of {where} is "
                       f"free: lower trainer.batch_size or trainer.cell_set_len")
