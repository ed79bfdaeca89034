"""What a scenario returns: what it tried, whether it held, and the numbers behind that."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """What one scenario tried and whether it held.

    Attributes:
        name: the scenario.
        passed: whether everything it checks held.
        detail: one sentence: what happened (or what broke).
        numbers: measurements backing ``detail`` (JSON-ready).
    """

    name: str
    passed: bool
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)


class ScenarioFailure(AssertionError):
    """A check inside a scenario did not hold; the message says which and what was seen."""


def expect(condition: bool, message: str) -> None:
    """Raise :class:`ScenarioFailure` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ScenarioFailure(message)


def run_scenario(name: str, body: Callable[[dict[str, Any]], str]) -> Outcome:
    """Run ``body(numbers)``; its return value is the detail. A failed check or an error fails the outcome."""
    numbers: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        detail = body(numbers)
        passed = True
    except ScenarioFailure as exc:
        detail, passed = str(exc), False
    except Exception as exc:  # a scenario that crashes has failed; the report says how
        detail, passed = f"{type(exc).__name__}: {exc}", False
    numbers["seconds"] = round(time.perf_counter() - started, 1)
    return Outcome(name=name, passed=passed, detail=detail, numbers=numbers)

