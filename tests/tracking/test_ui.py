"""The MLflow UI shows what stx logs: held-out metrics as bars per run in the chart view and
each run's datasets in the runs table, checked in headless Chromium (Playwright driving the
distribution's browser; nothing is downloaded). Skipped, with the reason, where either is
missing: `.ci/run` installs both where it can."""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from stx.cli import cli
from stx.tracking.views import VIEW_KEY, ui_url
from tests.services import free_port, mlflow_server_cmd, process, wait_http

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian package 'chromium')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

# as the machine's browser probe starts it: no sandbox as root, no calls to Google's hosts
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FAST = ["--set", "trainer.max_steps=8", "--set", "trainer.val_every_n_steps=4", "--set", "trainer.batch_size=4",
        "--set", "trainer.cell_set_len=16", "--set", "tracking.projection=pca",
        "--set", "trainer.checkpoint_every_n_steps=8", "--set", "tracking.register_model=false"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_path):
    """A store with two lora runs (seeds 0, 1) and a lora-mhc run of one experiment, served by
    `mlflow server`; yields the URL `stx ui` prints."""
    work = tmp_path_factory.mktemp("ui")
    (work / "config.toml").write_text(f'[datasets]\ndemo = "{demo_path}"\n[data]\nembed_key = "X_state"\n'
                                      'time_col = "day"\nmin_group_cells = 3\n')
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    for variant, seed in (("lora", "0"), ("lora", "1"), ("lora-mhc", "0")):
        result = CliRunner().invoke(cli, ["run", "--variant", variant, "--config", str(work / "config.toml"), *FAST,
                                          "--seed", seed, "--experiment", "ui-check", "--tracking-uri", uri])
        assert result.exit_code == 0, result.output
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with process(mlflow_server_cmd(uri, work / "artifacts", port), env, work / "server.log"):
        wait_http(f"http://127.0.0.1:{port}/health")
        yield ui_url("127.0.0.1", port, uri, "ui-check")


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser.new_page(viewport={"width": 1600, "height": 1000})
        browser.close()


def _open(page, url, view=None):
    page.goto("about:blank")  # a full load: after a shared view, a hash-only change stays on the loading skeleton
    page.goto(url)
    page.get_by_text("matching runs").wait_for(timeout=60_000)
    if view:
        page.locator(f"label:has(input[name=runs-view-mode][value={view}])").click()


def test_the_printed_url_opens_bar_charts_grouped_by_variant(store, page):
    _open(page, store)  # as `stx ui` prints it: chart mode, the saved view grouped by stx.variant
    search = page.get_by_placeholder("Search metric charts")
    search.wait_for(timeout=60_000)
    search.fill("eval/energy_ratio")
    page.get_by_text("eval/energy_ratio", exact=True).wait_for(timeout=60_000)
    # logged once per run at step 0, the UI draws it as bars; grouped, one bar per variant
    # (two), not per run (three). The filter applies after the first render.
    bars = page.locator("g.trace.bars g.point")
    sync_api.expect(bars).to_have_count(2, timeout=60_000)
    assert page.get_by_text("Group by: stx.variant").count() == 1


def test_without_the_saved_view_bars_are_per_run(store, page):
    _open(page, store.replace(f"viewStateShareKey={VIEW_KEY}&", ""), "CHART")
    search = page.get_by_placeholder("Search metric charts")
    search.fill("eval/energy_ratio")
    sync_api.expect(page.locator("g.trace.bars g.point")).to_have_count(3, timeout=60_000)
    # the figures stx logs with log_image are in the chart view too
    search.fill("cells_pca")
    page.get_by_text("cells_pca", exact=True).first.wait_for(timeout=60_000)


def test_runs_table_shows_each_runs_datasets(store, page):
    _open(page, store.replace(f"viewStateShareKey={VIEW_KEY}&", ""), "TABLE")
    page.get_by_role("columnheader", name="Dataset", exact=True).first.wait_for(timeout=60_000)
    # lineage logs each split as "<dataset>: <context> (<n> cells)"
    cells = page.get_by_text("demo: train (", exact=False)
    cells.first.wait_for(timeout=60_000)
    assert cells.count() == 3


def test_ui_url_points_at_the_training_view(store):
    assert "#/experiments/" in store and store.endswith("workflowType=machine_learning")
    assert f"viewStateShareKey={VIEW_KEY}" in store and "compareRunsMode=CHART" in store
