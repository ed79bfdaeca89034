"""The alternative gene identifiers a model records: the ``var`` columns its training files agree on.

Every training file's ``var`` columns holding a unique, non-empty string per gene
(:func:`model.genes.identifier_columns`) are candidates. A column becomes one of the model's
identifier sets when every file has it, every file gives each shared gene the same value, and the
values stay unique over the genes the files share. The bundle stores the sets subset to the model's
genes (:meth:`training.data.LabeledData.select_genes`), so a client may name genes by any of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from model.genes import gene_key


def shared_identifiers(
    files: Sequence[tuple[Sequence[str], dict[str, list[str]]]], genes: Sequence[str]
) -> dict[str, list[str]]:
    """The identifier columns every file agrees on, as one name per gene of ``genes`` (in that order).

    Args:
        files: per file, its ``var_names`` and its identifier columns (``{column: one value per gene}``).
        genes: the genes shared by every file (a subset of each file's ``var_names``).
    """
    if not files:
        return {}
    shared: dict[str, list[str]] = {}
    for column in files[0][1]:
        values: list[str] | None = None
        for var_names, columns in files:
            if column not in columns:
                values = None
                break
            position = {name: i for i, name in enumerate(var_names)}
            mine = [columns[column][position[g]] for g in genes]
            if values is not None and mine != values:
                values = None
                break
            values = mine
        if values is not None and len({gene_key(v) for v in values}) == len(values):
            shared[column] = values
    return shared
