"""Synthetic burn-vs-sham wound-healing data with a known answer, in several worlds.

The generator follows the layout of the real study (conditions Sham/Burn, cell types in
`cell_types_simple_short`, mice in `mouse_id`, days 10/14/19, embeddings in `obsm`) and
is built so that every number stx reports can be checked against the truth:

* Expression follows the two-state RNA kinetic model scVelo assumes (transcription,
  splicing at rate beta, degradation at rate gamma), per cell type along a latent time,
  so `spliced`/`unspliced` count layers carry a recoverable velocity.
* The embedding is a fixed linear map of log-normalised spliced expression
  (`varm["state_loadings"]`), standing in for a State embedding.
* A *world* (`WORLDS`) says what Burn does: push cells along their trajectory (forward,
  or backward against their velocity) and/or induce gene programs whose balance moves
  from day 10 to day 19, differently per cell type. Mice add gene-wise batch effects.
* Every cell is simulated twice, as Sham and as Burn, with the *same* counting noise
  (coupled Poisson draws: the Burn counts add to, or thin, the Sham counts), so each cell
  has an exact counterfactual. Its per-cell response (Burn minus Sham embedding) is in
  `obsm["truth_response"]`, the group means in `uns["truth"]`, and each cell's true
  velocity in the embedding in `obsm["truth_velocity"]`.

A `GeneSpace` (genes, kinetics, programs, loadings) is fixed by its own seed, so data
sets of every world and seed (and the multi-drug pretraining set of stx-mini) live in the
same embedding space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    import anndata as ad

CELL_TYPES = ("Fib", "Kera", "Mac", "Endo", "Tcell", "Neut")
SHAM_PROPORTIONS = np.array([0.30, 0.25, 0.15, 0.12, 0.10, 0.08])
BURN_PROPORTIONS = np.array([0.26, 0.20, 0.22, 0.10, 0.08, 0.14])  # wounds recruit myeloid cells
DAYS = (10, 14, 19)
CONTROL, PERTURBED = "Sham", "Burn"
EMBED_KEY = "X_state"
SPACE_SEED = 20251124
T_MAX = 10.0
T_LIMIT = T_MAX * 1.2  # how far a push can carry a cell along (or back along) its trajectory


@dataclass(frozen=True)
class World:
    """What Burn does in one synthetic world, and how the cells are sampled."""

    name: str
    summary: str
    push: float  # scale of the push along the trajectory (negative: backwards, against the velocity)
    programs: float  # scale of the Burn gene programs (a response off the trajectory)
    depth: float  # mean counts per cell: lower means more counting noise
    latent: tuple[str, float, float]  # ("normal", mean, sd) or ("uniform", low, high), in units of T_MAX
    # (early, late) program weights per day of DAYS; None: the smooth course of `program_weights`
    course: tuple[tuple[float, float], ...] | None = None

    def latent_time(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Each cell's position on its trajectory."""
        kind, a, b = self.latent
        t = rng.normal(a * T_MAX, b * T_MAX, n) if kind == "normal" else rng.uniform(a * T_MAX, b * T_MAX, n)
        return np.clip(t, 0.0, T_MAX)


WORLDS: dict[str, World] = {
    w.name: w
    for w in (
        World("burn", "the study's design: a short push along the trajectory plus day-dependent gene programs; "
              "the response is mostly off the trajectory (velocity-neutral)", push=1.0, programs=1.0,
              depth=8000.0, latent=("normal", 0.5, 0.15)),
        World("velocity-aligned", "Burn speeds cells along their own trajectory (no new program): the response "
              "follows each cell's velocity and differs from cell to cell (positive control for velocity "
              "alignment)", push=2.0, programs=0.0, depth=40000.0, latent=("uniform", 0.15, 0.9)),
        World("velocity-misleading", "Burn pushes cells back along their trajectory: the response runs against "
              "each cell's velocity (negative control: the velocity prior points the wrong way)", push=-2.0,
              programs=0.0, depth=40000.0, latent=("uniform", 0.15, 0.9)),
        World("time-switch", "as burn, but the Burn programs switch at every time point (early at day 10, late at "
              "day 14, both at day 19): a time course that is no movement along one direction (negative control "
              "for model.time_encoding = 'axis')", push=1.0, programs=1.0, depth=8000.0,
              latent=("normal", 0.5, 0.15), course=((1.0, 0.0), (0.0, 1.0), (1.0, 1.0))),
    )
}
DEFAULT_WORLD = "burn"


def _kinetics(t: np.ndarray, t_switch: np.ndarray, alpha_on: np.ndarray, alpha_off: np.ndarray,
              beta: np.ndarray, gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unspliced and spliced abundance at latent time t (closed form, piecewise constant alpha).

    Cells start at the steady state of `alpha_off`, transcribe at `alpha_on` until
    `t_switch`, then relax back. Shapes broadcast as [cells, genes].
    """

    def evolve(u0: np.ndarray, s0: np.ndarray, alpha: np.ndarray, tau: np.ndarray):
        eb, eg = np.exp(-beta * tau), np.exp(-gamma * tau)
        u = u0 * eb + alpha / beta * (1 - eb)
        s = s0 * eg + alpha / gamma * (1 - eg) + (alpha - beta * u0) / (gamma - beta) * (eg - eb)
        return u, s

    u0, s0 = alpha_off / beta, alpha_off / gamma
    on_time = np.minimum(t, t_switch)
    u1, s1 = evolve(u0, s0, alpha_on, on_time)
    us, ss = evolve(u0, s0, alpha_on, t_switch)
    u2, s2 = evolve(us, ss, alpha_off, np.maximum(t - t_switch, 0.0))
    after = t > t_switch
    return np.where(after, u2, u1), np.where(after, s2, s1)


def time_push(day: np.ndarray) -> np.ndarray:
    """How far Burn pushes cells along their trajectory: strongest early, fading by day 19."""
    return np.exp(-(np.asarray(day, float) - 10.0) / 8.0)


def program_weights(day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the early (inflammatory) and late (remodelling) Burn programs."""
    day = np.asarray(day, float)
    return np.exp(-(day - 10.0) / 6.0), 1.0 - 0.8 * np.exp(-(day - 10.0) / 6.0)


@dataclass(frozen=True)
class GeneSpace:
    """Genes, kinetics, cell-type programs and the embedding map, fixed by `seed`."""

    n_genes: int = 256
    n_dims: int = 64
    seed: int = SPACE_SEED

    @cached_property
    def params(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        g, k = self.n_genes, len(CELL_TYPES)
        beta = np.exp(rng.uniform(np.log(0.6), np.log(2.0), g))
        gamma = np.exp(rng.uniform(np.log(0.15), np.log(0.5), g))
        level = rng.normal(0.0, 1.0, (k, g)) + 1.0
        dynamic = rng.random((k, g)) < 0.45
        alpha_off = np.exp(level) * 0.3
        alpha_on = np.where(dynamic, alpha_off * np.exp(rng.uniform(1.0, 2.5, (k, g))), alpha_off)
        t_switch = rng.uniform(0.45, 0.9, (k, g)) * T_MAX
        programs = np.zeros((2, k, g))
        for c in range(k):
            genes = rng.permutation(g)
            programs[0, c, genes[:20]] = rng.uniform(0.6, 1.4, 20)
            programs[1, c, genes[20:40]] = rng.uniform(0.6, 1.4, 20)
        loadings = np.linalg.qr(rng.normal(size=(g, self.n_dims)))[0] * 3.0
        return {
            "beta": beta, "gamma": gamma, "alpha_on": alpha_on, "alpha_off": alpha_off,
            "t_switch": t_switch, "programs": programs, "loadings": loadings,
            "push": rng.uniform(0.8, 2.0, k), "program_scale": rng.uniform(1.2, 2.0, k),
        }

    def abundance(self, cell_type: np.ndarray, t: np.ndarray,
                  log_alpha_shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Expected (unspliced, spliced) per cell, [cells, genes], before batch effects."""
        p = self.params
        on = p["alpha_on"][cell_type]
        if log_alpha_shift is not None:
            on = on * np.exp(log_alpha_shift)
        return _kinetics(t[:, None], p["t_switch"][cell_type], on, p["alpha_off"][cell_type],
                         p["beta"], p["gamma"])

    @cached_property
    def reference_mean(self) -> np.ndarray:
        """Centre of the embedding: mean log expression over cell types mid-trajectory."""
        ct = np.repeat(np.arange(len(CELL_TYPES)), 50)
        t = np.tile(np.linspace(0, T_MAX, 50), len(CELL_TYPES))
        _, s = self.abundance(ct, t)
        return log_normalise(s).mean(0)

    def embed(self, log_expression: np.ndarray) -> np.ndarray:
        """The stand-in State embedding: centred log expression times fixed loadings."""
        return ((log_expression - self.reference_mean) @ self.params["loadings"]).astype(np.float32)

    def expected_embedding(self, cell_type: np.ndarray, t: np.ndarray,
                           log_alpha_shift: np.ndarray | None = None) -> np.ndarray:
        """Noise-free embedding of cells (no counting noise, no batch effect)."""
        return self.embed(log_normalise(self.abundance(cell_type, t, log_alpha_shift)[1]))

    def burn_effect(self, cell_type: np.ndarray, day: np.ndarray,
                    world: World = WORLDS[DEFAULT_WORLD]) -> tuple[np.ndarray, np.ndarray]:
        """(time push [cells], log transcription-rate change [cells, genes]) of Burn in `world`."""
        p = self.params
        if world.course is None:
            w_early, w_late = program_weights(day)
        else:
            weights = np.array(world.course)[np.searchsorted(DAYS, day)]
            w_early, w_late = weights[:, 0], weights[:, 1]
        log_shift = world.programs * p["program_scale"][cell_type][:, None] * (
            w_early[:, None] * p["programs"][0, cell_type] + w_late[:, None] * p["programs"][1, cell_type]
        )
        return world.push * p["push"][cell_type] * time_push(day), log_shift


def log_normalise(counts: np.ndarray, target: float = 1e4) -> np.ndarray:
    """log1p of counts scaled to `target` per cell (what scanpy's normalize_total + log1p do)."""
    total = np.maximum(counts.sum(1, keepdims=True), 1e-12)
    return np.log1p(counts / total * target)


def coupled_poisson(rng: np.random.Generator, lam0: np.ndarray, lam1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draws of Poisson(lam0) and Poisson(lam1) that share their noise.

    Where lam1 >= lam0 the second adds Poisson(lam1 - lam0) to the first; where lam1 < lam0
    it keeps each count of the first with probability lam1 / lam0 (thinning). Both marginals
    are exact, and the difference between the two is as small as Poisson noise allows.
    """
    c0 = rng.poisson(lam0)
    up = lam1 >= lam0
    extra = rng.poisson(np.where(up, lam1 - lam0, 0.0))
    kept = rng.binomial(c0, np.where(up, 1.0, lam1 / np.maximum(lam0, 1e-300)))
    return c0.astype(np.float32), np.where(up, c0 + extra, kept).astype(np.float32)


def make_wound_healing(n_cells: int = 6000, seed: int = 0, world: str | World = DEFAULT_WORLD,
                       n_mice_per_group: int = 8, space: GeneSpace | None = None) -> ad.AnnData:
    """Generate the synthetic burn/sham data set of `world` as an AnnData (module docstring)."""
    import anndata as ad

    if n_cells < 100:
        raise ValueError("n_cells must be at least 100")
    world = WORLDS[world] if isinstance(world, str) else world
    space = space or GeneSpace()
    p = space.params
    rng = np.random.default_rng(seed)

    # mice are nested in (condition, day), as in a wound time course with one biopsy per mouse
    mice = [(cond, day) for cond in (CONTROL, PERTURBED) for day in DAYS for _ in range(n_mice_per_group)]
    per_mouse = np.full(len(mice), n_cells // len(mice))
    per_mouse[: n_cells - per_mouse.sum()] += 1
    cond = np.repeat([m[0] for m in mice], per_mouse)
    day = np.repeat([m[1] for m in mice], per_mouse)
    mouse = np.repeat(np.arange(len(mice)), per_mouse)
    burn = cond == PERTURBED
    props = np.where(burn[:, None], BURN_PROPORTIONS, SHAM_PROPORTIONS)
    cell_type = (rng.random(n_cells)[:, None] > np.cumsum(props, 1)).sum(1)

    # every cell as Sham (latent time t) and as Burn (pushed, programs on), same mouse and depth
    t = world.latent_time(rng, n_cells)
    push, log_shift = space.burn_effect(cell_type, day, world)
    t_burn = np.clip(t + push, 0.0, T_LIMIT)
    u_sham, s_sham = space.abundance(cell_type, t)
    u_burn, s_burn = space.abundance(cell_type, t_burn, log_shift)

    mouse_gene = np.exp(rng.normal(0.0, 0.04, (len(mice), space.n_genes)))[mouse]
    mouse_depth = np.exp(rng.normal(0.0, 0.2, len(mice)))[mouse]
    depth = world.depth * mouse_depth * np.exp(rng.normal(0.0, 0.3, n_cells))

    def rate(s: np.ndarray, x: np.ndarray) -> np.ndarray:  # expected counts at this cell's depth
        return x * (depth / (s * mouse_gene).sum(1))[:, None] * mouse_gene

    spliced_sham, spliced_burn = coupled_poisson(rng, rate(s_sham, s_sham), rate(s_burn, s_burn))
    spliced = np.where(burn[:, None], spliced_burn, spliced_sham)
    unspliced = rng.poisson(np.where(burn[:, None], rate(s_burn, u_burn), rate(s_sham, u_sham))).astype(np.float32)
    emb_sham, emb_burn = space.embed(log_normalise(spliced_sham)), space.embed(log_normalise(spliced_burn))
    embedding = np.where(burn[:, None], emb_burn, emb_sham)
    response = emb_burn - emb_sham

    t_obs = np.where(burn, t_burn, t)
    truth_velocity = _embedding_velocity(space, cell_type, t_obs, np.where(burn[:, None], log_shift, 0.0))
    sham_velocity = _embedding_velocity(space, cell_type, t, np.zeros_like(log_shift))

    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(cond, categories=[CONTROL, PERTURBED]),
            "cell_types_simple_short": pd.Categorical(np.asarray(CELL_TYPES)[cell_type], categories=CELL_TYPES),
            "mouse_id": pd.Categorical([f"M{m + 1:02d}" for m in mouse]),
            "day": day.astype(np.int64),
            "truth_latent_time": t_obs.astype(np.float32),
        },
        index=[f"cell{i:06d}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"truth_beta": p["beta"], "truth_gamma": p["gamma"]},
        index=[f"Gene{g + 1:04d}" for g in range(space.n_genes)],
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(spliced),
        obs=obs,
        var=var,
        layers={"spliced": sp.csr_matrix(spliced), "unspliced": sp.csr_matrix(unspliced)},
        obsm={EMBED_KEY: embedding, "truth_velocity": truth_velocity, "truth_sham_velocity": sham_velocity,
              "truth_response": response.astype(np.float32),
              "truth_noise_free": space.expected_embedding(cell_type, t_obs, np.where(burn[:, None], log_shift,
                                                                                       0.0))},
        varm={"state_loadings": p["loadings"].astype(np.float32)},
    )
    adata.uns["stx_demo"] = {
        "generator": "stx.data.demo.make_wound_healing",
        "world": world.name,
        "world_summary": world.summary,
        "seed": seed,
        "space_seed": space.seed,
        "embedding": "(log1p(normalize_total(spliced, 1e4)) - reference_mean) @ varm['state_loadings']",
        "reference_mean": space.reference_mean.astype(np.float32),
    }
    adata.uns["truth"] = _group_truth(cell_type, day, burn, response)
    return adata


def _embedding_velocity(space: GeneSpace, cell_type: np.ndarray, t: np.ndarray,
                        log_shift: np.ndarray, h: float = 1e-2) -> np.ndarray:
    """d/dt of each cell's noise-free embedding along its trajectory (central difference)."""
    ahead = space.expected_embedding(cell_type, t + h, log_shift)
    behind = space.expected_embedding(cell_type, t - h, log_shift)
    return ((ahead - behind) / (2 * h)).astype(np.float32)


def _group_truth(cell_type: np.ndarray, day: np.ndarray, burn: np.ndarray, response: np.ndarray) -> dict:
    """Mean Burn-minus-Sham response of the Sham cells per (cell type, day): what applying
    Burn to that group's controls does on average."""
    sham = ~burn
    groups = sorted({(int(c), int(d)) for c, d in zip(cell_type[sham], day[sham], strict=True)})
    shift = np.stack([response[sham & (cell_type == c) & (day == d)].mean(0) for c, d in groups])
    return {
        "cell_type": np.array([CELL_TYPES[c] for c, _ in groups], dtype=object),
        "day": np.array([d for _, d in groups], dtype=np.int64),
        "shift": shift.astype(np.float32),
        "embed_key": EMBED_KEY,
        "response_key": "truth_response",
        "description": "mean counterfactual Burn-minus-Sham response of the Sham cells per group; per cell in "
                       "obsm['truth_response'] (coupled counting noise)",
    }


def true_shift_table(adata: ad.AnnData) -> dict[tuple[str, int], np.ndarray]:
    """`uns["truth"]` as {(cell type, day): shift vector}."""
    truth = adata.uns["truth"]
    return {
        (str(c), int(d)): np.asarray(v)
        for c, d, v in zip(truth["cell_type"], truth["day"], truth["shift"], strict=True)
    }
