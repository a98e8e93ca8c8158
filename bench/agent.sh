#!/usr/bin/env bash
# The agent's cost while streaming: the release binary with 10 sources at 1 Hz (the system
# source, 3 thermal-zone-like files, 3 1-wire w1_slave files, 3 commands) to the stand-in
# backend on loopback, for DURATION seconds. Prints CPU (user+system, % of one core), RSS
# (VmRSS at the end, VmHWM peak), messages delivered, and the time to stop on SIGTERM. A
# benchmark, not a test: it asserts nothing beyond the set-up working.
#
#   bash bench/agent.sh                  # builds target/release first
#   BENCH_NO_BUILD=1 DURATION=30 bash bench/agent.sh
#
# Traffic stays on 127.0.0.1; both processes are started here and killed by PID on exit.
# The table goes to stdout and to bench/results/agent-<date>.txt. Needs python3 (stdlib).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-60}
WARMUP=${WARMUP:-5}
if [ "$DURATION" -lt 5 ] || [ "$DURATION" -gt 600 ]; then
  echo "bench: DURATION must be 5..600 seconds" >&2
  exit 1
fi
command -v python3 >/dev/null 2>&1 || { echo "bench: python3 is missing" >&2; exit 1; }
if [ "${BENCH_NO_BUILD:-}" != 1 ]; then
  if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  echo "bench: cargo build --release -p edgeshare-agent -p edgeshare-standin" >&2
  cargo build --release -p edgeshare-agent -p edgeshare-standin --locked >&2
fi
BIN=$PWD/target/release
for bin in edgeshare-agent edgeshare-standin; do
  [ -x "$BIN/$bin" ] || { echo "bench: $BIN/$bin is missing" >&2; exit 1; }
done

work=$(mktemp -d /tmp/edgeshare-agent-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
backend_port=$(free_port)
metrics_port=$(free_port)

"$BIN/edgeshare-standin" --listen "127.0.0.1:$backend_port" >"$work/standin.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  python3 - "$backend_port" <<'EOF' 2>/dev/null && break
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
EOF
  sleep 0.05
done

sources=""
for i in 1 2 3; do
  echo "4${i}125" >"$work/thermal$i"
  printf '72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=2%s125\n' "$i" >"$work/w1_$i"
  echo "$i.5" >"$work/value$i"
  sources+="
[[source]]
kind = \"file\"
name = \"thermal$i\"
path = \"$work/thermal$i\"
format = \"milli\"
interval = \"1s\"

[[source]]
kind = \"file\"
name = \"w1_$i\"
path = \"$work/w1_$i\"
format = \"w1_slave\"
interval = \"1s\"

[[source]]
kind = \"command\"
name = \"command$i\"
command = [\"cat\", \"$work/value$i\"]
interval = \"1s\"
"
done

cat >"$work/agent.toml" <<EOF
[device]
id = "bench-device"

[stream]
auth_url = "http://127.0.0.1:$backend_port"
ws_url = "ws://127.0.0.1:$backend_port/producer"
username = "device-001"
framing = "typed"

[[source]]
kind = "system"
interval = "1s"
$sources
[gateway]
control_socket = "$work/no-gateway.sock"

[spool]
dir = "$work/spool"

[metrics]
listen = "127.0.0.1:$metrics_port"

[state]
dir = "$work/state"
EOF
echo "EDGESHARE_STREAM__PASSWORD=Device@123" >"$work/agent.env"
chmod 600 "$work/agent.env"

"$BIN/edgeshare-agent" --config "$work/agent.toml" run >"$work/agent.log" 2>&1 &
agent=$!
pids+=("$agent")

# utime + stime of the agent itself, and of its finished children (the sensor commands).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
child_ticks() { awk '{print $16 + $17}' "/proc/$agent/stat"; }
status_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$agent/status"; }
ws_count() {
  python3 - "$backend_port" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/__standin/ws-messages", timeout=5) as r:
    print(len(json.load(r)))
EOF
}

echo "bench: warming up ${WARMUP}s, then measuring ${DURATION}s" >&2
sleep "$WARMUP"
hz=$(getconf CLK_TCK)
t0=$(date +%s.%N)
c0=$(cpu_ticks)
k0=$(child_ticks)
m0=$(ws_count)
sleep "$DURATION"
t1=$(date +%s.%N)
c1=$(cpu_ticks)
k1=$(child_ticks)
m1=$(ws_count)
rss=$(status_kb VmRSS)
hwm=$(status_kb VmHWM)
"$BIN/edgeshare-agent" --config "$work/agent.toml" status >"$work/status.txt" 2>&1 || true

stop_start=$(date +%s.%N)
kill -TERM "$agent"
stopped=no
for _ in $(seq 1000); do
  if ! kill -0 "$agent" 2>/dev/null; then stopped=yes; break; fi
  sleep 0.01
done
stop_end=$(date +%s.%N)
wait "$agent" 2>/dev/null && exit_code=0 || exit_code=$?

mkdir -p bench/results
out="bench/results/agent-$(date +%Y-%m-%d).txt"
{
  echo "edgeshare-agent, release build, 10 sources at 1 Hz, typed framing, stand-in on loopback"
  echo "host: $(nproc) cores, $(uname -r); measured $(date -u +%Y-%m-%dT%H:%M:%SZ) over ${DURATION}s after ${WARMUP}s warm-up"
  python3 - "$t0" "$t1" "$c0" "$c1" "$hz" "$m0" "$m1" "$rss" "$hwm" "$stop_start" "$stop_end" "$stopped" "$exit_code" "$k0" "$k1" <<'EOF'
import sys
t0, t1, c0, c1, hz, m0, m1 = (float(x) for x in sys.argv[1:8])
rss, hwm = int(sys.argv[8]), int(sys.argv[9])
s0, s1, stopped, code = float(sys.argv[10]), float(sys.argv[11]), sys.argv[12], sys.argv[13]
wall = t1 - t0
cpu = (c1 - c0) / hz
k0, k1 = float(sys.argv[14]), float(sys.argv[15])
children = (k1 - k0) / hz
print(f"{'CPU of the agent (user+system)':<34} {100 * cpu / wall:.2f} % of one core ({cpu:.2f} s in {wall:.1f} s)")
print(f"{'CPU of its 3 sensor commands':<34} {100 * children / wall:.2f} % of one core (180 runs of cat)")
print(f"{'RSS at the end (VmRSS)':<34} {rss / 1024:.1f} MiB")
print(f"{'RSS peak (VmHWM)':<34} {hwm / 1024:.1f} MiB")
print(f"{'messages delivered':<34} {int(m1 - m0)} in {wall:.1f} s ({(m1 - m0) / wall:.1f}/s; 10/s expected)")
print(f"{'stop on SIGTERM':<34} {1000 * (s1 - s0):.0f} ms (exited: {stopped}, code {code})")
EOF
  echo "status while running:"
  sed 's/^/  /' "$work/status.txt"
} | tee "$out"
echo "bench: saved $out" >&2
