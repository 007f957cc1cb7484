#!/usr/bin/env bash
# Air-gap bundles (issue 14, BENCHMARKS.md "Air-gap bundles"): `hexmirror
# bundle export` and `bundle import` against the floor of a verified copy done
# by hand (tar + sha256sum), all in ONE run, peers interleaved run by run.
#
#   bash bench/airgap.sh                          # SCALES="0.1 0.3", RUNS=1
#   SCALES=0.01 bash bench/airgap.sh              # a quick check (~1 min)
#   SCALES="0.1 0.3" RUNS=3 bash bench/airgap.sh  # medians of 3
#
# For each scale in SCALES, with the synthetic signed upstream of bench/site.sh
# (bench/gen_upstream.rs, served by nginx on 127.0.0.1:PORT) and the near-side
# config of site.sh's write_config (one [[repository]] `acme`, packages = []):
#   1. near side: `hexmirror sync` into a fresh data dir (timed, for information
#      only), then `hexmirror keygen --bundle --out DATA/keys`;
#   2. full export: `bundle export --out B1` (runs after the first add --full,
#      which makes a re-based Full bundle of the same tree): wall, CPU
#      (user+sys) and peak RSS (/usr/bin/time -v), bytes written (volumes +
#      manifest); then `bundle verify B1` once, for information;
#   3. export peers, on the same files (the served tree DATA/current, whose
#      files are hard links into the blob store): `tar -C DATA/current -cf
#      tree.tar .` followed by `sync tree.tar` (an fsync, as export fsyncs its
#      volumes), and `find . -type f -print0 | xargs -0 sha256sum > SUMS`.
#      floor = tar + sha256sum; ratios export/floor and export/tar;
#   4. full import into a fresh far data dir (config: [upstream] public_key and
#      [import] bundle_keys only, no [[repository]], never syncs): `bundle
#      import B1` (the last B1 exported; with --rebase when RUNS > 1, as a
#      far side that holds no bundle takes only bundle 1 without it); peers: `tar -xf tree.tar` into a fresh
#      dir followed by `sync -f` (flushes it, as import fsyncs), and
#      `sha256sum -c --quiet SUMS` there. floor = tar -xf + sha256sum -c;
#      the far tree is then checked equal to the near one (file lists of both
#      snapshot manifests, path -> sha256) and `hexmirror verify` must pass;
#   5. incremental: `gen_upstream --mutate MUTATE`; bytes changed upstream =
#      the files the mutation wrote (find -newer a marker: new tarballs, the
#      re-signed records, /names, /versions), cross-checked against the near
#      side's manifest before and after the sync (paths added or whose sha256
#      changed); then `hexmirror sync`, `bundle export --out B2` (Incremental),
#      `bundle import B2` on the far side kept from step 4; bundle bytes
#      against changed bytes, and a tar of exactly the changed upstream files
#      for comparison; the far tree is checked equal again.
# With RUNS > 1 every timed step runs RUNS times (fresh out dirs and far dirs;
# the incremental one on a new MUTATE fraction each run) and the median is
# reported. When run as root, page caches are dropped (`sync; echo 3 >
# /proc/sys/vm/drop_caches`) before every timed step, hexmirror and peers
# alike (DROP=0 to keep them warm; without root they stay warm and the output
# says so).
#
# Writes the raw output to bench/results/airgap-<timestamp>.txt and Markdown
# tables to stdout and bench/results/airgap-<timestamp>.md.
#
# Knobs (environment): SCALES ("0.1 0.3"), RUNS (1), MUTATE (0.01), WORK
# (/tmp/hexmirror-airgap-bench; needs about 6x the upstream size: upstream,
# near store, bundle, tar, far store, extracted copy; scale 0.3 is ~4 GB of
# upstream), PORT (18470), DROP (auto: 1 when root), KEEP (0; 1 keeps WORK,
# otherwise it is deleted on exit, success or not), PERF (0; 1 profiles one
# extra, untimed import at the first scale with `perf record` and counts its
# syscalls with `strace -c -w -f`, appended to the raw output), REV (the
# revision printed; default `git rev-parse --short HEAD`, "+dirty" when src/
# differs from it).
#
# Every process it starts is stopped on exit (site.sh's trap: nginx); it only
# listens on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCALES=${SCALES:-"0.1 0.3"}
RUNS=${RUNS:-1}
MUTATE=${MUTATE:-0.01}
WORK=${WORK:-/tmp/hexmirror-airgap-bench}
PORT=${PORT:-18470}
DROP=${DROP:-auto}
KEEP=${KEEP:-0}
PERF=${PERF:-0}
PROFILE=release
REV=${REV:-$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && { git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty'; })}
SCALE=${SCALES%% *}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$ROOT/bench/results"
RAW=$ROOT/bench/results/airgap-$STAMP.txt
MD=$ROOT/bench/results/airgap-$STAMP.md
: >"$RAW"

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$RAW" >&2; }
raw() { tee -a "$RAW" >/dev/null; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
# calc EXPR: awk arithmetic, printed with up to 3 decimals ("-" on a bad operand).
calc() { awk "BEGIN{ x = $1; printf \"%.3f\n\", x }" 2>/dev/null || echo -; }
mb() { awk -v b="$1" 'BEGIN{printf "%.1f", b / 1048576}'; }
# bytes_of DIR: sum of the sizes of the regular files under DIR.
bytes_of() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END{print s+0}'; }

log "building (release) and starting; raw output in $RAW"
# shellcheck source=bench/site.sh
. "$ROOT/bench/site.sh" 2> >(tail -3 | raw) # removes and creates WORK, builds, sets BIN GEN PIDS
finish() {
  cleanup
  if [ "$KEEP" = 1 ]; then log "kept $WORK (KEEP=1)"; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM
T=$WORK/t # timing files
mkdir -p "$T"

# Page caches: dropped before each timed step when we may.
if [ "$DROP" = auto ]; then
  if [ "$(id -u)" = 0 ] && sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then DROP=1; else DROP=0; fi
fi
cold() {
  [ "$DROP" = 1 ] || return 0
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

HAVE_TIME=0
[ -x /usr/bin/time ] && HAVE_TIME=1
# timed NAME CMD...: runs CMD (after `cold`) and prints "wall cpu rss_mb rc";
# its stdout, stderr and /usr/bin/time -v report stay in T/NAME.* and go to
# the raw output. CPU and RSS are "-" without /usr/bin/time.
timed() {
  local name=$1 out=$T/$1 t0 t1 rc=0
  shift
  cold
  echo "-- $name (load $(cut -d' ' -f1-3 /proc/loadavg)): $*" | raw
  t0=$(now)
  if [ "$HAVE_TIME" = 1 ]; then
    /usr/bin/time -v -o "$out.time" "$@" >"$out.stdout" 2>"$out.stderr" || rc=$?
  else
    "$@" >"$out.stdout" 2>"$out.stderr" || rc=$?
    : >"$out.time"
  fi
  t1=$(now)
  { cat "$out.stdout"; tail -20 "$out.stderr"
    grep -E 'User time|System time|Maximum resident|context switches|File system (in|out)puts' "$out.time" || true; } | raw
  awk -v a="$t0" -v b="$t1" -v c="$rc" -F': ' '
    /User time/ {u = $2; has = 1} /System time/ {s = $2} /Maximum resident/ {r = $2}
    END { if (has) printf "%.3f %.2f %.1f %s\n", b - a, u + s, r / 1024, c
          else printf "%.3f - - %s\n", b - a, c }' "$out.time"
  echo "   wall $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') s, rc $rc" | raw
}
# check RC WHAT: stops the run when a step failed.
check() { [ "$1" = 0 ] || { log "FAILED: $2 (exit $1); see $RAW"; exit 1; }; }
# manifest_files DATA_DIR: "path sha256 size" for each file of the served
# tree's snapshot manifest, sorted.
manifest_files() {
  local out
  out=$(jq -r '.signed.files | to_entries[] | "\(.key) \(.value.sha256) \(.value.size)"' \
    "$1/current/hexmirror-manifest.json" | LC_ALL=C sort)
  [ -n "$out" ] || { echo "no file list in $1/current/hexmirror-manifest.json" >&2; return 1; }
  printf '%s\n' "$out"
}

{
  echo "== machine"
  echo "date: $(date -u)"
  echo "nproc: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo || true
  grep MemTotal /proc/meminfo
  echo "kernel: $(uname -r)"
  echo "tar: $(tar --version | head -1); sha256sum: $(sha256sum --version | head -1)"
  echo "hexmirror: $REV"
  echo "config: SCALES='$SCALES' RUNS=$RUNS MUTATE=$MUTATE DROP=$DROP PERF=$PERF WORK=$WORK"
  echo "page caches dropped before each timed step: $([ "$DROP" = 1 ] && echo yes || echo 'no (warm caches)')"
  echo "load before start: $(cat /proc/loadavg)"
} | tee -a "$RAW" >&2

declare -A R # R[scale:metric] = value (medians)
NGINX_PID=""
FIRST=1
for SCALE in $SCALES; do
  log "=== scale $SCALE"
  # A fresh upstream per scale (site.sh's start_upstream generates and serves it).
  if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  rm -rf "$WORK/up" "$WORK/data" "$WORK"/far* "$WORK"/b1* "$WORK"/b2* "$WORK/x" "$WORK/tree.tar"
  t0=$(now)
  start_upstream 2>"$T/gen.err"
  NGINX_PID=${PIDS[-1]}
  raw <"$T/gen.err"
  R[$SCALE:gen_s]=$(calc "$(now) - $t0")
  R[$SCALE:up_files]=$(find "$WORK/up" -type f | wc -l)
  R[$SCALE:up_bytes]=$(bytes_of "$WORK/up")
  R[$SCALE:packages]=$(find "$WORK/up/packages" -type f | wc -l)
  R[$SCALE:releases]=$(find "$WORK/up/tarballs" -type f | wc -l)
  log "upstream: ${R[$SCALE:packages]} packages, ${R[$SCALE:releases]} releases, ${R[$SCALE:up_files]} files, $(mb "${R[$SCALE:up_bytes]}") MB"
  write_config airgap
  DATA=$WORK/data

  # 1. Near side.
  read -r w c rss rc < <(timed "sync-$SCALE" "$BIN" sync --config "$CONF")
  check "$rc" "hexmirror sync"
  grep -q '^sync complete' "$T/sync-$SCALE.stdout" || { log "sync did not complete"; exit 1; }
  R[$SCALE:sync_wall]=$w R[$SCALE:sync_cpu]=$c R[$SCALE:sync_rss]=$rss
  "$BIN" keygen --bundle --out "$DATA/keys" --config "$CONF" 2>&1 | raw
  BUNDLE_PUB=$WORK/exporter.pub.pem # the far side's own copy
  cp "$DATA/keys/bundle.pub.pem" "$BUNDLE_PUB"
  R[$SCALE:tree_files]=$(find -L "$DATA/current/" -type f | wc -l)
  R[$SCALE:tree_bytes]=$(find -L "$DATA/current/" -type f -printf '%s\n' | awk '{s+=$1} END{print s+0}')
  R[$SCALE:tree_inodes]=$(find -L "$DATA/current/" -type f -printf '%i\n' | sort -u | wc -l)
  R[$SCALE:tree_repos]=$(cd "$DATA/current" && find repos -type f 2>/dev/null | wc -l)
  log "near tree: ${R[$SCALE:tree_files]} files ($(mb "${R[$SCALE:tree_bytes]}") MB; ${R[$SCALE:tree_inodes]} distinct inodes; ${R[$SCALE:tree_repos]} under repos/)"

  # 2 and 3. Full export and its peers, interleaved run by run.
  ew=() ec=() er=() tw=() sw=()
  for r in $(seq "$RUNS"); do
    rm -rf "$WORK"/b1* "$WORK/tree.tar"
    full=()
    [ "$r" -gt 1 ] && full=(--full)
    read -r w c rss rc < <(timed "export-$SCALE-$r" "$BIN" bundle export --out "$WORK/b1" "${full[@]}" --config "$CONF")
    check "$rc" "bundle export (full)"
    ew+=("$w") ec+=("$c") er+=("$rss")
    read -r w c rss rc < <(timed "tar-c-$SCALE-$r" sh -c 'tar -C "$1/current/" -cf "$2" . && sync "$2"' tar "$DATA" "$WORK/tree.tar")
    check "$rc" "tar -cf"
    tw+=("$w")
    R[$SCALE:tar_cpu]=$c
    read -r w c rss rc < <(timed "sha-$SCALE-$r" sh -c 'cd "$1/current/" && find . -type f -print0 | xargs -0 sha256sum >"$2"' sha "$DATA" "$WORK/SUMS")
    check "$rc" "sha256sum"
    sw+=("$w")
    R[$SCALE:sha_cpu]=$c
  done
  out=$(cat "$T/export-$SCALE-1.stdout")
  R[$SCALE:export_line]=$out
  R[$SCALE:b1_files]=$(sed -nE 's/.*: ([0-9]+) files changed.*/\1/p' <<<"$out")
  R[$SCALE:b1_blobs]=$(sed -nE 's/.* ([0-9]+) blobs in.*/\1/p' <<<"$out")
  R[$SCALE:b1_volumes]=$(sed -nE 's/.* blobs in ([0-9]+) volumes.*/\1/p' <<<"$out")
  R[$SCALE:b1_bytes]=$(bytes_of "$WORK/b1")
  R[$SCALE:b1_manifest]=$(stat -c %s "$WORK/b1/hexmirror-bundle.json")
  R[$SCALE:tar_bytes]=$(stat -c %s "$WORK/tree.tar")
  R[$SCALE:export_wall]=$(printf '%s\n' "${ew[@]}" | median)
  R[$SCALE:export_cpu]=$(printf '%s\n' "${ec[@]}" | median)
  R[$SCALE:export_rss]=$(printf '%s\n' "${er[@]}" | median)
  R[$SCALE:tar_c]=$(printf '%s\n' "${tw[@]}" | median)
  R[$SCALE:sha]=$(printf '%s\n' "${sw[@]}" | median)
  log "export: ${R[$SCALE:export_line]}"
  log "export ${R[$SCALE:export_wall]} s; tar ${R[$SCALE:tar_c]} s; sha256sum ${R[$SCALE:sha]} s"
  read -r w c rss rc < <(timed "verify-$SCALE" "$BIN" bundle verify "$WORK/b1" --key "$BUNDLE_PUB" --config "$CONF")
  check "$rc" "bundle verify"
  R[$SCALE:verify_wall]=$w R[$SCALE:verify_cpu]=$c

  # 4. Full import on fresh far sides, and its peers.
  far_config() { # far_config DIR: the far side's config, in DIR/hexmirror.toml
    mkdir -p "$1"
    cat >"$1/hexmirror.toml" <<EOF
data_dir = "$1/data"
listen = "127.0.0.1:0"
[upstream]
public_key = "$ROOT/tests/fixtures/keys/upstream.pub.pem"
[import]
bundle_keys = ["$BUNDLE_PUB"]
EOF
  }
  # The B1 on disk is the last one exported: bundle RUNS of the chain. A far
  # side that holds no bundle takes only bundle 1 without --rebase.
  rebase=()
  [ "$(sed -nE 's/^bundle ([0-9]+) .*/\1/p' "$T/export-$SCALE-$RUNS.stdout")" = 1 ] || rebase=(--rebase)
  iw=() ic=() ir=() xw=() cw=()
  for r in $(seq "$RUNS"); do
    rm -rf "$WORK"/far* "$WORK/x"
    FAR=$WORK/far
    far_config "$FAR"
    read -r w c rss rc < <(timed "import-$SCALE-$r" "$BIN" bundle import "$WORK/b1" "${rebase[@]}" --config "$FAR/hexmirror.toml")
    check "$rc" "bundle import (full)"
    iw+=("$w") ic+=("$c") ir+=("$rss")
    mkdir -p "$WORK/x"
    read -r w c rss rc < <(timed "tar-x-$SCALE-$r" sh -c 'tar -C "$1" -xf "$2" && sync -f "$1"' tar "$WORK/x" "$WORK/tree.tar")
    check "$rc" "tar -xf"
    xw+=("$w")
    R[$SCALE:untar_cpu]=$c
    read -r w c rss rc < <(timed "sha-c-$SCALE-$r" sh -c 'cd "$1" && sha256sum -c --quiet "$2"' shac "$WORK/x" "$WORK/SUMS")
    check "$rc" "sha256sum -c"
    cw+=("$w")
    R[$SCALE:shac_cpu]=$c
  done
  out=$(cat "$T/import-$SCALE-1.stdout")
  R[$SCALE:import_line]=$out
  R[$SCALE:import_wall]=$(printf '%s\n' "${iw[@]}" | median)
  R[$SCALE:import_cpu]=$(printf '%s\n' "${ic[@]}" | median)
  R[$SCALE:import_rss]=$(printf '%s\n' "${ir[@]}" | median)
  R[$SCALE:tar_x]=$(printf '%s\n' "${xw[@]}" | median)
  R[$SCALE:sha_c]=$(printf '%s\n' "${cw[@]}" | median)
  log "import: $out"
  log "import ${R[$SCALE:import_wall]} s; tar -xf ${R[$SCALE:tar_x]} s; sha256sum -c ${R[$SCALE:sha_c]} s"
  read_n=$(sed -nE 's/.* ([0-9]+) blobs read.*/\1/p' <<<"$out")
  [ "$read_n" = "${R[$SCALE:b1_blobs]}" ] || log "SURPRISE: import read $read_n blobs, the bundle carries ${R[$SCALE:b1_blobs]}"
  # The far tree is the near tree (but the far side's own snapshot manifest).
  if diff <(manifest_files "$DATA") <(manifest_files "$FAR/data") >"$T/diff-full-$SCALE" 2>&1; then
    R[$SCALE:full_equal]=yes
  else
    R[$SCALE:full_equal]="NO ($(wc -l <"$T/diff-full-$SCALE") diff lines)"
    raw <"$T/diff-full-$SCALE"
  fi
  if grep -v 'hexmirror-manifest' "$WORK/SUMS" | (cd "$FAR/data/current/" && sha256sum -c --quiet -) >>"$RAW" 2>&1; then
    R[$SCALE:full_bytes_equal]=yes
  else
    R[$SCALE:full_bytes_equal]=NO
  fi
  if "$BIN" verify --config "$FAR/hexmirror.toml" >"$T/farverify.out" 2>&1; then
    R[$SCALE:far_verify]=ok
  else
    R[$SCALE:far_verify]="FAILED"
  fi
  tail -3 "$T/farverify.out" | raw
  log "far tree equal (manifests): ${R[$SCALE:full_equal]}; bytes (sha256sum -c): ${R[$SCALE:full_bytes_equal]}; hexmirror verify: ${R[$SCALE:far_verify]}"
  rm -rf "$WORK/x" "$WORK/tree.tar"

  if [ "$PERF" = 1 ] && [ "$FIRST" = 1 ]; then
    log "profiling one extra import (untimed)"
    if command -v perf >/dev/null; then
      far_config "$WORK/farperf"
      cold
      perf record -F 499 -o "$WORK/perf.data" -- "$BIN" bundle import "$WORK/b1" "${rebase[@]}" --config "$WORK/farperf/hexmirror.toml" >>"$RAW" 2>&1 || true
      perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol >"$T/perf.txt" 2>/dev/null || true
      { echo "== perf report (import, scale $SCALE; on-CPU samples only)"
        grep -v '^#' "$T/perf.txt" | grep -v '^$' | sed -n 1,40p | cut -c1-110
      } | raw
      rm -rf "$WORK/farperf" "$WORK/perf.data"
    fi
    if command -v strace >/dev/null; then
      far_config "$WORK/farstrace"
      cold
      strace -c -w -f -o "$T/strace.txt" "$BIN" bundle import "$WORK/b1" "${rebase[@]}" --config "$WORK/farstrace/hexmirror.toml" >>"$RAW" 2>&1 || true
      { echo "== strace -c -w -f (import, scale $SCALE; wall time in syscalls, all threads)"
        sed -n 1,30p "$T/strace.txt"
      } | raw
      rm -rf "$WORK/farstrace"
    fi
  fi
  rm -rf "$WORK/b1"

  # 5. Incremental: a new MUTATE fraction each run, one chain.
  mw=() mc=() mb_=() bb=() xe=() xi=() xs=() bf=() bbl=() nb=() ntar=()
  for r in $(seq "$RUNS"); do
    manifest_files "$DATA" >"$WORK/before.files"
    touch "$WORK/marker"
    sleep 0.05
    t0=$(now)
    mutate "$MUTATE"
    echo "-- mutate $MUTATE: $(calc "$(now) - $t0") s" | raw
    (cd "$WORK/up" && find . -type f -newer "$WORK/marker" -printf '%P\n' | LC_ALL=C sort) >"$WORK/changed.list"
    changed_files=$(wc -l <"$WORK/changed.list")
    changed_bytes=$( (cd "$WORK/up" && tr '\n' '\0' <"$WORK/changed.list" | xargs -0 -r stat -c %s) | awk '{s+=$1} END{print s+0}')
    mc+=("$changed_files") mb_+=("$changed_bytes")
    tar -C "$WORK/up" -cf "$WORK/changed.tar" -T "$WORK/changed.list"
    ntar+=("$(stat -c %s "$WORK/changed.tar")")
    rm -f "$WORK/changed.tar"
    read -r w c rss rc < <(timed "sync-inc-$SCALE-$r" "$BIN" sync --config "$CONF")
    check "$rc" "incremental sync"
    mw+=("$w")
    # Cross-check against the near side's manifests: paths added or changed.
    manifest_files "$DATA" >"$WORK/after.files"
    read -r nf nbytes < <(LC_ALL=C join -a 2 "$WORK/before.files" "$WORK/after.files" |
      awk 'NF == 3 || (NF == 5 && $2 != $4) {n++; s += $NF} END{print n+0, s+0}')
    upstream_nf=$(grep -cvE '^(repos/|hexmirror-)' <(LC_ALL=C join -a 2 "$WORK/before.files" "$WORK/after.files" |
      awk 'NF == 3 || (NF == 5 && $2 != $4) {print $1}') || true)
    echo "-- changed upstream: $changed_files files, $changed_bytes bytes (find -newer); near manifest: $nf paths added/changed ($upstream_nf outside repos/), $nbytes bytes" | raw
    nb+=("$nbytes")
    read -r w c rss rc < <(timed "export-inc-$SCALE-$r" "$BIN" bundle export --out "$WORK/b2-$r" --config "$CONF")
    check "$rc" "bundle export (incremental)"
    xe+=("$w")
    out=$(cat "$T/export-inc-$SCALE-$r.stdout")
    grep -q '(Incremental)' <<<"$out" || log "SURPRISE: incremental export says: $out"
    bb+=("$(bytes_of "$WORK/b2-$r")")
    bf+=("$(sed -nE 's/.*: ([0-9]+) files changed.*/\1/p' <<<"$out")")
    bbl+=("$(sed -nE 's/.* ([0-9]+) blobs in.*/\1/p' <<<"$out")")
    read -r w c rss rc < <(timed "import-inc-$SCALE-$r" "$BIN" bundle import "$WORK/b2-$r" --config "$FAR/hexmirror.toml")
    check "$rc" "bundle import (incremental)"
    xi+=("$w")
    if diff <(manifest_files "$DATA") <(manifest_files "$FAR/data") >"$T/diff-inc-$SCALE-$r" 2>&1; then
      xs+=(yes)
    else
      xs+=(NO); raw <"$T/diff-inc-$SCALE-$r"
    fi
    log "incremental $r: upstream wrote $changed_files files ($changed_bytes bytes); $out; import: $(cat "$T/import-inc-$SCALE-$r.stdout"); far equal: ${xs[-1]}"
    R[$SCALE:inc_export_line]=$out
    R[$SCALE:inc_import_line]=$(cat "$T/import-inc-$SCALE-$r.stdout")
    R[$SCALE:inc_manifest]=$(stat -c %s "$WORK/b2-$r/hexmirror-bundle.json")
    rm -rf "$WORK/b2-$r"
  done
  R[$SCALE:inc_sync]=$(printf '%s\n' "${mw[@]}" | median)
  R[$SCALE:inc_up_files]=$(printf '%s\n' "${mc[@]}" | median)
  R[$SCALE:inc_up_bytes]=$(printf '%s\n' "${mb_[@]}" | median)
  R[$SCALE:inc_near_bytes]=$(printf '%s\n' "${nb[@]}" | median)
  R[$SCALE:inc_tar_bytes]=$(printf '%s\n' "${ntar[@]}" | median)
  R[$SCALE:inc_bytes]=$(printf '%s\n' "${bb[@]}" | median)
  R[$SCALE:inc_files]=$(printf '%s\n' "${bf[@]}" | median)
  R[$SCALE:inc_blobs]=$(printf '%s\n' "${bbl[@]}" | median)
  R[$SCALE:inc_export]=$(printf '%s\n' "${xe[@]}" | median)
  R[$SCALE:inc_import]=$(printf '%s\n' "${xi[@]}" | median)
  R[$SCALE:inc_equal]=$(printf '%s\n' "${xs[@]}" | sort -u | paste -sd/)
  FIRST=0
  rm -rf "$WORK"/far* "$WORK/data"
done

# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
{
  echo "# Air-gap bundles: run $STAMP"
  echo
  echo "SCALES='$SCALES' RUNS=$RUNS (medians when RUNS > 1), MUTATE=$MUTATE; $(nproc) cores;" \
    "page caches dropped before each timed step: $([ "$DROP" = 1 ] && echo yes || echo no);" \
    "hexmirror $REV. Raw output: bench/results/airgap-$STAMP.txt."
  echo
  echo "### Near side"
  echo
  echo "| scale | packages | releases | upstream files | upstream MB | sync wall s | sync CPU s | sync peak RSS MB | served files (repos/) | served MB |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for s in $SCALES; do
    echo "| $s | ${R[$s:packages]} | ${R[$s:releases]} | ${R[$s:up_files]} | $(mb "${R[$s:up_bytes]}") | ${R[$s:sync_wall]} | ${R[$s:sync_cpu]} | ${R[$s:sync_rss]} | ${R[$s:tree_files]} (${R[$s:tree_repos]}) | $(mb "${R[$s:tree_bytes]}") |"
  done
  echo
  echo "### Full export (near side) against tar + sha256sum of the served tree"
  echo
  echo "| scale | bundle: files / blobs / volumes | bundle MB (manifest MB) | tar MB | export wall s | export CPU s | export peak RSS MB | tar -cf + fsync s | sha256sum s | floor s | **export / floor** | export / tar | bundle verify s (CPU) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for s in $SCALES; do
    floor=$(calc "${R[$s:tar_c]} + ${R[$s:sha]}")
    echo "| $s | ${R[$s:b1_files]} / ${R[$s:b1_blobs]} / ${R[$s:b1_volumes]} | $(mb "${R[$s:b1_bytes]}") ($(mb "${R[$s:b1_manifest]}")) | $(mb "${R[$s:tar_bytes]}") | ${R[$s:export_wall]} | ${R[$s:export_cpu]} | ${R[$s:export_rss]} | ${R[$s:tar_c]} | ${R[$s:sha]} | $floor | **$(calc "${R[$s:export_wall]} / $floor")x** | $(calc "${R[$s:export_wall]} / ${R[$s:tar_c]}")x | ${R[$s:verify_wall]} (${R[$s:verify_cpu]}) |"
  done
  echo
  echo "### Full import (fresh far side) against tar -xf + sha256sum -c"
  echo
  echo "| scale | import wall s | import CPU s | import peak RSS MB | tar -xf + sync s | sha256sum -c s | floor s | **import / floor** | import / tar -xf | far tree = near tree | far verify |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for s in $SCALES; do
    floor=$(calc "${R[$s:tar_x]} + ${R[$s:sha_c]}")
    echo "| $s | ${R[$s:import_wall]} | ${R[$s:import_cpu]} | ${R[$s:import_rss]} | ${R[$s:tar_x]} | ${R[$s:sha_c]} | $floor | **$(calc "${R[$s:import_wall]} / $floor")x** | $(calc "${R[$s:import_wall]} / ${R[$s:tar_x]}")x | ${R[$s:full_equal]} (bytes: ${R[$s:full_bytes_equal]}) | ${R[$s:far_verify]} |"
  done
  echo
  echo "### Incremental (gen_upstream --mutate $MUTATE, sync, export B2, import B2)"
  echo
  echo "| scale | upstream files written | upstream bytes written | near manifest: bytes added/changed | tar of the changed files, bytes | bundle: files / blobs | bundle bytes (manifest) | **bundle / changed upstream** | sync s | export s | import s | far = near |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for s in $SCALES; do
    echo "| $s | ${R[$s:inc_up_files]} | ${R[$s:inc_up_bytes]} | ${R[$s:inc_near_bytes]} | ${R[$s:inc_tar_bytes]} | ${R[$s:inc_files]} / ${R[$s:inc_blobs]} | ${R[$s:inc_bytes]} (${R[$s:inc_manifest]}) | **$(calc "${R[$s:inc_bytes]} / ${R[$s:inc_up_bytes]}")x** | ${R[$s:inc_sync]} | ${R[$s:inc_export]} | ${R[$s:inc_import]} | ${R[$s:inc_equal]} |"
  done
  echo
  echo "hexmirror's own lines (full: first run; incremental: last run):"
  echo
  for s in $SCALES; do
    echo "- $s: \`${R[$s:export_line]}\`; \`${R[$s:import_line]}\`; incremental: \`${R[$s:inc_export_line]}\`; \`${R[$s:inc_import_line]}\`"
  done
} | tee "$MD"
cat "$MD" >>"$RAW"
log "done: $MD"
