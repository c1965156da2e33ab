"""A catalogue of wrong inputs through the CLI: each gives one line naming the problem,
exit code 2, no traceback, no run left RUNNING and no partial output file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from stx.cli import cli
from stx.model.checkpoint import checkpoint_dir


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, demo_path, demo_adata):
    root = tmp_path_factory.mktemp("bad")
    files = {}

    def save(name, adata):
        adata.write_h5ad(root / name)
        files[name] = root / name

    a = demo_adata[::3].copy()
    save("good.h5ad", a)
    b = a.copy()
    b.obsm["X_state"][3, 1] = np.nan
    save("nan.h5ad", b)
    b = a.copy()
    b.obsm["X_state"] = b.obsm["X_state"][:, :32]
    save("narrow.h5ad", b)
    save("sham_only.h5ad", a[a.obs["condition"] == "Sham"].copy())
    b = a.copy()
    del b.layers["spliced"]
    save("no_layers.h5ad", b)
    (root / "junk.h5ad").write_text("not hdf5")
    (root / "cut.h5ad").write_bytes(demo_path.read_bytes()[:5000])
    b = a.copy()
    b.obs["sex"] = np.where(np.arange(b.n_obs) % 2 == 0, "F", "M")
    b.obs["batchless"] = b.obs["sex"].astype(object)
    b.obs.iloc[5, b.obs.columns.get_loc("batchless")] = None
    save("sex.h5ad", b)
    # a covariate value that only the held-out (test) mice have
    from stx.config import load_config
    from stx.data.load import load_cells
    from stx.data.split import TEST, make_split

    probe = root / "probe.toml"
    probe.write_text(f'[datasets]\nd = "{root / "sex.h5ad"}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\nmin_group_cells = 3\n')
    cfg = load_config(probe)
    table = load_cells(cfg)
    test = make_split(table, cfg).mask(TEST)
    b = b.copy()
    b.obs["sex"] = np.where(test, "X", b.obs["sex"].to_numpy())
    save("sex_unseen.h5ad", b)
    probe.unlink()
    b = a.copy()
    b.obsm["X_state"][7, 2] = 1e30
    save("huge.h5ad", b)
    b = a.copy()
    b.obsm["X_state"] = np.ones_like(b.obsm["X_state"])
    save("constant.h5ad", b)
    b = a.copy()
    b.obsm["X_state"] = b.obsm["X_state"].astype(np.complex64) * (1 + 1j)
    save("complex.h5ad", b)
    b = a.copy()
    labels = b.obs["condition"].astype(str).to_numpy().copy()
    labels[:5] = "Sham "  # a control label typed with a trailing space
    b.obs["condition"] = labels
    save("sham_space.h5ad", b)
    (root / "latin1.toml").write_bytes('[datasets]\nd = "caf\xe9.h5ad"\n'.encode("latin-1"))
    for name, payload in (("payload_ckpt", "pickle"), ("random_ckpt", "random")):
        ckpt = root / name
        shutil.copytree(checkpoint_dir("stx-mini"), ckpt)
        if payload == "pickle":
            import torch

            state = torch.load(ckpt / "checkpoints/final.ckpt", weights_only=True)
            state["hyper_parameters"]["hook"] = _Payload(root / "payload-ran")
            torch.save(state, ckpt / "checkpoints/final.ckpt")
        else:
            (ckpt / "checkpoints/final.ckpt").write_bytes(bytes(range(256)) * 40)
    bad_ckpt = root / "ckpt"
    shutil.copytree(checkpoint_dir("stx-mini"), bad_ckpt)
    (bad_ckpt / "pert_onehot_map.pt").unlink()
    return root


class _Payload:
    """Unpickling this would create a file: proof that a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.marker,))


def _config(root, data="good.h5ad", extra=""):
    path = root / f"c-{abs(hash((data, extra)))}.toml"
    path.write_text(f'[datasets]\nd = "{root / data}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\nmin_group_cells = 3\n{extra}')
    return str(path)


FAST = ["--set", "trainer.max_steps=4", "--set", "tracking.projection=pca"]

CASES = [
    ("missing data file", lambda r: ["run", "--variant", "lora", "--config", _config(r, "absent.h5ad")], "absent.h5ad: file not found"),
    ("not an h5ad", lambda r: ["run", "--variant", "lora", "--config", _config(r, "junk.h5ad")], "not a readable .h5ad (HDF5) file"),
    ("truncated h5ad", lambda r: ["run", "--variant", "lora", "--config", _config(r, "cut.h5ad")], "cut.h5ad"),
    ("missing obs column", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "data.pert_col=treatment"], "obs column 'treatment' not found (data.pert_col)"),
    ("control label absent", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "data.control_pert=Control"], "control label 'Control' (data.control_pert) not found"),
    ("single condition", lambda r: ["run", "--variant", "lora", "--config", _config(r, "sham_only.h5ad")], "has only 'Sham'"),
    ("NaN embeddings", lambda r: ["run", "--variant", "lora", "--config", _config(r, "nan.h5ad")], "has NaN or inf values in 1 cells"),
    ("wrong embedding width", lambda r: ["run", "--variant", "lora", "--config", _config(r, "narrow.h5ad")], "has 32 dims but the checkpoint stx-mini expects 64"),
    ("no usable group", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "data.cell_type_key=mouse_id"], "no (cell type, day) group has both Sham and perturbed cells"),
    ("unknown config key", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "trainer.learning_rate=1e-3"], "unknown key 'trainer.learning_rate' (did you mean 'trainer.lr'?)"),
    ("wrong type", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "trainer.lr=fast"], "trainer.lr: Input should be a valid number"),
    ("negative steps", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "trainer.max_steps=-5"], "trainer.max_steps: Input should be greater than 0"),
    ("unknown variant", lambda r: ["run", "--variant", "lora-mch", "--config", _config(r)], "unknown variant 'lora-mch'"),
    ("velocity without velocity data", lambda r: ["run", "--variant", "velocity", "--config", _config(r, "no_layers.h5ad")], "velocyto, STARsolo (--soloFeatures Velocyto) or alevin-fry"),
    ("bad tracking URI", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--tracking-uri", "postgresql+psycopg://u:pw@127.0.0.1:1/x"], "is not reachable"),
    ("unreachable PostgreSQL storage", lambda r: ["sweep", "--variant", "lora", "--n-trials", "1", "--config", _config(r), "--storage", "postgresql+psycopg://u:pw@127.0.0.1:1/optuna"], "Optuna storage postgresql+psycopg://u:***@127.0.0.1:1/optuna is not reachable"),
    ("checkpoint dir missing files", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", f'model.checkpoint="{r / "ckpt"}"'], "pert_onehot_map.pt missing"),
    ("checkpoint dir absent", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", f'model.checkpoint="{r / "nothing"}"'], "checkpoint directory not found"),
    ("out of memory", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "trainer.batch_size=100000", "--set", "trainer.cell_set_len=100000"], "lower trainer.batch_size or trainer.cell_set_len"),
    ("malformed TOML", lambda r: ["run", "--variant", "lora", "--config", str(_bad_toml(r))], "not valid TOML"),
    ("bad --set syntax", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "model.lora.r"], "expected key=value"),
    ("sweep over the baseline", lambda r: ["sweep", "--variant", "baseline", "--n-trials", "2", "--config", _config(r)], "baseline variant has nothing to tune"),
    ("predict with an unknown model", lambda r: ["predict", "--model", "models:/stx-nothing/1", "--data", str(r / "good.h5ad"), "--out", str(r / "p.h5ad")], "cannot load it"),
    ("velocity on a file without layers", lambda r: ["velocity", "--data", str(r / "no_layers.h5ad"), "--basis", "X_state", "--out", str(r / "v.h5ad")], "no layers['spliced']"),
    ("resume a run that does not exist", lambda r: ["run", "--resume", "f" * 32], "no such run"),
    ("covariate column missing", lambda r: ["run", "--variant", "lora", "--config", _config(r, "sex.h5ad"), "--set", 'data.covariates=["gender"]'], "obs column 'gender' not found (data.covariates)"),
    ("covariate with missing values", lambda r: ["run", "--variant", "lora", "--config", _config(r, "sex.h5ad"), "--set", 'data.covariates=["batchless"]'], "obs column 'batchless' (data.covariates) has 1 missing values"),
    ("covariate value never in training", lambda r: ["run", "--variant", "lora", "--config", _config(r, "sex_unseen.h5ad"), "--set", 'data.covariates=["sex"]'], "data.covariates values X of obs column 'sex' occur only in held-out cells"),
    ("test split too small for the control split", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "data.min_group_cells=500"], "raise data.test_fraction"),
    ("held-out group not in the data", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", 'data.heldout_groups=["Fibro:14"]'], "data.heldout_groups: cell type 'Fibro'"),
    ("control time not a time point", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "data.control_time=0"], 'data.control_time = "0" is not a time point'),
    ("unknown demo world", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", 'datasets.d="builtin:demo?world=nope"'], "unknown world 'nope'"),
    ("absurd embedding values", lambda r: ["run", "--variant", "lora", "--config", _config(r, "huge.h5ad")], "has values beyond +-1e+06 in 1 cells"),
    ("constant embedding", lambda r: ["run", "--variant", "lora", "--config", _config(r, "constant.h5ad")], "is the same for every cell (constant)"),
    ("complex embedding", lambda r: ["run", "--variant", "lora", "--config", _config(r, "complex.h5ad")], "is complex (complex64)"),
    ("labels differing by a space", lambda r: ["run", "--variant", "lora", "--config", _config(r, "sham_space.h5ad")], "labels 'Sham' and 'Sham ' (data.pert_col) differ only by case or spaces"),
    ("validate sees the same label mistake", lambda r: ["data", "validate", "--config", _config(r, "sham_space.h5ad")], "differ only by case or spaces"),
    ("infinite learning rate", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "trainer.lr=inf"], "trainer.lr: Input should be a finite number"),
    ("learning rate that diverges", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "trainer.lr=1e6", "--set", "trainer.grad_clip=0", "--set", "trainer.max_steps=12", "--set", "trainer.log_every_n_steps=2"], "training diverged at step"),
    ("non-UTF-8 config", lambda r: ["run", "--variant", "lora", "--config", str(r / "latin1.toml")], "latin1.toml: not UTF-8 text"),
    ("unknown Lightning strategy", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", "trainer.strategy=bogus"], "trainer.strategy: String should match pattern"),
    ("sweep objective that is not logged", lambda r: ["sweep", "--variant", "lora", "--n-trials", "1", "--config", _config(r), "--set", "sweep.objective=eval/nope"], "sweep.objective 'eval/nope' is not a metric stx logs"),
    ("checkpoint carrying a pickle payload", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", f'model.checkpoint="{r / "payload_ckpt"}"'], "refused to load: it holds builtins.getattr, pathlib.Path"),
    ("checkpoint of random bytes", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", f'model.checkpoint="{r / "random_ckpt"}"'], "final.ckpt: not a readable checkpoint"),
    ("output_dir is a file", lambda r: ["run", "--variant", "lora", "--config", _config(r), "--set", f'tracking.output_dir="{r / "good.h5ad"}"'], "cannot write run folders there (tracking.output_dir"),
    ("abandon a run that does not exist", lambda r: ["run", "--abandon", "e" * 32], "no such run"),
]


def _bad_toml(root):
    path = root / "broken.toml"
    path.write_text("[datasets\nd = 1")
    return path


@pytest.mark.parametrize(("name", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(inputs, tmp_path, monkeypatch, name, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = {p for p in inputs.iterdir()}
    argv = args(inputs)
    if argv[0] in ("run", "sweep") and "--resume" not in argv:
        argv = [argv[0], *FAST, *argv[1:]]  # the case's own --set comes later and wins
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    # warnings may precede it; the error itself is exactly one line, the last
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], result.output
    assert message in lines[-1], result.output
    assert "Traceback" not in result.output
    # no partial output files next to the inputs, no run left RUNNING, no payload ran
    assert {p for p in inputs.iterdir() if not p.name.startswith("c-")} <= before | {inputs / "broken.toml"}
    assert not (inputs / "payload-ran").exists()
    db = tmp_path / "mlruns" / "mlflow.db"
    if db.exists():
        client = MlflowClient(f"sqlite:///{db}")
        exps = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(exps, "attributes.status = 'RUNNING'")


def test_catalogue_is_large_enough():
    assert len(CASES) >= 46


def test_the_working_directory_problems_get_one_line(tmp_path, monkeypatch, inputs):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").write_text("not a folder")
    result = CliRunner().invoke(cli, ["run", "--variant", "lora", *FAST, "--config", _config(inputs)])
    assert result.exit_code == 2 and "cannot keep the embedded tracking store there" in result.output, result.output


def test_an_experiment_name_cannot_escape_the_artifact_root(tmp_path, monkeypatch, inputs):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", "--variant", "baseline", *FAST, "--config", _config(inputs),
                                      "--experiment", "..", "--set", "tracking.register_model=false"])
    assert result.exit_code == 0, result.output
    location = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_experiment_by_name("..").artifact_location
    assert location.startswith((tmp_path / "mlruns" / "artifacts").as_uri()) and not location.endswith("/..")


def test_a_run_that_cannot_resume_is_abandoned(tmp_path, monkeypatch, inputs):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.create_experiment("e")
    run = client.create_run(exp, tags={"stx.variant": "lora", "stx.output_dir": str(tmp_path / "gone")})
    result = CliRunner().invoke(cli, ["run", "--resume", run.info.run_id])
    assert result.exit_code == 2 and f"stx run --abandon {run.info.run_id}" in result.output
    result = CliRunner().invoke(cli, ["run", "--abandon", run.info.run_id])
    assert result.exit_code == 0, result.output
    assert client.get_run(run.info.run_id).info.status == "KILLED"
