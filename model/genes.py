"""Aligning the genes a client sent to the genes a model was trained on.

Genes are matched by name in any order: exactly first, then case-insensitively (and Ensembl IDs without
their ``.version`` suffix). Extra genes are ignored, missing ones are filled with zeros and reported.
Duplicated names and an overlap below a threshold are refused with a message that says what to fix.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.errors import GeneMismatchError

DEFAULT_MIN_OVERLAP = 0.5
"""Share of a model's genes that must be present in the input unless configured otherwise."""

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
        missing: the model genes the input lacks (filled with zeros).
    """

    source_index: np.ndarray
    n_input_genes: int
    missing: tuple[str, ...]

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
        """A JSON-ready summary: overlap, counts and examples of missing genes."""
        return {
            "n_model_genes": self.n_model_genes,
            "n_input_genes": self.n_input_genes,
            "n_matched": self.n_matched,
            "overlap": round(self.overlap, 6),
            "n_missing": len(self.missing),
            "missing_examples": list(self.missing[:max_examples]),
            "n_ignored": self.n_input_genes - self.n_matched,
        }


def align_genes(
    input_genes: Sequence[str], model_genes: Sequence[str], *, min_overlap: float = DEFAULT_MIN_OVERLAP
) -> GeneAlignment:
    """Match ``input_genes`` to ``model_genes`` by name.

    Raises:
        GeneMismatchError: the input names no genes, names a gene twice, names two genes that match
            the same model gene case-insensitively, or covers less than ``min_overlap`` of the model.
    """
    input_genes = [str(g) for g in input_genes]
    if not input_genes:
        raise GeneMismatchError("no gene names were given; send the gene name of every column")
    exact: dict[str, int] = {}
    duplicates = [name for name, count in Counter(input_genes).items() if count > 1]
    if duplicates:
        raise GeneMismatchError(
            f"{len(duplicates)} gene name(s) appear more than once in the input ({_examples(duplicates)}); "
            "make gene names unique (e.g. sum or drop the duplicated columns)"
        )
    by_key: dict[str, list[int]] = {}
    for column, name in enumerate(input_genes):
        exact[name] = column
        by_key.setdefault(gene_key(name), []).append(column)

    source = np.full(len(model_genes), -1, dtype=np.int64)
    missing: list[str] = []
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
        if column is None:
            missing.append(gene)
        else:
            source[position] = column
    alignment = GeneAlignment(source_index=source, n_input_genes=len(input_genes), missing=tuple(missing))
    if alignment.overlap < min_overlap:
        raise GeneMismatchError(
            f"only {alignment.n_matched} of the model's {alignment.n_model_genes} genes "
            f"({alignment.overlap:.1%}) were found in the input; at least {min_overlap:.0%} are required. "
            f"The model's genes look like {_examples(list(model_genes), 3)}; the input's look like "
            f"{_examples(input_genes, 3)}. Use the same gene identifiers (symbols vs Ensembl IDs) and "
            "species as the model."
        )
    return alignment
