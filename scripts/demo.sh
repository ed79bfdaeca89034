#!/usr/bin/env bash
# The main job on the embedded default: train on the bundled CellBench data (holding one lab out),
# register the model in the SQLite-backed MLflow registry of this clone (./mlflow.db), promote it to
# `champion`, write the held-out lab's cells unlabeled to outputs/demo/cells.h5ad (the examples' input),
# print the lines that let commands in other folders find both, then serve
# `models:/celltype-demo@champion` on http://127.0.0.1:${PORT:-8000}.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODEL_NAME=${MODEL_NAME:-celltype-demo}
PORT=${PORT:-8000}
OUT=${OUT:-outputs/demo}
HOLDOUT=sc_dropseq
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}

data=$("$BIN/python" -c 'from training.data import bundled_dataset; print(bundled_dataset())')
"$BIN/celltype" train "$data" --label-key cell_type --batch-key batch --holdout-batch "$HOLDOUT" \
  --out "$OUT" --register "$MODEL_NAME"
version=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$OUT/published.json")
"$BIN/celltype" promote "$MODEL_NAME" --version "$version"

# The cells of the held-out lab, as a user would bring them: raw counts, no labels.
"$BIN/python" - "$data" "$OUT/cells.h5ad" "$HOLDOUT" <<'PY'
import sys

import anndata as ad

source, target, lab = sys.argv[1:]
cells = ad.read_h5ad(source)
cells = cells[cells.obs["batch"] == lab].copy()
cells.obs = cells.obs.drop(columns=["cell_type"])
cells.uns = {}
cells.write_h5ad(target)
print(f"wrote {cells.n_obs} unlabeled cells of the held-out lab {lab} to {target}")
PY

cat <<MSG

Registry: $MLFLOW_TRACKING_URI (model $MODEL_NAME version $version, alias champion)
Plots of the held-out lab and of validation: $PWD/$OUT/reports/ (*_confusion.png, *_reliability.png)

In another terminal, from any folder, set these two lines first (the README's examples use them):
  export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI
  export CELLS=$PWD/$OUT/cells.h5ad

Serving models:/$MODEL_NAME@champion on http://127.0.0.1:$PORT (web page at /, docs at /docs; Ctrl-C stops)
MSG
exec "$BIN/celltype" serve --model "models:/$MODEL_NAME@champion" --host 127.0.0.1 --port "$PORT"
