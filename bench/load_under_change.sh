#!/usr/bin/env bash
# Serving under change (RELIABILITY.md): wrk at CONNS connections for SECS
# seconds against `hexmirror serve`, reading a package record and a tarball,
# while syncs switch generations (the upstream changes 5% of its packages
# before each) and a client publishes packages. Success is zero socket errors
# and zero non-2xx answers; tests/load.rs checks every body against the blob
# store, this checks the same path at scale and speed.
#
#   bash bench/load_under_change.sh                 # 512 connections, 60 s
#   CONNS=64 SECS=20 SCALE=0.02 bash bench/load_under_change.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/hexmirror-load}
SCALE=${SCALE:-0.01}
CONNS=${CONNS:-512}
SECS=${SECS:-60}
PORT=${PORT:-18495}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
PROFILE=release
# shellcheck source=bench/site.sh
. "$ROOT/bench/site.sh"
ulimit -n 65536 2>/dev/null || true
start_upstream
write_config load
"$BIN" sync --config "$CONF" >/dev/null 2>&1
TOKEN=$("$BIN" token create --admin --config "$CONF" 2>/dev/null)
build_tarballs load 40
start_serve
PIDS+=("$SERVE")
records=("$WORK"/data/current/packages/*) tarballs=("$WORK"/data/current/tarballs/*)
RECORD=$(basename "${records[0]}") TARBALL=$(basename "${tarballs[0]}")

# The writer side, until wrk is done.
(
  i=0
  while [ ! -e "$WORK/stop" ]; do
    i=$((i + 1))
    mutate 0.05
    "$BIN" sync --config "$CONF" >/dev/null 2>&1 && echo sync >>"$WORK/writes"
    if [ "$i" -le 40 ]; then
      publish "$i" | grep -q 201 && echo publish >>"$WORK/writes"
    fi
  done
) &
WRITER=$!
PIDS+=("$WRITER")

for path in "packages/$RECORD" "tarballs/$TARBALL"; do
  echo "wrk -t2 -c$CONNS -d${SECS}s http://$ADDR/$path"
  wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "http://$ADDR/$path" | tee "$WORK/wrk.out"
  if grep -q "Socket errors\|Non-2xx" "$WORK/wrk.out"; then
    echo "FAILED: errors under change"
    touch "$WORK/stop"; exit 1
  fi
done
touch "$WORK/stop"
wait "$WRITER" 2>/dev/null || true
echo "during the load: $(grep -c sync "$WORK/writes" || true) syncs and $(grep -c publish "$WORK/writes" || true) publishes"
"$BIN" verify --config "$CONF" | tail -1
echo "load under change: 0 socket errors, 0 non-2xx"
