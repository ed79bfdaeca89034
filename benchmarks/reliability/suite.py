"""Every scenario in order, short (``quick``) or long, collected into one :class:`~benchmarks.reliability.report.Report`."""

from __future__ import annotations

import secrets
from pathlib import Path

from benchmarks.reliability.file_fuzz import LONG_EXAMPLES, QUICK_EXAMPLES, file_fuzz_outcome
from benchmarks.reliability.fuzz import fuzz_app, fuzz_live, undocumented_statuses
from benchmarks.reliability.harness import free_port, scoped_env, start_service
from benchmarks.reliability.hostile_http import (
    api_key_enforced,
    oversized_bodies_cut_off,
    upload_names_sanitized,
)
from benchmarks.reliability.hostile_registry import (
    path_traversal_refused,
    pickle_never_executed,
    tampered_weights_refused,
)
from benchmarks.reliability.inputs import gene_names, predict_body, save_random_bundle
from benchmarks.reliability.load import run_load
from benchmarks.reliability.outcome import Outcome
from benchmarks.reliability.reload_faults import reload_with_registry_down
from benchmarks.reliability.report import Report, environment
from benchmarks.reliability.scoring_faults import kill_scoring_and_resume
from benchmarks.reliability.service_faults import graceful_shutdown
from benchmarks.reliability.stores import PostgresDatabase, postgres_connection
from benchmarks.reliability.training_faults import kill_training_and_resume, training_with_registry_outage
from benchmarks.reliability.worker_crash import kill_worker_mid_request


def fuzz_examples_for(quick: bool, fuzz_examples: int | None = None) -> int:
    """Files the malformed-file fuzzer generates: ``fuzz_examples`` if given, else the long or short default."""
    if fuzz_examples is not None:
        return fuzz_examples
    return QUICK_EXAMPLES if quick else LONG_EXAMPLES


def run_files_and_workers(
    report: Report, workdir: Path, bundle: Path, n_genes: int, *, quick: bool, fuzz_examples: int | None = None
) -> None:
    """Issue 13's scenarios into ``report``: malformed files to the app and ``celltype score``
    (:func:`~benchmarks.reliability.file_fuzz.file_fuzz_outcome`), then a worker SIGKILLed mid-request under
    ``celltype serve --workers 2`` (:func:`~benchmarks.reliability.worker_crash.kill_worker_mid_request`)
    serving ``bundle`` (over ``n_genes`` genes)."""
    examples = fuzz_examples_for(quick, fuzz_examples)
    print(f"malformed files: {examples} generated files ...", flush=True)
    fuzz_dir = workdir / "file-fuzz"
    fuzz_dir.mkdir(parents=True, exist_ok=True)
    report.file_fuzz = file_fuzz_outcome(fuzz_dir, max_examples=examples)
    print("a worker killed mid-request ...", flush=True)
    crash_dir = workdir / "worker-crash"
    crash_dir.mkdir(parents=True, exist_ok=True)
    report.worker_crash = kill_worker_mid_request(
        bundle, crash_dir, n_genes=n_genes, heavy_cells=5000, probes=20 if quick else 40
    )


def run_all(workdir: Path, *, quick: bool, fuzz_examples: int | None = None) -> Report:
    """Run every scenario (short versions with ``quick``; ``fuzz_examples`` generated malformed files,
    default :data:`~benchmarks.reliability.file_fuzz.LONG_EXAMPLES`, or
    :data:`~benchmarks.reliability.file_fuzz.QUICK_EXAMPLES` with ``quick``)."""
    report = Report(quick=quick, environment=environment())
    n_genes = 2000
    key = secrets.token_urlsafe(24)
    bundle = save_random_bundle(workdir / "bundle", n_genes, n_classes=10)
    limit = 16 * 1024 * 1024
    print("fuzzing the in-process app ...", flush=True)
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_uri=str(bundle), device="cpu", api_key=key))
    report.fuzz.append(
        fuzz_app(app, max_examples=30 if quick else 200, headers={"Authorization": f"Bearer {key}"})
    )
    service = start_service(
        str(bundle), workdir, settings={"CELLTYPE_API_KEY": key, "CELLTYPE_MAX_BODY_BYTES": str(limit)}
    )
    try:
        print("fuzzing the live server ...", flush=True)
        report.fuzz.append(fuzz_live(service.url, max_examples=20 if quick else 100, headers=service.headers))
        paths = [
            ("GET", "/v1/model"),
            ("GET", "/v1/model/genes"),
            ("GET", "/metrics"),
            ("POST", "/v1/admin/reload"),
        ]
        report.undocumented = undocumented_statuses(service.url, paths, headers={})
        clients, duration = (8, 10.0) if quick else (32, 60.0)
        cells = 100
        print(f"load: {clients} clients for {duration:.0f} s ...", flush=True)
        report.load = run_load(
            service,
            predict_body(gene_names(n_genes), cells),
            clients=clients,
            duration_s=duration,
            cells_per_request=cells,
        )
        report.load_settings = {
            "cells_per_request": cells,
            "n_genes": n_genes,
            "endpoint": "/v1/predict (JSON)",
        }
        print("hostile input against the live server ...", flush=True)
        report.outcomes.append(
            oversized_bodies_cut_off(
                service, total_bytes=(128 if quick else 512) * 1024 * 1024, limit_bytes=limit
            )
        )
        report.outcomes.append(upload_names_sanitized(service, gene_names(n_genes), workdir))
        report.outcomes.append(api_key_enforced(service, rounds=100 if quick else 500))
    finally:
        service.stop()
    report.outcomes.append(path_traversal_refused(workdir))
    sqlite_uri = f"sqlite:///{workdir / 'hostile.db'}"
    with scoped_env(CELLTYPE_CACHE_DIR=str(workdir / "cache"), MLFLOW_TRACKING_URI=sqlite_uri):
        report.outcomes.append(pickle_never_executed(workdir, sqlite_uri))
        report.outcomes.append(tampered_weights_refused(workdir, sqlite_uri))
    print("faults ...", flush=True)
    report.outcomes.append(graceful_shutdown(workdir, n_requests=4, n_cells=2000 if quick else 5000))
    report.outcomes.append(
        kill_scoring_and_resume(workdir / "scoring", n_cells=100_000 if quick else 400_000, chunk_size=5000)
    )
    dead = f"http://127.0.0.1:{free_port()}"
    report.outcomes.append(kill_training_and_resume(workdir / "kill", tracking_uri=dead))
    for outage in ("refused", "database-refused"):
        report.outcomes.append(
            training_with_registry_outage(
                workdir / outage, name="outage", outage=outage, later_uri=sqlite_uri
            )
        )
    postgres = postgres_connection()
    if postgres is None:
        report.outcomes.append(
            Outcome("MLflow server / PostgreSQL outages", False, "PostgreSQL is not reachable: not run")
        )
    else:
        postgres.close()
        with scoped_env(CELLTYPE_CACHE_DIR=str(workdir / "cache")):
            report.outcomes.append(
                training_with_registry_outage(workdir / "killed", name="outage", outage="server-killed")
            )
            report.outcomes.append(
                training_with_registry_outage(workdir / "cut", name="outage", outage="database-cut")
            )
            database = PostgresDatabase()
            try:
                report.outcomes.append(
                    reload_with_registry_down(workdir / "reload", backend_uri=database.uri())
                )
            finally:
                database.drop()
    run_files_and_workers(report, workdir, bundle, n_genes, quick=quick, fuzz_examples=fuzz_examples)
    return report

