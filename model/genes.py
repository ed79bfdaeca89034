"""Aligning the genes a client sent to the genes a model was trained on.

Genes are matched by name in any order: exactly first, then case-insensitively (and Ensembl IDs without
their ``.version`` suffix). Extra genes are ignored, missing ones are filled with zeros and reported.
Duplicated names and an overlap below a threshold are refused with a message that says what to fix.

A model may know its genes by several identifiers: its ``var_names`` and every ``var`` column of the
training data that held a unique, non-empty string per gene (``gene_ids``, ``feature_name``, ...; see
:func:`identifier_columns`). :func:`align_best` matches an input against each of these identifier sets
and keeps the one that overlaps best; the alignment says which (:attr:`GeneAlignment.identifier`).
When too few genes match, :func:`matching_columns` finds the columns of an input's ``var`` table that
would have matched, so the error can name them.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.errors import GeneMismatchError

DEFAULT_MIN_OVERLAP = 0.5
"""Share of a model's genes that must be present in the input unless configured otherwise."""

VAR_NAMES = "var_names"
"""The identifier set of the model's own gene names (the training data's ``var_names``)."""

_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$")


def gene_key(name: str) -> str:
    """The case-insensitive matching key of a gene name (upper case, Ensembl version suffix removed)."""
    key = name.strip().upper()
    match = _ENSEMBL_VERSION.match(key)
    return match.group(1) if match else key


def gene_list_hash(genes: Sequence[str]) -> str:
    """A stable sha256 of an ordered gene list; two models share it iff they expect the same input."""
    return hashlib.sha256("\n".join(genes).encode("utf-8")).hexdigest()


def _examples(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (", ..." if len(names) > limit else "")


@dataclass(frozen=True)
class GeneAlignment:
    """Where each of a model's genes is found in an input.

    Attributes:
        source_index: for each model gene, its column in the input, or -1 where it is missing.
        n_input_genes: how many genes the input had.
        missing: the model genes the input lacks (filled with zeros), named by the model's ``var_names``.
        identifier: the identifier set the input's names matched: ``"var_names"`` or the name of the
            training data's ``var`` column (see :func:`align_best`).
    """

    source_index: np.ndarray
    n_input_genes: int
    missing: tuple[str, ...]
    identifier: str = VAR_NAMES

    @property
    def n_model_genes(self) -> int:
        """Number of genes the model expects."""
        return int(self.source_index.shape[0])

    @property
    def n_matched(self) -> int:
        """Number of model genes found in the input."""
        return self.n_model_genes - len(self.missing)

    @property
    def overlap(self) -> float:
        """Share of the model's genes found in the input (0..1)."""
        return self.n_matched / self.n_model_genes if self.n_model_genes else 0.0

    @property
    def is_identity(self) -> bool:
        """True when the input's columns are exactly the model's genes in the model's order."""
        return (
            not self.missing
            and self.n_input_genes == self.n_model_genes
            and bool(np.array_equal(self.source_index, np.arange(self.n_model_genes)))
        )

    def report(self, max_examples: int = 10) -> dict[str, Any]:
        """A JSON-ready summary: overlap, counts, examples of missing genes and the identifier that matched."""
        return {
            "identifier": self.identifier,
            "n_model_genes": self.n_model_genes,
            "n_input_genes": self.n_input_genes,
            "n_matched": self.n_matched,
            "overlap": round(self.overlap, 6),
            "n_missing": len(self.missing),
            "missing_examples": list(self.missing[:max_examples]),
            "n_ignored": self.n_input_genes - self.n_matched,
        }


def _check_unique(input_genes: Sequence[str]) -> None:
    if not input_genes:
        raise GeneMismatchError("no gene names were given; send the gene name of every column")
    duplicates = [name for name, count in Counter(input_genes).items() if count > 1]
    if duplicates:
        raise GeneMismatchError(
            f"{len(duplicates)} gene name(s) appear more than once in the input ({_examples(duplicates)}); "
            "make gene names unique (e.g. sum or drop the duplicated columns)"
        )


def _match(input_genes: Sequence[str], model_genes: Sequence[str]) -> np.ndarray:
    """For each model gene, its column in the (duplicate-free) input, or -1.

    Raises:
        GeneMismatchError: two input names match the same model gene case-insensitively.
    """
    exact = {name: column for column, name in enumerate(input_genes)}
    by_key: dict[str, list[int]] = {}
    for column, name in enumerate(input_genes):
        by_key.setdefault(gene_key(name), []).append(column)
    source = np.full(len(model_genes), -1, dtype=np.int64)
    for position, gene in enumerate(model_genes):
        column = exact.get(gene)
        if column is None:
            candidates = by_key.get(gene_key(gene), [])
            if len(candidates) > 1:
                names = [input_genes[c] for c in candidates]
                raise GeneMismatchError(
                    f"input genes {_examples(names)} all match the model's gene {gene!r} when case is "
                    "ignored; keep only one of them"
                )
            column = candidates[0] if candidates else None
        if column is not None:
            source[position] = column
    return source


def _alignment(source: np.ndarray, n_input_genes: int, model_genes: Sequence[str], identifier: str) -> GeneAlignment:
    missing = tuple(model_genes[position] for position in np.flatnonzero(source < 0))
    return GeneAlignment(source_index=source, n_input_genes=n_input_genes, missing=missing, identifier=identifier)


def _too_little_overlap(
    alignment: GeneAlignment, input_genes: Sequence[str], identifiers: Mapping[str, Sequence[str]], min_overlap: float
) -> GeneMismatchError:
    known = "; ".join(f"{name}: {_examples(list(genes), 3)}" for name, genes in identifiers.items())
    alternatives = (
        f"The model knows its genes by {len(identifiers)} identifiers ({known})"
        if len(identifiers) > 1
        else f"The model's genes look like {_examples(list(identifiers[VAR_NAMES]), 3)}"
    )
    return GeneMismatchError(
        f"only {alignment.n_matched} of the model's {alignment.n_model_genes} genes "
        f"({alignment.overlap:.1%}) were found in the input; at least {min_overlap:.0%} are required. "
        f"{alternatives}; the input's look like {_examples(input_genes, 3)}. Use the same gene identifiers "
        "(symbols vs Ensembl IDs) and species as the model."
    )


def align_genes(
    input_genes: Sequence[str], model_genes: Sequence[str], *, min_overlap: float = DEFAULT_MIN_OVERLAP
) -> GeneAlignment:
    """Match ``input_genes`` to ``model_genes`` by name.

    Raises:
        GeneMismatchError: the input names no genes, names a gene twice, names two genes that match
            the same model gene case-insensitively, or covers less than ``min_overlap`` of the model.
    """
    return align_best(input_genes, {VAR_NAMES: model_genes}, min_overlap=min_overlap)


def align_best(
    input_genes: Sequence[str],
    identifiers: Mapping[str, Sequence[str]],
    *,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> GeneAlignment:
    """Match ``input_genes`` against every identifier set of a model and keep the best-overlapping one.

    Args:
        input_genes: the input's column names.
        identifiers: ``{"var_names": model genes, column: the same genes by that identifier, ...}``,
            every list in the model's gene order; the first set wins ties.
        min_overlap: least share of the model's genes the best set must find.

    Returns:
        The alignment; ``missing`` names genes by the first set (the model's ``var_names``).

    Raises:
        GeneMismatchError: the input names no genes or a gene twice, or no set covers ``min_overlap``
            of the model (a set in which two input names match one gene case-insensitively counts as
            not matching; if every set fails that way, that is the error).
    """
    input_genes = [str(g) for g in input_genes]
    _check_unique(input_genes)
    model_genes = next(iter(identifiers.values()))
    best: GeneAlignment | None = None
    ambiguous: GeneMismatchError | None = None
    for name, genes in identifiers.items():
        try:
            source = _match(input_genes, genes)
        except GeneMismatchError as exc:
            ambiguous = ambiguous or exc
            continue
        candidate = _alignment(source, len(input_genes), model_genes, name)
        if best is None or candidate.n_matched > best.n_matched:
            best = candidate
    if best is None:
        assert ambiguous is not None
        raise ambiguous
    if best.overlap < min_overlap:
        raise _too_little_overlap(best, input_genes, identifiers, min_overlap)
    return best


def identifier_columns(
    columns: Iterable[tuple[str, Iterable[object]]], var_names: Sequence[str]
) -> dict[str, list[str]]:
    """The columns of a ``var`` table that identify its genes: a unique, non-empty string for every gene.

    Args:
        columns: ``(name, values)`` pairs, e.g. ``DataFrame.items()`` of ``var``.
        var_names: the table's index; columns equal to it add nothing and are left out.

    Returns:
        ``{column name: its values as str}`` in the given order. Uniqueness counts case-insensitively
        and without Ensembl version suffixes (:func:`gene_key`), as matching does.
    """
    names = [str(g) for g in var_names]
    found: dict[str, list[str]] = {}
    for name, column in columns:
        values = list(column)
        if name == VAR_NAMES or len(values) != len(names):
            continue
        if not all(isinstance(v, str) and v.strip() for v in values):
            continue
        if values == names or len({gene_key(v) for v in values}) != len(values):
            continue
        found[str(name)] = values
    return found


def matching_columns(
    columns: Mapping[str, Sequence[str]], identifiers: Mapping[str, Sequence[str]], min_overlap: float
) -> list[tuple[str, str, float]]:
    """The input ``var`` columns that would match the model: ``(column, identifier set, overlap)``, best first.

    A column counts when its names, matched against one of the model's identifier sets, cover at
    least ``min_overlap`` of the model's genes.
    """
    matches = []
    for column, genes in columns.items():
        try:
            alignment = align_best(genes, identifiers, min_overlap=min_overlap)
        except GeneMismatchError:
            continue
        matches.append((column, alignment.identifier, alignment.overlap))
    return sorted(matches, key=lambda match: -match[2])


def suggest_columns(error: GeneMismatchError, matches: Sequence[tuple[str, str, float]]) -> GeneMismatchError:
    """``error`` with the input's ``var`` columns that would have matched named (itself when none would)."""
    if not matches:
        return error
    listing = ", ".join(
        f"{column!r} ({overlap:.0%} of the model's genes, as its {identifier})" for column, identifier, overlap in matches
    )
    first = matches[0][0]
    return GeneMismatchError(
        f"{error} These var columns of the input would match: {listing}; choose one with "
        f"gene_column={first} (REST) or --gene-column {first} (celltype score, celltype.annotate(gene_column=...))."
    )


def var_column_genes(var: Any, column: str | None) -> list[str]:
    """The gene names of a ``var`` DataFrame: its index, or the values of ``column`` when one is named.

    Raises:
        GeneMismatchError: ``var`` has no such column, or the column leaves a gene without a name.
    """
    if column is None:
        return [str(g) for g in var.index]
    if column not in var.columns:
        raise GeneMismatchError(
            f"var has no column {column!r}; its columns are {list(map(str, var.columns))} "
            "(leave the gene column out to use var_names)"
        )
    values = var[column]
    if values.isna().any():
        raise GeneMismatchError(f"var column {column!r} has genes without a name; pick a column that names every gene")
    return [str(g) for g in values]
