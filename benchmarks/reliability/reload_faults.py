"""``/v1/admin/reload`` while the registry is unreachable: the old model keeps serving."""

from __future__ import annotations

import contextlib
import secrets
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.reliability.harness import Service, start_service
from benchmarks.reliability.inputs import gene_names, predict_body, write_training_output
from benchmarks.reliability.outcome import Outcome, expect, run_scenario
from benchmarks.reliability.stores import MlflowServer, TcpProxy, promote_version, publish_output


def _served_version(service: Service, body: bytes) -> tuple[str, list[str]]:
    answer = httpx.post(
        f"{service.url}/v1/predict",
        content=body,
        headers={**service.headers, "Content-Type": "application/json"},
        timeout=30,
    )
    answer.raise_for_status()
    payload = answer.json()
    return str(payload["model"].get("version")), [p["label"] for p in payload["predictions"]]


def reload_with_registry_down(
    workdir: Path, *, server_uri: str | None = None, backend_uri: str | None = None, n_genes: int = 100
) -> Outcome:
    """Serve ``models:/NAME@champion``, promote a new version, take the registry away, ``POST
    /v1/admin/reload``: the old model must keep serving; once the registry is back the reload succeeds.

    Args:
        server_uri: a running MLflow server, reached through a :class:`TcpProxy` that is cut (the server
            itself stays up for its other clients).
        backend_uri: without ``server_uri``, a server is started on this store (default: a SQLite file
            in ``workdir``), stopped for the outage and started again.
    """

    def body(numbers: dict[str, Any]) -> str:
        name = f"reload-{secrets.token_hex(3)}"
        with contextlib.ExitStack() as stack:
            if server_uri is not None:
                host, _, port = server_uri.removeprefix("http://").rstrip("/").partition(":")
                proxy = TcpProxy((host, int(port)))
                stack.callback(proxy.cut)
                uri, take_down, bring_back = f"http://127.0.0.1:{proxy.port}", proxy.cut, proxy.restore
                numbers["outage"] = "connection to the server cut"
            else:
                backend = backend_uri or f"sqlite:///{workdir / 'reload-mlflow.db'}"
                server = MlflowServer(backend, workdir / "reload-artifacts", workdir).start()
                stack.callback(server.stop)
                uri, take_down, bring_back = server.uri, server.stop, server.start
                numbers["outage"] = "server stopped"
            v1 = publish_output(write_training_output(workdir / "v1", n_genes, seed=1), uri, name)
            promote_version(name, v1, uri)
            service = start_service(
                f"models:/{name}@champion", workdir, settings={"MLFLOW_TRACKING_URI": uri}
            )
            stack.callback(service.stop)
            cells = predict_body(gene_names(n_genes), 50, seed=3)
            before = _served_version(service, cells)
            v2 = publish_output(write_training_output(workdir / "v2", n_genes, seed=2), uri, name)
            promote_version(name, v2, uri)
            take_down()
            started = time.perf_counter()
            refused = httpx.post(f"{service.url}/v1/admin/reload", headers=service.headers, timeout=120)
            numbers["reload_status_while_down"] = refused.status_code
            numbers["reload_seconds_while_down"] = round(time.perf_counter() - started, 1)
            during = _served_version(service, cells)
            expect(
                refused.status_code == 502,
                f"reload with the registry down answered {refused.status_code}: {refused.text}",
            )
            expect(
                "keeps serving" in refused.text,
                f"the 502 does not say the old model keeps serving: {refused.text}",
            )
            expect(
                during == before,
                f"predictions changed while the registry was down: {during[0]} vs {before[0]}",
            )
            bring_back()
            reloaded = httpx.post(f"{service.url}/v1/admin/reload", headers=service.headers, timeout=120)
            numbers["reload_status_after_recovery"] = reloaded.status_code
            after = _served_version(service, cells)
            expect(
                reloaded.status_code == 200,
                f"reload after recovery answered {reloaded.status_code}: {reloaded.text}",
            )
            expect(after[0] == v2, f"after the reload version {after[0]} serves, expected {v2}")
        return (
            f"registry unreachable ({numbers['outage']}): reload answered 502 in {numbers['reload_seconds_while_down']} s "
            f"and version {v1} kept answering unchanged; after recovery the reload swapped in version {v2}"
        )

    return run_scenario("registry down during /v1/admin/reload", body)

