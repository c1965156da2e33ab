"""Training-step benchmark, measured side by side in one run on the demo data.

    python tests/benchmarks/bench_training.py [--steps 300]
    STX_BENCH_ARC_STATE=/path/to/arc-venv/bin/python python tests/benchmarks/bench_training.py

Prints
 (a) median step time with full tracking (buffered metrics to a real MLflow sqlite store,
     grad-norm monitor, step timer) divided by the median step time with tracking off
     (goal <= 1.03); the two configurations alternate in blocks to share the machine's noise;
 (b) when STX_BENCH_ARC_STATE names a Python with arc-state installed: stx's CPU time per
     training step (forward, energy loss, backward, optimizer) divided by arc-state's, at
     mini and state_sm sizes, full fine-tuning and LoRA (against arc-state's own LoRA and its
     full fine-tuning), each side in fresh processes (`train_step.py`) alternating in blocks
     (goal <= 0.8); `--skip-tracking` prints only (b) and (c);
 (c) the trainable fraction of a lora variant at ST-Tahoe size (hidden 1440, 4 layers,
     12 x 120 heads, MLP 4416, 2,000-dim input), with the output head trained (the
     default) and frozen (model.lora.train_head = false).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks.common import demo, timed_fit


def _block(cfg, table, split, out: Path, tracked: bool, uri: str | None) -> float:
    """Median step time with full tracking (a real MLflow store) or with none."""
    if not tracked:
        return timed_fit(cfg, table, split, "lora", out)
    from stx.tracking.run import tracked_run

    with tracked_run(uri, "bench", "bench", {}, {}) as run:
        return timed_fit(cfg, table, split, "lora", out, sink=run.send_rows, monitor=True)


def arc_ratios(arc_python: str, sizes: list[str], steps: int, blocks: int) -> list[str]:
    """stx / arc-state CPU time per step, each side in a fresh process (`train_step.py`), the
    configurations alternating in `blocks` rounds so both see the same machine noise."""
    script = str(Path(__file__).with_name("train_step.py"))
    pairs = {"full": ("full", "full"), "lora/arc-lora": ("lora", "lora"), "lora/arc-full": ("lora", "full")}
    cpu: dict[tuple[str, str, str], list[float]] = {}
    wall: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(blocks):
        for size in sizes:
            for impl, mode in (("stx", "full"), ("arc", "full"), ("stx", "lora"), ("arc", "lora")):
                python = arc_python if impl == "arc" else sys.executable
                out = subprocess.run([python, script, impl, size, mode, str(steps)], capture_output=True, text=True,
                                     check=True)
                measured = json.loads(out.stdout.strip().splitlines()[-1])
                cpu.setdefault((impl, size, mode), []).append(measured["cpu"])
                wall.setdefault((impl, size, mode), []).append(measured["wall"])
    lines = []
    for size in sizes:
        for label, (ours, theirs) in pairs.items():
            a, b = statistics.median(cpu[("stx", size, ours)]), statistics.median(cpu[("arc", size, theirs)])
            wa, wb = statistics.median(wall[("stx", size, ours)]), statistics.median(wall[("arc", size, theirs)])
            lines.append(f"{size} {label}: cpu {a * 1e3:.1f}/{b * 1e3:.1f} ms = {a / b:.2f} (wall {wa / wb:.2f})")
    return lines


def tahoe_trainable_fraction(train_head: bool) -> float:
    """trainable / total parameters of lora at ST-Tahoe size (perturbation encoder and time input included)."""
    from stx.config import LoraConfig
    from stx.model.lora import apply_lora, freeze_for_finetuning
    from stx.model.st import ModelSpec, StateTransition, count_parameters

    spec = ModelSpec(input_dim=2000, output_dim=2000, hidden_dim=1440, pert_names=("ctrl", "Burn"), dropout=0.0,
                     covariates=(("day", ("10", "14", "19")),),
                     backbone={"intermediate_size": 4416, "num_hidden_layers": 4, "num_attention_heads": 12,
                               "num_key_value_heads": 12, "head_dim": 120, "vocab_size": 32})
    with torch.device("meta"):  # counting needs shapes, not 120 M initialised weights
        model = StateTransition(spec)
    apply_lora(model, LoraConfig())
    freeze_for_finetuning(model, train_head=train_head)
    trainable, total = count_parameters(model)
    return trainable / total


def tahoe_lora_share() -> float:
    """LoRA adapter parameters / backbone parameters at ST-Tahoe size (the study's "~1.7%")."""
    from stx.config import LoraConfig
    from stx.model.lora import apply_lora
    from stx.model.st import ModelSpec, StateTransition

    spec = ModelSpec(input_dim=2000, output_dim=2000, hidden_dim=1440, pert_names=("ctrl", "Burn"), dropout=0.0,
                     backbone={"intermediate_size": 4416, "num_hidden_layers": 4, "num_attention_heads": 12,
                               "num_key_value_heads": 12, "head_dim": 120, "vocab_size": 32})
    with torch.device("meta"):
        model = StateTransition(spec)
    base = sum(p.numel() for n, p in model.transformer_backbone.named_parameters() if "embed_tokens" not in n)
    apply_lora(model, LoraConfig())
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) / base


def main() -> None:
    parser = argparse.ArgumentParser(description="stx training-step benchmark")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--arc-sizes", default="mini,sm", help="mini (hidden 128 x 4) and/or sm (state_sm)")
    parser.add_argument("--arc-steps", type=int, default=25, help="steps per process (5 of them warm-up)")
    parser.add_argument("--skip-tracking", action="store_true", help="only (b) and (c)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_tracking:
            return print_arc_and_tahoe(args)
        cfg, table, split = demo([f"trainer.max_steps={args.steps}", "trainer.log_every_n_steps=10"])
        uri = f"sqlite:///{tmp}/mlflow.db"
        tracked, plain = [], []
        for block in range(args.blocks):
            plain.append(_block(cfg, table, split, Path(tmp) / f"p{block}", False, None))
            tracked.append(_block(cfg, table, split, Path(tmp) / f"t{block}", True, uri))
        t_on, t_off = statistics.median(tracked), statistics.median(plain)
        print(f"(a) step time, tracking on / off: {t_on * 1e3:.2f} ms / {t_off * 1e3:.2f} ms = "
              f"{t_on / t_off:.3f}  (goal <= 1.03; {args.steps} steps x {args.blocks} blocks, "
              f"batch {cfg.trainer.batch_size} x {cfg.trainer.cell_set_len} cells)")

    print_arc_and_tahoe(args)


def print_arc_and_tahoe(args: argparse.Namespace) -> None:
    arc = os.environ.get("STX_BENCH_ARC_STATE")
    with_head, frozen = tahoe_trainable_fraction(True), tahoe_trainable_fraction(False)
    print(f"(c) ST-Tahoe size, LoRA r16 on attention + MLP: adapters {100 * tahoe_lora_share():.2f}% of the backbone; "
          f"trainable share of the whole model {100 * with_head:.2f}% with the output head trained (default), "
          f"{100 * frozen:.2f}% with it frozen (both include the rebuilt perturbation encoder)")
    if not arc:
        print("(b) skipped: set STX_BENCH_ARC_STATE to a Python with arc-state installed")
        return
    lines = arc_ratios(arc, args.arc_sizes.split(","), args.arc_steps, args.blocks)
    print(f"(b) training step, stx / arc-state (goal <= 0.8; {args.blocks} blocks of fresh processes, "
          f"{torch.get_num_threads()} threads, CPU): " + "; ".join(lines))


if __name__ == "__main__":
    sys.exit(main())
