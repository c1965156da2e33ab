"""Lightning callbacks: gradient-norm monitoring, step timing, buffered metric flushing, weight averaging."""

from __future__ import annotations

import time
from functools import partial

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from stx.tracking.buffer import MetricBuffer


def global_grad_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm over the gradients of all given parameters (0 when none has a gradient)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class GradNormMonitor(L.Callback):
    """Logs `grad_norm/global` every step, before clipping (Lightning clips after this hook)."""

    def __init__(self, buffer: MetricBuffer):
        self.buffer = buffer
        self._params: list[torch.nn.Parameter] | None = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._params is None:
            self._params = [p for p in pl_module.parameters() if p.requires_grad]
        if trainer.is_global_zero:
            self.buffer.add("grad_norm/global", global_grad_norm(self._params), trainer.global_step)


class StepTimer(L.Callback):
    """Logs `step_time_s`: wall time from one optimizer step's end to the next."""

    def __init__(self, buffer: MetricBuffer):
        self.buffer = buffer
        self._last: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last is not None and trainer.is_global_zero:
            self.buffer.add("step_time_s", now - self._last, trainer.global_step - 1)
        self._last = now

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None  # validation time is not a training step


class FlushMetrics(L.Callback):
    """Sends buffered metrics to the store every `every` steps and at the end, and stops a
    run whose loss has become NaN or infinite (checked at each flush, where the values are
    on the host anyway: no extra device sync per step)."""

    def __init__(self, buffer: MetricBuffer, every: int, watch: tuple[str, ...] = ("train/loss", "val/loss")):
        self.buffer = buffer
        self.every = every
        self.watch = watch
        self._checked = dict.fromkeys(watch, 0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        if trainer.is_global_zero and trainer.global_step % self.every == 0:
            self.buffer.flush()
            self.check_finite()

    def check_finite(self) -> None:
        """Raise TrainingDiverged at the first non-finite watched value since the last check."""
        import math

        from stx.errors import TrainingDiverged

        for key in self.watch:
            history = self.buffer.history.get(key, [])
            for step, value in history[self._checked[key]:]:
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"training diverged at step {step}: {key} is {value}; lower trainer.lr, keep "
                        f"trainer.grad_clip on, or check the embeddings for extreme values")
            self._checked[key] = len(history)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self.buffer.flush()
            self.check_finite()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.buffer.flush()
            self.check_finite()


class MHCMonitor(L.Callback):
    """Logs `mhc/ds_error`, `mhc/gain` and `mhc/entropy` every `every` steps (DESIGN: the
    stability evidence of the mHC hypothesis)."""

    def __init__(self, buffer: MetricBuffer, layers: list, every: int):
        self.buffer = buffer
        self.layers = layers
        self.every = every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        from stx.model.mhc import mhc_stats

        step = trainer.global_step - 1
        if trainer.is_global_zero and step % self.every == 0:
            self.buffer.add_many(mhc_stats(self.layers), step)


class EMAWeights(WeightAveraging):
    """An exponential moving average of the weights (Lightning's `WeightAveraging`):
    validation, the best checkpoint, the end of training and so evaluation and the
    registered model all use the average; checkpoints carry both, so a resumed run goes on
    exactly.

    Why: the energy loss is estimated on sets of a few dozen cells, so the weights after
    the last step carry the noise of the last few hundred sets; their average over a
    horizon of about 1 / (1 - decay) steps does not. The decay warms up as
    min(decay, (1 + n) / (10 + n)) after n updates, so a short run is not pinned to its
    first, untrained steps.
    """

    def __init__(self, decay: float):
        super().__init__(multi_avg_fn=partial(ema_update, decay=decay))
        self.decay = decay
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._counters: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._copy_next = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        # Lightning's update (AveragedModel.update_parameters) walks the module tree for every
        # parameter, averages the frozen backbone too and reads n_averaged on the host twice (a
        # device sync per step on a GPU). Frozen parameters never move, so their average is
        # themselves: only trainable parameters and floating buffers are averaged, through
        # tensor lists made once per fit.
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning makes the copy in `setup`, before the strategy moves the module to its
        # device (and a module trained outside the strategy's move, e.g. a DDP worker's, may
        # move later): keep the copy where the module is, as Lightning's default intends
        if self._average_model is not None and self._device is None:
            self._average_model.to(pl_module.device)
        self._pairs = None  # lists are made at the first update, after any restore

    def _update(self, pl_module: L.LightningModule) -> None:
        average = self._average_model
        assert average is not None
        if self._pairs is None and any(a.device != c.device for a, c in zip(
                average.module.parameters(), pl_module.parameters(), strict=True)):
            average.update_parameters(pl_module)  # an average kept on another device on purpose
            return
        if self._pairs is None:
            params = [(a, c) for a, c in zip(average.module.parameters(), pl_module.parameters(), strict=True)
                      if c.requires_grad]
            buffers = list(zip(average.module.buffers(), pl_module.buffers(), strict=True))
            pairs = params + [(a, c) for a, c in buffers if c.is_floating_point()]
            self._pairs = ([a.detach() for a, _ in pairs], [c.detach() for _, c in pairs])
            # an integer buffer (a counter) has no average: the copy keeps the current value
            self._counters = ([a for a, c in buffers if not c.is_floating_point()],
                              [c for _, c in buffers if not c.is_floating_point()])
            self._copy_next = int(average.n_averaged) == 0  # one host read per fit (a resumed run has n > 0)
        averaged, current = self._pairs
        if self._copy_next:
            torch._foreach_copy_(averaged, current)
            self._copy_next = False
        else:
            ema_update(averaged, current, average.n_averaged, self.decay)
        if self._counters[0]:
            torch._foreach_copy_(*self._counters)
        average.n_averaged += 1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # the average is a deep copy of the module: leave out the data stream and metric buffer
        held = {name: getattr(pl_module, name, None) for name in ("stream", "buffer")}
        for name in held:
            setattr(pl_module, name, None)
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            for name, value in held.items():
                setattr(pl_module, name, value)


def ema_decay_at(n_averaged: torch.Tensor, decay: float) -> torch.Tensor:
    """The decay used for the update after `n_averaged` earlier ones (a tensor: no host sync)."""
    n = n_averaged.to(torch.float32)
    return torch.clamp((1 + n) / (10 + n), max=decay)


@torch.no_grad()
def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor,
               decay: float) -> None:
    """averaged <- d * averaged + (1 - d) * current, in place, d = `ema_decay_at`."""
    if not averaged:
        return
    d = ema_decay_at(n_averaged, decay).to(averaged[0].device)
    torch._foreach_mul_(averaged, d)
    torch._foreach_add_(averaged, torch._foreach_mul(current, 1 - d))
