"""The suite's wiring and report (issue 13): ``python -m benchmarks.reliability --write`` runs the malformed-file
fuzzer and the killed-worker scenario and renders their section of ``docs/reliability.md`` from their outcomes,
so a ``--write`` run never drops a section the page has. No scenario runs here: they are replaced by stubs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import benchmarks.reliability.__main__ as entry
import benchmarks.reliability.suite as suite
from benchmarks.reliability.file_fuzz import LONG_EXAMPLES, QUICK_EXAMPLES
from benchmarks.reliability.fuzz import FuzzResult
from benchmarks.reliability.load import LoadResult
from benchmarks.reliability.outcome import Outcome
from benchmarks.reliability.report import CI_SUITE, DOC, ISSUE13_HEADING, Report, render

ENVIRONMENT = {
    "machine": "x86_64, 2 cores, Python 3.11",
    "load": "0.5",
    **{name: "1.0" for name in ("torch", "mlflow", "fastapi", "uvicorn", "schemathesis", "hypothesis")},
}

FILE_FUZZ = Outcome(
    "malformed and degenerate files (h5ad/npz/CSR JSON) to the app and celltype score",
    True,
    "2807 generated files (59 format/fault kinds): 0 crashes, 0 × 5xx, statuses {200: 891, 413: 89, 422: 1827}, "
    "`celltype score` exits {0: 154, 2: 486}, RSS growth 104.0 MB; every accepted file answered as its clean equivalent",
    {
        "max_examples": 3000,
        "genes": 200,
        "max_expanded_bytes": 256 * 1024,
        "cases": 2807,
        "kinds": 59,
        "statuses": {"200": 891, "413": 89, "422": 1827},
        "cli_exits": {"0": 154, "2": 486},
        "rss_growth_mb": 104.0,
        "failures": [],
        "seconds": 92.8,
    },
)

WORKER_CRASH = Outcome(
    "a worker SIGKILLed mid-request (celltype serve --workers 2)",
    True,
    "the killed worker's 5000-cell request failed (dropped connection: RemoteProtocolError); all 40 requests sent "
    "after it were answered 200 by the other worker; the supervisor started a replacement within 0.3 s",
    {"n_genes": 2000, "probes": 40, "probes_answered": 40, "killed": 101, "workers_after": [102, 103], "seconds": 15.2},
)


def full_report(**issue13: Outcome) -> Report:
    """A report with every part the page can show, with made-up numbers."""
    report = Report(quick=False, environment=ENVIRONMENT, **issue13)
    report.fuzz.append(FuzzResult("asgi", ["POST /v1/predict"], 10, {200: 6, 422: 4}, [], [], 1.0))
    report.undocumented.append("GET /v1/model: 401 (documented: 200)")
    report.load = LoadResult(2, 5.0, 100, 0, {"200": 100}, 10.0, 20.0, 30.0, 20.0, 2000.0, 500.0, 510.0, 520.0)
    report.load_settings = {"cells_per_request": 100, "n_genes": 2000, "endpoint": "/v1/predict (JSON)"}
    report.outcomes.append(
        Outcome(
            "oversized streamed bodies",
            True,
            "4 bodies: all 413",
            {"cases": [{"path": "/v1/predict", "declared_length": False, "status": 413, "mb_sent": 16.8, "seconds": 0.02}]},
        )
    )
    return report


def test_the_issue13_section_is_rendered_from_the_outcomes() -> None:
    page = render(full_report(file_fuzz=FILE_FUZZ, worker_crash=WORKER_CRASH), "python -m benchmarks.reliability --write")

    section = page.split(ISSUE13_HEADING, 1)[1].split("\n## ", 1)[0]
    assert "`file_fuzz` with 3000 Hypothesis examples and `worker_crash`" in section
    assert f"| {FILE_FUZZ.name} | passed | {FILE_FUZZ.detail} (92.8 s) |" in section
    assert f"| {WORKER_CRASH.name} | passed | {WORKER_CRASH.detail} (15.2 s) |" in section
    assert "gzip\nbomb (5,000 × 200 zeros, a few kB compressed, past the app's 256 KiB expansion limit)" in section
    assert "uvicorn's supervisor" in section
    assert f"### {FILE_FUZZ.name}: passed" in section and "| cli_exits | {\"0\": 154, \"2\": 486} |" in section
    assert "| cases | 2807 |" in section  # a count, not the HTTP cases of the oversized-body scenario
    assert f"### {WORKER_CRASH.name}: passed" in section and "| probes_answered | 40 |" in section
    summary = page.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert f"| {FILE_FUZZ.name} | passed |" in summary and f"| {WORKER_CRASH.name} | passed |" in summary
    assert "Fault, hostile-input, malformed-file and worker-crash scenarios: 3 passed, 0 failed." in summary
    assert page.index(ISSUE13_HEADING) < page.index("## Findings")
    assert "- `/v1/predict` (chunked): 413 after 16.8 MB sent, 0.02 s" in page


def test_a_failed_scenario_is_shown_failed_and_fails_the_count() -> None:
    broken = Outcome(WORKER_CRASH.name, False, "3 of 40 requests after the kill failed: ['ReadError']", {"seconds": 9.0})
    page = render(full_report(worker_crash=broken), "cmd")

    assert f"| {broken.name} | FAILED | 3 of 40 requests after the kill failed: ['ReadError'] (9.0 s) |" in page
    assert "2 passed" not in page and "1 passed, 1 failed." in page
    assert "`worker_crash`" in page and "file fuzzer" not in page


def test_without_the_issue13_scenarios_the_page_has_no_such_section() -> None:
    page = render(full_report(), "cmd")
    assert ISSUE13_HEADING not in page
    assert "Fault and hostile-input scenarios: 1 passed, 0 failed." in page


def test_a_write_run_keeps_every_section_and_ci_row_the_page_has() -> None:
    """Every ``##`` heading of docs/reliability.md, and every CI row, comes back from :func:`render`."""
    page = render(full_report(file_fuzz=FILE_FUZZ, worker_crash=WORKER_CRASH), "cmd")
    current = DOC.read_text()
    headings = re.findall(r"^## .+$", current, flags=re.MULTILINE)
    assert ISSUE13_HEADING in headings
    assert [h for h in headings if h not in page] == []
    rows = re.findall(r"^\| `(tests/[^`]+)` \|", current, flags=re.MULTILINE)
    assert {path for path, _ in CI_SUITE} >= set(rows)
    assert "tests/reliability/test_file_fuzz.py" in rows and "tests/reliability/test_worker_crash.py" in rows


@pytest.mark.parametrize(
    ("quick", "given", "expected"), [(False, None, LONG_EXAMPLES), (True, None, QUICK_EXAMPLES), (True, 40, 40)]
)
def test_the_suite_runs_both_scenarios_with_the_fuzz_examples_asked_for(
    monkeypatch, tmp_path: Path, quick: bool, given: int | None, expected: int
) -> None:
    calls: dict[str, dict] = {}

    def fake_fuzz(workdir: Path, *, max_examples: int, seed: int = 0) -> Outcome:
        calls["fuzz"] = {"workdir": workdir, "max_examples": max_examples}
        return FILE_FUZZ

    def fake_crash(bundle: Path, workdir: Path, **kwargs) -> Outcome:
        calls["crash"] = {"bundle": bundle, "workdir": workdir, **kwargs}
        return WORKER_CRASH

    monkeypatch.setattr(suite, "file_fuzz_outcome", fake_fuzz)
    monkeypatch.setattr(suite, "kill_worker_mid_request", fake_crash)
    report = Report(quick=quick, environment=ENVIRONMENT)
    suite.run_files_and_workers(report, tmp_path, tmp_path / "bundle", 2000, quick=quick, fuzz_examples=given)

    assert calls["fuzz"]["max_examples"] == expected and calls["fuzz"]["workdir"].is_dir()
    assert calls["crash"]["bundle"] == tmp_path / "bundle" and calls["crash"]["n_genes"] == 2000
    assert calls["crash"]["workdir"].is_dir() and calls["crash"]["heavy_cells"] == 5000
    assert report.file_fuzz is FILE_FUZZ and report.worker_crash is WORKER_CRASH
    assert report.all_outcomes[-2:] == [FILE_FUZZ, WORKER_CRASH]


def test_run_all_ends_with_the_issue13_scenarios() -> None:
    """``run_all`` passes its ``fuzz_examples`` on to :func:`suite.run_files_and_workers` (read from its source:
    running it would start every scenario)."""
    import inspect

    source = inspect.getsource(suite.run_all)
    assert "fuzz_examples: int | None = None" in source
    assert "run_files_and_workers(report, workdir, bundle, n_genes, quick=quick, fuzz_examples=fuzz_examples)" in source


def test_the_command_line_passes_fuzz_examples_and_fails_on_a_failed_scenario(monkeypatch, capsys, tmp_path) -> None:
    seen: dict[str, object] = {}

    def fake_run_all(workdir: Path, *, quick: bool, fuzz_examples: int | None = None) -> Report:
        seen.update(quick=quick, fuzz_examples=fuzz_examples)
        report = Report(quick=quick, environment=ENVIRONMENT, file_fuzz=FILE_FUZZ, worker_crash=WORKER_CRASH)
        if fuzz_examples == 7:
            report.file_fuzz = Outcome(FILE_FUZZ.name, False, "1 broken oracle(s)", {"seconds": 1.0})
        return report

    monkeypatch.setattr(entry, "run_all", fake_run_all)
    assert entry.main(["--quick", "--fuzz-examples", "300", "--workdir", str(tmp_path)]) == 0
    assert seen == {"quick": True, "fuzz_examples": 300}
    out = capsys.readouterr().out
    assert "Generated by `python -m benchmarks.reliability --quick --fuzz-examples 300 --write`" in out
    assert ISSUE13_HEADING in out
    assert entry.main(["--fuzz-examples", "7", "--workdir", str(tmp_path)]) == 1
    assert entry.command_line(False, None) == entry.command_line(False, LONG_EXAMPLES) == "python -m benchmarks.reliability --write"
    with pytest.raises(SystemExit):
        entry.main(["--fuzz-examples", "0"])
