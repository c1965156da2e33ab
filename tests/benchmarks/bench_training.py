"""Training-step benchmark, measured side by side in one run on the demo data.

    python tests/benchmarks/bench_training.py [--steps 300]
    STX_BENCH_ARC_STATE=/path/to/arc-venv/bin/python python tests/benchmarks/bench_training.py

Prints
 (a) median step time with full tracking (buffered metrics to a real MLflow sqlite store,
     grad-norm monitor, step timer) divided by the median step time with tracking off
     (goal <= 1.03); the two configurations alternate in blocks to share the machine's noise;
 (b) when STX_BENCH_ARC_STATE names a Python with arc-state installed: stx's median step
     time (forward, energy loss, backward, AdamW) divided by arc-state's for the same model
     size, batch and set length (goal <= 1.0);
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
import textwrap
import time
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


ARC_SCRIPT = textwrap.dedent('''
    import json, statistics, sys, time, torch
    from state.tx.models.state_transition import StateTransitionPerturbationModel
    steps, B, S, D, P = map(int, sys.argv[1:6])
    torch.manual_seed(0)
    bb = {"bidirectional_attention": True, "max_position_embeddings": S, "hidden_size": 128,
          "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
          "head_dim": 32, "use_cache": False, "vocab_size": 32}
    m = StateTransitionPerturbationModel(input_dim=D, output_dim=D, pert_dim=P, batch_dim=None, gene_dim=D,
        hvg_dim=D, embed_key="X_state", output_space="embedding", gene_names=None, batch_size=B,
        control_pert="c", basal_mapping_strategy="random", lr=1e-4, hidden_dim=128, cell_set_len=S,
        n_encoder_layers=2, n_decoder_layers=2, use_basal_projection=True, predict_residual=True,
        transformer_backbone_key="llama", transformer_backbone_kwargs=bb, loss="energy",
        distributional_loss="energy", gene_decoder_bool=False, dropout=0.0)
    m.log = lambda *a, **k: None
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    eye = torch.eye(P)
    times = []
    for i in range(steps):
        batch = {"ctrl_cell_emb": torch.randn(B * S, D), "pert_cell_emb": torch.randn(B * S, D),
                 "pert_emb": eye[torch.randint(0, P, (B,))].repeat_interleave(S, 0)}
        t = time.perf_counter()
        loss = m.training_step(batch, i)
        opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"median": statistics.median(times[5:])}))
''')


def _stx_plain_steps(steps: int, b: int, s: int, d: int, p: int) -> float:
    from stx.data import keys
    from stx.model.losses import energy_loss
    from stx.model.st import ModelSpec, StateTransition

    torch.manual_seed(0)
    spec = ModelSpec(input_dim=d, output_dim=d, hidden_dim=128, pert_names=tuple(map(str, range(p))), dropout=0.0,
                     backbone={"intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                               "num_key_value_heads": 4, "head_dim": 32, "vocab_size": 32})
    model = StateTransition(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps):
        batch = {keys.CTRL_EMB: torch.randn(b, s, d), keys.PERT_INDEX: torch.randint(0, p, (b,))}
        target = torch.randn(b, s, d)
        t = time.perf_counter()
        loss = energy_loss(model(batch), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[5:])


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
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
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

    arc = os.environ.get("STX_BENCH_ARC_STATE")
    b, s, d, p = cfg.trainer.batch_size, cfg.trainer.cell_set_len, table.spec.embed_dim, 13
    with_head, frozen = tahoe_trainable_fraction(True), tahoe_trainable_fraction(False)
    print(f"(c) ST-Tahoe size, LoRA r16 on attention + MLP: adapters {100 * tahoe_lora_share():.2f}% of the backbone; "
          f"trainable share of the whole model {100 * with_head:.2f}% with the output head trained (default), "
          f"{100 * frozen:.2f}% with it frozen (both include the rebuilt perturbation encoder)")
    if not arc:
        print("(b) skipped: set STX_BENCH_ARC_STATE to a Python with arc-state installed")
        return
    ours = _stx_plain_steps(120, b, s, d, p)
    out = subprocess.run([arc, "-c", ARC_SCRIPT, "120", str(b), str(s), str(d), str(p)], capture_output=True,
                         text=True, check=True)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])["median"]
    print(f"(b) step time, stx / arc-state (hidden 128, 4 layers, batch {b} x {s} cells): "
          f"{ours * 1e3:.2f} ms / {theirs * 1e3:.2f} ms = {ours / theirs:.3f}  (goal <= 1.0)")


if __name__ == "__main__":
    sys.exit(main())
