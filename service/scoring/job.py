"""A scoring run: what ``celltype score`` was asked (:class:`ScoringJob`), the run, and what it did."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model.bundle import UNKNOWN_LABEL
from model.errors import InputError
from model.predict import Predictor
from model.provenance import provenance_record
from service.scoring.blocks import forward_rows
from service.scoring.executors import dask_client, score_locally, score_on_dask
from service.scoring.inputs import prepare_input
from service.scoring.output import write_output
from service.scoring.tasks import ChunkTask, chunk_tasks
from service.scoring.workdir import WorkDirectory, file_fingerprint
from service.scoring_io import ChunkResult, ResultColumns, ScoringError, output_suffix

DEFAULT_CHUNK_SIZE = 65536
"""Cells per chunk: the unit of work that is checkpointed for ``--resume`` and sent to a Dask worker."""
DEFAULT_TOP_K = 3
"""Top-k probability columns written by default."""
INPUT_KIND_CHOICES = ("auto", "counts", "lognorm")
"""``--input``: detect the kind from the first cells, or declare it."""


@dataclass(frozen=True)
class ScoringJob:
    """What ``celltype score`` was asked to do.

    Attributes:
        inputs: the ``.h5ad`` files to score.
        model: a bundle directory or a registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``).
        out: the output file; its suffix picks the format (``.h5ad``, ``.csv``, ``.parquet``).
        chunk_size: cells per chunk (checkpoint and Dask unit).
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: continue an interrupted run with the same settings.
        scheduler: address of a running Dask scheduler.
        workers: start a local Dask cluster with this many single-threaded worker processes.
        top_k: result columns (see :class:`ResultColumns`).
        input_kind: ``auto``, ``counts`` or ``lognorm``.
        layer: score ``layers[layer]`` instead of ``X``.
        gene_column: name genes by this ``var`` column instead of ``var_names``.
        tracking_uri: MLflow tracking URI for registry model URIs.
        progress: show a progress bar on stderr.
    """

    inputs: tuple[Path, ...]
    model: str
    out: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    device: str = "auto"
    resume: bool = False
    scheduler: str | None = None
    workers: int | None = None
    top_k: int = DEFAULT_TOP_K
    input_kind: str = "auto"
    layer: str | None = None
    gene_column: str | None = None
    tracking_uri: str | None = None
    progress: bool = True

    @property
    def dask(self) -> bool:
        """True when the chunks are scored on a Dask cluster."""
        return bool(self.scheduler) or self.workers is not None


@dataclass(frozen=True)
class ScoringSummary:
    """What a finished run did.

    Attributes:
        output: the written file.
        n_cells: cells in the output.
        n_scored: cells scored by this run (fewer than ``n_cells`` after ``--resume``).
        label_counts: cells per predicted label, most frequent first.
        provenance: the record written with the output (:mod:`model.provenance`).
        reason_counts: cells per ``unknown_reason`` (every reason, ``""`` left out).
        seconds: wall time of this run (loading the model and writing the output included).
        scoring_seconds: the part of it spent scoring (what the progress bar measures).
        inputs: per input: path, cells, input kind, whether detected, gene overlap.
    """

    output: Path
    n_cells: int
    n_scored: int
    label_counts: dict[str, int]
    reason_counts: dict[str, int]
    seconds: float
    inputs: list[dict[str, Any]]
    provenance: dict[str, Any]
    scoring_seconds: float

    @property
    def unknown_share(self) -> float:
        """Share of cells labelled ``"Unknown"``."""
        return self.label_counts.get(UNKNOWN_LABEL, 0) / self.n_cells if self.n_cells else 0.0

    @property
    def cells_per_second(self) -> float:
        """Cells scored by this run per second of scoring (the progress bar's final rate)."""
        return self.n_scored / self.scoring_seconds if self.scoring_seconds > 0 else 0.0

    def lines(self) -> list[str]:
        """A human-readable report."""
        resumed = self.n_cells - self.n_scored
        lines = [
            f"scored {self.n_scored:,} cells in {self.scoring_seconds:.1f} s ({self.cells_per_second:,.0f} cells/s; "
            f"{self.seconds:.1f} s in all, with loading the model and writing the output)"
            + (f"; {resumed:,} more were done by the interrupted run" if resumed else ""),
            f"wrote {self.n_cells:,} cells to {self.output}",
        ]
        for item in self.inputs:
            how = "detected" if item["detected"] else "declared"
            lines.append(
                f"  {item['path']}: {item['n_cells']:,} cells, {item['input_kind']} ({how}), "
                f"{item['genes_matched']}/{item['model_genes']} model genes found (by {item['identifier']})"
            )
        lines.append(f"unknown share: {self.unknown_share:.2%}")
        lines.append(
            "unknown reasons: " + ", ".join(f"{reason} {count:,}" for reason, count in self.reason_counts.items())
        )
        lines.append("labels:")
        for label, count in self.label_counts.items():
            share = count / self.n_cells if self.n_cells else 0.0
            lines.append(f"  {label}: {count:,} ({share:.1%})")
        return lines


def check_job(job: ScoringJob, suffix: str) -> None:
    """Raise :class:`ScoringError` for options that cannot work together or an output that cannot be written."""
    if not job.inputs:
        raise ScoringError("give at least one input .h5ad file")
    if job.input_kind not in INPUT_KIND_CHOICES:
        raise ScoringError(f"--input must be one of {', '.join(INPUT_KIND_CHOICES)}; got {job.input_kind!r}")
    if job.chunk_size < 1:
        raise ScoringError(f"--chunk-size must be a positive number of cells, got {job.chunk_size}")
    if job.workers is not None and job.workers < 1:
        raise ScoringError(f"--workers must be 1 or more, got {job.workers}")
    if job.workers is not None and job.scheduler:
        raise ScoringError(
            "give either --workers (a local Dask cluster) or --scheduler (a running one), not both"
        )
    if suffix == ".h5ad" and len(job.inputs) > 1:
        raise ScoringError(
            f"an .h5ad output annotates exactly one input, but {len(job.inputs)} were given; score them one by "
            "one, or write all cells to one table with --out OUT.csv or OUT.parquet"
        )
    resolved = {Path(p).resolve() for p in job.inputs}
    if job.out.resolve() in resolved:
        raise ScoringError(f"--out {job.out} is one of the inputs; write the results to a new file")
    directory = job.out.parent
    if not directory.is_dir():
        raise ScoringError(f"cannot write {job.out}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ScoringError(f"cannot write {job.out}: the directory {directory} is not writable")


def run_scoring(job: ScoringJob) -> ScoringSummary:
    """Score every cell of ``job.inputs`` and write ``job.out``; see the module docstring for the steps.

    Raises:
        CellTypeError: (subclasses) with a message saying what to fix: unreadable input, gene mismatch,
            wrong input kind, unsupported or unwritable output, unreachable scheduler, stale resume state.
    """
    started = time.perf_counter()
    suffix = output_suffix(job.out)
    check_job(job, suffix)
    predictor = Predictor.load(
        job.model, tracking_uri=job.tracking_uri, device=job.device, chunk_size=forward_rows()
    )
    columns = ResultColumns(tuple(predictor.classes), job.top_k)
    with ExitStack() as stack:
        inputs = []
        for path in job.inputs:
            item = prepare_input(Path(path), predictor, job.input_kind, job.layer, job.gene_column)
            stack.callback(item.reader.close)
            inputs.append(item)
        tasks = chunk_tasks(inputs, job.chunk_size, job.layer, job.top_k)
        key = {
            "inputs": [file_fingerprint(item.path) for item in inputs],
            "model_sha256": predictor.bundle.sha256,
            "chunk_size": job.chunk_size,
            "top_k": job.top_k,
            "input_kind": job.input_kind,
            "layer": job.layer,
            "gene_column": job.gene_column,
            "result_fields": list(ChunkResult.FIELDS),  # chunks saved by an older celltype cannot be resumed
        }
        client = stack.enter_context(dask_client(job.scheduler, job.workers)) if job.dask else None
        workdir = WorkDirectory(job.out)
        stack.callback(workdir.release)
        finished = workdir.open(key, job.resume, tasks)
        pending = [task for task in tasks if (task.input_index, task.chunk_index) not in finished]
        total = sum(task.n_cells for task in tasks)
        n_scored = sum(task.n_cells for task in pending)
        overlaps = {str(item.path): item.alignment.report() for item in inputs}
        provenance = provenance_record(
            predictor.bundle,
            predictor.source,
            threshold=predictor.threshold,
            gene_overlap=next(iter(overlaps.values())) if suffix == ".h5ad" else overlaps,
        )
        try:
            with tqdm(
                total=total,
                initial=total - n_scored,
                unit=" cells",
                smoothing=0,  # the rate over the whole bar, as the summary line reports it
                disable=not job.progress,
                desc="scoring",
                dynamic_ncols=True,
            ) as bar:
                scoring_started = time.perf_counter()  # the bar's clock starts as it is made

                def on_result(task: ChunkTask, result: ChunkResult) -> None:
                    result.save(workdir.chunk_file(task))
                    bar.update(task.n_cells)

                if client is not None:
                    score_on_dask(client, predictor.bundle, pending, str(job.device), on_result)
                else:
                    score_locally(predictor, inputs, pending, columns, on_result)
                scoring_seconds = time.perf_counter() - scoring_started
            label_counts, reason_counts = write_output(
                job.out, suffix, inputs, tasks, workdir, columns, provenance
            )
        except InputError:
            workdir.remove()  # the input has to change, so these partial results can never be resumed
            raise
        except BaseException:
            workdir.remove_if_empty()
            raise
        workdir.remove()
    return ScoringSummary(
        output=job.out,
        n_cells=total,
        n_scored=n_scored,
        label_counts=label_counts,
        reason_counts=reason_counts,
        seconds=time.perf_counter() - started,
        scoring_seconds=scoring_seconds,
        provenance=provenance,
        inputs=[
            {
                "path": str(item.path),
                "n_cells": item.reader.n_cells,
                "input_kind": item.input_kind,
                "detected": item.detected,
                "genes_matched": item.alignment.n_matched,
                "model_genes": item.alignment.n_model_genes,
                "identifier": item.alignment.identifier,
            }
            for item in inputs
        ],
    )
