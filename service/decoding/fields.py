"""Checks of the small fields every prediction body has: options and lists of names."""

from __future__ import annotations

from typing import Any

from model.preprocessing import INPUT_KINDS
from service.errors import RequestInputError


def check_options(
    input_kind: Any, top_k: Any, return_probabilities: Any, threshold: Any
) -> tuple[str, int | None, bool, float | None]:
    """Validate the per-request options, raising :class:`RequestInputError` with a message that names the bad one."""
    if input_kind not in INPUT_KINDS:
        raise RequestInputError(f"'input' must be one of {', '.join(map(repr, INPUT_KINDS))}; got {input_kind!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise RequestInputError(f"'top_k' must be a positive integer; got {top_k!r}")
    if not isinstance(return_probabilities, bool):
        raise RequestInputError(f"'return_probabilities' must be true or false; got {return_probabilities!r}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
            raise RequestInputError(f"'threshold' must be a number between 0 and 1; got {threshold!r}")
        threshold = float(threshold)
    return input_kind, top_k, return_probabilities, threshold


def check_names(values: Any, field: str, *, expected: int | None = None) -> list[str]:
    """``values`` as a list of strings, or :class:`RequestInputError` naming ``field`` (``expected`` = required length)."""
    if not isinstance(values, list):
        raise RequestInputError(f"'{field}' must be a list of strings")
    if not set(map(type, values)) <= {str}:
        for position, value in enumerate(values):
            if not isinstance(value, str):
                raise RequestInputError(f"'{field}[{position}]' must be a string; got {value!r}")
    if expected is not None and len(values) != expected:
        raise RequestInputError(f"'{field}' has {len(values)} entries but there are {expected} cells; send one per cell")
    return values
