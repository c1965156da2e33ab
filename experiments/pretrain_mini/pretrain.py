"""Pretrain `stx-mini`, the small ST checkpoint stx ships (it plays ST-Tahoe's role).

A synthetic multi-drug screen in the demo's gene/embedding space (same SyntheticWorld:
genes, kinetics, loadings), unrelated to the burn effect: 12 drugs, each a random gene
program plus a drug-specific push along the trajectory, on the demo's six cell types in
four plates, control "DMSO_TF". An ST model (hidden 128, 4 Llama layers of 4 heads) learns
to map control sets to drug-treated sets with the energy distance, and is written as an
arc-state run directory into stx/resources/checkpoints/stx-mini.

    python experiments/pretrain_mini/pretrain.py [--steps 3000] [--out DIR]

About 3 minutes on 2 CPU cores. The result is deterministic for a given torch build.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from stx.config import load_config
from stx.data import keys
from stx.data.demo import CELL_TYPES, EMBED_KEY, T_MAX, SyntheticWorld, log_normalise
from stx.data.load import load_cells
from stx.data.sampler import SetSampler
from stx.model.checkpoint import write_run_dir
from stx.model.losses import energy_loss
from stx.model.st import ModelSpec, StateTransition, count_parameters

CONTROL = "DMSO_TF"
N_DRUGS = 12
REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("pretrain_mini")


def make_drug_screen(n_cells: int = 24000, seed: int = 123, world: SyntheticWorld | None = None) -> ad.AnnData:
    """Control and drug-treated cells of the six cell types, four plates, in X_state."""
    world = world or SyntheticWorld()
    rng = np.random.default_rng(seed)
    g = world.n_genes
    drugs = [CONTROL, *(f"drug{i:02d}" for i in range(1, N_DRUGS + 1))]
    programs = np.zeros((len(drugs), g))
    for k in range(1, len(drugs)):
        genes = rng.choice(g, 30, replace=False)
        programs[k, genes] = rng.normal(0.0, 0.9, 30)
    push = np.concatenate([[0.0], rng.uniform(-1.0, 1.5, N_DRUGS)])
    drug = rng.integers(0, len(drugs), n_cells)
    drug[: n_cells // 4] = 0  # a quarter controls, as screens over-sample them
    cell_type = rng.integers(0, len(CELL_TYPES), n_cells)
    plate = rng.integers(0, 4, n_cells)
    t = np.clip(rng.uniform(0.0, T_MAX, n_cells) + push[drug], 0.0, T_MAX * 1.2)
    scale = rng.uniform(0.7, 1.3, (len(drugs), len(CELL_TYPES)))
    _, s = world.abundance(cell_type, t, programs[drug] * scale[drug, cell_type][:, None])
    plate_gene = np.exp(rng.normal(0.0, 0.1, (4, g)))[plate]
    depth = 3000.0 * np.exp(rng.normal(0.0, 0.3, n_cells))
    counts = rng.poisson(s * plate_gene * (depth / (s * plate_gene).sum(1))[:, None])
    obs = pd.DataFrame({
        "drug": pd.Categorical(np.asarray(drugs)[drug]),
        "cell_type": pd.Categorical(np.asarray(CELL_TYPES)[cell_type]),
        "plate": pd.Categorical([f"plate{p + 1}" for p in plate]),
    }, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(obs=obs, obsm={EMBED_KEY: world.embed(log_normalise(counts.astype(np.float32)))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=REPO / "stx/resources/checkpoints/stx-mini")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "screen.h5ad"
        make_drug_screen().write_h5ad(data_path)
        cfg_path = Path(tmp) / "c.toml"
        cfg_path.write_text(
            f'[datasets]\nscreen = "{data_path}"\n[data]\nembed_key = "{EMBED_KEY}"\npert_col = "drug"\n'
            f'control_pert = "{CONTROL}"\ncell_type_key = "cell_type"\nbatch_col = "plate"\n'
        )
        table = load_cells(load_config(cfg_path))
    sampler = SetSampler(table, np.ones(table.n_cells, bool), batch_size=16, cell_set_len=32, seed=args.seed)

    spec = ModelSpec(
        input_dim=table.spec.embed_dim, output_dim=table.spec.embed_dim, hidden_dim=128,
        pert_names=table.spec.perts, n_encoder_layers=2, n_decoder_layers=2, dropout=0.0,
        use_basal_projection=True, predict_residual=True, output_relu=False, cell_set_len=32,
        backbone={"intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                  "num_key_value_heads": 4, "head_dim": 32, "max_position_embeddings": 32,
                  "rms_norm_eps": 1e-6, "attention_dropout": 0.0, "vocab_size": 32},
    )
    model = StateTransition(spec)
    log.info("stx-mini: %d parameters", count_parameters(model)[1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.steps, pct_start=0.05)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = sampler.sample()
        loss = energy_loss(model(batch), batch[keys.PERT_CELL_EMB])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == 1:
            log.info("step %5d  energy %.4f  (%.0f s)", step, loss.item(), time.perf_counter() - start)
    model.eval()
    write_run_dir(model, args.out, control_pert=CONTROL, embed_key=EMBED_KEY,
                  extra_hparams={"stx_pretrain": f"experiments/pretrain_mini/pretrain.py --steps {args.steps}"})
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
