#!/usr/bin/env bash
# The main job on the embedded default: train on the bundled CellBench data (holding one lab out),
# register the model in the SQLite-backed MLflow registry in this directory, promote it to `champion`,
# then serve `models:/celltype-demo@champion` on http://127.0.0.1:${PORT:-8000}.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODEL_NAME=${MODEL_NAME:-celltype-demo}
PORT=${PORT:-8000}
OUT=${OUT:-outputs/demo}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}

data=$("$BIN/python" -c 'from training.data import bundled_dataset; print(bundled_dataset())')
"$BIN/celltype" train "$data" --label-key cell_type --batch-key batch --holdout-batch sc_dropseq \
  --out "$OUT" --register "$MODEL_NAME"
version=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$OUT/published.json")
"$BIN/celltype" promote "$MODEL_NAME" --version "$version"
echo "Serving models:/$MODEL_NAME@champion on http://127.0.0.1:$PORT (docs at /docs; Ctrl-C stops)"
exec "$BIN/celltype" serve --model "models:/$MODEL_NAME@champion" --host 127.0.0.1 --port "$PORT"
