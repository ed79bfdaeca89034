"""The web page end to end in headless Chromium against a real uvicorn server on loopback.

Needs Debian's Chromium at /usr/bin/chromium (``bash scripts/ensure_chromium.sh``) and the Playwright
Python package (Playwright never downloads a browser here). Without them the tests are skipped, except
under ``CI=true`` where they fail. Every request to a host other than 127.0.0.1 is aborted and recorded;
each test ends by checking there was none. Screenshots go to ``$CELLTYPE_SCREENSHOT_DIR`` when set
(``docs/img`` for the README), else to the test's tmp dir.
"""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anndata as ad
import httpx
import pytest

from tests.web.conftest import CLASSES, GENES, MIN_DETECTED_GENES, cells_csv_text, cells_h5ad

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "page-test-key"
N_CELLS = 600
EMPTY_CELLS = [5, 250, 590]
"""Rows of the main upload with no counts at all (empty droplets)."""
SPARSE_CELLS = [7, 300]
"""Rows of the main upload detecting 3 genes (fewer than the model's minimum)."""
NOVEL_CELLS = [10, 200, 400, 450]
"""Rows of the main upload of a type the model never saw."""
SERVER_START_TIMEOUT_S = 60
RESULT_TIMEOUT_MS = 60_000


def _require_browser() -> Any:
    """The Playwright sync API, or skip (fail under CI=true) naming what is missing."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is not installed (pip install playwright; never `playwright install`)"
    else:
        if not CHROMIUM.exists():
            reason = f"Chromium is missing at {CHROMIUM}; run `bash scripts/ensure_chromium.sh`"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright


def expect(locator: Any) -> Any:
    """Playwright's auto-waiting assertions (imported late: the package may be missing)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(checked_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``uvicorn service.app:create_app`` (as ``celltype serve`` runs it) with an API key, on a free port,
    serving the model with every Unknown check (novelty detector, ``min_detected_genes``)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("web-server") / "server.log"
    env = {
        **os.environ,
        "CELLTYPE_MODEL_URI": str(checked_bundle_dir),
        "CELLTYPE_API_KEY": API_KEY,
        "CELLTYPE_DEVICE": "cpu",
        "CELLTYPE_MAX_CONCURRENCY": "2",
    }
    command = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=Path.cwd())
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    sync_playwright = _require_browser()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def outside_requests() -> list[str]:
    """URLs of requests that tried to leave 127.0.0.1 (aborted)."""
    return []


@pytest.fixture
def page(browser: Any, outside_requests: list[str]) -> Iterator[Any]:
    """A fresh page (own sessionStorage) whose requests to any host but 127.0.0.1 are aborted and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)

    def guard(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1" or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside_requests.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.set_default_timeout(RESULT_TIMEOUT_MS)
    yield page
    context.close()
    assert outside_requests == [], f"the page tried to reach other hosts: {outside_requests}"


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go."""
    target = Path(os.environ.get("CELLTYPE_SCREENSHOT_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def enter_key(page: Any) -> None:
    """Type the API key into the page's key field."""
    page.fill("#api-key", API_KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#model-facts:not([hidden])")


def text(page: Any, selector: str) -> str:
    """The visible text of ``selector``."""
    return page.inner_text(selector)


def report_of(server: str, name: str, content: bytes) -> dict[str, Any]:
    """What ``/v1/report`` answers for ``content`` (the page must show the same)."""
    answer = httpx.post(
        f"{server}/v1/report", files={"file": (name, content)}, headers={"X-API-Key": API_KEY}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def rows_of(page: Any, selector: str) -> list[list[str]]:
    """The text of every cell of every body row of the table ``selector``."""
    return page.eval_on_selector_all(
        f"{selector} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
    )


def test_upload_shows_every_part_of_the_report(
    page: Any, server: str, tmp_path: Path, screenshot_dir: Path
) -> None:
    upload = cells_h5ad(
        tmp_path / "pbmc_sample.h5ad", N_CELLS, empty=EMPTY_CELLS, sparse=SPARSE_CELLS, novel=NOVEL_CELLS
    )
    expected = report_of(server, "pbmc_sample.h5ad", upload.read_bytes())
    reasons = expected["unknown"]["reasons"]
    assert reasons["no_counts"] == len(EMPTY_CELLS) and reasons["too_few_genes"] == len(SPARSE_CELLS)
    assert reasons["unlike_training"] >= len(NOVEL_CELLS) and reasons["low_confidence"] > 0

    page.goto(server + "/")
    page.wait_for_selector("#error:not([hidden])")
    assert "needs a valid API key" in text(page, "#error")
    assert "API key" in text(page, "#model-loading")
    enter_key(page)
    assert page.is_hidden("#error")
    card = text(page, "#model-facts")
    for fragment in [*CLASSES, "lab_a, lab_b", "lab_c", "accuracy 0.970", str(len(GENES)), "0.8"]:
        assert fragment in card, card
    novelty = expected["unknown"]["checks"]["novelty"]
    assert f"input_pca: Unknown above a score of {novelty['threshold']:.2f}" in card, card
    assert "99.9th percentile" in card, card
    assert text(page, "#model-facts dt:has-text('fewer genes detected') + dd") == str(MIN_DETECTED_GENES)
    assert page.get_attribute("#docs-link", "href") == "/docs"
    page.screenshot(path=str(screenshot_dir / "page-upload.png"), full_page=True)

    page.set_input_files("#file-input", str(upload))
    page.wait_for_selector("#results:not([hidden])")
    assert "Done: 600 cells" in text(page, "#progress-text")
    assert page.get_attribute("#upload-bar", "value") == "100"
    assert "pbmc_sample.h5ad" in text(page, "#result-file")

    table_rows = page.eval_on_selector_all(
        "#counts-table tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [[row[0], int(row[1].replace(",", ""))] for row in table_rows] == [
        [row["label"], row["count"]] for row in expected["counts"]
    ]
    bars = page.eval_on_selector_all("#counts-chart rect.bar", "bars => bars.map(b => [b.dataset.label, +b.dataset.count])")
    assert bars == [[row["label"], row["count"]] for row in expected["counts"]]
    assert text(page, "#counts-chart").split() != []
    histogram = page.eval_on_selector_all("#histogram rect.hist-bar", "bars => bars.map(b => +b.dataset.count)")
    assert histogram == expected["confidence_histogram"]["counts"] and sum(histogram) == N_CELLS
    unknown = expected["unknown"]
    assert f"{unknown['count']} cells" in text(page, "#summary")
    assert text(page, "#reasons-title") == f"Why {unknown['count']} cells are Unknown"
    shown = {row[0]: row[1:] for row in rows_of(page, "#reasons-table")}
    assert list(shown) == ["no_counts", "too_few_genes", "unlike_training", "low_confidence"]
    assert {reason: int(row[0]) for reason, row in shown.items()} == reasons
    assert "empty droplet or failed library" in shown["no_counts"][1]
    assert f"the model's minimum ({MIN_DETECTED_GENES})" in shown["too_few_genes"][1]
    assert "possibly a type the reference lacks" in shown["unlike_training"][1]
    assert f"below the threshold ({expected['threshold']})" in shown["low_confidence"][1]
    assert page.get_attribute("#map", "data-points") == str(N_CELLS)
    legend = text(page, "#map-legend")
    assert any(label in legend for label in CLASSES)
    assert "48 of 48" in text(page, "#overlap")

    assert page.locator("#cells-table tbody tr").count() == 50
    assert text(page, "#page-info") == "Page 1 of 12"
    first_rows = rows_of(page, "#cells-table")
    for row, index in zip(first_rows, range(50), strict=True):
        assert row[0] == expected["cells"]["cell_id"][index]
        assert row[3] == f"{expected['cells']['novelty_score'][index]:.2f}"
        assert row[4] == expected["cells"]["unknown_reason"][index]
    assert first_rows[5][1] == "Unknown" and first_rows[5][4] == "no_counts"
    page.click("#page-next")
    assert text(page, "#page-info") == "Page 2 of 12"
    assert text(page, "#cells-table tbody tr:first-child td:first-child") == "cell-00050"
    page.fill("#cell-search", "cell-00123")
    expect(page.locator("#cells-table tbody tr")).to_have_count(1)
    row = text(page, "#cells-table tbody tr")
    assert "cell-00123" in row and expected["cells"]["label"][123] in row
    label = expected["counts"][0]["label"]
    page.fill("#cell-search", label.lower())
    n_label = sum(1 for cell_label in expected["cells"]["label"] if label.lower() in cell_label.lower())
    expect(page.locator("#cells-count")).to_have_text(re.compile(f"^{n_label} of"))
    page.fill("#cell-search", "")
    expect(page.locator("#cells-count")).to_have_text(re.compile("^600 of"))
    page.screenshot(path=str(screenshot_dir / "page-results.png"), full_page=True)

    with page.expect_download() as csv_download:
        page.click("#download-csv")
    assert csv_download.value.suggested_filename == "pbmc_sample.predictions.csv"
    rows = list(csv.reader(io.StringIO(Path(csv_download.value.path()).read_text())))
    assert rows[0] == ["cell_id", "predicted_cell_type", "confidence", "unknown_reason"]
    assert [r[1] for r in rows[1:]] == expected["cells"]["label"]
    assert [r[3] for r in rows[1:]] == expected["cells"]["unknown_reason"]
    with page.expect_download() as h5ad_download:
        page.click("#download-h5ad")
    assert h5ad_download.value.suggested_filename == "pbmc_sample.annotated.h5ad"
    annotated = ad.read_h5ad(h5ad_download.value.path())
    assert list(annotated.obs["predicted_cell_type"].astype(str)) == expected["cells"]["label"]
    assert list(annotated.obs["unknown_reason"].astype(str)) == expected["cells"]["unknown_reason"]


def test_empty_cells_are_counted_and_explained(page: Any, server: str, tmp_path: Path) -> None:
    empty = [3, 17, 18, 39]
    upload = tmp_path / "with_empty_droplets.csv"
    upload.write_text(cells_csv_text(40, seed=4, empty=empty))
    expected = report_of(server, upload.name, upload.read_bytes())
    assert [i for i, reason in enumerate(expected["cells"]["unknown_reason"]) if reason == "no_counts"] == empty

    page.goto(server + "/")
    enter_key(page)
    page.set_input_files("#file-input", str(upload))
    page.wait_for_selector("#results:not([hidden])")
    assert "Done: 40 cells" in text(page, "#progress-text")
    no_counts = page.locator("#reasons-table tr[data-reason=no_counts]")
    expect(no_counts.locator("td.reason-count")).to_have_text("4")
    expect(no_counts.locator("td.reason-text")).to_contain_text("no counts over the model's genes")

    # every cell of the table says why it is Unknown (blank for a typed cell), with the explanation on hover
    rows = rows_of(page, "#cells-table")
    assert [row[4] for row in rows] == expected["cells"]["unknown_reason"]
    assert all(rows[i][1] == "Unknown" for i in empty)
    assert all(row[4] == "" for row in rows if row[1] != "Unknown")
    tag = page.locator("#cells-table tbody tr").nth(3).locator(".reason-tag")
    assert "empty droplet" in tag.get_attribute("title")

    # clicking the reason in the summary lists exactly those cells
    no_counts.locator("button.reason-link").click()
    expect(page.locator("#cells-count")).to_have_text(re.compile("^4 of 40"))
    assert page.input_value("#reason-filter") == "no_counts"
    assert [row[0] for row in rows_of(page, "#cells-table")] == [f"cell-{i:05d}" for i in empty]
    page.select_option("#reason-filter", "typed")
    n_typed = sum(1 for reason in expected["cells"]["unknown_reason"] if reason == "")
    expect(page.locator("#cells-count")).to_have_text(re.compile(f"^{n_typed} of 40"))
    page.select_option("#reason-filter", "all")
    page.fill("#cell-search", "no_counts")
    expect(page.locator("#cells-count")).to_have_text(re.compile("^4 of 40"))
    page.fill("#cell-search", "")
    expect(page.locator("#cells-count")).to_have_text(re.compile("^40 of 40"))

    # sorting: by reason puts the Unknown cells first (no_counts before the others); by novelty, most novel first
    page.click("#cells-table th[data-key=unknown_reason] button")
    assert page.get_attribute("#cells-table th[data-key=unknown_reason]", "aria-sort") == "ascending"
    by_reason = [row[4] for row in rows_of(page, "#cells-table")]
    assert by_reason[:4] == ["no_counts"] * 4 and by_reason[-1] == ""
    page.click("#cells-table th[data-key=novelty_score] button")
    scores = [float(row[3]) for row in rows_of(page, "#cells-table")]
    assert scores == sorted(scores, reverse=True)
    page.click("#cells-table th[data-key=novelty_score] button")
    assert page.get_attribute("#cells-table th[data-key=novelty_score]", "aria-sort") == "ascending"
    scores = [float(row[3]) for row in rows_of(page, "#cells-table")]
    assert scores == sorted(scores)


def test_wrong_genes_are_explained_in_plain_words(page: Any, server: str, tmp_path: Path) -> None:
    upload = cells_h5ad(tmp_path / "wrong.h5ad", 20, genes=[f"OTHER{i}" for i in range(len(GENES))])
    page.goto(server + "/")
    enter_key(page)
    page.set_input_files("#file-input", str(upload))
    page.wait_for_selector("#error:not([hidden])")
    message = text(page, "#error")
    assert "The data cannot be used as sent." in message
    assert "The service said:" in message and "gene" in message
    assert page.is_hidden("#results")


def test_dropped_csv_file_is_annotated(page: Any, server: str) -> None:
    page.goto(server + "/")
    enter_key(page)
    header = ",".join(["cell_id", *GENES])
    rows = [f"drop-{i}," + ",".join("9" if g // 10 == i % 4 else "1" for g in range(len(GENES))) for i in range(12)]
    page.evaluate(
        """([content]) => {
            const file = new File([content], "dropped.csv", {type: "text/csv"});
            const data = new DataTransfer();
            data.items.add(file);
            const zone = document.getElementById("drop-zone");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
        }""",
        ["\n".join([header, *rows]) + "\n"],
    )
    page.wait_for_selector("#results:not([hidden])")
    assert "Done: 12 cells" in text(page, "#progress-text")
    assert page.get_attribute("#map", "data-points") == "12"
    assert text(page, "#cells-count").startswith("12 of 12")


def test_docs_and_redoc_work_offline(page: Any, server: str) -> None:
    page.goto(server + "/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "celltype" in text(page, ".swagger-ui .info .title")
    page.get_by_text("/v1/report", exact=True).first.wait_for()
    page.goto(server + "/redoc")
    page.wait_for_selector("h1:has-text('celltype')")
    page.get_by_text("Report on an uploaded", exact=False).first.wait_for(state="attached")
