"""``celltype train`` under faults: SIGKILL after a checkpoint then ``--resume``; the registry down while publishing."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reliability.harness import Managed, celltype_command, free_port, run_celltype, wait_for_file
from benchmarks.reliability.inputs import bundled_data
from benchmarks.reliability.outcome import Outcome, expect, run_scenario
from benchmarks.reliability.stores import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    MlflowServer,
    PostgresDatabase,
    TcpProxy,
)

HOLDOUT_BATCH = "sc_dropseq"
"""Held-out lab of the bundled CellBench data in the training scenarios."""
SMALL_TRAINING = ("epochs=6", "patience=0", "n_top_genes=300", "hidden_sizes=64,32", "batch_size=64")
"""``--set`` overrides that keep a training run to seconds on the bundled data."""


def train_args(out: Path, tracking_uri: str, sets: Sequence[str], *extra: str) -> list[str]:
    """``celltype train`` arguments on the bundled data (CPU, no progress bars)."""
    overrides = [arg for assignment in sets for arg in ("--set", assignment)]
    return [
        "train", str(bundled_data()), "--holdout-batch", HOLDOUT_BATCH, "--out", str(out), "--device", "cpu",
        "--tracking-uri", tracking_uri, "--no-progress", *overrides, *extra,
    ]  # fmt: skip


def bundle_tensors_equal(a: Path, b: Path) -> tuple[bool, list[str]]:
    """Whether two bundles hold bit-identical tensors; the names of those that differ."""
    from safetensors.numpy import load_file

    from model.bundle import WEIGHTS_FILE

    left, right = load_file(str(a / WEIGHTS_FILE)), load_file(str(b / WEIGHTS_FILE))
    names = sorted(left.keys() | right.keys())
    differing = [n for n in names if n not in left or n not in right or not np.array_equal(left[n], right[n])]
    return not differing, differing


def kill_training_and_resume(
    workdir: Path, *, tracking_uri: str, sets: Sequence[str] = SMALL_TRAINING, reference: Path | None = None
) -> Outcome:
    """SIGKILL ``celltype train`` right after its first checkpoint, ``--resume``, compare with an uninterrupted run.

    Args:
        tracking_uri: receives the publications (an unreachable one makes every run end with exit code
            3 after writing its bundle, which is all that is compared here).
        sets: the ``--set`` overrides of every run.
        reference: the output directory of an uninterrupted run with the same arguments (trained here
            when not given).
    """

    def body(numbers: dict[str, Any]) -> str:
        nonlocal reference
        victim = workdir / "interrupted"
        if reference is None:
            reference = workdir / "uninterrupted"
            first = run_celltype(train_args(reference, tracking_uri, sets))
            expect(
                first.returncode in (0, 3),
                f"uninterrupted run failed ({first.returncode}): {first.stderr[-2000:]}",
            )
        process = Managed(
            celltype_command(*train_args(victim, tracking_uri, sets)), workdir / "interrupted.log"
        )
        checkpoint = victim / "checkpoints" / "latest.pt"
        appeared = wait_for_file(checkpoint, process, timeout_s=300)
        process.signal(signal.SIGKILL)
        code = process.wait(timeout_s=30)
        expect(appeared, f"no checkpoint appeared before the run ended:\n{process.tail()}")
        expect(code == -signal.SIGKILL, f"the run was not killed but exited with {code}")
        expect(not (victim / "bundle").exists(), "the run had already finished when it was killed")
        import torch

        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        numbers["epochs_done_at_kill"] = int(state["epoch"])
        numbers["epochs"] = len(json.loads((reference / "history.json").read_text()))
        resumed = run_celltype([*train_args(victim, tracking_uri, sets), "--resume"])
        expect(
            resumed.returncode in (0, 3), f"--resume failed ({resumed.returncode}): {resumed.stderr[-2000:]}"
        )
        same, differing = bundle_tensors_equal(reference / "bundle", victim / "bundle")
        numbers["tensors_differing"] = len(differing)
        expect(same, f"resumed weights differ from the uninterrupted run in {differing[:5]}")
        history = [
            [
                {k: v for k, v in e.items() if k != "seconds"}
                for e in json.loads((d / "history.json").read_text())
            ]
            for d in (reference, victim)
        ]
        expect(
            history[0] == history[1], "the resumed run's per-epoch history differs from the uninterrupted one"
        )
        metrics = [json.loads((d / "metrics.json").read_text()) for d in (reference, victim)]
        for m in metrics:
            m.get("training", {}).pop("seconds", None)
        expect(metrics[0] == metrics[1], "the resumed run's final metrics differ from the uninterrupted one")
        return (
            f"killed after epoch {numbers['epochs_done_at_kill']} of {numbers['epochs']}; --resume ended with "
            "bit-identical weights, history and metrics"
        )

    return run_scenario("training SIGKILL after first checkpoint, then --resume", body)


def training_with_registry_outage(
    workdir: Path,
    *,
    name: str,
    outage: str,
    sets: Sequence[str] = SMALL_TRAINING,
    later_uri: str | None = None,
) -> Outcome:
    """Train while the registry is unavailable, expect exit code 3 and a kept bundle, then ``celltype register``.

    Args:
        outage: ``refused`` (nothing listens at the ``http://`` tracking URI), ``database-refused``
            (the tracking URI is a PostgreSQL database where nothing listens; both register into
            ``later_uri`` afterwards), ``server-killed`` (a real MLflow server on PostgreSQL is killed
            during training and restarted before registering) or ``database-cut`` (the PostgreSQL
            connection behind a running MLflow server is cut during training and restored before
            registering).
        later_uri: where ``refused`` and ``database-refused`` register afterwards.
    """

    def body(numbers: dict[str, Any]) -> str:
        out = workdir / f"train-{outage}"
        with contextlib.ExitStack() as stack:
            if outage in ("refused", "database-refused"):
                if later_uri is None:
                    raise ValueError(f"outage {outage!r} needs later_uri")
                tracking_uri = (
                    f"http://127.0.0.1:{free_port()}"
                    if outage == "refused"
                    else f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/celltype"
                )
                break_it, repair = None, None
            else:
                database = PostgresDatabase()
                stack.callback(database.drop)
                proxy = TcpProxy((POSTGRES_HOST, POSTGRES_PORT)) if outage == "database-cut" else None
                if proxy is not None:
                    stack.callback(proxy.cut)
                backend = database.uri(port=proxy.port) if proxy else database.uri()
                server = MlflowServer(backend, workdir / f"artifacts-{outage}", workdir).start()
                stack.callback(server.stop)
                tracking_uri = server.uri
                break_it = proxy.cut if proxy else server.stop
                repair = proxy.restore if proxy else server.start
            process = Managed(
                celltype_command(*train_args(out, tracking_uri, sets, "--register", name)),
                workdir / f"{outage}.log",
            )
            if break_it is not None:
                expect(
                    wait_for_file(out / "checkpoints" / "latest.pt", process, 300),
                    f"no checkpoint:\n{process.tail()}",
                )
                break_it()
            wait_for_file(out / "bundle", process, 600, poll_s=0.05)
            trained_at = time.monotonic()
            code = process.wait(timeout_s=600)
            log = process.tail(6000)
            numbers["exit_code"] = code
            numbers["seconds_publishing_before_exit"] = round(time.monotonic() - trained_at, 1)
            expect(code == 3, f"expected exit code 3 (trained, not published), got {code}:\n{log}")
            expect("celltype register" in log, f"the message does not say how to publish later:\n{log}")
            expect(
                str(out / "bundle") in log or str((out / "bundle").resolve()) in log,
                f"the message does not name the bundle:\n{log}",
            )
            from model.bundle import load_bundle

            bundle = load_bundle(out / "bundle")
            if repair is not None:
                repair()
            register_uri = later_uri if repair is None else tracking_uri
            registered = run_celltype(
                ["register", str(out), "--register", name, "--tracking-uri", register_uri]
            )
            expect(
                registered.returncode == 0,
                f"celltype register failed afterwards: {registered.stderr[-2000:]}",
            )
            from model.registry import fetch_bundle

            _, info = fetch_bundle(
                f"models:/{name}/{_registered_version(out)}",
                tracking_uri=register_uri,
                dst=workdir / "fetched",
            )
            expect(info["bundle_sha256"] == bundle.sha256, "the registered bundle is not the one trained")
            numbers["message"] = next((line for line in log.splitlines() if "celltype train:" in line), "")[
                :300
            ]
            return (
                f"exit code 3 {numbers['seconds_publishing_before_exit']} s after the bundle was written (kept); "
                f"`celltype register` later published it as version {info['version']}"
            )

    return run_scenario(f"MLflow unavailable during training ({outage})", body)


def _registered_version(out: Path) -> str:
    return str(json.loads((out / "published.json").read_text())["version"])

