"""Fuzzing the API from its OpenAPI schema with schemathesis: no 5xx, every answer as documented."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class FuzzResult:
    """What a schemathesis run sent and found.

    Attributes:
        target: ``asgi`` (in-process app) or ``live server``.
        operations: the API operations exercised.
        requests: requests sent.
        statuses: answers by status code.
        failures: one line per failed check (``MODE METHOD PATH: message``).
        skipped: operations with no input in a generation mode (e.g. no parameter to make invalid).
        seconds: wall time.
    """

    target: str
    operations: list[str]
    requests: int
    statuses: dict[int, int]
    failures: list[str]
    skipped: list[str]
    seconds: float

    @property
    def server_errors(self) -> int:
        """Answers with a 5xx status."""
        return sum(count for status, count in self.statuses.items() if status >= 500)


def fuzz_checks(mode: str) -> list[Any]:
    """The schemathesis checks applied to every answer (plus ``negative_data_rejection`` for invalid input)."""
    from schemathesis import checks

    selected = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        checks.response_headers_conformance,
        checks.ignored_auth,
    ]
    return selected + ([checks.negative_data_rejection] if mode == "negative" else [])


def _first_lines(text: str, n: int = 6) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:n])[:600]


def fuzz_schema(
    schema: Any,
    *,
    target: str,
    max_examples: int,
    headers: dict[str, str] | None = None,
    modes: Sequence[str] = ("positive", "negative"),
) -> FuzzResult:
    """Exercise every operation of ``schema`` with ``max_examples`` generated cases per mode.

    Cases are derandomized (the same inputs every run). Failed checks are collected, not raised, so
    one run reports everything it found.
    """
    import hypothesis
    from hypothesis import HealthCheck, Phase

    statuses: Counter[int] = Counter()
    failures: list[str] = []
    skipped: list[str] = []
    operations: list[str] = []
    config = hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
        print_blob=False,
    )

    def exercise(case: Any, label: str, mode: str) -> None:
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # a transport failure is a finding, not a crash of the run
            failures.append(f"{mode} {label}: no answer ({type(exc).__name__}: {exc})"[:600])
            return
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=fuzz_checks(mode))
        except Exception as exc:  # schemathesis raises a group of check failures
            failures.append(f"{mode} {label}: {_first_lines(str(exc))}")

    started = time.perf_counter()
    for mode in modes:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.label not in operations:
                operations.append(operation.label)
            test = _hypothesis_test(exercise, operation, mode, config)
            try:
                test()
            except hypothesis.errors.Unsatisfiable:
                skipped.append(f"{mode} {operation.label}")
    return FuzzResult(
        target=target,
        operations=operations,
        requests=sum(statuses.values()),
        statuses=dict(sorted(statuses.items())),
        failures=failures,
        skipped=skipped,
        seconds=round(time.perf_counter() - started, 1),
    )


def _hypothesis_test(
    exercise: Callable[..., None], operation: Any, mode: str, config: Any
) -> Callable[[], None]:
    """A Hypothesis test running ``exercise(case, label, mode)`` on cases generated for ``operation``."""
    import hypothesis
    from schemathesis import GenerationMode

    @config
    @hypothesis.given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    def test(case: Any) -> None:
        exercise(case, operation.label, mode)

    return test


def fuzz_app(app: Any, *, max_examples: int, headers: dict[str, str] | None = None) -> FuzzResult:
    """Fuzz an in-process FastAPI app (its lifespan runs: model loaded, workers started)."""
    import schemathesis
    from fastapi.testclient import TestClient

    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        return fuzz_schema(schema, target="asgi", max_examples=max_examples, headers=headers)


def fuzz_live(url: str, *, max_examples: int, headers: dict[str, str] | None = None) -> FuzzResult:
    """Fuzz a running server through its ``/openapi.json``."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return fuzz_schema(schema, target="live server", max_examples=max_examples, headers=headers)


def undocumented_statuses(url: str, paths: Sequence[tuple[str, str]], headers: dict[str, str]) -> list[str]:
    """``METHOD PATH: STATUS`` for each answer (sent with ``headers``) whose status the OpenAPI schema omits."""
    spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
    found = []
    for method, path in paths:
        status = httpx.request(method, f"{url}{path}", headers=headers, timeout=10).status_code
        documented = spec["paths"][path][method.lower()]["responses"]
        if str(status) not in documented:
            found.append(f"{method} {path}: {status} (documented: {', '.join(sorted(documented))})")
    return found

