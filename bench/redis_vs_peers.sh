#!/usr/bin/env bash
# The Redis queue and its Python peers in the same run (issue #7):
#   bench/queue.py --backend redis --runs 3   (hydrapool, before the peers)
#   bench/queue.py --backend redis --runs 3 --prefetch 100   (the same, workers prefetching)
#   ../shared/bench-peers/run_all.sh for saq (redis), arq (default and poll_delay=0.01)
#     and dramatiq (redis), 3 runs per workload
#   bench/queue.py --backend redis --runs 3 [--prefetch 100]   (hydrapool again, after them)
# Results go to $OUT_DIR (default /tmp/hydrapool-redis-bench): ours1.json, ours1p.json,
# ours2.json, ours2p.json, peers.jsonl and peers_table.md. Needs the peers' venv (see bench-peers/README.md).
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$HERE/../shared/bench-peers}
OUT_DIR=${OUT_DIR:-/tmp/hydrapool-redis-bench}
OURS_PY=${OURS_PY:-$HERE/.venv/bin/python}  # not PY: the peers' harness reads PY
mkdir -p "$OUT_DIR"
cd "$HERE"
date -u +%FT%TZ >"$OUT_DIR/start"
"$OURS_PY" bench/queue.py --backend redis --runs 3 >"$OUT_DIR/ours1.json"
"$OURS_PY" bench/queue.py --backend redis --runs 3 --prefetch 100 >"$OUT_DIR/ours1p.json"
OUT="$OUT_DIR/peers.jsonl" TABLE="$OUT_DIR/peers_table.md" RUNS=3 \
  ONLY="saq-redis arq arq-poll10ms dramatiq" bash "$PEERS/run_all.sh"
"$OURS_PY" bench/queue.py --backend redis --runs 3 >"$OUT_DIR/ours2.json"
"$OURS_PY" bench/queue.py --backend redis --runs 3 --prefetch 100 >"$OUT_DIR/ours2p.json"
date -u +%FT%TZ >"$OUT_DIR/end"
echo "results in $OUT_DIR" >&2
