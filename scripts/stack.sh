#!/usr/bin/env bash
# The topology of docker-compose.yml from local processes, no images:
#   PostgreSQL (the local server; a fresh database) -> `mlflow server` (PostgreSQL backend store, proxied
#   artifacts in a local directory) -> trainer (train on the bundled data, register, promote `champion`)
#   -> `celltype serve --model models:/NAME@champion`, each on a free loopback port.
#
#   scripts/stack.sh up       start everything, waiting on each component's health; prints the URLs
#   scripts/stack.sh status   what runs where (exit code 0 only when everything is up and healthy)
#   scripts/stack.sh env      the stack's settings as shell assignments: eval "$(scripts/stack.sh env)"
#   scripts/stack.sh down     stop the service and the MLflow server (SIGTERM, then SIGKILL), drop the database
#
# Settings (environment variables):
#   STACK_DIR         state: pids, logs, artifacts, training outputs (default: .celltype/stack, ignored by git)
#   STACK_DB          PostgreSQL database, dropped and created by `up` (default: celltype_stack)
#   MODEL_NAME        registered model name (default: celltype-demo)
#   MLFLOW_PORT       MLflow server port (default: a free port)
#   SERVICE_PORT      prediction service port (default: a free port)
#   PGHOST, PGPORT    PostgreSQL server (default: 127.0.0.1:5432); PGUSER (default: postgres, else root)
#   TRAIN_DATA        training .h5ad (default: the bundled CellBench copy); TRAIN_HOLDOUT_BATCH (sc_dropseq)
#   TRAIN_ARGS        extra `celltype train` arguments, e.g. "--set epochs=5"
#   CELLTYPE_API_KEY  API key of the service (default: none)
#   BIN               virtual environment's bin directory (default: .venv/bin)
#   STACK_TIMEOUT_S   seconds each component may take to become healthy (default: 180)
#   KEEP_DB=1         `down` keeps the database
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/.venv/bin}
PYTHON=$BIN/python
STACK_DIR=$(realpath -m "${STACK_DIR:-$ROOT/.celltype/stack}")
STATE=$STACK_DIR/stack.env
STACK_DB=${STACK_DB:-celltype_stack}
MODEL_NAME=${MODEL_NAME:-celltype-demo}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
TRAIN_HOLDOUT_BATCH=${TRAIN_HOLDOUT_BATCH:-sc_dropseq}
STACK_TIMEOUT_S=${STACK_TIMEOUT_S:-180}
SOURCE_REGEX='^(mlflow-artifacts:/|runs:/|models:/m-)'
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# `celltype` as installed by `make setup`, else run from the source tree
if [[ -x $BIN/celltype ]]; then CELLTYPE=("$BIN/celltype"); else CELLTYPE=("$PYTHON" -m cli); fi

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

pg_user() {
  if [[ -n ${PGUSER:-} ]]; then echo "$PGUSER"; return; fi
  local user
  for user in postgres root; do
    if psql -h "$PGHOST" -p "$PGPORT" -U "$user" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
      echo "$user"; return
    fi
  done
  die "cannot connect to PostgreSQL at $PGHOST:$PGPORT as postgres or root; set PGUSER"
}

psql_admin() {
  PGOPTIONS=--client-min-messages=warning psql -h "$PGHOST" -p "$PGPORT" -U "$(pg_user)" -d postgres \
    -v ON_ERROR_STOP=1 -Atqc "$1"
}

# The stack's state file, if any, read into this shell.
load_state() {
  if [[ -f $STATE ]]; then
    # shellcheck disable=SC1090
    source "$STATE"
  fi
}

# alive PID: the process exists and is not a zombie (an exited child of a parent that has not reaped it)
alive() {
  local stat
  [[ -n ${1:-} ]] && stat=$(ps -o stat= -p "$1" 2>/dev/null) && [[ -n $stat && $stat != Z* ]]
}

healthy() {
  "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" >/dev/null 2>&1
}

# start NAME COMMAND...: run COMMAND in a new session (so that `down` can stop its whole process
# group), output in NAME.log, pid in NAME.pid; prints the pid.
start() {
  local name=$1
  shift
  setsid "$@" </dev/null >"$STACK_DIR/$name.log" 2>&1 &
  echo $! >"$STACK_DIR/$name.pid"
  echo $!
}

# wait_healthy NAME PID URL: poll URL until it answers 2xx; fail with the log's tail if the process
# exits or STACK_TIMEOUT_S passes.
wait_healthy() {
  local name=$1 pid=$2 url=$3 deadline=$((SECONDS + STACK_TIMEOUT_S))
  until healthy "$url"; do
    if ! alive "$pid"; then
      tail -n 40 "$STACK_DIR/$name.log" >&2 || true
      die "$name exited before $url answered (log: $STACK_DIR/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 40 "$STACK_DIR/$name.log" >&2 || true
      die "$name not healthy at $url after ${STACK_TIMEOUT_S}s (log: $STACK_DIR/$name.log)"
    fi
    sleep 0.5
  done
}

# stop NAME: SIGTERM the process group started for NAME, SIGKILL it after 45 s.
stop() {
  local name=$1 pidfile=$STACK_DIR/$1.pid pid target
  [[ -f $pidfile ]] || return 0
  pid=$(<"$pidfile")
  if alive "$pid"; then
    # the group id is the pid when `start` made it a session leader; otherwise signal the process only
    if [[ $(ps -o pgid= -p "$pid" | tr -d ' ') == "$pid" ]]; then target=-$pid; else target=$pid; fi
    log "stopping $name (pid $pid)"
    kill -TERM -- "$target" 2>/dev/null || true
    local deadline=$((SECONDS + 45))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$pid"; then
      log "$name did not stop within 45 s: SIGKILL"
      kill -KILL -- "$target" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

write_state() {
  cat >"$STATE" <<EOF
STACK_DIR=$STACK_DIR
STACK_DB=$STACK_DB
STACK_PGUSER=$1
MODEL_NAME=$MODEL_NAME
MLFLOW_TRACKING_URI=$2
SERVICE_URL=$3
MODEL_URI=models:/$MODEL_NAME@champion
CHAMPION_VERSION=$4
EOF
}

cmd_up() {
  if alive "$(cat "$STACK_DIR/mlflow.pid" 2>/dev/null)" || alive "$(cat "$STACK_DIR/service.pid" 2>/dev/null)"; then
    die "the stack in $STACK_DIR is already up; run: scripts/stack.sh down"
  fi
  trap up_failed EXIT
  rm -rf "$STACK_DIR/artifacts" "$STACK_DIR/train" "$STACK_DIR/cache" "$STATE"
  mkdir -p "$STACK_DIR/train"

  bash "$ROOT/scripts/ensure_postgres.sh"
  local user
  user=$(pg_user)
  log "database $STACK_DB on $PGHOST:$PGPORT (fresh)"
  psql_admin "DROP DATABASE IF EXISTS \"$STACK_DB\" WITH (FORCE)"
  psql_admin "CREATE DATABASE \"$STACK_DB\""

  local mlflow_port=${MLFLOW_PORT:-$(free_port)} service_port=${SERVICE_PORT:-$(free_port)}
  local tracking_uri=http://127.0.0.1:$mlflow_port service_url=http://127.0.0.1:$service_port pid
  log "mlflow server on $tracking_uri"
  # job execution serves MLflow's GenAI features only; off, the server starts without 7 helper processes
  pid=$(start mlflow env MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX="$SOURCE_REGEX" \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    "$PYTHON" -m mlflow server \
    --backend-store-uri "postgresql+psycopg2://$user@$PGHOST:$PGPORT/$STACK_DB" \
    --artifacts-destination "$STACK_DIR/artifacts" \
    --host 127.0.0.1 --port "$mlflow_port" --workers 1)
  wait_healthy mlflow "$pid" "$tracking_uri/health"

  local data=${TRAIN_DATA:-} out=$STACK_DIR/train/run-1 version
  [[ -n $data ]] || data=$("$PYTHON" -c 'from training.data import bundled_dataset; print(bundled_dataset())')
  log "trainer: $data -> $out (log: $STACK_DIR/trainer.log)"
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of arguments
  if ! "${CELLTYPE[@]}" train "$data" --holdout-batch "$TRAIN_HOLDOUT_BATCH" --out "$out" --register "$MODEL_NAME" \
    --tracking-uri "$tracking_uri" --no-progress ${TRAIN_ARGS:-} >"$STACK_DIR/trainer.log" 2>&1; then
    tail -n 40 "$STACK_DIR/trainer.log" >&2
    die "training failed (log: $STACK_DIR/trainer.log)"
  fi
  version=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' "$out/published.json")
  "${CELLTYPE[@]}" promote "$MODEL_NAME" --version "$version" --tracking-uri "$tracking_uri" >>"$STACK_DIR/trainer.log" 2>&1
  log "registered $MODEL_NAME version $version, promoted to champion"

  log "service on $service_url"
  pid=$(start service env CELLTYPE_CACHE_DIR="$STACK_DIR/cache" CELLTYPE_API_KEY="${CELLTYPE_API_KEY:-}" \
    MLFLOW_TRACKING_URI="$tracking_uri" \
    "${CELLTYPE[@]}" serve --model "models:/$MODEL_NAME@champion" --host 127.0.0.1 --port "$service_port")
  wait_healthy service "$pid" "$service_url/health/ready"
  trap - EXIT

  write_state "$user" "$tracking_uri" "$service_url" "$version"
  log "up: MLflow $tracking_uri, service $service_url serving models:/$MODEL_NAME@champion (version $version)"
  cat "$STATE"
}

# EXIT trap of `up`: when bringing the stack up fails, stop whatever was started.
up_failed() {
  local code=$?
  trap - EXIT
  if ((code != 0)); then
    log "bringing the stack up failed; stopping what was started"
    cmd_down
  fi
  exit "$code"
}

cmd_down() {
  load_state
  stop service
  stop mlflow
  if [[ ${KEEP_DB:-0} != 1 ]] && pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null; then
    psql_admin "DROP DATABASE IF EXISTS \"$STACK_DB\" WITH (FORCE)" || log "could not drop database $STACK_DB"
  fi
  rm -f "$STATE"
  log "down (logs kept in $STACK_DIR)"
}

cmd_status() {
  load_state
  local ok=0 name pid url
  for name in mlflow service; do
    pid=$(cat "$STACK_DIR/$name.pid" 2>/dev/null || true)
    if [[ $name == mlflow ]]; then url=${MLFLOW_TRACKING_URI:-}/health; else url=${SERVICE_URL:-}/health/ready; fi
    if alive "$pid" && healthy "$url"; then
      echo "$name: up (pid $pid, ${url%/health*})"
    elif alive "$pid"; then
      echo "$name: running but not healthy (pid $pid, $url)"
      ok=1
    else
      echo "$name: down"
      ok=1
    fi
  done
  [[ -f $STATE ]] && cat "$STATE"
  return "$ok"
}

cmd_env() {
  [[ -f $STATE ]] || die "the stack in $STACK_DIR is not up"
  sed 's/^/export /' "$STATE"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *)
    echo "usage: scripts/stack.sh up|down|status|env  (settings: see the top of this script)" >&2
    exit 2
    ;;
esac
