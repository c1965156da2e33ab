"""docs/api.md's example, executed as written: the documented API works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_notebook_example_runs(tmp_path, monkeypatch, capsys):
    code = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)
    assert code, "docs/api.md has no python example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exec(compile("\n".join(code), "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "models:/stx-lora/" in out and "lora-velocity vs lora:" in out
    assert (tmp_path / "predicted.h5ad").is_file() and (tmp_path / "mlruns" / "mlflow.db").is_file()


def test_library_modules_never_import_the_cli():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "stx").rglob("*.py")
                 if p.name != "cli.py" and p.name != "__main__.py" and re.search(r"\bstx\.cli\b|from stx import cli",
                                                                                 p.read_text())]
    assert offenders == []


def test_import_stx_is_light():
    import subprocess
    import sys

    code = "import stx, sys; print(sorted(m for m in ('torch', 'lightning', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
