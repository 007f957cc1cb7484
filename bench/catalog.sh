#!/usr/bin/env bash
# The catalog (issue 15, BENCHMARKS.md "Catalog"): what it costs a full sync,
# how fast search answers, and what counting downloads costs serving.
#
#   bash bench/catalog.sh                      # SCALE=1.0 (21,000 packages)
#   SCALE=0.1 QUERIES=50 bash bench/catalog.sh # a quick check
#
# With the synthetic signed upstream of bench/site.sh (nginx on loopback):
#   1. a full `hexmirror sync` into a fresh data dir; its log gives the time
#      the catalog took (the records: "catalog built from the tree" /
#      "catalog updated"; the tarball metadata written during the fetches:
#      "catalog: tarball metadata in"; ms=... each), reported against the
#      sync's wall time; with SYNC_AB=1 (the default), full syncs without
#      and with the catalog alternating, twice each, every one after the
#      same deletion of a data directory and a settle (see part 1), so the
#      difference in wall time is the catalog's whole cost, waits included;
#   2. `hexmirror serve` pinned to core 0 (taskset), and QUERIES searches per
#      kind (free text, name:, depends:, build_tool:, and free text sorted by
#      downloads) sent one at a time by curl pinned to core 1, each timed
#      with curl's time_total: p50 and p99 per kind and over all;
#   3. serving a mid-size tarball with wrk (-t1 -c64, WRK_SECS) pinned to
#      core 1, serve on core 0, alternating download counting on and off
#      ([server] count_downloads), RUNS times each: requests/s medians and
#      their ratio.
# Writes the raw output to bench/results/catalog-<timestamp>.txt and a
# Markdown summary to stdout and bench/results/catalog-<timestamp>.md.
#
# Knobs: SCALE (1.0), QUERIES (200), RUNS (3), WRK_SECS (10), PORT (18490), SYNC_AB (1), SETTLE_S (30),
# WORK (/tmp/hexmirror-catalog-bench, deleted on exit unless KEEP=1; needs
# about 2x the upstream: ~26 GB at 1.0, with one data directory at a time).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCALE=${SCALE:-1.0}
QUERIES=${QUERIES:-200}
RUNS=${RUNS:-3}
WRK_SECS=${WRK_SECS:-10}
PORT=${PORT:-18490}
WORK=${WORK:-/tmp/hexmirror-catalog-bench}
KEEP=${KEEP:-0}
PROFILE=release
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$ROOT/bench/results
mkdir -p "$RESULTS"
RAW=$RESULTS/catalog-$STAMP.txt
MD=$RESULTS/catalog-$STAMP.md
for tool in wrk taskset curl nginx; do
  command -v "$tool" >/dev/null || { echo "bench/catalog.sh needs $tool" >&2; exit 2; }
done
# shellcheck source=bench/site.sh
source "$ROOT/bench/site.sh"
if [ "$KEEP" != 1 ]; then trap 'cleanup; rm -rf "$WORK"' EXIT; fi
exec > >(tee "$RAW") 2>&1

echo "hexmirror $(git -C "$ROOT" rev-parse --short HEAD); SCALE=$SCALE QUERIES=$QUERIES RUNS=$RUNS WRK_SECS=$WRK_SECS; $(nproc) cores"
start_upstream
write_config bench
# JSON logs: the catalog's timing is read from the sync's log.
printf '\n[log]\nformat = "json"\n' >>"$CONF"

# 1. A full sync; the catalog's share from its log. With SYNC_AB=1, the same
# full sync with and without the catalog, alternating (without, with,
# without, with), each into a fresh data directory. Deleting a 12.5 GB data
# directory slows the next sync on this VM by itself (bench/sync_after_delete.sh
# measured 1.38x), so every timed sync, the first included, follows the
# same deletion of a previous one's directory, then writeback to finish and
# SETTLE_S seconds. The last sync (with the catalog) is kept for parts 2-3.
timed_sync() { # CONFIG LOGPREFIX -> seconds on stdout
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN" sync --config "$1" >"$WORK/$2.out" 2>"$WORK/$2.err"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
with_data_dir() { # DIR -> a config like $CONF with that data dir, on stdout
  sed "s#^data_dir = .*#data_dir = \"$1\"#" "$CONF"
}
catalog_ms() { # LOGPREFIX -> "total records metadata" from the sync's log
  local r n
  r=$(grep -E 'catalog (built from the tree|updated)' "$WORK/$1.err" | sed -nE 's/.*"ms":([0-9]+).*/\1/p' | tail -1)
  n=$(grep -E 'catalog: tarball metadata in' "$WORK/$1.err" | sed -nE 's/.*"ms":([0-9]+).*/\1/p' | tail -1)
  echo "$((${r:-0} + ${n:-0})) ${r:-?} ${n:-?}"
}
ab_sync() { # MODE(on|off) RUN DIR -> seconds; DIR is deleted first, and after unless it is $WORK/data
  local mode=$1 run=$2 dir=$3 s
  rm -rf "$dir"
  settle
  mkdir -p "$dir"
  # Without a catalog: a directory where catalog.db would be; the sync goes on without it.
  [ "$mode" = off ] && mkdir -p "$dir/catalog.db"
  with_data_dir "$dir" >"$WORK/$mode$run.toml"
  s=$(timed_sync "$WORK/$mode$run.toml" "sync-$mode$run")
  if [ "$mode" = off ]; then
    grep -q 'catalog unavailable' "$WORK/sync-$mode$run.err" || { echo "the sync without a catalog had one" >&2; exit 1; }
  fi
  echo "$s"
}
declare -a AB_ON AB_OFF AB_SHARE
if [ "${SYNC_AB:-1}" = 1 ]; then
  # A first deletion of the same size, so that run 1 follows one too.
  mkdir -p "$WORK/data-warm" && with_data_dir "$WORK/data-warm" >"$WORK/warm.toml"
  "$BIN" sync --config "$WORK/warm.toml" >"$WORK/warm.out" 2>"$WORK/warm.err"
  prev="$WORK/data-warm"
  for run in 1 2; do
    rm -rf "$prev"
    AB_OFF+=("$(ab_sync off "$run" "$WORK/data-off")")
    echo "run $run: sync without the catalog: ${AB_OFF[-1]}s"
    rm -rf "$WORK/data-off"
    dir="$WORK/data-on"; [ "$run" = 2 ] && dir="$WORK/data"
    AB_ON+=("$(ab_sync on "$run" "$dir")")
    read -r ms _ _ < <(catalog_ms "sync-on$run")
    AB_SHARE+=("$(echo "$ms / 10 / ${AB_ON[-1]}" | bc -l)")
    echo "run $run: sync with the catalog: ${AB_ON[-1]}s (catalog ${ms} ms)"
    prev=$dir
  done
  rm -rf "$WORK/data-on"
  cp "$WORK/sync-on2.err" "$WORK/sync.err"
  SYNC_S=${AB_ON[1]}
else
  SYNC_S=$(timed_sync "$CONF" sync)
fi
read -r CATALOG_MS RECORDS_MS NOTES_MS < <(catalog_ms sync)
PACKAGES=$(grep -cE '' <(ls "$WORK/data/current/packages"))
echo "sync: ${SYNC_S}s; catalog: ${CATALOG_MS} ms (records ${RECORDS_MS}, tarball metadata ${NOTES_MS}); packages: $PACKAGES"

# 2. Search latency: serve on core 0, curl on core 1.
stop_serve() { kill -TERM "$SERVE"; wait "$SERVE" 2>/dev/null || true; }
# The listen address must be fixed for wrk; bind to PORT+1.
sed -i "s/^listen = .*/listen = \"127.0.0.1:$((PORT + 1))\"/" "$CONF"
start_serve_pinned
NAMES=($(ls "$WORK/data/current/packages" | shuf -n "$QUERIES" --random-source=<(yes)))
percentiles() { sort -n | awk '{a[NR]=$1} END {p50=a[int((NR+1)/2)]; i=int(NR*0.99+0.999); if(i>NR)i=NR; printf "%.2f %.2f\n", p50*1000, a[i]*1000}'; }
declare -A P50 P99
: >"$WORK/all.times"
for kind in text name depends build_tool downloads; do
  : >"$WORK/$kind.times"
  for n in "${NAMES[@]}"; do
    case $kind in
      text) q="${n:0:5}" ;;
      name) q="name:${n:0:4}*" ;;
      depends) q="depends:$n" ;;
      build_tool) q="build_tool:mix+${n:0:4}" ;;
      downloads) q="${n:0:5}&sort=downloads" ;;
    esac
    read -r code secs < <(taskset -c 1 curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "http://$ADDR/api/packages?search=${q}")
    [ "$code" = 200 ] || { echo "search $q answered $code" >&2; exit 1; }
    echo "$secs" >>"$WORK/$kind.times"
  done
  read -r P50[$kind] P99[$kind] < <(percentiles <"$WORK/$kind.times")
  cat "$WORK/$kind.times" >>"$WORK/all.times"
  echo "search $kind: p50 ${P50[$kind]} ms, p99 ${P99[$kind]} ms ($QUERIES queries)"
done
read -r ALL50 ALL99 < <(percentiles <"$WORK/all.times")
echo "search all: p50 $ALL50 ms, p99 $ALL99 ms"
stop_serve

# 3. Serving a tarball with download counting on and off.
TARBALL=$(ls -S "$WORK/data/current/tarballs" | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')
declare -a ON OFF
for run in $(seq "$RUNS"); do
  for mode in true false; do
    sed -i '/^count_downloads/d' "$CONF"
    sed -i "s/^\[server\]$/[server]/" "$CONF"
    grep -q '^\[server\]' "$CONF" || printf '\n[server]\n' >>"$CONF"
    sed -i "/^\[server\]$/a count_downloads = $mode" "$CONF"
    start_serve_pinned
    rps=$(taskset -c 1 wrk -t1 -c64 -d"${WRK_SECS}s" "http://$ADDR/tarballs/$TARBALL" | awk '/Requests\/sec/ {print $2}')
    stop_serve
    echo "run $run counting=$mode: $rps req/s"
    if [ "$mode" = true ]; then ON+=("$rps"); else OFF+=("$rps"); fi
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ON_M=$(median "${ON[@]}")
OFF_M=$(median "${OFF[@]}")
RATIO=$(echo "$ON_M / $OFF_M" | bc -l)

{
  echo "# Catalog: run $STAMP"
  echo
  echo "SCALE=$SCALE ($PACKAGES packages), QUERIES=$QUERIES per kind, RUNS=$RUNS, wrk -t1 -c64 ${WRK_SECS}s; serve on core 0, clients on core 1; hexmirror $(git -C "$ROOT" rev-parse --short HEAD)."
  echo
  echo "| full sync s | catalog ms (records + tarball metadata) | catalog share of its sync |"
  echo "|---|---|---|"
  printf '| %.1f | %s (%s + %s) | %.1f%% |\n' "$SYNC_S" "$CATALOG_MS" "$RECORDS_MS" "$NOTES_MS" \
    "$(echo "$CATALOG_MS / 10 / $SYNC_S" | bc -l)"
  if [ "${SYNC_AB:-1}" = 1 ]; then
    echo
    echo "| A/B run (each after the same delete and settle) | without catalog s | with catalog s | with / without | catalog's logged share |"
    echo "|---|---|---|---|---|"
    for i in 0 1; do
      printf '| %d | %.1f | %.1f | %.3f | %.1f%% |\n' "$((i + 1))" "${AB_OFF[$i]}" "${AB_ON[$i]}" \
        "$(echo "${AB_ON[$i]} / ${AB_OFF[$i]}" | bc -l)" "${AB_SHARE[$i]}"
    done
    printf '| both | %.1f | %.1f | %.3f | |\n' "$(echo "${AB_OFF[0]} + ${AB_OFF[1]}" | bc -l)" \
      "$(echo "${AB_ON[0]} + ${AB_ON[1]}" | bc -l)" \
      "$(echo "(${AB_ON[0]} + ${AB_ON[1]}) / (${AB_OFF[0]} + ${AB_OFF[1]})" | bc -l)"
  fi
  echo
  echo "| search | p50 ms | p99 ms |"
  echo "|---|---|---|"
  for kind in text name depends build_tool downloads; do echo "| $kind | ${P50[$kind]} | ${P99[$kind]} |"; done
  echo "| all | $ALL50 | $ALL99 |"
  echo
  echo "| tarball \`$TARBALL\` | counting on req/s | counting off req/s | on / off |"
  echo "|---|---|---|---|"
  printf '| median of %s | %s | %s | %.3f |\n' "$RUNS" "$ON_M" "$OFF_M" "$RATIO"
  echo
  echo "runs: on ${ON[*]}; off ${OFF[*]}"
} | tee "$MD"
