"""The CLI as a user sees it: exit codes, one-line errors, files written or not."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import pytest
from click.testing import CliRunner

from stx import __version__
from stx.cli import cli


def _run(*args):
    return CliRunner().invoke(cli, list(args))


def test_help_and_version():
    result = _run("--help")
    assert result.exit_code == 0 and "data" in result.output
    assert __version__ in _run("--version").output


def test_help_is_fast_and_imports_nothing_heavy():
    code = "import sys, stx.cli; print(sorted(m for m in ('torch','mlflow','anndata','scanpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_data_demo_writes_a_valid_file(tmp_path):
    out = tmp_path / "demo.h5ad"
    result = _run("data", "demo", "--out", str(out), "--cells", "600", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}" in result.output
    a = ad.read_h5ad(out)
    assert a.n_obs == 600 and "X_state" in a.obsm and "truth" in a.uns


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "demo", "--out", "x.csv"], "x.csv: the output file must end in .h5ad"),
        (["data", "demo", "--out", "x.h5ad", "--cells", "0"], "Invalid value for '--cells'"),
    ],
)
def test_data_demo_bad_arguments(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = _run(*args)
    assert result.exit_code == 2 and message in result.output
    assert list(tmp_path.iterdir()) == []


def test_validate_prints_the_summary(demo_path, write_config):
    result = _run("data", "validate", "--config", str(write_config(demo_path)))
    assert result.exit_code == 0, result.output
    assert "1500 cells, obsm['X_state'] with 64 dims" in result.output
    assert "conditions: Sham" in result.output and "days 10, 14, 19" in result.output
    assert "split by mouse_id; test:" in result.output
    assert "OK:" in result.output


def test_validate_embedded_default_generates_demo_once():
    first = _run("data", "validate")
    assert first.exit_code == 0, first.output
    assert "8000 cells" in first.output


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.lora.rank=3"], "unknown key 'model.lora.rank' (did you mean 'model.lora.r'?)"),
        (["trainer.lr=fast"], "trainer.lr: Input should be a valid number"),
        (["data.pert_col=treatment"], "obs column 'treatment' not found (data.pert_col)"),
        (["data.control_pert=Control"], "control label 'Control' (data.control_pert) not found"),
        (["data.embed_key=X_umap"], "obsm['X_umap'] not found (data.embed_key)"),
    ],
)
def test_user_errors_are_one_line_exit_2(demo_path, write_config, overrides, message):
    args = ["data", "validate", "--config", str(write_config(demo_path))]
    for item in overrides:
        args += ["--set", item]
    result = _run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "Traceback" not in result.output


def test_errors_through_the_real_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "stx", "data", "validate", "--config", str(tmp_path / "no.toml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'no.toml'}: config file not found"


@pytest.mark.parametrize(("world", "warned"), [("burn", False), ("time-switch", True)])
def test_validate_warns_when_the_time_course_is_not_one_movement(tmp_path, write_config, world, warned):
    from stx.data.builtin import write_demo

    data = write_demo(tmp_path / f"{world}.h5ad", n_cells=3000, seed=1, world=world)
    result = _run("data", "validate", "--config", str(write_config(data)))
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert ("does not move along one direction over time" in text) is warned
    if warned:
        assert "consider model.time_encoding = 'category'" in text and "Fib under Burn" in text
    # a model that does not assume a line is never warned
    again = _run("data", "validate", "--config", str(write_config(data, "[model]\ntime_encoding = \"category\"\n")))
    assert "does not move along one direction" not in again.output
