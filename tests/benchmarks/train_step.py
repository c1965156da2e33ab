"""One side of an stx-vs-arc-state comparison (bench_training.py on CPU, bench_gpu.py on a
GPU), run in a fresh process:

    python tests/benchmarks/train_step.py IMPL SIZE MODE STEPS [--device cpu|cuda] [--bf16] [--batch B]
        (IMPL stx|arc, SIZE mini|sm|tahoe|smoke, MODE full|lora)

Prints {"wall": s, "cpu": s, "peak_gib": GiB or null, "params": n, "trainable": n} per step
(medians of the steps after the first 5): forward, energy loss, backward and the optimizer step, on
random sets of the same shape for both, under bf16 autocast with `--bf16`. stx uses what
`stx run` uses (its model, LoRA on all seven projections with the output head trained, and
the optimizer `STSystem` builds: fused AdamW on CPU); arc-state uses its own model,
`training_step` (geomloss energy loss) and LoRA (attention projections, its default), with
PyTorch's default AdamW.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

SIZES = {  # hidden 128 x 4 layers on the demo's shapes; arc-state's state_sm (30 M parameters)
    "mini": {"h": 128, "inter": 512, "heads": 4, "hd": 32, "B": 8, "S": 32, "D": 64},
    "sm": {"h": 672, "inter": 2688, "heads": 8, "hd": 84, "B": 8, "S": 128, "D": 2000},
    # ST-Tahoe (tahoe_best: hidden 1440, 12 x 120 heads, MLP 4416, sets of 512), bench_gpu's size
    "tahoe": {"h": 1440, "inter": 4416, "heads": 12, "hd": 120, "B": 4, "S": 512, "D": 2000},
    "smoke": {"h": 64, "inter": 128, "heads": 4, "hd": 16, "B": 2, "S": 16, "D": 32},  # tests: the code path only
}
PERTS = 13


def _arc(z: dict, mode: str, device: str):
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    B, S, D = z["B"], z["S"], z["D"]
    backbone = {"bidirectional_attention": True, "max_position_embeddings": S, "hidden_size": z["h"],
                "intermediate_size": z["inter"], "num_hidden_layers": 4, "num_attention_heads": z["heads"],
                "num_key_value_heads": z["heads"], "head_dim": z["hd"], "use_cache": False, "vocab_size": 32}
    lora = {"enable": True, "r": 16, "alpha": 32, "dropout": 0.05} if mode == "lora" else None
    model = StateTransitionPerturbationModel(
        input_dim=D, output_dim=D, pert_dim=PERTS, batch_dim=None, gene_dim=D, hvg_dim=D, embed_key="X_state",
        output_space="embedding", gene_names=None, batch_size=B, control_pert="c", basal_mapping_strategy="random",
        lr=1e-4, hidden_dim=z["h"], cell_set_len=S, n_encoder_layers=2, n_decoder_layers=2,
        use_basal_projection=True, predict_residual=True, transformer_backbone_key="llama",
        transformer_backbone_kwargs=backbone, loss="energy", distributional_loss="energy", gene_decoder_bool=False,
        dropout=0.0, lora=lora, freeze_pert_backbone=bool(lora))
    model.log = lambda *a, **k: None
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    eye = torch.eye(PERTS, device=device)

    def step(i: int) -> torch.Tensor:
        batch = {"ctrl_cell_emb": torch.randn(B * S, D, device=device),
                 "pert_cell_emb": torch.randn(B * S, D, device=device),
                 "pert_emb": eye[torch.randint(0, PERTS, (B,), device=device)].repeat_interleave(S, 0)}
        return model.training_step(batch, i)

    return model, optimizer, step


def _stx(z: dict, mode: str, device: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from stx.config import LoraConfig, load_config
    from stx.data import keys
    from stx.model.lora import apply_lora, freeze_for_finetuning
    from stx.model.losses import energy_loss
    from stx.model.st import ModelSpec, StateTransition
    from stx.tracking.buffer import MetricBuffer
    from stx.train.module import STSystem

    B, S, D = z["B"], z["S"], z["D"]
    spec = ModelSpec(input_dim=D, output_dim=D, hidden_dim=z["h"], pert_names=tuple(map(str, range(PERTS))),
                     dropout=0.0, backbone={"intermediate_size": z["inter"], "num_hidden_layers": 4,
                                            "num_attention_heads": z["heads"], "num_key_value_heads": z["heads"],
                                            "head_dim": z["hd"], "vocab_size": 32})
    model = StateTransition(spec)
    if mode == "lora":
        apply_lora(model, LoraConfig())
        freeze_for_finetuning(model)
    model.to(device)
    optimizer = STSystem(model, load_config(None).trainer, MetricBuffer()).configure_optimizers()["optimizer"]

    def step(i: int) -> torch.Tensor:
        batch = {keys.CTRL_EMB: torch.randn(B, S, D, device=device),
                 keys.PERT_INDEX: torch.randint(0, PERTS, (B,), device=device)}
        return energy_loss(model(batch), torch.randn(B, S, D, device=device))

    return model, optimizer, step


def main() -> None:
    parser = argparse.ArgumentParser(description="one side of an stx-vs-arc-state step comparison")
    parser.add_argument("impl", choices=("stx", "arc"))
    parser.add_argument("size", choices=tuple(SIZES))
    parser.add_argument("mode", choices=("full", "lora"))
    parser.add_argument("steps", type=int, help="steps in all (more than 5), the first 5 of them warm-up (not timed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as stx trains on a GPU")
    parser.add_argument("--batch", type=int, help="sets per step (default: the size's)")
    args = parser.parse_args()
    if args.steps <= 5:
        parser.error("steps must be more than 5: the first 5 are warm-up")
    torch.manual_seed(0)
    size = {**SIZES[args.size], **({"B": args.batch} if args.batch else {})}
    model, optimizer, step = (_arc if args.impl == "arc" else _stx)(size, args.mode, args.device)
    model.train()
    cuda = args.device.startswith("cuda")
    sync = (lambda: torch.cuda.synchronize(args.device)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    walls, cpus = [], []
    for i in range(args.steps):
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            loss = step(i)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    print(json.dumps({"wall": statistics.median(walls[5:]), "cpu": statistics.median(cpus[5:]),
                      "peak_gib": torch.cuda.max_memory_allocated(args.device) / 2**30 if cuda else None,
                      "params": sum(p.numel() for p in model.parameters()),
                      "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}))


if __name__ == "__main__":
    main()
