#!/usr/bin/env bash
# Packs what bench/run.sh needs into one folder, for a machine that has no
# package registry or Rust toolchain (issue 17: the 16-core serving run):
#
#   bash bench/pack.sh /tmp/hexmirror-bench-bin
#   rsync -a /tmp/hexmirror-bench-bin BIG:/tmp/ && rsync -a . BIG:/tmp/hexmirror/
#   ssh BIG 'cd /tmp/hexmirror && BIN_DIR=/tmp/hexmirror-bench-bin SCALES=1.0 \
#            ONLY=serve ARIA_RUNS=0 PUBLISH=0 NETEM=0 bash bench/run.sh'
#
# The folder holds the release hexmirror, gen_upstream and delay_proxy, this
# machine's nginx, wrk, curl and GNU time, and every shared library they load
# (from ldd) under lib/, so they run on another glibc-based Linux.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: bash bench/pack.sh OUT_DIR}
mkdir -p "$OUT/lib"
(cd "$ROOT" && cargo build --release --example gen_upstream --example delay_proxy --bin hexmirror)
cp "$ROOT/target/release/hexmirror" "$ROOT/target/release/examples/gen_upstream" \
  "$ROOT/target/release/examples/delay_proxy" "$OUT/"
for tool in nginx wrk curl; do
  path=$(command -v "$tool") || { echo "bench/pack.sh: $tool is not installed here" >&2; exit 2; }
  cp "$path" "$OUT/"
done
[ -x /usr/bin/time ] && cp /usr/bin/time "$OUT/time"
for bin in "$OUT"/*; do
  [ -f "$bin" ] && [ -x "$bin" ] || continue
  ldd "$bin" 2>/dev/null | awk '/=> \// {print $3}' | while read -r lib; do
    # The loader and libc stay the target's own: copying them breaks more than it fixes.
    case $(basename "$lib") in ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*) continue ;; esac
    cp -L -n "$lib" "$OUT/lib/" 2>/dev/null || true
  done
done
ls -l "$OUT" "$OUT/lib"
echo "packed into $OUT; use BIN_DIR=$OUT bash bench/run.sh"
