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
#   4. Writes the raw output to bench/results/<timestamp>.txt, the Markdown
#      tables to bench/results/<timestamp>.md and stdout, and the medians as
#      bench/results/<timestamp>.tsv (scale, section, metric, tool, value).
#
# Knobs (environment): SCALES (default 0.02), RUNS (3), PAR (8: curl batches,
# aria2 -j, hexmirror concurrency), WRK_SECS (4), WRK_CONNS ("1 64 512"),
# NETEM (1; 0 to skip), NETEM_SCALE (first of SCALES), RESIGN (1), SERVE (1),
# MUTATE (0.01), WORK (scratch dir, default /tmp/hexmirror-bench; needs about
# 4x the upstream size, ~10 GB per 1.0 of scale), PORT_BASE (18400), SEED (42),
# KEEP (0; 1 keeps the generated upstreams in WORK).
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

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HEXMIRROR=$ROOT/target/release/hexmirror
GEN=$ROOT/target/release/examples/gen_upstream
UPKEY=$ROOT/tests/fixtures/keys/upstream.pem
UPPUB=$ROOT/tests/fixtures/keys/upstream.pub.pem
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$ROOT/bench/results" "$WORK"
RAW=$ROOT/bench/results/$STAMP.txt
MD=$ROOT/bench/results/$STAMP.md
TSV=$WORK/results-$STAMP.tsv
: >"$RAW"
: >"$TSV"

PORT_UP=$PORT_BASE            # nginx: the upstream
PORT_NG1=$((PORT_BASE + 1))   # nginx (single process): DATA_DIR/current
PORT_NG2=$((PORT_BASE + 2))   # nginx (one worker per core): DATA_DIR/current
PORT_HM=$((PORT_BASE + 3))    # hexmirror serve
PORT_NET=$((PORT_BASE + 4))   # nginx on the veth address (netem run)

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$RAW" >&2; }
raw() { tee -a "$RAW" >/dev/null; }
# record SCALE SECTION METRIC TOOL VALUE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TSV"; echo "result $*" >>"$RAW"; }
median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
now() { date +%s.%N; }

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
command -v aria2c >/dev/null || need+=(aria2)
command -v hyperfine >/dev/null || need+=(hyperfine)
[ -x /usr/bin/time ] || need+=(time)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get install -y -q "${need[@]}" >>"$RAW" 2>&1 ||
    { timeout 300 apt-get update -q >>"$RAW" 2>&1 && timeout 600 apt-get install -y -q "${need[@]}" >>"$RAW" 2>&1; }
fi
NGINX=$(command -v nginx)

log "building (release)"
(cd "$ROOT" && timeout 1800 cargo build --release --example gen_upstream --bin hexmirror) 2>&1 | tail -3 | raw

{
  echo "== machine"
  echo "date: $(date -u)"
  echo "nproc: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo
  grep MemTotal /proc/meminfo
  echo "kernel: $(uname -r)"
  echo "nginx: $($NGINX -v 2>&1)"
  echo "curl: $(curl --version | head -1)"
  echo "aria2: $(aria2c --version | head -1)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "hyperfine: $(hyperfine --version)"
  echo "hexmirror: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty')"
  echo "rustc: $(rustc --version)"
  echo "config: SCALES='$SCALES' RUNS=$RUNS PAR=$PAR WRK_SECS=$WRK_SECS WRK_CONNS='$WRK_CONNS' NETEM=$NETEM MUTATE=$MUTATE"
  echo "load before start: $(cat /proc/loadavg)"
} | tee -a "$RAW" >&2

ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------
# nginx_conf NAME MULTI(0|1) "LISTEN ROOT" ...   -> writes $WORK/nginx-NAME.conf
nginx_conf() {
  local name=$1 multi=$2
  shift 2
  local prefix=$WORK/nginx-$name
  mkdir -p "$prefix/logs" "$prefix/tmp"
  local conf=$WORK/nginx-$name.conf
  {
    echo "daemon off;"
    if [ "$multi" = 1 ]; then
      [ "$(id -u)" = 0 ] && echo "user root;"
      echo "master_process on; worker_processes $(nproc);"
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
  /usr/bin/time -v -o "$out.time" "$@" >"$out.stdout" 2>"$out.stderr" || rc=$?
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
listen = "127.0.0.1:$PORT_HM"
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
    # aria2c
    rm -rf "$dl"; mkdir -p "$dl"
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
  rm -rf "$UP"
  read -r w c rss rc < <(timed "$WORK/gen-$SCALE" timeout 3600 "$GEN" --scale "$SCALE" --out "$UP" --key "$UPKEY" --repo hexpm --seed "$SEED")
  cat "$WORK/gen-$SCALE.stderr" | raw
  [ "$rc" = 0 ] || { log "generator failed"; exit 1; }
  record "$SCALE" gen wall_s gen_upstream "$w"
  LIST=$WORK/files-$SCALE.txt
  (cd "$UP" && { echo names; echo versions; find packages tarballs -type f | sort; }) >"$LIST"
  record "$SCALE" gen files upstream "$(wc -l <"$LIST")"
  record "$SCALE" gen bytes upstream "$(du -sb "$UP" | cut -f1)"
  record "$SCALE" gen packages upstream "$(ls "$UP/packages" | wc -l)"
  record "$SCALE" gen releases upstream "$(ls "$UP/tarballs" | wc -l)"

  DATA=$WORK/data-full
  CONF=$(nginx_conf "main" 0 "127.0.0.1:$PORT_UP $UP" "127.0.0.1:$PORT_NG1 $DATA/current")
  start_nginx "$CONF" "127.0.0.1:$PORT_UP"
  MAIN_NGINX=$NGINX_PID

  # a. full sync on loopback
  log "full sync (loopback), $RUNS runs each: hexmirror, curl, aria2c"
  full_sync_round "$SCALE" full "http://127.0.0.1:$PORT_UP" "" "$LIST"

  # b. incremental
  HMCONF=$WORK/hm-full.toml
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

  # c. re-sign after a key change
  if [ "$RESIGN" = 1 ]; then
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

  # d. serving (on the last scale)
  if [ "$SERVE" = 1 ] && [ "$SCALE" = "$SERVE_SCALE" ]; then
    log "serving: wrk against hexmirror serve, nginx (1 process), nginx ($(nproc) workers)"
    CUR=$DATA/current
    SMALL=$(cd "$CUR" && ls -l packages | awk 'NR>1{print $5, $9}' | sort -n | awk '{a[NR]=$2} END{print a[int(NR/2)+1]}')
    MID=$(cd "$CUR" && ls -l tarballs | awk 'NR>1{print $5, $9}' | sort -n | awk '{a[NR]=$2} END{print a[int(NR*0.75)+1]}')
    SMALL_SIZE=$(stat -L -c %s "$CUR/packages/$SMALL"); MID_SIZE=$(stat -L -c %s "$CUR/tarballs/$MID")
    echo "small: /packages/$SMALL ($SMALL_SIZE bytes); mid: /tarballs/$MID ($MID_SIZE bytes)" | raw
    record "$SCALE" serve small_bytes file "$SMALL_SIZE"
    record "$SCALE" serve mid_bytes file "$MID_SIZE"
    CONF2=$(nginx_conf "multi" 1 "127.0.0.1:$PORT_NG2 $CUR")
    start_nginx "$CONF2" "127.0.0.1:$PORT_NG2"
    MULTI_NGINX=$NGINX_PID
    "$HEXMIRROR" serve --config "$HMCONF" >>"$RAW" 2>&1 &
    SERVE_PID=$!
    PIDS+=("$SERVE_PID")
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT_HM/names" && break; sleep 0.1; done
    # wrk_one TARGET PORT PATH CONNS -> "rps p50_ms p99_ms errors"
    wrk_one() {
      local t=2 out
      [ "$4" -lt 2 ] && t=1
      out=$(timeout $((WRK_SECS + 30)) wrk -t"$t" -c"$4" -d"${WRK_SECS}s" --latency "http://127.0.0.1:$2$3" 2>&1)
      echo "$out" | raw
      awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /m$/) return v*60000; if (v ~ /s$/) return v*1000; return v }
        /Requests\/sec/ {rps=$2}
        /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)}
        /Non-2xx|Socket errors/ {err=err $0 ";"}
        END {printf "%s %s %s %s\n", rps, p50, p99, (err==""?"none":"yes")}' <<<"$out"
    }
    for kind in small mid; do
      if [ $kind = small ]; then path=/packages/$SMALL; else path=/tarballs/$MID; fi
      for conns in $WRK_CONNS; do
        for target in hexmirror nginx1 nginx${NPROC:=$(nproc)}; do
          case $target in hexmirror) port=$PORT_HM ;; nginx1) port=$PORT_NG1 ;; *) port=$PORT_NG2 ;; esac
          rps=(); p50=(); p99=()
          for r in $(seq "$RUNS"); do
            echo "-- wrk $target $kind c=$conns run $r" | raw
            read -r a b c e < <(wrk_one "$target" "$port" "$path" "$conns")
            [ "$e" = none ] || log "WARNING: wrk reported errors for $target $kind c=$conns"
            rps+=("$a"); p50+=("$b"); p99+=("$c")
          done
          record "$SCALE" "serve-$kind-c$conns" rps "$target" "$(printf '%s\n' "${rps[@]}" | median)"
          record "$SCALE" "serve-$kind-c$conns" p50_ms "$target" "$(printf '%s\n' "${p50[@]}" | median)"
          record "$SCALE" "serve-$kind-c$conns" p99_ms "$target" "$(printf '%s\n' "${p99[@]}" | median)"
        done
      done
    done
    rss=$(awk '/VmRSS/{print $2}' /proc/$SERVE_PID/status)
    hwm=$(awk '/VmHWM/{print $2}' /proc/$SERVE_PID/status)
    record "$SCALE" serve rss_mb hexmirror "$(awk -v k="$rss" 'BEGIN{printf "%.1f", k/1024}')"
    record "$SCALE" serve hwm_mb hexmirror "$(awk -v k="$hwm" 'BEGIN{printf "%.1f", k/1024}')"
    ngrss=$(for p in $MAIN_NGINX; do awk '/VmRSS/{print $2}' /proc/$p/status; done | awk '{s+=$1} END{printf "%.1f", s/1024}')
    record "$SCALE" serve rss_mb nginx1 "$ngrss"
    ngrss=$(for p in $MULTI_NGINX $(pgrep -P "$MULTI_NGINX"); do awk '/VmRSS/{print $2}' /proc/$p/status; done | awk '{s+=$1} END{printf "%.1f", s/1024}')
    record "$SCALE" serve rss_mb "nginx$NPROC" "$ngrss"
    stop_pid "$SERVE_PID"
    stop_pid "$MULTI_NGINX"
  fi

  # e. netem run
  if [ "$NETEM" = 1 ] && [ "$SCALE" = "$NETEM_SCALE" ]; then
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
      log "skipped: netem run: $reason"
      echo "skipped: $reason" | raw
      record "$SCALE" netem skipped reason "\"$reason\""
    fi
    [ -n "$VETH" ] && ip link del "$VETH" 2>/dev/null; VETH=""
    [ -n "$NETNS" ] && ip netns del "$NETNS" 2>/dev/null; NETNS=""
  fi

  stop_pid "$MAIN_NGINX"
  rm -rf "$WORK/data-full" "$WORK/data-netem" "$WORK/dl-curl"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$UP"
done

# ---------------------------------------------------------------------------
# 4. tables
# ---------------------------------------------------------------------------
report() {
  awk -F'\t' -v nproc="$(nproc)" -v conns="$WRK_CONNS" -v runs="$RUNS" -v par="$PAR" '
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
      print "\n### Incremental sync and re-sign (hexmirror)\n"
      print "| scale | no change: wall s | no change: requests | 1% changed: wall s | 1% changed: requests | re-sign after key change: wall s | re-sign CPU s | records re-signed |"
      print "|---|---|---|---|---|---|---|---|"
      for (i = 1; i <= ns; i++) { s = order[i]
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", s, f2(g(s,"nochange","wall_s","hexmirror")), g(s,"nochange","requests","hexmirror"),
          f2(g(s,"mutate","wall_s","hexmirror")), g(s,"mutate","requests","hexmirror"),
          f2(g(s,"resign","wall_s","hexmirror")), f1(g(s,"resign","cpu_s","hexmirror")), g(s,"resign","records","hexmirror") }
      nc = split(conns, cs, " ")
      for (i = 1; i <= ns; i++) { s = order[i]
        if (g(s, "serve", "small_bytes", "file") == "") continue
        printf "\n### Serving at scale %s (wrk -t2, median of %s runs; small = /packages/NAME, %s bytes; mid = a tarball, %s bytes)\n\n", s, runs,
          g(s, "serve", "small_bytes", "file"), g(s, "serve", "mid_bytes", "file")
        ng = "nginx" nproc
        printf "| file | conns | req/s hexmirror | req/s nginx (1 proc) | req/s nginx (%s workers) | hexmirror / nginx 1 proc | hexmirror / nginx %s | p50 ms hm / ng1 / ng%s | p99 ms hm / ng1 / ng%s |\n", nproc, nproc, nproc, nproc
        print "|---|---|---|---|---|---|---|---|---|"
        split("small mid", ks, " ")
        for (k = 1; k <= 2; k++) for (c = 1; c <= nc; c++) {
          sec = "serve-" ks[k] "-c" cs[c]
          h = g(s, sec, "rps", "hexmirror"); n1 = g(s, sec, "rps", "nginx1"); n2 = g(s, sec, "rps", ng)
          printf "| %s | %s | %.0f | %.0f | %.0f | **%s** | **%s** | %s / %s / %s | %s / %s / %s |\n", ks[k], cs[c], h, n1, n2, r(h, n1), r(h, n2),
            f2(g(s,sec,"p50_ms","hexmirror")), f2(g(s,sec,"p50_ms","nginx1")), f2(g(s,sec,"p50_ms",ng)),
            f2(g(s,sec,"p99_ms","hexmirror")), f2(g(s,sec,"p99_ms","nginx1")), f2(g(s,sec,"p99_ms",ng))
        }
        printf "\nRSS under load (end of the last wrk run): hexmirror serve %s MB (peak %s MB); nginx 1 proc %s MB; nginx %s workers + master %s MB.\n",
          g(s,"serve","rss_mb","hexmirror"), g(s,"serve","hwm_mb","hexmirror"), g(s,"serve","rss_mb","nginx1"), nproc, g(s,"serve","rss_mb",ng)
      }
    }' "$TSV"
}
report >"$MD"
cat "$MD"
{ echo; echo "== tables"; cat "$MD"; } >>"$RAW"
cp "$TSV" "$ROOT/bench/results/$STAMP.tsv"
log "raw results: $RAW; tables: $MD"
