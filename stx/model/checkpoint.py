"""Read and write ST checkpoints in arc-state's run-directory format.

A run directory holds `config.yaml` (Hydra config; model under `model.kwargs`),
`var_dims.pkl`, `pert_onehot_map.pt`, `batch_onehot_map.torch` and
`checkpoints/{final,last}.ckpt` (Lightning checkpoints whose `state_dict` keys are the
model's own: `pert_encoder.0.weight`, `transformer_backbone.layers.0.self_attn.q_proj.weight`...).
stx reads these without arc-state installed and writes the same layout (the shipped
`stx-mini` is one), so checkpoints travel both ways.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import torch

from stx.errors import StxError
from stx.model.st import ModelSpec, StateTransition

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("final.ckpt", "last.ckpt")
SHIPPED = {"stx-mini": "stx-mini"}
_UNSUPPORTED = {
    "confidence_token": "a confidence token",
    "use_batch_token": "a batch token",
    "batch_predictor": "a batch predictor head",
    "mask_attn": "masked attention",
}
# arc-state's names for the State Transition model in config.yaml (model.name); its other
# models (pseudobulk, CPA, scVI, ...) compute other functions and are refused by name
ST_MODEL_NAMES = ("state", "statetransition", "state_transition", "tx", "pertsets")


@dataclass(frozen=True)
class Pretrained:
    """A loaded checkpoint: the model, its spec, its control label and where it came from."""

    model: StateTransition
    spec: ModelSpec
    control_pert: str | None
    embed_key: str | None
    source: str


def checkpoint_dir(name_or_path: str) -> Path:
    """The run directory of a shipped name (`stx-mini`) or a path."""
    if name_or_path in SHIPPED:
        with as_file(files("stx.resources").joinpath("checkpoints", SHIPPED[name_or_path])) as path:
            return Path(path)
    return Path(name_or_path)


# What arc-state checkpoints pickle besides tensors and plain values: the loss module ST was
# built with. Everything else is refused: a checkpoint is data, and unpickling arbitrary
# objects can run code.
SAFE_GLOBALS = (torch.nn.MSELoss, torch.nn.L1Loss, torch.nn.SmoothL1Loss, torch.nn.HuberLoss)


def _torch_load(path: Path) -> Any:
    """`torch.load` with `weights_only=True` and the allow-list above; a one-line refusal
    naming the file and the types it would have needed, or what is wrong with it."""
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not even a readable archive
            unsafe = []
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
        unexpected = sorted({g for g in unsafe if g not in allowed})
        if not unexpected:
            raise StxError(f"{path}: not a readable checkpoint ({str(err).splitlines()[-1][:160]})") from None
        raise StxError(f"{path}: refused to load: it holds {', '.join(unexpected[:5])}, which a checkpoint must not "
                       f"(stx loads tensors and plain values only; other objects could run code)") from None
    except Exception as err:
        first = str(err).splitlines()[0][:160] if str(err) else err.__class__.__name__
        raise StxError(f"{path}: not a readable checkpoint ({first})") from None


class _DataOnlyUnpickler(pickle.Unpickler):
    """Plain values only (dicts, lists, numbers, strings, None): any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_plain_pickle(path: Path) -> Any:
    """A pickle of plain values (arc-state's var_dims.pkl), read without running code."""
    try:
        with open(path, "rb") as handle:
            return _DataOnlyUnpickler(handle).load()
    except pickle.UnpicklingError as err:
        raise StxError(f"{path}: refused to load: it holds {err}, not plain values (stx reads plain values only; "
                       f"other objects could run code)") from None
    except Exception as err:
        raise StxError(f"{path}: not a readable pickle ({err.__class__.__name__})") from None


def _index_map(mapping: dict[str, Any]) -> tuple[str, ...]:
    """Names ordered by their one-hot (or integer) position."""
    def position(v: Any) -> int:
        t = torch.as_tensor(v)
        return int(t.argmax()) if t.numel() > 1 else int(t)

    return tuple(name for name, _ in sorted(mapping.items(), key=lambda kv: position(kv[1])))


def read_run_dir(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], tuple[str, ...], tuple[str, ...]]:
    """(hyper-parameters, state_dict, perturbation names, batch names) of a run directory."""
    import yaml

    if not run_dir.is_dir():
        raise StxError(f"{run_dir}: checkpoint directory not found (model.checkpoint)")
    ckpt_path = next((run_dir / "checkpoints" / n for n in CHECKPOINT_NAMES
                      if (run_dir / "checkpoints" / n).is_file()), None)
    if ckpt_path is None:
        raise StxError(f"{run_dir}: no checkpoints/final.ckpt or checkpoints/last.ckpt (model.checkpoint)")
    pert_map_path = run_dir / "pert_onehot_map.pt"
    if not pert_map_path.is_file():
        raise StxError(f"{run_dir}: pert_onehot_map.pt missing; is this an arc-state run directory?")
    ckpt = _torch_load(ckpt_path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise StxError(f"{ckpt_path}: not a Lightning checkpoint (no state_dict)")
    hp: dict[str, Any] = dict(ckpt.get("hyper_parameters") or {})
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise StxError(f"{config_path}: not readable YAML ({err.__class__.__name__})") from None
        model_cfg = config.get("model") if isinstance(config, dict) else None
        if isinstance(model_cfg, dict) and model_cfg.get("name"):
            hp.setdefault("stx_model_name", str(model_cfg["name"]))
    if "input_dim" not in hp:
        # older checkpoints: rebuild from config.yaml and var_dims.pkl
        config_path, dims_path = run_dir / "config.yaml", run_dir / "var_dims.pkl"
        if not config_path.is_file() or not dims_path.is_file():
            raise StxError(f"{run_dir}: checkpoint has no hyper_parameters and config.yaml or "
                           f"var_dims.pkl is missing")
        config = yaml.safe_load(config_path.read_text())
        dims = read_plain_pickle(dims_path)
        hp = {**config["model"]["kwargs"], **dims, **config.get("data", {}).get("kwargs", {})}
    perts = _index_map(_torch_load(pert_map_path))
    batch_path = run_dir / "batch_onehot_map.torch"
    batches = _index_map(_torch_load(batch_path)) if batch_path.is_file() else ()
    return hp, ckpt["state_dict"], perts, batches


def spec_from_hparams(hp: dict[str, Any], perts: tuple[str, ...], batches: tuple[str, ...],
                      state_dict: dict[str, torch.Tensor], where: str) -> ModelSpec:
    """Translate arc-state's hyper-parameters into a ModelSpec, refusing what stx cannot run."""
    if str(hp.get("transformer_backbone_key", "llama")).lower() != "llama":
        raise StxError(f"{where}: backbone {hp.get('transformer_backbone_key')!r} is not supported "
                       f"(stx runs the Llama backbone of ST)")
    for key, what in _UNSUPPORTED.items():
        if hp.get(key):
            raise StxError(f"{where}: checkpoints with {what} ({key}=true) are not supported")
    if hp.get("output_space") == "all":
        raise StxError(f"{where}: output_space='all' checkpoints are not supported")
    model_name = str(hp.get("stx_model_name", "state")).lower()
    if model_name not in ST_MODEL_NAMES:
        raise StxError(f"{where}: config.yaml names model '{model_name}', not State Transition; stx runs ST only "
                       f"(its model.name is 'state')")
    if (hp.get("transformer_backbone_kwargs") or {}).get("bidirectional_attention") is False:
        raise StxError(f"{where}: the checkpoint was trained with causal attention (bidirectional_attention: "
                       f"false); stx runs ST's bidirectional attention only, which would compute another function")
    if any("lora_" in k for k in state_dict):
        raise StxError(f"{where}: checkpoint holds LoRA adapters; merge them before loading")
    # attention is always bidirectional in stx; the flag is arc-state's, not Llama's
    backbone = {k: v for k, v in dict(hp.get("transformer_backbone_kwargs") or {}).items()
                if k != "bidirectional_attention"}
    if "stx_output_relu" in hp:
        relu = bool(hp["stx_output_relu"])
    else:
        # arc-state clips with a ReLU unless a gene decoder sits on an embedding output
        gene_decoder = any(k.startswith("gene_decoder.") for k in state_dict)
        relu = hp.get("embed_key") in (None, "X_hvg") or not gene_decoder
    pert_dim = int(hp.get("pert_dim", len(perts)))
    if pert_dim != len(perts):
        raise StxError(f"{where}: pert_onehot_map.pt has {len(perts)} entries but the model expects {pert_dim}")
    return ModelSpec(
        input_dim=int(hp["input_dim"]),
        output_dim=int(hp["output_dim"]),
        hidden_dim=int(hp["hidden_dim"]),
        pert_names=perts,
        batch_names=batches,
        batch_encoder=bool(hp.get("batch_encoder", False)) and bool(batches),
        n_encoder_layers=int(hp.get("n_encoder_layers", 2)),
        n_decoder_layers=int(hp.get("n_decoder_layers", 2)),
        activation=str(hp.get("activation", "gelu")),
        dropout=float(hp.get("dropout", 0.1)),
        use_basal_projection=bool(hp.get("use_basal_projection", True)),
        predict_residual=bool(hp.get("predict_residual", True)),
        output_relu=relu,
        cell_set_len=int(hp.get("cell_set_len", 256)),
        backbone=backbone,
        cell_skip=bool(hp.get("stx_cell_skip", False)),
    )


def load_pretrained(name_or_path: str) -> Pretrained:
    """Load an arc-state run directory (or a shipped name) into an stx StateTransition."""
    run_dir = checkpoint_dir(name_or_path)
    hp, state_dict, perts, batches = read_run_dir(run_dir)
    spec = spec_from_hparams(hp, perts, batches, state_dict, str(run_dir))
    model = StateTransition(spec)
    own = model.state_dict()
    wanted = {k: v for k, v in state_dict.items() if k in own}
    missing = sorted(set(own) - set(wanted) - {"transformer_backbone.embed_tokens.weight"})
    if missing:
        raise StxError(f"{run_dir}: checkpoint lacks {len(missing)} weights of the ST model "
                       f"(first: {missing[0]})")
    for key, value in wanted.items():
        if value.shape != own[key].shape:
            raise StxError(f"{run_dir}: weight {key} has shape {tuple(value.shape)}, the config implies "
                           f"{tuple(own[key].shape)}")
    model.load_state_dict(wanted, strict=False)
    if spec.output_relu and hp.get("embed_key") not in (None, "X_hvg"):
        log.warning("%s clips predictions with a ReLU on a signed embedding (%s), as arc-state does; "
                    "about half of the outputs become 0. stx keeps it for this checkpoint to reproduce "
                    "its outputs; heads stx builds have no ReLU.", run_dir, hp.get("embed_key"))
    return Pretrained(model, spec, hp.get("control_pert"), hp.get("embed_key"),
                      name_or_path if name_or_path in SHIPPED else str(run_dir))


def write_run_dir(model: StateTransition, run_dir: Path, *, control_pert: str, embed_key: str,
                  extra_hparams: dict[str, Any] | None = None) -> Path:
    """Write `model` as an arc-state run directory (config.yaml, maps, checkpoints/final.ckpt)."""
    import yaml

    spec = model.spec
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    kwargs = {
        "hidden_dim": spec.hidden_dim, "n_encoder_layers": spec.n_encoder_layers,
        "n_decoder_layers": spec.n_decoder_layers, "activation": spec.activation,
        "dropout": spec.dropout, "use_basal_projection": spec.use_basal_projection,
        "predict_residual": spec.predict_residual, "batch_encoder": spec.batch_encoder,
        "cell_set_len": spec.cell_set_len, "loss": "energy", "distributional_loss": "energy",
        "transformer_backbone_key": "llama",
        "transformer_backbone_kwargs": {**spec.backbone, "bidirectional_attention": True},
        "gene_decoder_bool": False,
    }
    dims = {"input_dim": spec.input_dim, "output_dim": spec.output_dim, "pert_dim": spec.pert_dim,
            "batch_dim": len(spec.batch_names) or None, "gene_dim": spec.output_dim,
            "hvg_dim": spec.output_dim, "gene_names": None}
    data_kwargs = {"embed_key": embed_key, "control_pert": control_pert, "output_space": "embedding"}
    config = {"model": {"name": "state", "kwargs": kwargs}, "data": {"kwargs": data_kwargs}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with open(run_dir / "var_dims.pkl", "wb") as handle:
        pickle.dump(dims, handle)
    eye = torch.eye(spec.pert_dim)
    torch.save({name: eye[i] for i, name in enumerate(spec.pert_names)}, run_dir / "pert_onehot_map.pt")
    if spec.batch_names:
        beye = torch.eye(len(spec.batch_names))
        torch.save({n: beye[i] for i, n in enumerate(spec.batch_names)}, run_dir / "batch_onehot_map.torch")
    hparams = {**kwargs, **dims, **data_kwargs, "stx_output_relu": spec.output_relu, "stx_cell_skip": spec.cell_skip,
               **(extra_hparams or {})}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, run_dir / "checkpoints" / "final.ckpt")
    return run_dir
