"""Aligning an uploaded file's genes, with the upload's ``var`` columns named when too few genes match.

The alignment itself is :meth:`model.predict.Predictor.align` (any identifier the model knows). Only
when it fails is the upload's ``var`` table read, to find the columns that would have matched
(``gene_column=...``); a CSV upload has no ``var`` table, so its error stays as it is.
"""

from __future__ import annotations

from typing import Any

import h5py
import pandas as pd
from anndata.io import read_elem

from model.errors import GeneMismatchError
from model.genes import GeneAlignment
from service.h5ad_io import H5adCells
from service.model_store import ServedModel


def upload_var(cells: H5adCells) -> pd.DataFrame | None:
    """The upload's ``var`` table (``None`` for uploads without one, such as CSV)."""
    if cells.adata is not None:
        return cells.adata.var if len(cells.adata.var.columns) else None
    if cells.path is None:
        return None
    with h5py.File(cells.path, "r") as handle:
        var: Any = read_elem(handle["var"])
    return var


def align_upload(served: ServedModel, cells: H5adCells) -> GeneAlignment:
    """Align the upload's genes (caching the alignment for the prediction that follows).

    Raises:
        GeneMismatchError: as :meth:`Predictor.align`; below the overlap threshold it names the
            upload's ``var`` columns that would have matched.
    """
    with served.lock:
        try:
            return served.predictor.align(cells.genes)
        except GeneMismatchError:
            var = upload_var(cells)
            if var is None:
                raise
            return served.predictor.align(cells.genes, var=var)
