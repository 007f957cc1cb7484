# Shared by bench/crash_loop.sh, load_under_change.sh, catalog.sh and bucket.sh (sourced, not
# run): a synthetic signed upstream served by nginx on loopback, a hexmirror
# config with a repository of ours that reserves PREFIX_*, and `serve`.
#
# Needs ROOT, WORK, SCALE, PORT and PROFILE (debug or release) set; sets BIN,
# GEN, CONF, and PIDS (killed on exit).

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HEXCORE=$ROOT/tests/support/hexcore.escript
if [ "$PROFILE" = release ]; then
  (cd "$ROOT" && cargo build --locked --release --example gen_upstream --bin hexmirror) >&2
else
  (cd "$ROOT" && cargo build --locked --example gen_upstream --bin hexmirror) >&2
fi
BIN=$ROOT/target/$PROFILE/hexmirror
GEN=$ROOT/target/$PROFILE/examples/gen_upstream
rm -rf "$WORK" && mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp" "$WORK/tarballs"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start_upstream: generates the upstream at SCALE and serves it on PORT.
start_upstream() {
  "$GEN" --scale "$SCALE" --out "$WORK/up" --key "$ROOT/tests/fixtures/keys/upstream.pem" >&2
  cat >"$WORK/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/nginx/tmp; proxy_temp_path $WORK/nginx/tmp;
  fastcgi_temp_path $WORK/nginx/tmp; uwsgi_temp_path $WORK/nginx/tmp; scgi_temp_path $WORK/nginx/tmp;
  server { listen 127.0.0.1:$PORT; root $WORK/up; location / { try_files \$uri =404; } } }
CONF
  "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf" -e stderr &
  PIDS+=($!)
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/names" && break; sleep 0.1; done
}

# mutate FRACTION: gives FRACTION of the upstream's packages a new release.
mutate() {
  "$GEN" --out "$WORK/up" --key "$ROOT/tests/fixtures/keys/upstream.pem" --mutate "$1" >/dev/null
}

# write_config PREFIX: the config, with repository `acme` reserving PREFIX_*.
write_config() {
  CONF=$WORK/hexmirror.toml
  cat >"$CONF" <<CONF
data_dir = "$WORK/data"
listen = "127.0.0.1:0"
[upstream]
url = "http://127.0.0.1:$PORT"
public_key = "$ROOT/tests/fixtures/keys/upstream.pub.pem"
[mirror]
concurrency = 8
[signing]
key = "$ROOT/tests/fixtures/keys/other.pem"
[[repository]]
name = "acme"
packages = []
reserved = ["$1_*"]
CONF
}

# build_tarballs PREFIX N: PREFIX_p1..N 1.0.0 in WORK/tarballs, by hex_core.
build_tarballs() {
  seq "$2" | xargs -P "$(nproc)" -I{} \
    escript "$HEXCORE" tarball "$1_p{}" 1.0.0 "$WORK/tarballs/$1_p{}.tar" >/dev/null
}

# settle: after a large delete, waits for dirty pages to reach the disk,
# then SETTLE_S seconds (30), so the next timed run starts from a quiet disk.
settle() {
  sync
  while awk '/^(Dirty|Writeback):/ {s += $2} END {exit !(s > 65536)}' /proc/meminfo; do sleep 1; done
  sleep "${SETTLE_S:-30}"
}

# start_serve: starts `serve`; sets SERVE (pid) and ADDR (host:port).
start_serve() {
  "$BIN" serve --config "$CONF" >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVE=$!
  wait_addr 100
}

# wait_addr TRIES: sets ADDR (host:port) from serve's first line, trying
# TRIES times 50 ms apart (empty if it never came).
wait_addr() {
  ADDR=""
  for _ in $(seq "$1"); do
    ADDR=$(sed -nE '1s#^hexmirror serving .* on http://([^ ]+)$#\1#p' "$WORK/serve.out")
    [ -n "$ADDR" ] && break
    sleep 0.05
  done
}

# start_serve_pinned [CONFIG]: `serve` (of CONFIG, else CONF) on core 0, for
# benchmarks that put their load generator on core 1; sets SERVE and ADDR,
# and stops the script if serve does not come up.
start_serve_pinned() {
  taskset -c 0 "$BIN" serve --config "${1:-$CONF}" >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVE=$!
  PIDS+=("$SERVE")
  wait_addr 200
  [ -n "$ADDR" ] || { echo "serve did not start" >&2; cat "$WORK/serve.err" >&2; exit 1; }
}

# publish N: posts WORK/tarballs/*_pN.tar to acme with TOKEN; prints the status.
publish() {
  curl -s -o /dev/null -w '%{http_code}\n' -X POST -H "authorization: $TOKEN" \
    -H "content-type: application/octet-stream" \
    --data-binary "@$(echo "$WORK"/tarballs/*_p"$1".tar)" "http://$ADDR/api/repos/acme/publish"
}
