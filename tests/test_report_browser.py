"""Reports in a real browser: the system Chromium, driven by Playwright.

A real short run (the heads family: structural changes, a PNG figure, text
samples) and a real small sweep (optimizer x 2 seeds) write their reports;
the tests open them from ``file://``, switch every tab, open a gallery image,
sort the sweep table, and check that no console error occurred and that
nothing was requested from anywhere but the local files. Screenshots go to
each test's ``tmp_path``. Without ``chromium`` the tests skip (fail under CI=true).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator

import pytest
from _char import TINY_HEADS
from _e2e import run, run_dir_in, start, stop
from binaries import require_binary
from conftest import require_module

QUIET = ["--metrics_port", "0", "--console", "off", "--no_tensorboard"]
SWEEP = ("sweep:\n  name: report\n  parallel: 2\noptimizer: [adam, sgd]\nseed: [1, 2]\n"
         "warm_up_epochs: 2\nadaptation_epochs: 2\nhidden_dim: 8\ntensorboard: false\n")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A heads run and a 4-trial sweep, run at the same time (after checking the browser is there)."""
    require_binary("chromium")
    require_module("playwright.sync_api", "playwright")
    tmp = tmp_path_factory.mktemp("report_browser")
    (tmp / "sweep.yaml").write_text(SWEEP)
    heads = start([*TINY_HEADS, "--max_iters", "100", *QUIET, "--output_dir", str(tmp / "heads")], tmp / "logs")
    try:
        sweep = run(["-s", str(tmp / "sweep.yaml"), "--output_dir", str(tmp / "sweep"), "--n_samples", "200"],
                    timeout=300)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        assert heads.wait(timeout=300) == 0, heads.err()[-3000:]
    finally:
        stop(heads)
    run_dir = run_dir_in(tmp / "heads")
    (sweep_dir,) = (tmp / "sweep" / "sweeps").iterdir()
    assert run_dir is not None
    return {"run": run_dir, "sweep": sweep_dir}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_binary("chromium")
    sync_api = require_module("playwright.sync_api", "playwright")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page whose console errors, page errors and requests are recorded."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def check_clean(self) -> None:
        assert self.errors == []
        assert self.requests and [u for u in self.requests if not u.startswith(("file://", "data:", "blob:"))] == []


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    w = Watched(browser)
    try:
        yield w
    finally:
        w.page.close()


def _tab(page: Any, name: str, shots: Path) -> None:
    page.click(f"#tab-{name}")
    assert page.get_attribute(f"#tab-{name}", "aria-selected") == "true"
    assert page.is_visible(f"#panel-{name}")
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def test_run_report_tabs_gallery_and_charts(results: dict[str, Path], watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    page.goto((results["run"] / "report.html").as_uri())
    page.wait_for_selector("#figure-loss .main-svg")  # plotly drew the loss curves offline
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    _tab(page, "events", tmp_path)
    page.wait_for_selector("#figure-timeline .main-svg")
    assert page.locator("#changes tbody tr").count() >= 1
    assert not page.is_visible("#panel-overview")
    _tab(page, "gallery", tmp_path)
    link = page.locator("a.zoom").first
    assert link.get_attribute("href") == "artifacts/importance.png"
    link.click()
    page.wait_for_selector("#lightbox[open]")
    assert page.evaluate("document.querySelector('#lightbox img').naturalWidth") > 100  # the PNG loaded
    page.screenshot(path=str(tmp_path / "gallery_open.png"))
    page.click("#lightbox")
    page.wait_for_selector("#lightbox:not([open])", state="attached")
    _tab(page, "texts", tmp_path)
    assert page.locator("#texts tbody tr").count() >= 1
    _tab(page, "alerts", tmp_path)
    _tab(page, "files", tmp_path)
    assert page.locator("#files a[href='history.jsonl']").count() == 1
    _tab(page, "overview", tmp_path)
    watched.check_clean()


def _column(page: Any, table: str, header: str) -> list[str]:
    heads = [h.strip() for h in page.locator(f"{table} thead th").all_inner_texts()]
    col = heads.index(header) + 1
    return [c.strip() for c in page.locator(f"{table} tbody tr td:nth-child({col})").all_inner_texts()]


def test_sweep_report_sorts_and_compares(results: dict[str, Path], watched: Watched, tmp_path: Path) -> None:
    sweep_dir = results["sweep"]
    rows = list(csv.DictReader((sweep_dir / "sweep_summary.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    page = watched.page
    page.goto((sweep_dir / "report.html").as_uri())
    assert page.locator("#trials tbody tr").count() == 4
    assert sorted(_column(page, "#trials", "trial"), key=int) == _column(page, "#trials", "trial")
    expected = sorted(float(r["val_loss"]) for r in rows)
    header = page.locator("#trials thead th", has_text="val_loss").first
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert [float(v) for v in _column(page, "#trials", "val_loss")] == pytest.approx(expected, rel=1e-3)
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert [float(v) for v in _column(page, "#trials", "val_loss")] == pytest.approx(expected[::-1], rel=1e-3)
    by_loss = sorted(rows, key=lambda r: float(r["val_loss"]), reverse=True)
    assert _column(page, "#trials", "trial") == [r["trial"] for r in by_loss]  # whole rows moved
    page.screenshot(path=str(tmp_path / "trials_sorted.png"), full_page=True)
    link = page.locator("#trials tbody a").first.get_attribute("href")
    assert link.endswith("/report.html") and (sweep_dir / link).is_file()  # each trial wrote its own
    _tab(page, "rankings", tmp_path)
    assert page.locator("#rank1 tbody tr").count() == 4
    _tab(page, "best", tmp_path)
    assert "Best per optimizer" in page.inner_text("#panel-best")
    _tab(page, "effects", tmp_path)
    page.wait_for_selector("#figure-effect0 .main-svg")
    _tab(page, "groups", tmp_path)
    text = page.inner_text("#panel-groups")
    assert "val_loss by optimizer" in text and "Welch's t-test, optimizer = " in text
    assert page.locator("table.groups[data-param=optimizer][data-metric=val_loss] tbody tr").count() == 2
    watched.check_clean()
