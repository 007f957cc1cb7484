#!/usr/bin/env bash
# hexmirror benchmark harness: ONE script for everything (see BENCHMARKS.md).
#
#   bash bench/run.sh                              # quick: scale 0.02, 3 runs
#   SCALES="0.1 0.3 1.0" RUNS=3 bash bench/run.sh  # the full report
#
# What it does, in order:
#   1. Installs missing Debian packages (nginx-light, wrk, aria2, hyperfine, time)
#      with apt-get, and builds `hexmirror` and the `gen_upstream` example in release.
#   2. For each scale in SCALES: generates a synthetic signed upstream
#      (bench/gen_upstream.rs, key tests/fixtures/keys/upstream.pem) and serves it
#      with nginx on loopback (a throwaway config under $WORK, `master_process off`,
#      `daemon off`, in the background; stopped at the end).
#   3. Measures, each the median of RUNS runs, peers measured in the same run:
#      a. full sync: `hexmirror sync` (fresh data dir) wall, CPU (user+sys), peak RSS
#         (/usr/bin/time -v), requests and bytes from its summary line; against
#         `xargs -P PAR curl -s --remote-name-all` (PAR connection-reusing batches) and
#         `aria2c -i LIST -j PAR` fetching exactly the same files (names, versions,
#         packages/*, tarballs/*) without verification. hexmirror runs with
#         `[mirror] concurrency = PAR`.
#      b. incremental sync: no upstream change (hyperfine, wall and requests), and
#         after `gen_upstream --mutate 0.01` (a new 1% each run).
#      c. re-sign: with `[signing] key` and `[[repository]] name = "hexpm"`, sync
#         once, then switch between two RSA-4096 keys and time each sync (every record,
#         /names and /versions of our repository re-signed).
#      d. serving (last scale only): wrk -t2 at 1, 64 and 512 connections for
#         /packages/NAME (a median-size record) and a mid-size tarball, against
#         `hexmirror serve`, nginx with one process (master_process off) and nginx
#         with one worker per core, all serving the same DATA_DIR/current;
#         requests/s and p50/p99 latency; steady RSS (VmRSS) of serve under load.
#      e. the same full sync across a network namespace with ~20 ms RTT (veth pair,
#         netem delay 10ms on both ends), first scale only; prints
#         "skipped: REASON" when namespaces or netem are not available.
#      f. publish-to-visible latency (last scale only, or PUBLISH_SCALES): a data dir
#         with `[signing] key` (PUBLISH_KEY, RSA) and `[[repository]] name = "hexpm"`
#         (the whole mirrored index) reserving `bench_*`, synced once; an admin token
#         (`hexmirror token create --admin`); `hexmirror serve` on a free loopback
#         port. PUBLISH_N tarballs bench_p1..N 1.0.0 are built with hex_core
#         (tests/support/hexcore.escript) before timing; then, one at a time, POST
#         /api/repos/hexpm/publish and GET /repos/hexpm/packages/NAME until 200 (one
#         curl, one connection). Wall time from before the POST to the 200, and the
#         server's `publish_ms` (log line "hosted package changed"): p50 and p99
#         (nearest rank, so the maximum up to 100 samples); files in the generation
#         (manifest) and packages in /repos/hexpm/names (checked with hex_core).
#   4. Writes the raw output to bench/results/<timestamp>.txt, the Markdown
#      tables to bench/results/<timestamp>.md and stdout, and the medians as
#      bench/results/<timestamp>.tsv (scale, section, metric, tool, value).
#
# Knobs (environment): SCALES (default 0.02), RUNS (3), PAR (8: curl batches,
# aria2 -j, hexmirror concurrency), WRK_SECS (4), WRK_CONNS ("1 64 512"),
# ARIA_RUNS (RUNS; how many of the rounds also run aria2c), NETEM (1; 0 to skip),
# NETEM_SCALE (first of SCALES), RESIGN (1), SERVE (1),
# MUTATE (0.01), WORK (scratch dir, default /tmp/hexmirror-bench; needs about
# 4x the upstream size, ~10 GB per 1.0 of scale), PORT_BASE (18400), SEED (42),
# KEEP (0; 1 keeps the generated upstreams in WORK), REUSE_UPSTREAM (0; 1 uses an
# upstream already in WORK/upstream-SCALE, e.g. one kept with KEEP=1), PUBLISH (1; 0 to skip),
# PUBLISH_N (40), PUBLISH_SCALES (last of SCALES), PUBLISH_KEY (RSA private key PEM,
# default tests/fixtures/keys/other.pem, 2048 bits), ONLY (sections to run, from
# "full incremental resign serve netem publish"; default all; incremental, resign
# and serve also run full, whose data dir they use; e.g. ONLY=publish),
# PUBLISH_PERF (0; 1 profiles `hexmirror serve` with `perf record -g` during the
# publishes and appends the report to the raw output; it perturbs the latencies).
#
# Every process it starts is bounded by `timeout` or a duration and stopped at the
# end (trap on EXIT); it only listens on 127.0.0.1 and on the veth pair it creates.

set -euo pipefail

SCALES=${SCALES:-0.02}
RUNS=${RUNS:-3}
PAR=${PAR:-8}
WRK_SECS=${WRK_SECS:-4}
WRK_CONNS=${WRK_CONNS:-"1 64 512"}
NETEM=${NETEM:-1}
NETEM_SCALE=${NETEM_SCALE:-${SCALES%% *}}
RESIGN=${RESIGN:-1}
SERVE=${SERVE:-1}
MUTATE=${MUTATE:-0.01}
WORK=${WORK:-/tmp/hexmirror-bench}
PORT_BASE=${PORT_BASE:-18400}
SEED=${SEED:-42}
SERVE_SCALE=${SERVE_SCALE:-${SCALES##* }}
NPROC=$(nproc)
# Server core counts for the serving runs: 1 here; 1 and 4 where wrk keeps 4+ cores.
if [ -z "${SERVE_CORES:-}" ]; then
  SERVE_CORES=1
  [ "$NPROC" -ge 8 ] && SERVE_CORES="1 4"
fi
# BIN_DIR: take hexmirror, gen_upstream, delay_proxy, nginx and wrk (and the
# shared libraries in BIN_DIR/lib) from one folder made by bench/pack.sh, for
# a machine without a package registry or a Rust toolchain.
BIN_DIR=${BIN_DIR:-}
TIME_BIN=/usr/bin/time
[ -n "$BIN_DIR" ] && [ -x "$BIN_DIR/time" ] && TIME_BIN=$BIN_DIR/time
PUBLISH=${PUBLISH:-1}
PUBLISH_N=${PUBLISH_N:-40}
PUBLISH_SCALES=${PUBLISH_SCALES:-${SCALES##* }}
ONLY=${ONLY:-}
ARIA_RUNS=${ARIA_RUNS:-$RUNS}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HEXMIRROR=$ROOT/target/release/hexmirror
GEN=$ROOT/target/release/examples/gen_upstream
DELAY_PROXY=$ROOT/target/release/examples/delay_proxy
if [ -n "$BIN_DIR" ]; then
  HEXMIRROR=$BIN_DIR/hexmirror GEN=$BIN_DIR/gen_upstream DELAY_PROXY=$BIN_DIR/delay_proxy
  export PATH="$BIN_DIR:$PATH" LD_LIBRARY_PATH="$BIN_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
UPKEY=$ROOT/tests/fixtures/keys/upstream.pem
UPPUB=$ROOT/tests/fixtures/keys/upstream.pub.pem
PUBLISH_KEY=${PUBLISH_KEY:-$ROOT/tests/fixtures/keys/other.pem}
HEXCORE=$ROOT/tests/support/hexcore.escript
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$ROOT/bench/results" "$WORK"
RAW=$ROOT/bench/results/$STAMP.txt
MD=$ROOT/bench/results/$STAMP.md
TSV=$WORK/results-$STAMP.tsv
: >"$RAW"
: >"$TSV"

PORT_UP=$PORT_BASE            # nginx: the upstream
PORT_NG1=$((PORT_BASE + 1))   # nginx (single process): DATA_DIR/current
PORT_NG2=$((PORT_BASE + 2))   # nginx pinned beside hexmirror serve (serving runs): DATA_DIR/current
PORT_HM=$((PORT_BASE + 3))    # hexmirror serve
PORT_NET=$((PORT_BASE + 4))   # nginx on the veth address (netem run)
# (the publish section's `hexmirror serve` listens on a free port: listen = 127.0.0.1:0)

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$RAW" >&2; }
raw() { tee -a "$RAW" >/dev/null; }
# record SCALE SECTION METRIC TOOL VALUE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TSV"; echo "result $*" >>"$RAW"; }
median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
now() { date +%s.%N; }
# pct P: nearest-rank percentile (P in 0..100) of the numbers on stdin
pct() { sort -g | awk -v p="$1" '{a[NR]=$1} END{if(NR==0){print "nan"; exit} i=int(p/100*NR); if(i<p/100*NR)i++; if(i<1)i=1; print a[i]}'; }
# want SECTION: whether ONLY (empty: everything) selects SECTION
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------
# Cleanup: every process we start is remembered by PID and stopped here.
# ---------------------------------------------------------------------------
PIDS=()
NETNS=""
VETH=""
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  # nginx workers of the multi-process instance exit with their master; make sure.
  for conf in "$WORK"/nginx-*.conf; do
    [ -e "$conf" ] || continue
    for pid in $(pgrep -f -- "-c $conf" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
  [ -n "$VETH" ] && ip link del "$VETH" 2>/dev/null
  [ -n "$NETNS" ] && ip netns del "$NETNS" 2>/dev/null
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# 1. Tools and build
# ---------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
[ "$ARIA_RUNS" -gt 0 ] && ! command -v aria2c >/dev/null && need+=(aria2)
want incremental && ! command -v hyperfine >/dev/null && need+=(hyperfine)
[ -x "$TIME_BIN" ] || need+=(time)
command -v curl >/dev/null || need+=(curl)
if [ "$PUBLISH" = 1 ] && want publish; then
  command -v jq >/dev/null || need+=(jq)
  command -v python3 >/dev/null || need+=(python3)
  command -v escript >/dev/null && [ -e /usr/bin/rebar3 ] || need+=(rebar3) # hex_core, for hexcore.escript
fi
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ] && [ -n "$BIN_DIR" ]; then
  log "missing: ${need[*]} (BIN_DIR is set: no apt-get; run ONLY=serve ARIA_RUNS=0 or install them)"
  exit 2
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get install -y -q "${need[@]}" >>"$RAW" 2>&1 ||
    { timeout 300 apt-get update -q >>"$RAW" 2>&1 && timeout 600 apt-get install -y -q "${need[@]}" >>"$RAW" 2>&1; }
fi
NGINX=$(command -v nginx)

if [ -z "$BIN_DIR" ]; then
  log "building (release)"
  (cd "$ROOT" && timeout 1800 cargo build --release --example gen_upstream --example delay_proxy --bin hexmirror) 2>&1 | tail -3 | raw
fi

{
  echo "== machine"
  echo "date: $(date -u)"
  echo "nproc: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo
  grep MemTotal /proc/meminfo
  echo "kernel: $(uname -r)"
  echo "nginx: $($NGINX -v 2>&1)"
  echo "curl: $(curl --version | head -1)"
  echo "aria2: $(aria2c --version 2>/dev/null | head -1)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "hyperfine: $(hyperfine --version 2>/dev/null)"
  echo "hexmirror: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty')"
  echo "rustc: $(rustc --version 2>/dev/null || echo "none (BIN_DIR=$BIN_DIR)")"
  echo "config: SCALES='$SCALES' RUNS=$RUNS PAR=$PAR WRK_SECS=$WRK_SECS WRK_CONNS='$WRK_CONNS' NETEM=$NETEM MUTATE=$MUTATE RESIGN=$RESIGN SERVE=$SERVE PUBLISH=$PUBLISH PUBLISH_N=$PUBLISH_N PUBLISH_SCALES='$PUBLISH_SCALES' ONLY='$ONLY'"
  echo "load before start: $(cat /proc/loadavg)"
} | tee -a "$RAW" >&2

ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------
# nginx_conf NAME WORKERS "LISTEN ROOT" ...   -> writes $WORK/nginx-NAME.conf
# (WORKERS 0 or 1: one process without a master)
nginx_conf() {
  local name=$1 multi=$2
  shift 2
  local prefix=$WORK/nginx-$name
  mkdir -p "$prefix/logs" "$prefix/tmp"
  local conf=$WORK/nginx-$name.conf
  {
    echo "daemon off;"
    if [ "$multi" -gt 1 ]; then
      [ "$(id -u)" = 0 ] && echo "user root;"
      echo "master_process on; worker_processes $multi;"
    else
      echo "master_process off; worker_processes 1;"
    fi
    echo "pid $prefix/nginx.pid; error_log $prefix/logs/error.log warn;"
    echo "worker_rlimit_nofile 16384;"
    echo "events { worker_connections 8192; }"
    echo "http {"
    echo "  default_type application/octet-stream; sendfile on; tcp_nopush on; tcp_nodelay on;"
    echo "  access_log off; server_tokens off; gzip off; etag on;"
    echo "  keepalive_requests 1000000; keepalive_timeout 120s;"
    echo "  client_body_temp_path $prefix/tmp; proxy_temp_path $prefix/tmp; fastcgi_temp_path $prefix/tmp;"
    echo "  uwsgi_temp_path $prefix/tmp; scgi_temp_path $prefix/tmp;"
    while [ $# -gt 0 ]; do
      # shellcheck disable=SC2086
      set -- $1 "${@:2}"
      echo "  server { listen $1; root $2; location / { try_files \$uri =404; } }"
      shift 2
    done
    echo "}"
  } >"$conf"
  echo "$conf"
}

# start_nginx CONF PORT [netns-less]; sets NGINX_PID
start_nginx() {
  local conf=$1 addr=$2
  "$NGINX" -p "$(dirname "$conf")" -c "$conf" -e stderr >>"$RAW" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://$addr/" && return 0
    kill -0 "$NGINX_PID" 2>/dev/null || { log "nginx failed to start ($conf)"; return 1; }
    sleep 0.1
  done
  log "nginx did not answer on $addr"
  return 1
}

# ---------------------------------------------------------------------------
# helpers for measured commands
# ---------------------------------------------------------------------------
# timed OUTPREFIX CMD...: runs CMD under /usr/bin/time -v; prints "wall cpu rss_kb rc"
timed() {
  local out=$1
  shift
  local t0 t1 rc=0
  t0=$(now)
  "$TIME_BIN" -v -o "$out.time" "$@" >"$out.stdout" 2>"$out.stderr" || rc=$?
  t1=$(now)
  local user sys rss
  user=$(awk -F': ' '/User time/{print $2}' "$out.time")
  sys=$(awk -F': ' '/System time/{print $2}' "$out.time")
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$out.time")
  awk -v a="$t0" -v b="$t1" -v u="$user" -v s="$sys" -v r="$rss" -v c="$rc" 'BEGIN{printf "%.3f %.2f %s %s\n", b-a, u+s, r, c}'
}

hm_config() { # hm_config FILE DATA_DIR UPSTREAM_URL [extra toml]
  cat >"$1" <<EOF
data_dir = "$2"
listen = "${HM_LISTEN:-127.0.0.1:$PORT_HM}"
[upstream]
url = "$3"
public_key = "$UPPUB"
repository = "hexpm"
timeout_secs = 300
retries = 2
[mirror]
concurrency = $PAR
${4:-}
EOF
}

# sync_summary FILE -> "requests bytes"
sync_summary() {
  local line
  line=$(grep -E '^(sync (complete|incomplete)|up to date)' "$1" | head -1)
  if [[ $line == up\ to\ date* ]]; then
    echo "$(sed -E 's/.*\(([0-9]+) requests.*/\1/' <<<"$line") 0"
  else
    echo "$(sed -E 's/.* ([0-9]+) requests.*/\1/' <<<"$line") $(sed -E 's/.* ([0-9]+) bytes in .*/\1/' <<<"$line")"
  fi
}

# full_sync_round SCALE SECTION UP_URL CLIENT_PREFIX(cmd prefix, e.g. "ip netns exec X") LIST
full_sync_round() {
  local scale=$1 sec=$2 url=$3 pre=$4 list=$5
  local n batch
  n=$(wc -l <"$list")
  batch=$(((n + PAR - 1) / PAR))
  [ "$batch" -gt 2000 ] && batch=2000
  sed "s#^#$url/#" "$list" >"$WORK/urls.txt"
  local -a hm_wall hm_cpu hm_rss curl_wall curl_cpu aria_wall aria_cpu
  for r in $(seq "$RUNS"); do
    # hexmirror
    local data=$WORK/data-$sec
    rm -rf "$data"
    hm_config "$WORK/hm-$sec.toml" "$data" "$url"
    read -r w c rss rc < <(timed "$WORK/hm-$sec-$r" $pre timeout 3600 "$HEXMIRROR" sync --config "$WORK/hm-$sec.toml")
    read -r req bytes < <(sync_summary "$WORK/hm-$sec-$r.stdout")
    { echo "-- $sec hexmirror run $r: wall=$w cpu=$c rss_kb=$rss rc=$rc"; cat "$WORK/hm-$sec-$r.stdout"; tail -5 "$WORK/hm-$sec-$r.stderr"; } | raw
    [ "$rc" = 0 ] || log "WARNING: hexmirror sync exited $rc (see $RAW)"
    hm_wall+=("$w"); hm_cpu+=("$c"); hm_rss+=("$rss")
    record "$scale" "$sec" requests hexmirror "$req"
    record "$scale" "$sec" bytes hexmirror "$bytes"
    # curl: PAR connection-reusing batches
    local dl=$WORK/dl-curl
    rm -rf "$dl"; mkdir -p "$dl"
    read -r w c rss rc < <(cd "$dl" && timed "$WORK/curl-$sec-$r" $pre timeout 3600 xargs -a "$WORK/urls.txt" -P "$PAR" -n "$batch" curl -s --fail --remote-name-all)
    local got
    got=$(find "$dl" -type f | wc -l)
    echo "-- $sec curl run $r: wall=$w cpu=$c rc=$rc files=$got/$n bytes=$(du -sb "$dl" | cut -f1)" | raw
    [ "$got" = "$n" ] || log "WARNING: curl fetched $got of $n files"
    curl_wall+=("$w"); curl_cpu+=("$c")
    # aria2c (ARIA_RUNS of the RUNS rounds: at full scale one run takes minutes)
    rm -rf "$dl"
    [ "$r" -le "$ARIA_RUNS" ] || continue
    mkdir -p "$dl"
    read -r w c rss rc < <(timed "$WORK/aria-$sec-$r" $pre timeout 3600 aria2c -i "$WORK/urls.txt" -j "$PAR" -d "$dl" -q \
      --file-allocation=none --auto-file-renaming=false --allow-overwrite=true --max-tries=2 --summary-interval=0)
    got=$(find "$dl" -type f | wc -l)
    echo "-- $sec aria2c run $r: wall=$w cpu=$c rc=$rc files=$got/$n bytes=$(du -sb "$dl" | cut -f1)" | raw
    [ "$got" = "$n" ] || log "WARNING: aria2c fetched $got of $n files"
    aria_wall+=("$w"); aria_cpu+=("$c")
    rm -rf "$dl"
  done
  record "$scale" "$sec" wall_s hexmirror "$(printf '%s\n' "${hm_wall[@]}" | median)"
  record "$scale" "$sec" cpu_s hexmirror "$(printf '%s\n' "${hm_cpu[@]}" | median)"
  record "$scale" "$sec" peak_rss_mb hexmirror "$(printf '%s\n' "${hm_rss[@]}" | median | awk '{printf "%.0f", $1/1024}')"
  record "$scale" "$sec" wall_s curl "$(printf '%s\n' "${curl_wall[@]}" | median)"
  record "$scale" "$sec" cpu_s curl "$(printf '%s\n' "${curl_cpu[@]}" | median)"
  record "$scale" "$sec" wall_s aria2c "$(printf '%s\n' "${aria_wall[@]}" | median)"
  record "$scale" "$sec" cpu_s aria2c "$(printf '%s\n' "${aria_cpu[@]}" | median)"
  record "$scale" "$sec" requests peers "$n"
  record "$scale" "$sec" bytes peers "$(cd "$UP" && cat "$list" | xargs du -cb 2>/dev/null | awk '/total$/{s+=$1} END{print s}')"
}

# ---------------------------------------------------------------------------
# e. network namespace with ~20 ms RTT
# ---------------------------------------------------------------------------
NS_OK=""
netns_setup() {
  local ns=hmbench$$ veth=hmb$$a peer=hmb$$b
  command -v ip >/dev/null || { echo "iproute2 (ip) not installed"; return 1; }
  command -v tc >/dev/null || { echo "tc not installed"; return 1; }
  ip netns add "$ns" 2>&1 || { echo "cannot create a network namespace (ip netns add failed)"; return 1; }
  NETNS=$ns
  ip link add "$veth" type veth peer name "$peer" 2>&1 || { echo "cannot create a veth pair"; return 1; }
  VETH=$veth
  ip link set "$peer" netns "$ns" || { echo "cannot move veth into the namespace"; return 1; }
  ip addr add 10.213.0.1/30 dev "$veth" && ip link set "$veth" up || { echo "cannot configure veth"; return 1; }
  ip netns exec "$ns" ip addr add 10.213.0.2/30 dev "$peer" && ip netns exec "$ns" ip link set "$peer" up &&
    ip netns exec "$ns" ip link set lo up || { echo "cannot configure the namespace side"; return 1; }
  tc qdisc add dev "$veth" root netem delay 10ms 2>&1 || { echo "netem not available (tc qdisc add netem failed)"; return 1; }
  ip netns exec "$ns" tc qdisc add dev "$peer" root netem delay 10ms 2>&1 || { echo "netem not available in the namespace"; return 1; }
  local rtt
  rtt=$(ip netns exec "$ns" ping -c 3 -q 10.213.0.1 2>/dev/null | awk -F/ '/rtt|round-trip/{print $5}')
  echo "netns $ns up, ping rtt avg ${rtt:-?} ms" | raw
  NS_OK=1
  return 0
}

# ---------------------------------------------------------------------------
# 3. per scale
# ---------------------------------------------------------------------------
for SCALE in $SCALES; do
  log "=== scale $SCALE"
  UP=$WORK/upstream-$SCALE
  if [ "${REUSE_UPSTREAM:-0}" = 1 ] && [ -f "$UP/names" ]; then
    log "reusing the upstream in $UP (REUSE_UPSTREAM=1)"
  else
    rm -rf "$UP"
    read -r w c rss rc < <(timed "$WORK/gen-$SCALE" timeout 3600 "$GEN" --scale "$SCALE" --out "$UP" --key "$UPKEY" --repo hexpm --seed "$SEED")
    cat "$WORK/gen-$SCALE.stderr" | raw
    [ "$rc" = 0 ] || { log "generator failed"; exit 1; }
    record "$SCALE" gen wall_s gen_upstream "$w"
  fi
  LIST=$WORK/files-$SCALE.txt
  (cd "$UP" && { echo names; echo versions; find packages tarballs -type f | sort; }) >"$LIST"
  record "$SCALE" gen files upstream "$(wc -l <"$LIST")"
  record "$SCALE" gen bytes upstream "$(du -sb "$UP/" | cut -f1)"
  record "$SCALE" gen packages upstream "$(ls "$UP/packages" | wc -l)"
  record "$SCALE" gen releases upstream "$(ls "$UP/tarballs" | wc -l)"

  DATA=$WORK/data-full
  CONF=$(nginx_conf "main" 0 "127.0.0.1:$PORT_UP $UP" "127.0.0.1:$PORT_NG1 $DATA/current")
  start_nginx "$CONF" "127.0.0.1:$PORT_UP"
  MAIN_NGINX=$NGINX_PID

  # a. full sync on loopback
  if want full || want incremental || want resign || want serve; then
    log "full sync (loopback), $RUNS runs each: hexmirror, curl, aria2c"
    full_sync_round "$SCALE" full "http://127.0.0.1:$PORT_UP" "" "$LIST"
  fi

  # b. incremental
  HMCONF=$WORK/hm-full.toml
  if want incremental; then
    log "incremental: no change"
    timeout 600 "$HEXMIRROR" sync --config "$HMCONF" >"$WORK/nochange.out" 2>&1 || true
    read -r req _ < <(sync_summary "$WORK/nochange.out")
    cat "$WORK/nochange.out" | raw
    record "$SCALE" nochange requests hexmirror "$req"
    timeout 900 hyperfine -N --runs $((RUNS < 5 ? 5 : RUNS)) --warmup 1 --export-json "$WORK/nochange.json" \
      "$HEXMIRROR sync --config $HMCONF" 2>&1 | raw
    record "$SCALE" nochange wall_s hexmirror "$(grep -o '"median": *[0-9.e+-]*' "$WORK/nochange.json" | head -1 | awk '{printf "%.3f", $2}')"

    log "incremental: after --mutate $MUTATE (new packages each run)"
    mw=(); mr=()
    for r in $(seq "$RUNS"); do
      timeout 600 "$GEN" --out "$UP" --key "$UPKEY" --repo hexpm --seed "$SEED" --mutate "$MUTATE" 2>&1 | raw
      read -r w c rss rc < <(timed "$WORK/mut-$r" timeout 1800 "$HEXMIRROR" sync --config "$HMCONF")
      read -r req bytes < <(sync_summary "$WORK/mut-$r.stdout")
      { echo "-- mutate run $r: wall=$w cpu=$c rss_kb=$rss rc=$rc"; cat "$WORK/mut-$r.stdout"; } | raw
      mw+=("$w"); mr+=("$req")
      record "$SCALE" mutate cpu_s hexmirror "$c"
    done
    record "$SCALE" mutate wall_s hexmirror "$(printf '%s\n' "${mw[@]}" | median)"
    record "$SCALE" mutate requests hexmirror "$(printf '%s\n' "${mr[@]}" | median)"
  fi

  # c. re-sign after a key change
  if [ "$RESIGN" = 1 ] && want resign; then
    KEYS=$WORK/keys
    if [ ! -f "$KEYS/k1/hexmirror.pem" ]; then
      log "generating two RSA-4096 signing keys"
      timeout 600 "$HEXMIRROR" keygen --out "$KEYS/k1" --bits 4096 >/dev/null 2>&1
      timeout 600 "$HEXMIRROR" keygen --out "$KEYS/k2" --bits 4096 >/dev/null 2>&1
    fi
    resign_conf() {
      hm_config "$WORK/hm-resign.toml" "$DATA" "http://127.0.0.1:$PORT_UP" "[signing]
key = \"$KEYS/$1/hexmirror.pem\"
manifest_key = \"$KEYS/k1/manifest.pem\"
[[repository]]
name = \"hexpm\""
    }
    log "re-sign: first signing with k1, then $RUNS key switches"
    resign_conf k1
    read -r w c rss rc < <(timed "$WORK/resign-0" timeout 1800 "$HEXMIRROR" sync --config "$WORK/hm-resign.toml")
    { echo "-- resign initial (k1): wall=$w cpu=$c rc=$rc"; cat "$WORK/resign-0.stdout"; } | raw
    rw=(); rcpu=()
    for r in $(seq "$RUNS"); do
      if [ $((r % 2)) = 1 ]; then resign_conf k2; else resign_conf k1; fi
      read -r w c rss rc < <(timed "$WORK/resign-$r" timeout 1800 "$HEXMIRROR" sync --config "$WORK/hm-resign.toml")
      { echo "-- resign run $r: wall=$w cpu=$c rc=$rc"; cat "$WORK/resign-$r.stdout"; } | raw
      rw+=("$w"); rcpu+=("$c")
    done
    record "$SCALE" resign wall_s hexmirror "$(printf '%s\n' "${rw[@]}" | median)"
    record "$SCALE" resign cpu_s hexmirror "$(printf '%s\n' "${rcpu[@]}" | median)"
    record "$SCALE" resign records hexmirror "$(ls "$DATA/current/repos/hexpm/packages" 2>/dev/null | wc -l)"
  fi

  # d. serving (on the last scale), pinned: for each C in SERVE_CORES, the
  # server on cores 0..C-1 (hexmirror serve; nginx with C workers, or one
  # process without a master at C=1) and wrk on the other cores, so the load
  # generator never starves the server. Both servers serve DATA_DIR/current;
  # they alternate within each run so that both see the same noise.
  if [ "$SERVE" = 1 ] && want serve && [ "$SCALE" = "$SERVE_SCALE" ]; then
    CUR=$DATA/current
    SMALL=$(cd "$CUR" && ls -l packages | awk 'NR>1{print $5, $9}' | sort -n | awk '{a[NR]=$2} END{print a[int(NR/2)+1]}')
    MID=$(cd "$CUR" && ls -l tarballs | awk 'NR>1{print $5, $9}' | sort -n | awk '{a[NR]=$2} END{print a[int(NR*0.75)+1]}')
    SMALL_SIZE=$(stat -L -c %s "$CUR/packages/$SMALL"); MID_SIZE=$(stat -L -c %s "$CUR/tarballs/$MID")
    echo "small: /packages/$SMALL ($SMALL_SIZE bytes); mid: /tarballs/$MID ($MID_SIZE bytes)" | raw
    record "$SCALE" serve small_bytes file "$SMALL_SIZE"
    record "$SCALE" serve mid_bytes file "$MID_SIZE"
    # cpu_ticks PID -> user+system clock ticks of PID (all its threads) and
    # its child processes (nginx's workers)
    cpu_ticks() {
      local p t=0
      for p in "$1" $(pgrep -P "$1"); do
        t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)))
      done
      echo "$t"
    }
    HZ=$(getconf CLK_TCK)
    # wrk_one PORT PATH CONNS WRK_CPUS SERVER_PID ->
    #   "rps p50_ms p99_ms errors server_cpu_s_per_million_requests"
    wrk_one() {
      local t out before after
      t=$(taskset -c "$4" nproc)
      [ "$3" -lt "$t" ] && t=$3
      before=$(cpu_ticks "$5")
      out=$(timeout $((WRK_SECS + 30)) taskset -c "$4" wrk -t"$t" -c"$3" -d"${WRK_SECS}s" --latency "http://127.0.0.1:$1$2" 2>&1)
      after=$(cpu_ticks "$5")
      echo "$out" | raw
      echo "server CPU: $(( after - before )) ticks at $HZ Hz" | raw
      awk -v ticks=$(( after - before )) -v hz="$HZ" '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /m$/) return v*60000; if (v ~ /s$/) return v*1000; return v }
        /Requests\/sec/ {rps=$2}
        / requests in / {n=$1}
        /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)}
        /Non-2xx|Socket errors/ {err=err $0 ";"}
        END {printf "%s %s %s %s %s\n", rps, p50, p99, (err==""?"none":"yes"), (n > 0 ? sprintf("%.2f", ticks / hz / n * 1e6) : "")}' <<<"$out"
    }
    for cores in $SERVE_CORES; do
      [ "$cores" -lt "$NPROC" ] || { log "skipped: serving on $cores cores needs more than $NPROC"; continue; }
      SRV_CPUS="0-$((cores - 1))"; WRK_CPUS="$cores-$((NPROC - 1))"
      log "serving on cores $SRV_CPUS, wrk on cores $WRK_CPUS: hexmirror serve and nginx ($cores worker(s))"
      CONFN=$(nginx_conf "serve-$cores" "$cores" "127.0.0.1:$PORT_NG2 $CUR")
      taskset -c "$SRV_CPUS" "$NGINX" -p "$(dirname "$CONFN")" -c "$CONFN" -e stderr >>"$RAW" 2>&1 &
      NG_PID=$!
      PIDS+=("$NG_PID")
      taskset -c "$SRV_CPUS" "$HEXMIRROR" serve --config "$HMCONF" >>"$RAW" 2>&1 &
      SERVE_PID=$!
      PIDS+=("$SERVE_PID")
      for port in $PORT_HM $PORT_NG2; do
        for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/names" && break; sleep 0.1; done
      done
      for kind in small mid; do
        if [ $kind = small ]; then path=/packages/$SMALL; else path=/tarballs/$MID; fi
        for conns in $WRK_CONNS; do
          declare -A rps=() p50=() p99=() cpu=()
          for r in $(seq "$RUNS"); do
            for target in hexmirror nginx; do
              port=$PORT_HM; pid=$SERVE_PID
              [ $target = nginx ] && { port=$PORT_NG2; pid=$NG_PID; }
              echo "-- wrk $target $kind c=$conns cores=$cores run $r" | raw
              read -r a b c e m < <(wrk_one "$port" "$path" "$conns" "$WRK_CPUS" "$pid")
              [ "$e" = none ] || log "WARNING: wrk reported errors for $target $kind c=$conns cores=$cores"
              rps[$target]+="$a "; p50[$target]+="$b "; p99[$target]+="$c "; cpu[$target]+="$m "
            done
          done
          for target in hexmirror nginx; do
            sec="serve-$kind-c$conns-s$cores"
            record "$SCALE" "$sec" rps "$target" "$(printf '%s\n' ${rps[$target]} | median)"
            record "$SCALE" "$sec" p50_ms "$target" "$(printf '%s\n' ${p50[$target]} | median)"
            record "$SCALE" "$sec" p99_ms "$target" "$(printf '%s\n' ${p99[$target]} | median)"
            record "$SCALE" "$sec" cpu_s_per_mreq "$target" "$(printf '%s\n' ${cpu[$target]} | median)"
          done
        done
      done
      rss=$(awk '/VmRSS/{print $2}' /proc/$SERVE_PID/status)
      hwm=$(awk '/VmHWM/{print $2}' /proc/$SERVE_PID/status)
      record "$SCALE" "serve-s$cores" rss_mb hexmirror "$(awk -v k="$rss" 'BEGIN{printf "%.1f", k/1024}')"
      record "$SCALE" "serve-s$cores" hwm_mb hexmirror "$(awk -v k="$hwm" 'BEGIN{printf "%.1f", k/1024}')"
      ngrss=$(for p in $NG_PID $(pgrep -P "$NG_PID"); do awk '/VmRSS/{print $2}' /proc/$p/status; done | awk '{s+=$1} END{printf "%.1f", s/1024}')
      record "$SCALE" "serve-s$cores" rss_mb nginx "$ngrss"
      stop_pid "$SERVE_PID"
      stop_pid "$NG_PID"
    done
  fi

  # e. netem run
  if [ "$NETEM" = 1 ] && want netem && [ "$SCALE" = "$NETEM_SCALE" ]; then
    log "network namespace with ~20 ms RTT"
    if netns_setup >"$WORK/netns.log" 2>&1; then
      raw <"$WORK/netns.log"
      CONF3=$(nginx_conf "netem" 0 "10.213.0.1:$PORT_NET $UP")
      if start_nginx "$CONF3" "10.213.0.1:$PORT_NET"; then
        NET_NGINX=$NGINX_PID
        # The upstream changed (mutations): refresh the file list.
        (cd "$UP" && { echo names; echo versions; find packages tarballs -type f | sort; }) >"$LIST"
        full_sync_round "$SCALE" netem "http://10.213.0.1:$PORT_NET" "ip netns exec $NETNS" "$LIST"
        stop_pid "$NET_NGINX"
      else
        log "skipped: netem run: nginx would not listen on the veth address"
        record "$SCALE" netem skipped reason "nginx_on_veth"
      fi
    else
      reason=$(tail -1 "$WORK/netns.log")
      log "netem unavailable ($reason): using bench/delay_proxy.rs, 10 ms each way, on loopback"
      echo "netem unavailable: $reason; userspace delay proxy instead" | raw
      record "$SCALE" netem method delay_proxy "\"$reason\""
      "$DELAY_PROXY" "127.0.0.1:$PORT_NET" "127.0.0.1:$PORT_UP" 10 >"$WORK/delay-proxy.out" 2>&1 &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      for _ in $(seq 50); do grep -q '^listening' "$WORK/delay-proxy.out" 2>/dev/null && break; sleep 0.1; done
      rtt=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$PORT_NET/names")
      echo "delay proxy up; one fresh-connection GET /names took ${rtt}s (handshake + request round trips)" | raw
      (cd "$UP" && { echo names; echo versions; find packages tarballs -type f | sort; }) >"$LIST"
      full_sync_round "$SCALE" netem "http://127.0.0.1:$PORT_NET" "" "$LIST"
      stop_pid "$PROXY_PID"
    fi
    [ -n "$VETH" ] && ip link del "$VETH" 2>/dev/null; VETH=""
    [ -n "$NETNS" ] && ip netns del "$NETNS" 2>/dev/null; NETNS=""
  fi

  # f. publish-to-visible latency (on the last scale, or PUBLISH_SCALES)
  if [ "$PUBLISH" = 1 ] && want publish && [[ " $PUBLISH_SCALES " == *" $SCALE "* ]]; then
    log "publish: signed repository hexpm (the whole index), $PUBLISH_N publishes"
    PDATA=$WORK/data-publish
    PCONF=$WORK/hm-publish.toml
    rm -rf "$PDATA"
    HM_LISTEN=127.0.0.1:0 hm_config "$PCONF" "$PDATA" "http://127.0.0.1:$PORT_UP" "[signing]
key = \"$PUBLISH_KEY\"
[[repository]]
name = \"hexpm\"
reserved = [\"bench_*\"]
[api]
revert_window_secs = 3600
[log]
format = \"json\""
    bits=$(openssl pkey -in "$PUBLISH_KEY" -noout -text 2>/dev/null | sed -nE '1s/.*\(([0-9]+) bit.*/\1/p')
    echo "publish: signing key $PUBLISH_KEY (RSA-${bits:-?})" | raw
    record "$SCALE" publish key_bits rsa "${bits:-?}"
    read -r w c rss rc < <(timed "$WORK/pub-sync" timeout 1800 "$HEXMIRROR" sync --config "$PCONF")
    { echo "-- publish: initial sync wall=$w cpu=$c rc=$rc"; cat "$WORK/pub-sync.stdout"; tail -3 "$WORK/pub-sync.stderr"; } | raw
    [ "$rc" = 0 ] || { log "publish: the initial sync failed (rc=$rc); see $RAW"; exit 1; }
    record "$SCALE" publish sync_wall_s hexmirror "$w"
    TOKEN=$(timeout 60 "$HEXMIRROR" token create --admin --config "$PCONF" 2>>"$RAW")
    [ -n "$TOKEN" ] || { log "publish: no token"; exit 1; }
    # Tarballs, outside the timing (hex_core, as rebar3 builds them).
    PTAR=$WORK/publish-tarballs
    rm -rf "$PTAR"; mkdir -p "$PTAR"
    seq "$PUBLISH_N" | timeout 900 xargs -P "$(nproc)" -I{} \
      escript "$HEXCORE" tarball "bench_p{}" 1.0.0 "$PTAR/bench_p{}.tar" >>"$RAW" 2>&1
    [ "$(ls "$PTAR" | wc -l)" = "$PUBLISH_N" ] || { log "publish: hexcore.escript built $(ls "$PTAR" | wc -l) of $PUBLISH_N tarballs"; exit 1; }
    "$HEXMIRROR" serve --config "$PCONF" >"$WORK/pub-serve.out" 2>"$WORK/pub-serve.err" &
    PUB_PID=$!
    PIDS+=("$PUB_PID")
    PADDR=""
    for _ in $(seq 300); do
      PADDR=$(sed -nE '1s#^hexmirror serving .* on http://([^ ]+)$#\1#p' "$WORK/pub-serve.out")
      [ -n "$PADDR" ] && curl -s -o /dev/null "http://$PADDR/repos/hexpm/names" && break
      kill -0 "$PUB_PID" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$PADDR" ] || { log "publish: hexmirror serve did not start"; cat "$WORK/pub-serve.err" | raw; exit 1; }
    echo "publish: hexmirror serve on $PADDR" | raw
    # serve decodes the index in the background at start; a publish before
    # that finishes decodes it itself. Time the steady state, and say how long
    # the warm-up took.
    for _ in $(seq 300); do
      grep -q '"index decoded for hosted changes"' "$WORK/pub-serve.err" && break
      sleep 0.1
    done
    echo "publish: warm-up: $(grep -o '"index decoded for hosted changes","ms":[0-9]*' "$WORK/pub-serve.err" | head -1)" | raw
    PERF_PID=""
    if [ "${PUBLISH_PERF:-0}" = 1 ] && command -v perf >/dev/null; then
      # Where a publish spends its time (perturbs the latencies: a separate run).
      perf record -q -F 1999 -g -p "$PUB_PID" -o "$WORK/pub-perf.data" >>"$RAW" 2>&1 &
      PERF_PID=$!
      PIDS+=("$PERF_PID")
      sleep 1
    fi
    vis=(); post=(); bad=0
    ticks0=$(awk '{print $14 + $15}' "/proc/$PUB_PID/stat")
    for i in $(seq "$PUBLISH_N"); do
      name=bench_p$i
      # One curl, one connection: the POST, then the GET of the record.
      t0=$EPOCHREALTIME
      out=$(timeout 120 curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST \
        -H "authorization: $TOKEN" -H "content-type: application/octet-stream" \
        --data-binary "@$PTAR/$name.tar" "http://$PADDR/api/repos/hexpm/publish" \
        --next -s -o /dev/null -w '%{http_code}\n' "http://$PADDR/repos/hexpm/packages/$name") || true
      polls=1
      got=$(sed -n 2p <<<"$out")
      while [ "$got" != 200 ] && [ $polls -lt 3000 ]; do
        got=$(timeout 10 curl -s -o /dev/null -w '%{http_code}' "http://$PADDR/repos/hexpm/packages/$name") || true
        polls=$((polls + 1))
      done
      t1=$EPOCHREALTIME
      read -r code ptime <<<"$(sed -n 1p <<<"$out")"
      ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)*1000}')
      echo "-- publish $name: post=$code post_ms=$(awk -v t="$ptime" 'BEGIN{printf "%.1f", t*1000}') get=$got polls=$polls visible_ms=$ms" | raw
      if [ "$code" != 201 ] || [ "$got" != 200 ]; then bad=$((bad + 1)); continue; fi
      vis+=("$ms"); post+=("$(awk -v t="$ptime" 'BEGIN{printf "%.1f", t*1000}')")
    done
    ticks1=$(awk '{print $14 + $15}' "/proc/$PUB_PID/stat")
    [ "$bad" = 0 ] || log "WARNING: publish: $bad of $PUBLISH_N publishes did not answer 201 or never became visible"
    if [ -n "$PERF_PID" ]; then
      kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null || true
      { echo "== perf: hexmirror serve during the publishes (self time, then inclusive)"
        perf report -i "$WORK/pub-perf.data" --no-children --stdio -g none --sort dso,sym --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep -v '^$'
        perf report -i "$WORK/pub-perf.data" --children --stdio -g none --sort sym --percent-limit 2 2>/dev/null | grep -v '^#' | grep -v '^$'
      } | raw
    fi
    srv=$(grep '"hosted package changed"' "$WORK/pub-serve.err" | grep -o '"publish_ms":[0-9]*' | cut -d: -f2)
    echo "publish: server publish_ms: $(echo $srv)" | raw
    record "$SCALE" publish samples client "${#vis[@]}"
    record "$SCALE" publish visible_p50_ms client "$(printf '%s\n' "${vis[@]}" | median)"
    record "$SCALE" publish visible_p99_ms client "$(printf '%s\n' "${vis[@]}" | pct 99)"
    record "$SCALE" publish visible_max_ms client "$(printf '%s\n' "${vis[@]}" | sort -g | tail -1)"
    record "$SCALE" publish post_p50_ms client "$(printf '%s\n' "${post[@]}" | median)"
    record "$SCALE" publish samples server "$(wc -w <<<"$srv")"
    record "$SCALE" publish publish_p50_ms server "$(tr ' ' '\n' <<<"$srv" | median)"
    record "$SCALE" publish publish_p99_ms server "$(tr ' ' '\n' <<<"$srv" | pct 99)"
    # CPU (user+sys) of the serve process across the loop, per publish (includes the GETs).
    record "$SCALE" publish cpu_ms_per_publish server "$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$(getconf CLK_TCK)" -v n="$PUBLISH_N" 'BEGIN{printf "%.0f", (b-a)*1000/hz/n}')"
    record "$SCALE" publish generations_on_disk server "$(ls "$PDATA/generations" | wc -l)"
    # What a publish rebuilds: every file of the generation, and the index it grew.
    MANI=$PDATA/current/hexmirror-manifest.json
    record "$SCALE" publish files generation "$(jq '.signed.files | length' "$MANI")"
    record "$SCALE" publish files repos "$(jq '[.signed.files | keys[] | select(startswith("repos/"))] | length' "$MANI")"
    record "$SCALE" publish manifest_bytes generation "$(stat -L -c %s "$MANI")"
    curl -s -o "$WORK/pub-names" "http://$PADDR/repos/hexpm/names"
    curl -s -o "$WORK/pub-key.pem" "http://$PADDR/repos/hexpm/public_key"
    echo "publish: hex_core verify-file /repos/hexpm/names: $(timeout 60 escript "$HEXCORE" verify-file "$WORK/pub-names" names hexpm "$WORK/pub-key.pem" 2>&1)" | raw
    echo "publish: hex_core fetch bench_p1: $(timeout 60 escript "$HEXCORE" fetch "http://$PADDR/repos/hexpm" hexpm "$WORK/pub-key.pem" bench_p1 2>&1)" | raw
    # Packages in /names: gunzip, Signed.payload (field 1), Names.packages (field 1).
    record "$SCALE" publish names_packages repos "$(python3 - "$WORK/pub-names" <<'PY'
import gzip, sys
def fields(b):
    i = 0
    while i < len(b):
        key = 0; s = 0
        while True:
            c = b[i]; i += 1; key |= (c & 0x7f) << s; s += 7
            if c < 0x80: break
        n, wt = key >> 3, key & 7
        if wt == 0:
            while b[i] & 0x80: i += 1
            i += 1; v = None
        elif wt == 2:
            ln = 0; s = 0
            while True:
                c = b[i]; i += 1; ln |= (c & 0x7f) << s; s += 7
                if c < 0x80: break
            v = b[i:i + ln]; i += ln
        else:
            raise SystemExit("unexpected wire type %d" % wt)
        yield n, v
signed = gzip.decompress(open(sys.argv[1], "rb").read())
payload = next(v for n, v in fields(signed) if n == 1)
print(sum(1 for n, _ in fields(payload) if n == 1))
PY
)"
    stop_pid "$PUB_PID"
    rm -rf "$PDATA" "$PTAR"
  fi

  stop_pid "$MAIN_NGINX"
  rm -rf "$WORK/data-full" "$WORK/data-netem" "$WORK/dl-curl"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$UP"
done

# ---------------------------------------------------------------------------
# 4. tables
# ---------------------------------------------------------------------------
report() {
  awk -F'\t' -v nproc="$(nproc)" -v conns="$WRK_CONNS" -v runs="$RUNS" -v par="$PAR" -v score="$SERVE_CORES" '
    { v[$1 SUBSEP $2 SUBSEP $3 SUBSEP $4] = $5; if (!($1 in seen)) { seen[$1]=1; order[++ns]=$1 } }
    function g(s, sec, m, t,   key) { key = s SUBSEP sec SUBSEP m SUBSEP t; return (key in v) ? v[key] : "" }
    function r(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "–" : sprintf("%.2f×", a / b) }
    function mb(x) { return x == "" ? "–" : sprintf("%.0f", x / 1e6) }
    function f1(x) { return x == "" ? "–" : sprintf("%.1f", x) }
    function f2(x) { return x == "" ? "–" : sprintf("%.2f", x) }
    function minp(a, b) { return (a == "") ? b : (b == "" ? a : (a + 0 < b + 0 ? a : b)) }
    function sync_table(sec, title,   i, s, hw, cw, aw, best) {
      any = 0
      for (i = 1; i <= ns; i++) if (g(order[i], sec, "wall_s", "hexmirror") != "") any = 1
      if (!any) return
      printf "\n### %s (median of %s runs, PAR=%s)\n\n", title, runs, par
      print "| scale | hexmirror wall s | curl wall s | aria2c wall s | hexmirror / faster peer | CPU s hexmirror / curl / aria2c | hexmirror peak RSS MB | requests hexmirror / peers | MB hexmirror / peers |"
      print "|---|---|---|---|---|---|---|---|---|"
      for (i = 1; i <= ns; i++) {
        s = order[i]; hw = g(s, sec, "wall_s", "hexmirror"); if (hw == "") continue
        cw = g(s, sec, "wall_s", "curl"); aw = g(s, sec, "wall_s", "aria2c"); best = minp(cw, aw)
        printf "| %s | %s | %s | %s | **%s** | %s / %s / %s | %s | %s / %s | %s / %s |\n", s, f2(hw), f2(cw), f2(aw), r(hw, best),
          f1(g(s, sec, "cpu_s", "hexmirror")), f1(g(s, sec, "cpu_s", "curl")), f1(g(s, sec, "cpu_s", "aria2c")),
          g(s, sec, "peak_rss_mb", "hexmirror"), g(s, sec, "requests", "hexmirror"), g(s, sec, "requests", "peers"),
          mb(g(s, sec, "bytes", "hexmirror")), mb(g(s, sec, "bytes", "peers"))
      }
    }
    END {
      print "### Generated upstreams\n"
      print "| scale | packages | releases | files | MB | generation s |"
      print "|---|---|---|---|---|---|"
      for (i = 1; i <= ns; i++) { s = order[i]
        printf "| %s | %s | %s | %s | %s | %s |\n", s, g(s,"gen","packages","upstream"), g(s,"gen","releases","upstream"),
          g(s,"gen","files","upstream"), mb(g(s,"gen","bytes","upstream")), f1(g(s,"gen","wall_s","gen_upstream")) }
      sync_table("full", "Full sync, loopback")
      sync_table("netem", "Full sync across a network namespace, ~20 ms RTT")
      for (i = 1; i <= ns; i++) if (g(order[i], "netem", "skipped", "reason") != "")
        printf "\nnetem run at scale %s skipped: %s\n", order[i], g(order[i], "netem", "skipped", "reason")
      any = 0
      for (i = 1; i <= ns; i++) if (g(order[i], "nochange", "requests", "hexmirror") != "" || g(order[i], "resign", "wall_s", "hexmirror") != "") any = 1
      if (any) {
      print "\n### Incremental sync and re-sign (hexmirror)\n"
      print "| scale | no change: wall s | no change: requests | 1% changed: wall s | 1% changed: requests | re-sign after key change: wall s | re-sign CPU s | records re-signed |"
      print "|---|---|---|---|---|---|---|---|"
      for (i = 1; i <= ns; i++) { s = order[i]
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", s, f2(g(s,"nochange","wall_s","hexmirror")), g(s,"nochange","requests","hexmirror"),
          f2(g(s,"mutate","wall_s","hexmirror")), g(s,"mutate","requests","hexmirror"),
          f2(g(s,"resign","wall_s","hexmirror")), f1(g(s,"resign","cpu_s","hexmirror")), g(s,"resign","records","hexmirror") }
      }
      any = 0
      for (i = 1; i <= ns; i++) if (g(order[i], "publish", "samples", "client") != "") any = 1
      if (any) {
        print "\n### Publish-to-visible latency (one publish at a time; p99 is nearest rank, the maximum up to 100 samples)\n"
        print "| scale | RSA bits | files in generation (of which repos/) | packages in /repos/hexpm/names | publishes | **visible p50 ms** | **visible p99 ms** | POST p50 ms | server publish_ms p50 / p99 | server CPU ms per publish | links/s (files / server p50) | p99 / 100 ms target |"
        print "|---|---|---|---|---|---|---|---|---|---|---|---|"
        for (i = 1; i <= ns; i++) { s = order[i]; n = g(s, "publish", "samples", "client"); if (n == "") continue
          fl = g(s, "publish", "files", "generation"); sp = g(s, "publish", "publish_p50_ms", "server"); p99 = g(s, "publish", "visible_p99_ms", "client")
          printf "| %s | %s | %s (%s) | %s | %s | **%s** | **%s** | %s | %s / %s | %s | %s | **%s** |\n", s, g(s, "publish", "key_bits", "rsa"),
            fl, g(s, "publish", "files", "repos"), g(s, "publish", "names_packages", "repos"), n,
            f1(g(s, "publish", "visible_p50_ms", "client")), f1(p99), f1(g(s, "publish", "post_p50_ms", "client")),
            sp, g(s, "publish", "publish_p99_ms", "server"), g(s, "publish", "cpu_ms_per_publish", "server"), (sp + 0 > 0 ? sprintf("%.0f", fl / (sp / 1000)) : "–"), r(p99, 100) }
      }
      nc = split(conns, cs, " ")
      nk = split(score, ks2, " ")
      for (i = 1; i <= ns; i++) { s = order[i]
        if (g(s, "serve", "small_bytes", "file") == "") continue
        printf "\n### Serving at scale %s (pinned: server on cores 0..C-1, wrk on the others; median of %s runs; small = /packages/NAME, %s bytes; mid = a tarball, %s bytes)\n\n", s, runs,
          g(s, "serve", "small_bytes", "file"), g(s, "serve", "mid_bytes", "file")
        print "| server cores | file | conns | req/s hexmirror | req/s nginx | **hexmirror / nginx** | p50 ms hm / nginx | p99 ms hm / nginx | server CPU-s per million requests hm / nginx |"
        print "|---|---|---|---|---|---|---|---|---|"
        split("small mid", ks, " ")
        for (q = 1; q <= nk; q++) for (k = 1; k <= 2; k++) for (c = 1; c <= nc; c++) {
          sec = "serve-" ks[k] "-c" cs[c] "-s" ks2[q]
          h = g(s, sec, "rps", "hexmirror"); n1 = g(s, sec, "rps", "nginx")
          if (h == "") continue
          printf "| %s | %s | %s | %.0f | %.0f | **%s** | %s / %s | %s / %s | %s / %s |\n", ks2[q], ks[k], cs[c], h, n1, r(h, n1),
            f2(g(s,sec,"p50_ms","hexmirror")), f2(g(s,sec,"p50_ms","nginx")), f2(g(s,sec,"p99_ms","hexmirror")), f2(g(s,sec,"p99_ms","nginx")),
            g(s,sec,"cpu_s_per_mreq","hexmirror"), g(s,sec,"cpu_s_per_mreq","nginx")
        }
        if (nk > 1) {
          lo = ks2[1]; hi = ks2[nk]
          printf "\nScaling from %s to %s server cores (req/s ratio):\n\n| file | conns | hexmirror | nginx |\n|---|---|---|---|\n", lo, hi
          for (k = 1; k <= 2; k++) for (c = 1; c <= nc; c++) {
            a = "serve-" ks[k] "-c" cs[c] "-s"
            printf "| %s | %s | %s | %s |\n", ks[k], cs[c], r(g(s, a hi, "rps", "hexmirror"), g(s, a lo, "rps", "hexmirror")), r(g(s, a hi, "rps", "nginx"), g(s, a lo, "rps", "nginx"))
          }
        }
        for (q = 1; q <= nk; q++)
          printf "\nRSS under load on %s core(s) (end of the last wrk run): hexmirror serve %s MB (peak %s MB); nginx %s MB.\n", ks2[q],
            g(s,"serve-s" ks2[q],"rss_mb","hexmirror"), g(s,"serve-s" ks2[q],"hwm_mb","hexmirror"), g(s,"serve-s" ks2[q],"rss_mb","nginx")
      }
    }' "$TSV"
}
report >"$MD"
cat "$MD"
{ echo; echo "== tables"; cat "$MD"; } >>"$RAW"
cp "$TSV" "$ROOT/bench/results/$STAMP.tsv"
log "raw results: $RAW; tables: $MD"
