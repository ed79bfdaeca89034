"""Fuzzing the contents of uploaded files (issue 13): malformed and degenerate h5ad/npz/CSR-JSON bodies to the
in-process app and to ``celltype score`` — no 5xx, no traceback, no crash, bounded memory, and accepted
files answer as their clean equivalent. The long run is :mod:`benchmarks.reliability.file_fuzz`'s scenario."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from benchmarks.reliability.file_fuzz import FAULTS, FORMATS, issue_files, run_file_fuzz, score_subprocess
from benchmarks.reliability.harness import child_env, run_celltype
from service.settings import Settings
from tests.service.conftest import start_client

MAX_EXPANDED_BYTES = 256 * 1024
"""Below a generated gzip bomb's expanded size, far above any other generated file's."""


@pytest.fixture(scope="module")
def fuzz_client(random_bundle_dir: Path) -> Iterator[TestClient]:
    """The app serving the random bundle, with an expansion limit a generated gzip bomb exceeds."""
    client = start_client(Settings(model_uri=str(random_bundle_dir), device="cpu", max_expanded_bytes=MAX_EXPANDED_BYTES))
    yield client
    client.__exit__(None, None, None)


def test_generated_files_never_crash_never_5xx_and_answer_as_their_clean_equivalent(
    fuzz_client, random_bundle_dir: Path, tmp_path: Path, seed: int
) -> None:
    result = run_file_fuzz(fuzz_client, random_bundle_dir, tmp_path, max_examples=150, seed=seed, cli_every=5)

    assert result.failures == [], "\n".join(result.failures[:20])
    assert result.server_errors == 0, result.statuses
    assert set(result.cli_exits) <= {0, 2}, result.cli_exits
    assert result.rss_growth_mb < 400, result.rss_growth_mb
    sent_faults = {label.split("/")[1] for label in result.cases}
    assert len(sent_faults) >= len(FAULTS) // 2, sorted(sent_faults)
    assert {label.split("/")[0] for label in result.cases} == set(FORMATS)
    assert 200 in result.statuses and 422 in result.statuses, result.statuses


def test_the_issue_files_are_refused_by_a_real_celltype_score(random_bundle_dir: Path, tmp_path: Path, fuzz_client) -> None:
    """The three files of issue 13 (segfault, silent answer, 500 before), each to its own ``celltype score``
    subprocess (run side by side): exit 2 and one line naming the fault."""
    genes = fuzz_client.get("/v1/model/genes").json()["genes"]
    files = issue_files(genes, tmp_path)

    def score(item: tuple[str, Path]) -> tuple[int, str]:
        fault, path = item
        return score_subprocess(
            lambda args: run_celltype(args, env=child_env(CELLTYPE_DEVICE="cpu")), path, random_bundle_dir, tmp_path / f"{fault}.csv"
        )

    with ThreadPoolExecutor(len(files)) as pool:
        answers = dict(zip(files, pool.map(score, files.items()), strict=True))
    for fault, (code, stderr) in answers.items():
        assert code == 2, (fault, stderr)
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("celltype score: error:")]
        assert len(errors) == 1 and "corrupt" in errors[0], (fault, stderr)
