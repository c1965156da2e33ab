"""GPU benchmark at ST-Tahoe size: step time, cells/s, peak memory, model-FLOPs utilisation.

    python tests/benchmarks/bench_gpu.py [--steps 30] [--batch 4] [--compile both|off|on]
    STX_BENCH_ARC_STATE=/path/to/arc-venv/bin/python python tests/benchmarks/bench_gpu.py

ST at tahoe_best's size (hidden 1440, 4 layers, 12 x 120 heads, MLP 4416, 2,000-dim input,
sets of 512 cells) with LoRA r16 and the trained head, as `stx run --variant lora` trains
it: bf16 autocast, AdamW, energy loss, forward and backward. With and without
`torch.compile`. Prints one line of figures plus the conditions. Without CUDA it says so
and exits 0 (there is nothing to measure). Model FLOPs per step use the usual 6 x
parameters x tokens for the dense layers plus attention's 12 x layers x hidden x set
length per token (forward and backward), against the card's bf16 dense peak from
`--peak-tflops` (default: looked up for H100/H200/A100, else not reported).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TAHOE = {"hidden": 1440, "layers": 4, "heads": 12, "head_dim": 120, "mlp": 4416, "dim": 2000, "set": 512}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def build(train_head: bool = True):
    import torch

    from stx.config import LoraConfig
    from stx.model.lora import apply_lora, freeze_for_finetuning
    from stx.model.st import ModelSpec, StateTransition

    spec = ModelSpec(input_dim=TAHOE["dim"], output_dim=TAHOE["dim"], hidden_dim=TAHOE["hidden"],
                     pert_names=("ctrl", "p"), dropout=0.0, cell_set_len=TAHOE["set"],
                     covariates=(("day", ("10", "14", "19")),), cell_skip=True,
                     backbone={"intermediate_size": TAHOE["mlp"], "num_hidden_layers": TAHOE["layers"],
                               "num_attention_heads": TAHOE["heads"], "num_key_value_heads": TAHOE["heads"],
                               "head_dim": TAHOE["head_dim"], "vocab_size": 32})
    model = StateTransition(spec)
    apply_lora(model, LoraConfig())
    freeze_for_finetuning(model, train_head=train_head)
    return model.to("cuda"), torch


def model_flops(model, batch: int) -> float:
    """Forward + backward FLOPs of one step (dense layers and attention)."""
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    tokens = batch * TAHOE["set"]
    attention = 12 * TAHOE["layers"] * TAHOE["hidden"] * TAHOE["set"] * tokens
    return 6 * params * tokens + attention


def time_steps(model, torch, batch: int, steps: int, compile_model: bool) -> dict[str, float]:
    from stx.data import keys
    from stx.model.losses import energy_loss

    step_model = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    data = {keys.CTRL_EMB: torch.randn(batch, TAHOE["set"], TAHOE["dim"], device="cuda", generator=gen),
            keys.PERT_INDEX: torch.ones(batch, dtype=torch.long, device="cuda"),
            keys.BATCH_INDEX: torch.zeros(batch, TAHOE["set"], dtype=torch.long, device="cuda"),
            keys.COVARIATES: torch.zeros(batch, TAHOE["set"], 1, dtype=torch.long, device="cuda")}
    target = torch.randn(batch, TAHOE["set"], TAHOE["dim"], device="cuda", generator=gen)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = energy_loss(step_model(data), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= 5:  # warm-up (and compilation) excluded
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"step_s": median, "cells_per_s": batch * TAHOE["set"] / median,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--compile", choices=("both", "off", "on"), default="both")
    parser.add_argument("--peak-tflops", type=float, help="the card's bf16 dense peak (default: by its name)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: skipped: no CUDA device here (run it where one is lent; nothing was measured)")
        return 0
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    model, torch = build()
    flops = model_flops(model, args.batch)
    results = {}
    for compiled in {"both": (False, True), "off": (False,), "on": (True,)}[args.compile]:
        figures = time_steps(model, torch, args.batch, args.steps, compiled)
        figures["mfu"] = flops / figures["step_s"] / (peak * 1e12) if peak else float("nan")
        results["compiled" if compiled else "eager"] = figures
    arc = os.environ.get("STX_BENCH_ARC_STATE")
    arc_note = "arc-state: not installed (set STX_BENCH_ARC_STATE)"
    if arc:
        out = subprocess.run([arc, "-c", "import state; print(state.__version__)"], capture_output=True, text=True)
        arc_note = f"arc-state {out.stdout.strip() or '?'}: comparison not implemented at this size"
    line = " | ".join(f"{k}: step {v['step_s'] * 1e3:.1f} ms, {v['cells_per_s']:.0f} cells/s, peak "
                      f"{v['peak_gib']:.1f} GiB, MFU {100 * v['mfu']:.1f}%" for k, v in results.items())
    print(f"bench_gpu [{name}, torch {torch.__version__}, bf16 autocast, lora r16 + head, batch {args.batch} x "
          f"{TAHOE['set']} cells, hidden {TAHOE['hidden']} x {TAHOE['layers']} layers, {args.steps} steps]: {line}; "
          f"{arc_note}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
