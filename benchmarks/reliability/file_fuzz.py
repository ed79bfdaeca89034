"""Fuzzing the *contents* of uploaded files: malformed and degenerate h5ad, npz and CSR-JSON bodies.

Schemathesis (:mod:`~benchmarks.reliability.fuzz`) fuzzes the JSON schema, not what is inside an uploaded
file. Here Hypothesis builds small matrices and breaks them in one way each (:data:`FAULTS`): every
structural fault of a CSR matrix (a column index past the last gene or below 0, row pointers that go
backwards or do not start at 0, ``data``/``indices`` shorter than the row pointers claim), lying shapes,
gzip bombs, mixed dtypes (float indices, string or integer values), duplicated or empty gene names, zero
cells, zero genes and all-zero cells. Each file goes to the in-process app (``/v1/predict/h5ad``,
``/v1/predict`` with npz or JSON) and, for ``.h5ad`` files, to ``celltype score`` (its ``main`` called
in-process).

The oracle: no 5xx, no traceback in any answer or message, no crash (a segfault would end the run),
``celltype score`` exits 0 or 2 with a one-line message, the process's memory stays within a bound, and
every accepted file gives the answers of its clean equivalent (the same cells sent as dense JSON).
All-zero cells may be refused or answered; answered, they are ``Unknown`` whenever the answer carries an
``unknown_reason``.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import psutil
import scipy.sparse as sp

from benchmarks.reliability.outcome import Outcome, expect, run_scenario

FAULTS = (
    "clean",
    "clean_dense",
    "int_values",
    "index_past_genes",
    "negative_index",
    "pointers_decrease",
    "pointers_not_from_zero",
    "data_short",
    "indices_short",
    "lying_shape_cells",
    "lying_shape_genes",
    "float_indices",
    "fractional_indices",
    "string_values",
    "duplicated_gene",
    "empty_gene_name",
    "zero_cells",
    "zero_genes",
    "all_zero_cells",
    "gzip_bomb",
)
"""Ways a case differs from a clean file."""

FORMATS = ("h5ad", "npz", "csr_json")
"""Body formats."""

REFUSED = frozenset(
    {
        "index_past_genes",
        "negative_index",
        "pointers_decrease",
        "pointers_not_from_zero",
        "data_short",
        "indices_short",
        "lying_shape_cells",
        "lying_shape_genes",
        "fractional_indices",
        "string_values",
        "zero_cells",
        "gzip_bomb",
    }
)
"""Faults that must be refused with a 4xx (REST) or exit 2 (``celltype score``)."""

SAME_AS_CLEAN = frozenset({"clean", "clean_dense", "int_values", "float_indices"})
"""Faults that change nothing the file means: accepted, they must give the clean file's answers."""

CLI_MAY_ACCEPT = frozenset({"zero_cells", "gzip_bomb"})
"""Refused by the service but fine for ``celltype score``: an empty file, and a large all-zero file (the CLI
has no expansion limit; it reads any size in flat memory)."""

ACCEPTED = frozenset({"clean", "clean_dense", "int_values"})
"""Faults that must be accepted (200, exit 0)."""

BOMB_CELLS = 5_000
"""Rows of zeros in a gzip bomb (compresses to a few kB, expands past the fuzzed app's limit)."""

FUZZ_GENES = 200
"""Genes of the random model :func:`file_fuzz_outcome` serves."""
FUZZ_MAX_EXPANDED_BYTES = 256 * 1024
"""The fuzzed app's ``max_expanded_bytes``: below a gzip bomb's expanded size, far above any other file's."""
LONG_EXAMPLES = 3000
"""Generated files of the long run (``python -m benchmarks.reliability``, ``docs/reliability.md``)."""
QUICK_EXAMPLES = 150
"""Generated files of the short run (``--quick``; the CI test sends as many)."""


@dataclass
class FileCase:
    """One generated body and what it stands for.

    Attributes:
        fault: one of :data:`FAULTS`.
        fmt: one of :data:`FORMATS`.
        matrix: the clean cells x genes counts the body was made from (float32, dense).
        genes: the clean gene names.
    """

    fault: str
    fmt: str
    matrix: np.ndarray
    genes: list[str]


@dataclass
class FileFuzzResult:
    """What a file-fuzzing run sent and found.

    Attributes:
        cases: bodies sent, by ``format/fault``.
        statuses: REST answers by status code.
        cli_exits: ``celltype score`` exit codes.
        failures: one line per broken oracle (empty when everything held).
        rss_growth_mb: growth of this process's RSS over the run.
        seconds: wall time.
    """

    cases: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    cli_exits: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    rss_growth_mb: float = 0.0
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        """REST answers with a 5xx status."""
        return sum(n for status, n in self.statuses.items() if status >= 500)


def file_cases(genes: list[str]) -> Any:
    """Hypothesis strategy of :class:`FileCase` over the model's ``genes``."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw: Any) -> FileCase:
        fault = draw(st.sampled_from(FAULTS))
        fmt = draw(st.sampled_from(FORMATS))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        n_cells = 0 if fault == "zero_cells" else draw(st.integers(1, 12))
        counts = rng.poisson(draw(st.sampled_from([0.3, 2.0, 8.0])), size=(n_cells, len(genes)))
        if fault == "all_zero_cells":
            counts[:] = 0
        elif n_cells:
            counts[rng.random(n_cells) < 0.2] = 0
        return FileCase(fault, fmt, counts.astype(np.float32), list(genes))

    return build()


def _parts(case: FileCase) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], list[str]] | None:
    """The CSR parts, declared shape and gene names with the case's fault applied (``None``: not applicable)."""
    matrix = sp.csr_matrix(case.matrix)
    data, indices, indptr = matrix.data.copy(), matrix.indices.astype(np.int32), matrix.indptr.astype(np.int32)
    genes = list(case.genes)
    shape = (matrix.shape[0], len(genes))
    nnz = data.size
    fault = case.fault
    needs_values = {"index_past_genes", "negative_index", "data_short", "indices_short", "fractional_indices", "string_values"}
    if fault in needs_values and nnz == 0:
        return None
    if fault == "pointers_decrease" and (shape[0] < 2 or nnz == 0):
        return None
    if fault == "index_past_genes":
        indices[nnz // 2] = len(genes) + 10**6
    elif fault == "negative_index":
        indices[nnz // 2] = -7
    elif fault == "pointers_decrease":
        indptr[1] = nnz
        if indptr[2] >= nnz:
            indptr[2] = 0
    elif fault == "pointers_not_from_zero":
        indptr = indptr + 1
    elif fault == "data_short":
        data = data[: nnz // 2]
    elif fault == "indices_short":
        indices = indices[: nnz // 2]
    elif fault == "lying_shape_cells":  # the h5ad's shape attribute; npz/JSON declare cells by their cell_ids
        shape = (shape[0] * 1000 + 1, shape[1])
    elif fault == "lying_shape_genes":  # the h5ad's shape attribute; npz/JSON name fewer genes than indexed
        if case.fmt == "h5ad":
            shape = (shape[0], shape[1] + 5)
        else:
            top = int(indices.max()) if nnz else 0
            if top == 0:
                return None
            genes = genes[:top]
    elif fault == "float_indices":
        indices = indices.astype(np.float64)
    elif fault == "fractional_indices":
        indices = indices.astype(np.float64) + 0.5
    elif fault == "string_values":
        data = data.astype(str).astype("S")
    elif fault == "int_values":
        data = data.astype(np.int32)
    elif fault == "duplicated_gene":
        genes[-1] = genes[0]
    elif fault == "empty_gene_name":
        genes[len(genes) // 2] = ""
    elif fault == "zero_genes":
        data, indices, indptr, genes = data[:0], indices[:0], np.zeros(shape[0] + 1, np.int32), []
        shape = (shape[0], 0)
    return data, indices, indptr, shape, genes


def h5ad_body(case: FileCase, directory: Path) -> Path | None:
    """The case as an ``.h5ad`` file (anndata's layout, then broken with h5py), or ``None`` if not applicable."""
    path = directory / f"{case.fault}.h5ad"
    if case.fault == "gzip_bomb":
        zeros = np.zeros((BOMB_CELLS, len(case.genes)), dtype=np.float32)
        anndata.AnnData(X=zeros, var=pd.DataFrame(index=case.genes)).write_h5ad(path, compression="gzip")
        return path
    parts = _parts(case)
    if parts is None:
        return None
    data, indices, indptr, shape, genes = parts
    n_cells = indptr.size - 1
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    if case.fault == "clean_dense":
        clean = anndata.AnnData(X=case.matrix, obs=obs, var=var)
    else:
        valid = sp.csr_matrix((np.ones(0, np.float32), np.zeros(0, np.int32), np.zeros(n_cells + 1, np.int32)), shape=(n_cells, len(genes)))
        clean = anndata.AnnData(X=valid, obs=obs, var=var)
    with warnings_quiet():
        clean.write_h5ad(path)
    if case.fault != "clean_dense":
        with h5py.File(path, "r+") as handle:
            element = handle["X"]
            for name, values in (("data", data), ("indices", indices), ("indptr", indptr)):
                del element[name]
                element.create_dataset(name, data=values)
            element.attrs["shape"] = np.asarray(shape, dtype=np.int64)
    return path


def npz_body(case: FileCase) -> bytes | None:
    """The case as a ``numpy.savez`` body (CSR parts, or ``X`` for the dense case)."""
    if case.fault == "gzip_bomb":
        buffer = io.BytesIO()
        np.savez_compressed(buffer, genes=np.asarray(case.genes), X=np.zeros((BOMB_CELLS, len(case.genes)), np.float32))
        return buffer.getvalue()
    parts = _parts(case)
    if parts is None:
        return None
    data, indices, indptr, _, genes = parts
    buffer = io.BytesIO()
    if case.fault == "clean_dense":
        np.savez(buffer, genes=np.asarray(genes), X=case.matrix)
    else:
        arrays = {"genes": np.asarray(genes, dtype=str), "data": data, "indices": indices, "indptr": indptr}
        if case.fault == "lying_shape_cells":
            arrays["cell_ids"] = np.asarray([f"cell{i}" for i in range(indptr.size + 2)])
        np.savez(buffer, **arrays)
    return buffer.getvalue()


def csr_json_body(case: FileCase) -> bytes | None:
    """The case as a ``/v1/predict`` JSON body with ``csr`` (or dense ``cells`` for the dense case)."""
    if case.fault == "gzip_bomb":
        return None
    parts = _parts(case)
    if parts is None:
        return None
    data, indices, indptr, _, genes = parts
    if case.fault == "clean_dense":
        return json.dumps({"genes": genes, "cells": case.matrix.tolist()}).encode()
    values = [v.decode() for v in data.tolist()] if data.dtype.kind == "S" else data.tolist()
    document: dict[str, Any] = {"genes": genes, "csr": {"indptr": indptr.tolist(), "indices": indices.tolist(), "data": values}}
    if case.fault == "lying_shape_cells":
        document["cell_ids"] = [f"cell{i}" for i in range(indptr.size + 2)]
    return json.dumps(document).encode()


@contextlib.contextmanager
def warnings_quiet() -> Any:
    """Silence anndata's warnings about odd names while writing deliberately odd files."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class FileFuzzer:
    """Sends cases to an in-process app (a started ``TestClient``) and to ``celltype score``; checks the oracle.

    Args:
        client: a started TestClient of an app whose ``max_expanded_bytes`` is below a gzip bomb's size.
        bundle_dir: the served bundle (``celltype score --model``).
        workdir: scratch space for files and outputs.
        cli_every: run ``celltype score`` on every n-th ``.h5ad`` case (it loads the model each time).
    """

    def __init__(self, client: Any, bundle_dir: Path, workdir: Path, *, cli_every: int = 3) -> None:
        self.client = client
        self.bundle_dir = bundle_dir
        self.workdir = workdir
        self.cli_every = cli_every
        self.result = FileFuzzResult()
        self._h5ad_seen = 0
        self._references: dict[bytes, list[tuple[str, float]]] = {}

    def fail(self, case: FileCase, message: str) -> None:
        """Record a broken oracle."""
        self.result.failures.append(f"{case.fmt}/{case.fault} ({case.matrix.shape[0]} cells): {message}")

    def reference(self, case: FileCase) -> list[tuple[str, float]]:
        """Label and confidence of each clean cell, sent as dense JSON."""
        key = case.matrix.tobytes() + str(case.matrix.shape).encode()
        if key not in self._references:
            body = json.dumps({"genes": case.genes, "cells": case.matrix.tolist()})
            answer = self.client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
            predictions = answer.json()["predictions"]
            self._references[key] = [(p["label"], float(p["confidence"])) for p in predictions]
        return self._references[key]

    def run_case(self, case: FileCase) -> None:
        """Send ``case`` in its format (and to ``celltype score`` for some ``.h5ad`` cases); check everything."""
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            directory = Path(scratch)
            if case.fmt == "h5ad":
                path = h5ad_body(case, directory)
                if path is None:
                    return
                with path.open("rb") as handle:
                    response = self.client.post("/v1/predict/h5ad", files={"file": ("cells.h5ad", handle)})
                self._h5ad_seen += 1
                if self._h5ad_seen % self.cli_every == 0 or case.fault in REFUSED:
                    self.run_cli(case, path, directory)
            elif case.fmt == "npz":
                body = npz_body(case)
                if body is None:
                    return
                response = self.client.post("/v1/predict", content=body, headers={"content-type": "application/x-npz"})
            else:
                body = csr_json_body(case)
                if body is None:
                    return
                response = self.client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        label = f"{case.fmt}/{case.fault}"
        self.result.cases[label] = self.result.cases.get(label, 0) + 1
        self.result.statuses[response.status_code] = self.result.statuses.get(response.status_code, 0) + 1
        self.check_answer(case, response.status_code, response.text)

    def check_answer(self, case: FileCase, status: int, text: str) -> None:
        """The REST oracle for one answer."""
        if status >= 500:
            self.fail(case, f"server error {status}: {text[:300]}")
            return
        if "Traceback" in text:
            self.fail(case, "a traceback in the answer")
        if status >= 400:
            if case.fault in ACCEPTED:
                self.fail(case, f"a valid file was refused ({status}): {text[:300]}")
            detail = json.loads(text).get("detail")
            if not detail:
                self.fail(case, f"{status} without a detail")
            return
        if case.fault in REFUSED:
            self.fail(case, f"accepted ({status}) a file that must be refused")
            return
        predictions = json.loads(text)["predictions"]
        if case.fault in SAME_AS_CLEAN:
            got = [(p["label"], float(p["confidence"])) for p in predictions]
            self.compare(case, got)
        if case.fault == "all_zero_cells":
            for p in predictions:
                if "unknown_reason" in p and (p["label"] != "Unknown" or not p["unknown_reason"]):
                    self.fail(case, f"an all-zero cell answered {p['label']!r} (reason {p.get('unknown_reason')!r})")

    def compare(self, case: FileCase, got: list[tuple[str, float]]) -> None:
        """Accepted answers must equal the clean equivalent's."""
        expected = self.reference(case)
        if len(got) != len(expected):
            self.fail(case, f"{len(got)} answers for {len(expected)} cells")
            return
        for cell, ((label, confidence), (want_label, want_confidence)) in enumerate(zip(got, expected, strict=True)):
            if label != want_label or abs(confidence - want_confidence) > 1e-4:
                self.fail(case, f"cell {cell}: {label} {confidence:.6f}, clean file gives {want_label} {want_confidence:.6f}")
                return

    def run_cli(self, case: FileCase, path: Path, directory: Path) -> None:
        """``celltype score`` on the file, in-process: exit 0 with the clean answers, or 2 with one line."""
        from cli.main import main

        out = directory / "out.csv"
        stderr, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            try:
                code = main(["score", str(path), "--model", str(self.bundle_dir), "--out", str(out), "--no-progress", "--device", "cpu"])
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
        self.result.cli_exits[code] = self.result.cli_exits.get(code, 0) + 1
        message = stderr.getvalue()
        if "Traceback" in message or "Traceback" in stdout.getvalue():
            self.fail(case, f"celltype score printed a traceback: {message[-300:]}")
        if code not in (0, 2):
            self.fail(case, f"celltype score exited {code}: {message[-300:]}")
        elif code == 2:
            if case.fault in ACCEPTED:
                self.fail(case, f"celltype score refused a valid file: {message[-300:]}")
            errors = [line for line in message.splitlines() if line.startswith("celltype score: error:")]
            if len(errors) != 1:
                self.fail(case, f"exit 2 without a one-line message: {message[-300:]}")
        elif case.fault in REFUSED - CLI_MAY_ACCEPT:
            self.fail(case, "celltype score accepted a file that must be refused")
        elif case.fault in SAME_AS_CLEAN:
            table = pd.read_csv(out)
            got = list(zip(table["predicted_cell_type"].astype(str), table["confidence"].astype(float), strict=True))
            self.compare(case, got)


def run_file_fuzz(
    client: Any, bundle_dir: Path, workdir: Path, *, max_examples: int, seed: int = 0, cli_every: int = 3
) -> FileFuzzResult:
    """Generate ``max_examples`` cases with Hypothesis and run each through :class:`FileFuzzer`."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    genes = client.get("/v1/model/genes").json()["genes"]
    fuzzer = FileFuzzer(client, bundle_dir, workdir, cli_every=cli_every)
    process = psutil.Process()
    started, rss_before = time.perf_counter(), process.memory_info().rss

    @settings(
        max_examples=max_examples,
        database=None,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(case=file_cases(genes))
    def explore(case: FileCase) -> None:
        fuzzer.run_case(case)

    explore()
    fuzzer.result.rss_growth_mb = round((process.memory_info().rss - rss_before) / 2**20, 1)
    fuzzer.result.seconds = round(time.perf_counter() - started, 1)
    return fuzzer.result


def issue_files(genes: list[str], directory: Path) -> dict[str, Path]:
    """The three files of issue 13 (an index far past the last gene, backward row pointers, short data)."""
    rng = np.random.default_rng(13)
    matrix = rng.poisson(2.0, size=(40, len(genes))).astype(np.float32)
    files = {}
    for fault in ("index_past_genes", "pointers_decrease", "data_short"):
        path = h5ad_body(FileCase(fault, "h5ad", matrix, list(genes)), directory)
        assert path is not None
        files[fault] = path
    return files


def score_subprocess(run: Callable[..., Any], path: Path, bundle_dir: Path, out: Path) -> tuple[int, str]:
    """Exit code and stderr of a real ``celltype score`` subprocess (``run`` is :func:`harness.run_celltype`)."""
    done = run(["score", str(path), "--model", str(bundle_dir), "--out", str(out), "--no-progress", "--device", "cpu"])
    return done.returncode, done.stderr


def file_fuzz_outcome(workdir: Path, *, max_examples: int, seed: int = 0) -> Outcome:
    """The scenario: :func:`run_file_fuzz` against a random 200-gene model's in-process app, as an Outcome."""
    from benchmarks.reliability.inputs import save_random_bundle
    from service.app import create_app
    from service.settings import Settings

    def body(numbers: dict[str, Any]) -> str:
        from fastapi.testclient import TestClient

        bundle = save_random_bundle(workdir / "file-fuzz-bundle", FUZZ_GENES)
        settings = Settings(model_uri=str(bundle), device="cpu", max_expanded_bytes=FUZZ_MAX_EXPANDED_BYTES)
        with TestClient(create_app(settings)) as client:
            result = run_file_fuzz(client, bundle, workdir, max_examples=max_examples, seed=seed)
        numbers.update(
            max_examples=max_examples,
            genes=FUZZ_GENES,
            max_expanded_bytes=FUZZ_MAX_EXPANDED_BYTES,
            cases=sum(result.cases.values()),
            kinds=len(result.cases),
            statuses={str(k): v for k, v in sorted(result.statuses.items())},
            cli_exits={str(k): v for k, v in sorted(result.cli_exits.items())},
            rss_growth_mb=result.rss_growth_mb,
            failures=result.failures[:10],
        )
        expect(not result.failures, f"{len(result.failures)} broken oracle(s), first: {result.failures[:1]}")
        expect(result.server_errors == 0, f"{result.server_errors} server errors")
        return (
            f"{sum(result.cases.values())} generated files ({len(result.cases)} format/fault kinds): "
            f"0 crashes, 0 × 5xx, statuses {dict(sorted(result.statuses.items()))}, `celltype score` exits "
            f"{dict(sorted(result.cli_exits.items()))}, RSS growth {result.rss_growth_mb} MB; every accepted "
            "file answered as its clean equivalent"
        )

    return run_scenario("malformed and degenerate files (h5ad/npz/CSR JSON) to the app and celltype score", body)


__all__ = [
    "FAULTS",
    "FUZZ_GENES",
    "FUZZ_MAX_EXPANDED_BYTES",
    "LONG_EXAMPLES",
    "QUICK_EXAMPLES",
    "FileCase",
    "FileFuzzResult",
    "FileFuzzer",
    "csr_json_body",
    "file_cases",
    "file_fuzz_outcome",
    "h5ad_body",
    "issue_files",
    "npz_body",
    "run_file_fuzz",
    "score_subprocess",
]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The long file-fuzzing run (docs/reliability.md).")
    parser.add_argument("--examples", type=int, default=LONG_EXAMPLES)
    parser.add_argument("--workdir", type=Path, default=None)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as default_workdir:
        outcome = file_fuzz_outcome(arguments.workdir or Path(default_workdir), max_examples=arguments.examples)
    print(json.dumps({"name": outcome.name, "passed": outcome.passed, "detail": outcome.detail, **outcome.numbers}, indent=1))
