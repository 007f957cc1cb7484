#!/usr/bin/env bash
# Object storage (issue 18, BENCHMARKS.md "Object storage"):
#   1. a full `hexmirror sync` into a fresh local data directory, and the same
#      into a fresh data directory plus an empty bucket (s3s-fs on loopback),
#      alternating, RUNS times each: wall time, CPU and peak RSS; the bucket
#      run's extra time is the upload (blobs, manifest, pointer);
#   2. a read-only node serving a mid-size tarball and /packages/NAME with
#      wrk (-t1 -c64, WRK_SECS), the node pinned to core 0, wrk and s3s-fs
#      to core 1: from its warm cache ([server] cache_mb = 256), from the
#      bucket on every request (cache_mb = 0), and the writer's own `serve`
#      from its local tree as the peer; RUNS times each, medians.
# Writes the raw output to bench/results/bucket-<timestamp>.txt and a
# Markdown summary to stdout and bench/results/bucket-<timestamp>.md.
#
# Knobs: SCALE (0.1), RUNS (3), WRK_SECS (10), SETTLE_S (20), PORT (18590), WORK
# (/tmp/hexmirror-bucket-bench, deleted on exit unless KEEP=1; about 3x the
# upstream: ~4 GB at 0.1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCALE=${SCALE:-0.1}
RUNS=${RUNS:-3}
WRK_SECS=${WRK_SECS:-10}
SETTLE_S=${SETTLE_S:-20}
PORT=${PORT:-18590}
S3PORT=$((PORT + 1))
WORK=${WORK:-/tmp/hexmirror-bucket-bench}
KEEP=${KEEP:-0}
PROFILE=release
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$ROOT/bench/results
mkdir -p "$RESULTS"
RAW=$RESULTS/bucket-$STAMP.txt
MD=$RESULTS/bucket-$STAMP.md
for tool in wrk taskset curl nginx s3s-fs openssl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench/bucket.sh needs $tool" >&2; exit 2; }
done
# shellcheck source=bench/site.sh
source "$ROOT/bench/site.sh"
if [ "$KEEP" != 1 ]; then trap 'cleanup; rm -rf "$WORK"' EXIT; fi
exec > >(tee "$RAW") 2>&1

echo "hexmirror $(git -C "$ROOT" rev-parse --short HEAD); SCALE=$SCALE RUNS=$RUNS WRK_SECS=$WRK_SECS; $(nproc) cores"
start_upstream
write_config bench
LOCAL_CONF=$CONF
printf 'AWS_ACCESS_KEY_ID=benchaccesskey\nAWS_SECRET_ACCESS_KEY=benchsecretkey\n' >"$WORK/s3.env"
chmod 600 "$WORK/s3.env"
storage() { # storage ROLE EXTRA
  printf '\n[storage]\nkind = "s3"\nrole = "%s"\nbucket = "bench"\nprefix = "tree"\nendpoint = "http://127.0.0.1:%s"\ncredentials_file = "%s/s3.env"\n%s\n' \
    "$1" "$S3PORT" "$WORK" "$2"
}
S3_CONF=$WORK/bucket.toml
{ cat "$LOCAL_CONF"; storage writer ""; } >"$S3_CONF"

start_s3() {
  mkdir -p "$WORK/s3/bench"
  taskset -c 1 s3s-fs --host 127.0.0.1 --port "$S3PORT" --access-key benchaccesskey \
    --secret-key benchsecretkey "$WORK/s3" >/dev/null 2>&1 &
  S3PID=$!
  PIDS+=("$S3PID")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$S3PORT/" && break; sleep 0.1; done
}
start_s3

# timed_sync CONF LABEL -> "wall user+sys maxrss_kb"
timed_sync() {
  /usr/bin/time -f '%e %U %S %M' -o "$WORK/time.txt" "$BIN" sync --config "$1" >"$WORK/sync.out" 2>"$WORK/sync.err" ||
    { echo "sync $2 failed"; tail -5 "$WORK/sync.err"; exit 1; }
  grep -E "bucket|packages" "$WORK/sync.out" | tail -2
  awk '{printf "%s %.1f %d\n", $1, $2 + $3, $4}' "$WORK/time.txt"
}

# Every timed sync follows the same deletion and a wait for writeback
# (settle, bench/site.sh): a large delete slows the next writes for a while.
echo "## part 1: sync into the local data directory vs into the bucket"
declare -a LOCAL S3
for r in $(seq "$RUNS"); do
  rm -rf "$WORK/data"; settle
  read -r w c m < <(timed_sync "$LOCAL_CONF" local | tail -1)
  echo "run $r local: wall ${w}s cpu ${c}s rss ${m}KB"
  LOCAL+=("$w $c $m")
  rm -rf "$WORK/data" "$WORK/s3/bench"; mkdir -p "$WORK/s3/bench"; settle
  read -r w c m < <(timed_sync "$S3_CONF" bucket | tail -1)
  echo "run $r bucket: wall ${w}s cpu ${c}s rss ${m}KB (hexmirror only; s3s-fs on core 1 not counted)"
  S3+=("$w $c $m")
done
objects=$(find "$WORK/s3/bench" -type f | wc -l)
bytes=$(du -sb "$WORK/s3/bench" | cut -f1)
echo "bucket after the last sync: $objects objects, $bytes bytes"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { local i=$1; shift; for x in "$@"; do echo "$x" | awk -v i="$i" '{print $i}'; done; }

echo "## part 2: a read-only node serving"
# The writer's manifest public key, for the readers.
openssl pkey -in "$WORK/data/keys/manifest.pem" -pubout -out "$WORK/manifest.pub.pem"
TARBALL=$(find "$WORK/data/current/tarballs/" -size +30k -size -60k -print -quit)
TARBALL=/tarballs/$(basename "$TARBALL")
TB_BYTES=$(stat -L -c %s "$WORK/data/current$TARBALL")
PKG=$(find "$WORK/data/current/packages/" -type f -print -quit)
PKG=/packages/$(basename "$PKG")
PKG_BYTES=$(stat -L -c %s "$WORK/data/current$PKG")
echo "tarball $TARBALL ($TB_BYTES bytes), record $PKG ($PKG_BYTES bytes)"

reader_conf() { # reader_conf CACHE_MB -> path
  local c=$WORK/reader-$1.toml
  { printf 'data_dir = "%s/reader-data"\nlisten = "127.0.0.1:0"\n[server]\ncache_mb = %s\ncount_downloads = false\n' "$WORK" "$1"
    storage reader "poll_ms = 1000
manifest_public_key = \"$WORK/manifest.pub.pem\""; } >"$c"
  echo "$c"
}
wrk_rps() { # wrk_rps URL -> requests/s
  taskset -c 1 wrk -t1 -c64 -d"${WRK_SECS}s" "$1" | awk '/Requests\/sec/ {print $2}'
}
declare -A RPS
for r in $(seq "$RUNS"); do
  for mode in local warm bucket; do
    case $mode in
      local) start_serve_pinned "$LOCAL_CONF" ;;
      warm) start_serve_pinned "$(reader_conf 256)" ;;
      bucket) start_serve_pinned "$(reader_conf 0)" ;;
    esac
    for path in "$TARBALL" "$PKG"; do
      curl -s -o /dev/null "http://$ADDR$path"
      rps=$(wrk_rps "http://$ADDR$path")
      echo "run $r $mode $path: $rps req/s"
      RPS[$mode,$path]="${RPS[$mode,$path]:-} $rps"
    done
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$SERVE/status")
    echo "run $r $mode: peak RSS ${rss} KB"
    kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
  done
done

{
  echo "### Object storage at scale $SCALE ($(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%F), $(nproc) cores, median of $RUNS)"
  echo
  lw=$(col 1 "${LOCAL[@]}" | median); sw=$(col 1 "${S3[@]}" | median)
  lc=$(col 2 "${LOCAL[@]}" | median); sc=$(col 2 "${S3[@]}" | median)
  lm=$(col 3 "${LOCAL[@]}" | median); sm=$(col 3 "${S3[@]}" | median)
  echo "| full sync into | wall s | hexmirror CPU s | peak RSS MB |"
  echo "|---|---|---|---|"
  echo "| local data directory | $lw | $lc | $((lm / 1024)) |"
  echo "| data directory + bucket (s3s-fs) | $sw | $sc | $((sm / 1024)) |"
  echo "| bucket / local | $(awk -v a="$sw" -v b="$lw" 'BEGIN {printf "%.2fx", a / b}') | $(awk -v a="$sc" -v b="$lc" 'BEGIN {printf "%.2fx", a / b}') | |"
  echo
  echo "Bucket after the sync: $objects objects, $bytes bytes."
  echo
  echo "| served (wrk -t1 -c64, node on core 0, wrk + s3s-fs on core 1) | tarball ($TB_BYTES B) req/s | /packages/NAME ($PKG_BYTES B) req/s |"
  echo "|---|---|---|"
  for mode in local warm bucket; do
    t=$(echo "${RPS[$mode,$TARBALL]}" | tr ' ' '\n' | grep . | median)
    p=$(echo "${RPS[$mode,$PKG]}" | tr ' ' '\n' | grep . | median)
    case $mode in
      local) label="writer's serve, local tree (peer)" ;;
      warm) label="read-only node, warm cache" ;;
      bucket) label="read-only node, no cache (bucket every request)" ;;
    esac
    echo "| $label | $t | $p |"
  done
} | tee "$MD"
