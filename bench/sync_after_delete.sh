#!/usr/bin/env bash
# A control for bench/catalog.sh's A/B (BENCHMARKS.md "Catalog"): two full
# syncs without a catalog, the second right after the first's data
# directory is deleted, which is the position the catalog's own sync has in
# bench/catalog.sh. A large difference here is the disk, not the catalog.
#
#   bash bench/sync_after_delete.sh            # SCALE=1.0
#   SCALE=0.3 bash bench/sync_after_delete.sh
#
# Knobs: SCALE (1.0), PORT (18790), WORK (/tmp/hexmirror-delete-control,
# deleted on exit).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCALE=${SCALE:-1.0}
PORT=${PORT:-18790}
WORK=${WORK:-/tmp/hexmirror-delete-control}
PROFILE=release
# shellcheck source=bench/site.sh
source "$ROOT/bench/site.sh"
trap 'cleanup; rm -rf "$WORK"' EXIT
start_upstream
write_config bench
printf '\n[log]\nformat = "json"\n' >>"$CONF"
sed "s#^data_dir = .*#data_dir = \"$WORK/data-off\"#" "$CONF" >"$WORK/off.toml"
for run in 1 2; do
  rm -rf "$WORK/data-off" && mkdir -p "$WORK/data-off/catalog.db"
  t0=$(date +%s.%N)
  "$BIN" sync --config "$WORK/off.toml" >"$WORK/off$run.out" 2>"$WORK/off$run.err"
  t1=$(date +%s.%N)
  echo "sync without a catalog, run $run: $(echo "$t1 - $t0" | bc -l) s"
  rm -rf "$WORK/data-off"
done
