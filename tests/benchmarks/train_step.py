"""One side of bench_training.py's stx-vs-arc-state comparison, run in a fresh process:

    python tests/benchmarks/train_step.py IMPL SIZE MODE STEPS    (IMPL stx|arc, SIZE mini|sm, MODE full|lora)

Prints {"wall": s, "cpu": s} per step (medians after 5 warm-up steps): forward, energy loss,
backward and the optimizer step, on random sets of the same shape for both. stx uses what
`stx run` uses (its model, LoRA on all seven projections with the output head trained, and
the optimizer `STSystem` builds: fused AdamW on CPU); arc-state uses its own model,
`training_step` (geomloss energy loss) and LoRA (attention projections, its default), with
PyTorch's default AdamW.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

SIZES = {  # hidden 128 x 4 layers on the demo's shapes; arc-state's state_sm (30 M parameters)
    "mini": {"h": 128, "inter": 512, "heads": 4, "hd": 32, "B": 8, "S": 32, "D": 64},
    "sm": {"h": 672, "inter": 2688, "heads": 8, "hd": 84, "B": 8, "S": 128, "D": 2000},
}
PERTS = 13


def _arc(z: dict, mode: str):
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
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    eye = torch.eye(PERTS)

    def step(i: int) -> torch.Tensor:
        batch = {"ctrl_cell_emb": torch.randn(B * S, D), "pert_cell_emb": torch.randn(B * S, D),
                 "pert_emb": eye[torch.randint(0, PERTS, (B,))].repeat_interleave(S, 0)}
        return model.training_step(batch, i)

    return model, optimizer, step


def _stx(z: dict, mode: str):
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
    optimizer = STSystem(model, load_config(None).trainer, MetricBuffer()).configure_optimizers()["optimizer"]

    def step(i: int) -> torch.Tensor:
        batch = {keys.CTRL_EMB: torch.randn(B, S, D), keys.PERT_INDEX: torch.randint(0, PERTS, (B,))}
        return energy_loss(model(batch), torch.randn(B, S, D))

    return model, optimizer, step


def main() -> None:
    impl, size, mode, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.manual_seed(0)
    model, optimizer, step = (_arc if impl == "arc" else _stx)(SIZES[size], mode)
    model.train()
    walls, cpus = [], []
    for i in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        loss = step(i)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    print(json.dumps({"wall": statistics.median(walls[5:]), "cpu": statistics.median(cpus[5:])}))


if __name__ == "__main__":
    main()
