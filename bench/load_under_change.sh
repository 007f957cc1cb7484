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
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HEXCORE=$ROOT/tests/support/hexcore.escript
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

(cd "$ROOT" && cargo build --locked --release --example gen_upstream --bin hexmirror) >&2
BIN=$ROOT/target/release/hexmirror
GEN=$ROOT/target/release/examples/gen_upstream
rm -rf "$WORK" && mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp" "$WORK/tarballs"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

"$GEN" --scale "$SCALE" --out "$WORK/up" --key "$ROOT/tests/fixtures/keys/upstream.pem" >&2
cat >"$WORK/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/nginx/tmp; proxy_temp_path $WORK/nginx/tmp;
  fastcgi_temp_path $WORK/nginx/tmp; uwsgi_temp_path $WORK/nginx/tmp; scgi_temp_path $WORK/nginx/tmp;
  server { listen 127.0.0.1:$PORT; root $WORK/up; location / { try_files \$uri =404; } } }
EOF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf" -e stderr &
PIDS+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/names" && break; sleep 0.1; done

CONF=$WORK/hexmirror.toml
cat >"$CONF" <<EOF
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
reserved = ["load_*"]
EOF
"$BIN" sync --config "$CONF" >/dev/null 2>&1
TOKEN=$("$BIN" token create --admin --config "$CONF" 2>/dev/null)
seq 40 | xargs -P "$(nproc)" -I{} escript "$HEXCORE" tarball "load_p{}" 1.0.0 "$WORK/tarballs/load_p{}.tar" >/dev/null
"$BIN" serve --config "$CONF" >"$WORK/serve.out" 2>"$WORK/serve.err" &
PIDS+=($!)
ADDR=""
for _ in $(seq 100); do
  ADDR=$(sed -nE '1s#^hexmirror serving .* on http://([^ ]+)$#\1#p' "$WORK/serve.out")
  [ -n "$ADDR" ] && break
  sleep 0.05
done
records=("$WORK"/data/current/packages/*) tarballs=("$WORK"/data/current/tarballs/*)
RECORD=$(basename "${records[0]}") TARBALL=$(basename "${tarballs[0]}")

# The writer side, until wrk is done.
(
  i=0
  while [ ! -e "$WORK/stop" ]; do
    i=$((i + 1))
    "$GEN" --out "$WORK/up" --key "$ROOT/tests/fixtures/keys/upstream.pem" --mutate 0.05 >/dev/null
    "$BIN" sync --config "$CONF" >/dev/null 2>&1 && echo sync >>"$WORK/writes"
    if [ "$i" -le 40 ]; then
      curl -s -o /dev/null -w '%{http_code}\n' -X POST -H "authorization: $TOKEN" \
        -H "content-type: application/octet-stream" \
        --data-binary "@$WORK/tarballs/load_p$i.tar" "http://$ADDR/api/repos/acme/publish" \
        | grep -q 201 && echo publish >>"$WORK/writes"
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
