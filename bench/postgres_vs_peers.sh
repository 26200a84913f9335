#!/usr/bin/env bash
# The PostgreSQL queue and its Python peers in the same run (issue #6):
#   bench/queue.py --backend postgres --runs 3   (hydrapool, before the peers)
#   ../shared/bench-peers/run_all.sh for pgqueuer (default and batch_size=25),
#     procrastinate and saq on PostgreSQL, 3 runs per workload
#   bench/queue.py --backend postgres --runs 3   (hydrapool again, after them)
# Results go to $OUT_DIR (default /tmp/hydrapool-pg-bench): ours1.json, ours2.json,
# peers.jsonl and peers_table.md. Needs the peers' venv (see bench-peers/README.md).
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$HERE/../shared/bench-peers}
OUT_DIR=${OUT_DIR:-/tmp/hydrapool-pg-bench}
OURS_PY=${OURS_PY:-$HERE/.venv/bin/python}  # not PY: the peers' harness reads PY
mkdir -p "$OUT_DIR"
cd "$HERE"
date -u +%FT%TZ >"$OUT_DIR/start"
"$OURS_PY" bench/queue.py --backend postgres --runs 3 >"$OUT_DIR/ours1.json"
OUT="$OUT_DIR/peers.jsonl" TABLE="$OUT_DIR/peers_table.md" RUNS=3 \
  ONLY="pgqueuer pgqueuer-batch25 procrastinate saq-postgres" bash "$PEERS/run_all.sh"
"$OURS_PY" bench/queue.py --backend postgres --runs 3 >"$OUT_DIR/ours2.json"
date -u +%FT%TZ >"$OUT_DIR/end"
echo "results in $OUT_DIR" >&2
