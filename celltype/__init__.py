"""celltype in a notebook: annotate an AnnData in one line, or load the model to use it directly.

    import anndata as ad
    import celltype

    adata = ad.read_h5ad("cells.h5ad")
    celltype.annotate(adata, model="models:/celltype-demo@champion")
    adata.obs[["predicted_cell_type", "confidence"]]
    adata.uns["celltype"]                     # which model, version, digest, threshold, gene overlap

    predictor = celltype.load("models:/celltype-demo@champion")
    predictor.predict(counts, genes)

:func:`annotate` writes the obs columns ``celltype score`` writes and the same ``uns['celltype']``
provenance record; :func:`load` returns a :class:`model.predict.Predictor`.
"""

from celltype.notebook import annotate, load

__all__ = ["annotate", "load"]
