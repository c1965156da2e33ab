"""GPU benchmark at ST-Tahoe size: step time, cells/s, peak memory, model-FLOPs utilisation.

    python tests/benchmarks/bench_gpu.py [--steps 30] [--batch 4] [--compile both|off|on]
    STX_BENCH_ARC_STATE=/path/to/arc-venv/bin/python python tests/benchmarks/bench_gpu.py
    python tests/benchmarks/bench_gpu.py --smoke     # the same code path on CPU at a tiny size

ST at tahoe_best's size (hidden 1440, 4 layers, 12 x 120 heads, MLP 4416, 2,000-dim input,
sets of 512 cells) with LoRA r16 and the trained head, as `stx run --variant lora` trains
it: bf16 autocast, AdamW, energy loss, forward and backward. With and without
`torch.compile`. Prints one line of figures plus the conditions. Without CUDA it says so
and exits 0 (there is nothing to measure). Model FLOPs per step count what the step must
compute: 2 x parameters x tokens forward and again backward for the input gradients, plus
2 x trainable parameters x tokens for the weight gradients (a frozen weight has none: the
usual 6 x parameters would overstate a LoRA step's utilisation by half), plus attention's
12 x layers x hidden x set length per token; against the card's bf16 dense peak from
`--peak-tflops` (default: looked up for H100/H200/A100, else not reported).

With `STX_BENCH_ARC_STATE` (a Python that has arc-state), both sides also run
`train_step.py` in fresh processes at the same size (the same plain ST on both sides, LoRA
r16: stx's on all seven projections, arc-state's on attention, its default) and the line
gains their step-time and peak-memory ratios.

`--smoke` runs the script on the CPU at a tiny size (model, bf16 autocast, timing loop, FLOPs,
JSON, the arc-state side), so a test can check it before a GPU is lent for its few minutes;
the CUDA-only calls (fused AdamW, synchronisation, peak memory, the card's peak and so MFU)
and `torch.compile` (unless `--compile on`) are not exercised there. Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TAHOE = {"hidden": 1440, "layers": 4, "heads": 12, "head_dim": 120, "mlp": 4416, "dim": 2000, "set": 512}
SMOKE = {"hidden": 64, "layers": 2, "heads": 4, "head_dim": 16, "mlp": 128, "dim": 32, "set": 16}
STEP_SCRIPT = Path(__file__).with_name("train_step.py")
ARC_TIMEOUT_S = 300.0
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def build(size: dict = TAHOE, device: str = "cuda", train_head: bool = True):
    import torch

    from stx.config import LoraConfig
    from stx.model.lora import apply_lora, freeze_for_finetuning
    from stx.model.st import ModelSpec, StateTransition

    spec = ModelSpec(input_dim=size["dim"], output_dim=size["dim"], hidden_dim=size["hidden"],
                     pert_names=("ctrl", "p"), dropout=0.0, cell_set_len=size["set"],
                     covariates=(("day", ("10", "14", "19")),), cell_skip=True,
                     backbone={"intermediate_size": size["mlp"], "num_hidden_layers": size["layers"],
                               "num_attention_heads": size["heads"], "num_key_value_heads": size["heads"],
                               "head_dim": size["head_dim"], "vocab_size": 32})
    model = StateTransition(spec)
    apply_lora(model, LoraConfig())
    freeze_for_finetuning(model, train_head=train_head)
    return model.to(device), torch


def model_flops(model, batch: int, size: dict = TAHOE) -> float:
    """Forward + backward FLOPs of one step: dense layers (no weight gradient for a frozen
    weight) and attention. Input gradients are counted for every layer, the first included,
    whose input (the data) needs none: a few percent high at ST-Tahoe size."""
    dense = [p for n, p in model.named_parameters() if "embed_tokens" not in n]
    params = sum(p.numel() for p in dense)
    trainable = sum(p.numel() for p in dense if p.requires_grad)
    tokens = batch * size["set"]
    attention = 12 * size["layers"] * size["hidden"] * size["set"] * tokens
    return (4 * params + 2 * trainable) * tokens + attention


def time_steps(model, torch, batch: int, steps: int, compile_model: bool, size: dict = TAHOE,
               device: str = "cuda") -> dict[str, float]:
    from stx.data import keys
    from stx.model.losses import energy_loss

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    step_model = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=cuda or None)
    gen = torch.Generator(device=device).manual_seed(0)
    data = {keys.CTRL_EMB: torch.randn(batch, size["set"], size["dim"], device=device, generator=gen),
            keys.PERT_INDEX: torch.ones(batch, dtype=torch.long, device=device),
            keys.BATCH_INDEX: torch.zeros(batch, size["set"], dtype=torch.long, device=device),
            keys.COVARIATES: torch.zeros(batch, size["set"], 1, dtype=torch.long, device=device)}
    target = torch.randn(batch, size["set"], size["dim"], device=device, generator=gen)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 5):
        sync()
        start = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            loss = energy_loss(step_model(data), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i >= 5:  # warm-up (and compilation) excluded
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"step_s": median, "cells_per_s": batch * size["set"] / median,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def arc_comparison(arc_python: str, size_name: str, steps: int, device: str, batch: int) -> dict[str, dict]:
    """stx and arc-state LoRA steps at one size, each `train_step.py` in a fresh process."""
    out = {}
    for impl, python in (("stx", sys.executable), ("arc", arc_python)):
        try:  # a hung import must not eat the few minutes a device is lent for
            done = subprocess.run([python, str(STEP_SCRIPT), impl, size_name, "lora", str(steps + 5), "--device",
                                   device, "--bf16", "--batch", str(batch)], capture_output=True, text=True,
                                  timeout=ARC_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"bench_gpu: train_step.py {impl} did not finish in {ARC_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"bench_gpu: train_step.py {impl} failed: {tail}")
        out[impl] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} GiB"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--compile", choices=("both", "off", "on"), default="both")
    parser.add_argument("--peak-tflops", type=float, help="the card's bf16 dense peak (default: by its name)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true",
                        help="run the script on the CPU at a tiny size (checks it before a GPU is lent; measures nothing)")
    args = parser.parse_args()
    import torch

    if args.smoke:
        device, size, size_name, name, batch = "cpu", SMOKE, "smoke", "CPU smoke run: figures mean nothing", 2
        modes = {"both": (False,), "off": (False,), "on": (True,)}[args.compile]  # CPU compile only when asked
    elif not torch.cuda.is_available():
        print("bench_gpu: skipped: no CUDA device here (run it where one is lent; nothing was measured)")
        return 0
    else:
        device, size, size_name, name, batch = "cuda", TAHOE, "tahoe", torch.cuda.get_device_name(), args.batch
        modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.compile]
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    model, torch = build(size, device)
    flops = model_flops(model, batch, size)
    results = {}
    for compiled in modes:
        figures = time_steps(model, torch, batch, args.steps, compiled, size, device)
        figures["mfu"] = flops / figures["step_s"] / (peak * 1e12) if peak else None
        results["compiled" if compiled else "eager"] = figures
    arc = os.environ.get("STX_BENCH_ARC_STATE")
    arc_note, arc_figures = "arc-state: not installed (set STX_BENCH_ARC_STATE)", None
    if arc:
        del model  # its memory would count in neither process, but would crowd the card
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        arc_figures = arc_comparison(arc, size_name, args.steps, device, batch)
        ours, theirs = arc_figures["stx"], arc_figures["arc"]
        memory = (f", peak {_gib(ours['peak_gib'])} / {_gib(theirs['peak_gib'])} = "
                  f"{ours['peak_gib'] / theirs['peak_gib']:.2f}" if ours["peak_gib"] and theirs["peak_gib"] else "")
        arc_note = (f"stx / arc-state lora step (eager, fresh processes, the same plain ST, each tool's own "
                    f"LoRA defaults: stx r16 on 7 projections, no dropout, fused AdamW on a GPU; arc-state r16 on "
                    f"attention, dropout 0.05, default AdamW): "
                    f"{ours['wall'] * 1e3:.1f} / {theirs['wall'] * 1e3:.1f} ms = {ours['wall'] / theirs['wall']:.2f}"
                    f"{memory}")
    line = " | ".join(f"{k}: step {v['step_s'] * 1e3:.1f} ms, {v['cells_per_s']:.0f} cells/s, peak "
                      f"{_gib(v['peak_gib'])}, MFU {_percent(v['mfu'])}"
                      for k, v in results.items())
    print(f"bench_gpu [{name}, torch {torch.__version__}, bf16 autocast, lora r16 + head, batch {batch} x "
          f"{size['set']} cells, hidden {size['hidden']} x {size['layers']} layers, {args.steps} steps]: {line}; "
          f"{arc_note}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "size": size, "batch": batch, "results": results,
                                         "arc_state": arc_figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
