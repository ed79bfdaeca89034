"""Hostile registry content: pickle payloads never executed, tampered weights refused, traversal URIs refused."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.reliability.harness import scoped_env
from benchmarks.reliability.inputs import gene_names, predict_body, save_random_bundle, write_training_output
from benchmarks.reliability.outcome import Outcome, expect, run_scenario
from benchmarks.reliability.stores import promote_version, publish_output


class PicklePayload:
    """An object whose unpickling creates ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _evil_python_model(marker: Path) -> Any:
    """An ``mlflow.pyfunc.PythonModel`` whose pickle carries :class:`PicklePayload`."""
    import mlflow

    class EvilModel(mlflow.pyfunc.PythonModel):
        def __init__(self) -> None:
            self.payload = PicklePayload(marker)

        def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate them
            return model_input

    return EvilModel()


def register_pickled_model(
    tracking_uri: str, name: str, bundle_dir: Path, marker: Path, *, tag_digest: bool, artifacts: Path
) -> str:
    """Register a cloudpickled pyfunc (payload: create ``marker``) with ``bundle_dir`` as its ``bundle`` artifact.

    This is what an attacker with write access to the registry could publish: a valid-looking
    celltype bundle next to a pickle. With ``tag_digest`` the version carries the bundle's real
    ``bundle_sha256`` tag. The run's artifacts are stored under ``artifacts``. Returns the version.
    """
    import mlflow
    from mlflow import MlflowClient

    from model.bundle import load_bundle

    digest = load_bundle(bundle_dir).sha256
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name("hostile") or client.get_experiment(
        client.create_experiment("hostile", artifact_location=artifacts.resolve().as_uri())
    )
    tags = {"bundle_sha256": digest} if tag_digest else {}
    with _mlflow_uri(tracking_uri):  # a client-side SQL registry resolves models:/m-... sources through it
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=_evil_python_model(marker), artifacts={"bundle": str(bundle_dir)}
            )
        with contextlib.suppress(Exception):
            client.create_registered_model(name)
        version = client.create_model_version(
            name, source=info.model_uri, run_id=run.info.run_id, tags=tags, model_id=info.model_id
        )
    return str(version.version)


def local_artifact_dir(tracking_uri: str, name: str, version: str) -> Path:
    """Where a version's model artifacts are stored (local file stores only)."""
    from urllib.parse import urlparse

    from mlflow import MlflowClient

    uri = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version_download_uri(
        name, version
    )
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"version {version} of {name} is not stored on a local path ({uri})")
    return Path(parsed.path)


def pickle_never_executed(workdir: Path, tracking_uri: str, *, n_genes: int = 50) -> Outcome:
    """Registry artifacts carrying a pickle payload: our loaders never run it; MLflow's pyfunc loader does."""

    def body(numbers: dict[str, Any]) -> str:
        import pickle

        import mlflow
        from fastapi.testclient import TestClient

        from model.bundle import load_bundle
        from model.errors import BundleError
        from model.predict import Predictor
        from model.registry import fetch_bundle
        from service.app import create_app
        from service.settings import Settings
        from training.checkpoint import CheckpointError, load_checkpoint

        marker = workdir / "PICKLE-WAS-EXECUTED"
        bundle = save_random_bundle(workdir / "hostile" / "bundle", n_genes, seed=8)
        name = f"hostile-{secrets.token_hex(3)}"
        artifacts = workdir / "hostile-artifacts"
        tagged = register_pickled_model(
            tracking_uri, name, bundle, marker, tag_digest=True, artifacts=artifacts
        )
        untagged = register_pickled_model(
            tracking_uri, name, bundle, marker, tag_digest=False, artifacts=artifacts
        )
        # mlflow.pyfunc.log_model itself unpickles the model it logs (on the attacker's side): start clean
        numbers["payload_ran_while_logging"] = marker.exists()
        marker.unlink(missing_ok=True)
        fetched, _ = fetch_bundle(
            f"models:/{name}/{tagged}", tracking_uri=tracking_uri, dst=workdir / "hostile-cache"
        )
        cached = sorted(p.name for p in fetched.iterdir())
        numbers["files_fetched"] = cached
        expect(
            cached == ["manifest.json", "model.safetensors"],
            f"the loader fetched more than the bundle: {cached}",
        )
        Predictor.load(f"models:/{name}/{tagged}", tracking_uri=tracking_uri, device="cpu")
        expect(not marker.exists(), "Predictor.load executed the pickle")
        try:
            Predictor.load(f"models:/{name}/{untagged}", tracking_uri=tracking_uri, device="cpu")
            refused = "loaded"
        except BundleError as exc:
            refused = str(exc)
        expect("bundle_sha256" in refused, f"a version without a digest tag was not refused: {refused}")
        settings = Settings(model_uri=f"models:/{name}/{tagged}", tracking_uri=tracking_uri, device="cpu")
        with TestClient(create_app(settings)) as client:
            answer = client.post(
                "/v1/predict",
                content=predict_body(gene_names(n_genes), 5),
                headers={"Content-Type": "application/json"},
            )
        expect(
            answer.status_code == 200,
            f"the service did not serve the bundle: {answer.status_code} {answer.text}",
        )
        expect(not marker.exists(), "the service executed the pickle")
        forged = _pickle_as_weights(bundle, workdir / "forged" / "bundle", marker)
        try:
            load_bundle(forged)
            forged_result = "loaded"
        except BundleError as exc:
            forged_result = str(exc)[:200]
        expect(not marker.exists(), "reading a bundle whose weights file is a pickle executed it")
        expect("malformed" in forged_result, f"a pickle posing as weights was not refused: {forged_result}")
        checkpoint = workdir / "evil-run" / "checkpoints" / "latest.pt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(
            pickle.dumps({"format": "celltype-checkpoint/1", "payload": PicklePayload(marker)})
        )
        try:
            load_checkpoint(checkpoint.parents[1], {})
            resumed = "loaded"
        except CheckpointError as exc:
            resumed = str(exc)[:200]
        expect(not marker.exists(), "loading a checkpoint executed the pickle")
        expect(resumed != "loaded", "a pickled checkpoint was accepted by --resume")
        with _mlflow_uri(tracking_uri):
            mlflow.pyfunc.load_model(f"models:/{name}/{tagged}")  # the control: MLflow's own loader
        numbers["payload_ran_under_mlflow_pyfunc_load_model"] = marker.exists()
        expect(marker.exists(), "the control failed: mlflow.pyfunc.load_model did not run the payload")
        return (
            "Predictor.load, the service and --resume never ran the payload (only manifest.json and "
            "model.safetensors were fetched; an untagged version, a pickle posing as consistent weights and a "
            "pickled checkpoint were refused); "
            "mlflow.pyfunc.load_model on the same version did run it"
        )

    return run_scenario("pickle payload in the registry", body)


def _pickle_as_weights(bundle_dir: Path, target: Path, marker: Path) -> Path:
    """A copy of ``bundle_dir`` whose ``model.safetensors`` is a pickle payload, with a manifest whose
    checksums match it: what an attacker who controls every file of a bundle could write."""
    import pickle

    from model.bundle import MANIFEST_FILE, WEIGHTS_FILE, file_sha256

    target.mkdir(parents=True)
    (target / WEIGHTS_FILE).write_bytes(pickle.dumps(PicklePayload(marker)))
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    manifest["weights"]["sha256"] = file_sha256(target / WEIGHTS_FILE)
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    return target


@contextlib.contextmanager
def _mlflow_uri(tracking_uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URIs set to ``tracking_uri`` inside the block."""
    import mlflow
    from mlflow.tracking import _model_registry
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # The raw globals, not the resolved getters: restoring a resolved URI would pin it for the process.
    previous = tracking_utils._tracking_uri, _model_registry.utils._registry_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, _model_registry.utils._registry_uri = previous


def tampered_weights_refused(workdir: Path, tracking_uri: str, *, n_genes: int = 50) -> Outcome:
    """Flip one byte of a registered ``model.safetensors``: loading must fail its checksum; a service
    asked to reload onto it keeps serving the old version."""

    def body(numbers: dict[str, Any]) -> str:
        from fastapi.testclient import TestClient

        from model.errors import BundleError
        from model.predict import Predictor
        from service.app import create_app
        from service.settings import Settings

        name = f"tamper-{secrets.token_hex(3)}"
        v1 = publish_output(write_training_output(workdir / "t1", n_genes, seed=1), tracking_uri, name)
        promote_version(name, v1, tracking_uri)
        settings = Settings(model_uri=f"models:/{name}@champion", tracking_uri=tracking_uri, device="cpu")
        with TestClient(create_app(settings)) as client:
            v2 = publish_output(write_training_output(workdir / "t2", n_genes, seed=2), tracking_uri, name)
            weights = (
                local_artifact_dir(tracking_uri, name, v2) / "artifacts" / "bundle" / "model.safetensors"
            )
            data = bytearray(weights.read_bytes())
            data[-1] ^= 0x01
            weights.write_bytes(bytes(data))
            promote_version(name, v2, tracking_uri)
            reload = client.post("/v1/admin/reload")
            numbers["reload_status"] = reload.status_code
            expect(
                reload.status_code == 409,
                f"reload onto tampered weights answered {reload.status_code}: {reload.text}",
            )
            expect("checksum" in reload.text, f"the refusal does not name the checksum: {reload.text}")
            served = client.get("/v1/model").json()["version"]
            expect(served == v1, f"version {served} serves after the refused reload, expected {v1}")
        try:
            Predictor.load(f"models:/{name}/{v2}", tracking_uri=tracking_uri, device="cpu")
            message = "loaded"
        except BundleError as exc:
            message = str(exc)
        numbers["load_error"] = message[:200]
        expect("checksum" in message, f"loading tampered weights did not fail its checksum: {message}")
        return f"reload answered 409 naming the checksum and version {v1} kept serving; Predictor.load refused too"

    return run_scenario("tampered weights in the registry", body)


TRAVERSAL_URIS = (
    "models:/../x",
    "models:/a/../../b",
    "models:/../../etc/passwd@champion",
    "models:/..@champion",
    "models:/a\\..\\b/1",
    "runs:/0123456789abcdef0123456789abcdef/../../../etc",
    "runs:/0123456789abcdef0123456789abcdef//etc/passwd",
)
"""Model URIs that try to climb out of the registry / cache directories."""


def path_traversal_refused(workdir: Path) -> Outcome:
    """Each URI of :data:`TRAVERSAL_URIS` is refused by ``celltype serve`` and ``celltype score`` (exit 2, one line)."""

    def body(numbers: dict[str, Any]) -> str:
        from cli.main import main

        refused = 0
        cache = workdir / "traversal-cache"
        tracking_uri = f"sqlite:///{workdir / 'traversal.db'}"
        for uri in TRAVERSAL_URIS:
            for command in (["serve", "--model", uri, "--tracking-uri", tracking_uri],
                            ["score", str(workdir / "none.h5ad"), "--model", uri, "--out", str(workdir / "o.csv")]):  # fmt: skip
                stderr = io.StringIO()
                with (
                    _preserved_process_state(),
                    contextlib.redirect_stderr(stderr),
                    scoped_env(CELLTYPE_CACHE_DIR=str(cache), MLFLOW_TRACKING_URI=tracking_uri),
                ):
                    code = main(command)
                message = stderr.getvalue().strip()
                expect(code == 2, f"celltype {command[0]} --model {uri!r} exited with {code}: {message}")
                expect(
                    "Traceback" not in message and message.count("\n") == 0,
                    f"not a one-line error: {message!r}",
                )
                expect(
                    "invalid" in message or "unsupported" in message,
                    f"the error is not about the URI: {message}",
                )
                refused += 1
        expect(not (workdir / "traversal.db").exists(), "a registry was opened for a malformed URI")
        expect(not cache.exists() or not any(cache.rglob("*")), "something was written to the bundle cache")
        numbers["refused"] = refused
        return f"{refused} of {2 * len(TRAVERSAL_URIS)} serve/score invocations refused with exit code 2 and a one-line message"

    return run_scenario("path traversal in model URIs", body)


@contextlib.contextmanager
def _preserved_process_state() -> Iterator[None]:
    """Undo what an in-process ``celltype serve`` sets up before it fails: logging handlers, torch threads."""
    import logging

    import torch

    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        for lg, handlers, level, propagate in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
        torch.set_num_threads(threads)

