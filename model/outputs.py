"""Names of the per-cell output columns, declared once for every way cells are annotated.

``celltype score`` (obs columns and tables), the REST service (annotated ``.h5ad`` and CSV answers,
``/invocations``) and the MLflow pyfunc all write these names; clients switch between them unchanged.
"""

from __future__ import annotations

LABEL_COLUMN = "predicted_cell_type"
"""The predicted cell type of each cell (``"Unknown"`` below the model's confidence threshold)."""
CONFIDENCE_COLUMN = "confidence"
"""The probability of the most likely cell type."""
CELL_ID_COLUMN = "cell_id"
"""Tables: the cell's name (its obs name, or the id the client sent)."""
PROBABILITY_COLUMN_PREFIX = "probability:"
"""``celltype score`` and the REST CSV answer: ``probability:<class>`` holds that class's probability."""
PYFUNC_PROBABILITY_PREFIX = "prob_"
"""The MLflow pyfunc and ``/invocations``: ``prob_<class>`` holds that class's probability (MLflow's naming)."""
UNKNOWN_REASON_COLUMN = "unknown_reason"
"""Why the cell is ``"Unknown"`` (one of :data:`model.novelty.UNKNOWN_REASONS`); empty for a typed cell."""
