"""mHC overhead, measured side by side in one run on the demo data.

    python tests/benchmarks/bench_mhc.py [--steps 200] [--blocks 2]
    python tests/benchmarks/bench_mhc.py --hidden 672 --layers 4 --heads 8 --mlp 2688 --steps 40

The first measures on the shipped stx-mini (hidden 128); the second on an untrained model
of arc-state's state_sm size, where the backbone's matrix products dominate as they do
for real checkpoints.

Prints the median step-time ratio lora-mhc / lora (goal <= 1.10; the paper reports about
6.7% at n = 4 with fused kernels) for the static and the dynamic form, alternating the
variants block by block, and the activation-memory ratio (bytes autograd saves for the
backward of one step; on a GPU also the peak allocated memory).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks.common import activation_bytes, demo, random_checkpoint, timed_fit, timed_fit_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description="mHC overhead benchmark")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--hidden", type=int, help="benchmark an untrained model of this width instead of stx-mini")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--mlp", type=int, default=2688)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        extra = []
        if args.hidden:
            ckpt = random_checkpoint(Path(tmp) / "ckpt", args.hidden, args.layers, args.heads, args.mlp)
            extra = [f'model.checkpoint="{ckpt}"']
        print(f"model: {'stx-mini' if not args.hidden else f'hidden {args.hidden}, {args.layers} layers'}")
        for dynamic in (False, True):
            cfg, table, split = demo([f"trainer.max_steps={args.steps}", f"model.mhc.dynamic={str(dynamic).lower()}",
                                      *extra])
            times: dict[str, list[tuple[float, float]]] = {"lora": [], "lora-mhc": []}
            for block in range(args.blocks):
                for variant in times:
                    times[variant].append(timed_fit_cpu(cfg, table, split, variant, Path(tmp) / f"{variant}{block}"))
            lora, mhc = (statistics.median(t[0] for t in times["lora"]), statistics.median(t[0] for t in times["lora-mhc"]))
            lora_cpu, mhc_cpu = (statistics.median(t[1] for t in times["lora"]),
                                 statistics.median(t[1] for t in times["lora-mhc"]))
            form = "dynamic" if dynamic else "static"
            print(f"step time lora-mhc ({form}, n={cfg.model.mhc.streams}) / lora: wall {mhc * 1e3:.2f} ms / "
                  f"{lora * 1e3:.2f} ms = {mhc / lora:.3f}, CPU {mhc_cpu * 1e3:.2f} ms / {lora_cpu * 1e3:.2f} ms = "
                  f"{mhc_cpu / lora_cpu:.3f}  (goal <= 1.10; batch {cfg.trainer.batch_size} x "
                  f"{cfg.trainer.cell_set_len} cells, {args.steps} steps x {args.blocks} blocks, "
                  f"{torch.get_num_threads()} threads)")
            mem_lora = activation_bytes(cfg, table, split, "lora")
            mem_mhc = activation_bytes(cfg, table, split, "lora-mhc")
            print(f"activation memory lora-mhc ({form}) / lora: {mem_mhc / 2**20:.1f} MiB / "
                  f"{mem_lora / 2**20:.1f} MiB = {mem_mhc / mem_lora:.3f}")
            if torch.cuda.is_available():
                peaks = {}
                for variant in ("lora", "lora-mhc"):
                    torch.cuda.reset_peak_memory_stats()
                    timed_fit(cfg, table, split, variant, Path(tmp) / f"gpu-{variant}")
                    peaks[variant] = torch.cuda.max_memory_allocated()
                print(f"GPU peak memory lora-mhc / lora: {peaks['lora-mhc'] / peaks['lora']:.3f}")


if __name__ == "__main__":
    main()
