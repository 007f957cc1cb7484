#!/usr/bin/env bash
# The crash loop (RELIABILITY.md): `kill -9` at random moments of syncs and
# of publishes, then `hexmirror verify` must pass and the next run complete.
#
#   bash bench/crash_loop.sh                 # 30 sync kills, 20 publish kills
#   SYNC_KILLS=50 PUBLISH_KILLS=50 SCALE=0.02 bash bench/crash_loop.sh
#
# A synthetic signed upstream (bench/gen_upstream.rs) is served by nginx on
# loopback; every fifth sync kill first changes 5% of its packages, so the
# killed syncs have real work in flight. Publishes go to `serve`'s API with a
# token (tarballs built by hex_core, tests/support/hexcore.escript); the
# server is killed a random moment after the POST, restarted (it finishes a
# half-applied change from its delta), and verified. Prints one line per
# trial and a last line "crash loop: N of M trials recovered".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/hexmirror-crash}
SCALE=${SCALE:-0.01}
SYNC_KILLS=${SYNC_KILLS:-30}
PUBLISH_KILLS=${PUBLISH_KILLS:-20}
PORT=${PORT:-18490}
PROFILE=debug
# shellcheck source=bench/site.sh
. "$ROOT/bench/site.sh"
start_upstream
write_config crash

trials=0 recovered=0
# verify_ok LABEL: verify passes (or nothing was ever published).
verify_ok() {
  trials=$((trials + 1))
  if [ ! -e "$WORK/data/current" ]; then
    echo "$1: killed before a first generation; nothing published" && recovered=$((recovered + 1))
    return
  fi
  if out=$("$BIN" verify --config "$CONF" 2>&1); then
    echo "$1: verify ok ($(echo "$out" | tail -1 | cut -c1-60)...)"
    recovered=$((recovered + 1))
  else
    echo "$1: VERIFY FAILED"; echo "$out" | tail -5
  fi
}
rand_ms() { echo $(( (RANDOM % $1) + 20 )); }
secs() { awk -v m="$1" 'BEGIN { printf "%.3f", m / 1000 }'; }

for i in $(seq "$SYNC_KILLS"); do
  if [ $((i % 5)) = 0 ]; then mutate 0.05; fi
  "$BIN" sync --config "$CONF" >/dev/null 2>&1 &
  pid=$!
  ms=$(rand_ms 3000)
  sleep "$(secs "$ms")"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  verify_ok "sync kill $i after ${ms} ms"
done
"$BIN" sync --config "$CONF" >/dev/null 2>&1 || { echo "the sync after the kills did not complete"; exit 1; }
verify_ok "sync after the kills"

TOKEN=$("$BIN" token create --admin --config "$CONF" 2>/dev/null)
build_tarballs crash "$PUBLISH_KILLS"
for i in $(seq "$PUBLISH_KILLS"); do
  start_serve
  publish "$i" >/dev/null &
  post=$!
  ms=$(rand_ms 150)
  sleep "$(secs "$ms")"
  kill -9 "$SERVE" 2>/dev/null || true
  wait "$SERVE" 2>/dev/null || true
  wait "$post" 2>/dev/null || true
  # The next start finishes a change its delta describes, before listening.
  start_serve
  kill "$SERVE" 2>/dev/null || true
  wait "$SERVE" 2>/dev/null || true
  verify_ok "publish kill $i after ${ms} ms"
done
"$BIN" sync --config "$CONF" >/dev/null 2>&1 || { echo "the final sync did not complete"; exit 1; }
verify_ok "final sync"
echo "crash loop: $recovered of $trials trials recovered"
[ "$recovered" = "$trials" ]
