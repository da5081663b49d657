#!/usr/bin/env bash
# System calls per forwarded connection, sniroute against HAProxy, counted
# with `strace -c -f -p` during a bounded loop of N connections through the
# proxy to a loopback echo backend (benches/syscalls.md has the results).
#
#   benches/syscalls.sh [N]            # N connections per proxy, default 2000
#
# Environment:
#   SNIROUTE_BIN  the binary to count (default: target/release/sniroute, built
#                 with `cargo build --release` first if missing)
#   HAPROXY       HAProxy's binary (default /usr/sbin/haproxy; skipped if absent)
#   PROXIES       which to count: "sniroute haproxy" (default), or one of them
#
# Each cycle is the connection-rate bench's (benches/e2e.rs `cycle`): connect,
# send a real ClientHello (made by Python's ssl module, SNI
# echo.syscalls.test) and one more byte, read the echo of all of it, close.
# The loop is sequential, loopback only, and bounded (N cycles, each with a
# 5 s socket timeout). The counts include what the proxy's threads do while
# idle during the loop (timers, the metrics fold every second): the loop
# takes about a second per 2,000 connections, so that is well under 0.01
# calls per connection.
set -euo pipefail

N=${1:-2000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
PROXIES=${PROXIES:-sniroute haproxy}
command -v strace >/dev/null || { echo "strace is needed (apt-get install strace)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }

DIR=$(mktemp -d /tmp/sniroute-syscalls.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The echo backend: echoes every byte until EOF, then closes (threads, so a
# slow close never stalls the next connection).
cat >"$DIR/echo.py" <<'PY'
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(1024)
def serve(c):
    with c:
        while True:
            b = c.recv(65536)
            if not b:
                return
            c.sendall(b)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY

# The client: N sequential cycles; exits non-zero if any fails.
cat >"$DIR/client.py" <<'PY'
import socket, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname="echo.syscalls.test")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
msg = out.read() + b"\x2a"
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        b = s.recv(65536)
        if not b:
            sys.exit(f"cycle {i}: closed after {len(got)} of {len(msg)} bytes")
        got += b
    if got != msg:
        sys.exit(f"cycle {i}: wrong bytes echoed")
    s.close()
PY

wait_port() { # port: until something listens there (10 s at most)
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), timeout=1).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

ECHO_PORT=$(free_port)
python3 "$DIR/echo.py" "$ECHO_PORT" & PIDS+=($!)
wait_port "$ECHO_PORT"

count() { # name pid port: strace -c of pid during N cycles to port
    local name=$1 pid=$2 port=$3
    python3 "$DIR/client.py" "$port" 50 # warm-up, not counted
    strace -c -f -p "$pid" -o "$DIR/$name.strace" 2>"$DIR/$name.attach" & local st=$!
    for _ in $(seq 100); do
        grep -q attached "$DIR/$name.attach" 2>/dev/null && break
        sleep 0.1
    done
    sleep 0.5 # let strace attach to every thread (it prints one line each)
    python3 "$DIR/client.py" "$port" "$N"
    kill -INT "$st"
    wait "$st" || true
    echo "== $name: $N connections; calls per connection (strace -c -f -p $pid)"
    awk -v n="$N" '
        /^-+/ { table = !table; next }
        table && $1 ~ /^[0-9.]+$/ && NF >= 5 {
            name = $NF; calls = ($4 ~ /^[0-9]+$/) ? $4 : $5;
            printf "%-16s %8d  %6.2f\n", name, calls, calls / n; total += calls
        }
        END { printf "%-16s %8d  %6.2f\n", "total", total, total / n }
    ' "$DIR/$name.strace"
}

for proxy in $PROXIES; do
    case $proxy in
    sniroute)
        BIN=${SNIROUTE_BIN:-$ROOT/target/release/sniroute}
        if [ ! -x "$BIN" ]; then (cd "$ROOT" && cargo build --release --bin sniroute); fi
        PORT=$(free_port)
        cat >"$DIR/sniroute.yaml" <<YAML
listeners: ["127.0.0.1:$PORT"]
routes:
  - name: echo
    server_names: [echo.syscalls.test]
    upstreams: ["127.0.0.1:$ECHO_PORT"]
YAML
        RUST_LOG=warn "$BIN" run --config "$DIR/sniroute.yaml" >"$DIR/sniroute.log" 2>&1 & PIDS+=($!)
        wait_port "$PORT"
        count sniroute "${PIDS[-1]}" "$PORT"
        ;;
    haproxy)
        [ -x "$HAPROXY" ] || { echo "== haproxy: $HAPROXY not found, skipped"; continue; }
        PORT=$(free_port)
        cat >"$DIR/haproxy.cfg" <<CFG
global
    nbthread 2
    maxconn 6000

defaults
    mode tcp
    maxconn 6000
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    option splice-auto

frontend tls
    bind 127.0.0.1:$PORT
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend echo if { req.ssl_sni -i echo.syscalls.test }

backend echo
    server echo 127.0.0.1:$ECHO_PORT
CFG
        "$HAPROXY" -db -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 & PIDS+=($!)
        wait_port "$PORT"
        count haproxy "${PIDS[-1]}" "$PORT"
        ;;
    *) echo "unknown proxy $proxy" >&2; exit 2 ;;
    esac
done
