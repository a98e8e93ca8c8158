#!/usr/bin/env bash
# Telemetry across restarts, for real: the gateway (its capture meter) and the agent (posting
# flows and windows to the stand-in's telemetry backend, contract 3) in network namespaces, a
# client downloading through the gateway, a pcap on the client's interface as the truth.
#
#   1. Download A; the agent is restarted (SIGTERM, started again) in the middle of it, after
#      a window holding some of it was posted.
#   2. A pause longer than a window, so that no window holds bytes of both downloads.
#   3. Download B; the gateway is restarted in the middle of it.
#   4. Both flows idle past the gateway's capture.flow_idle, the last window closed.
#
# Then, per download: the flow records the backend holds for its 5-tuple (one, with the pcap's
# byte count), the sum of the windows of its phase against the pcap, windows sent twice, the
# records still "active", and the sign-ins made with a client token of TOKEN_TTL. Bytes the
# gateway carried while it was down, and those it counted but had not handed over when it
# stopped, are not seen by its capture: that loss is printed, not failed on. Nothing may be
# counted twice, no record may stay active, and the agent restart may lose nothing.
#
#   SIZE=N          bytes of each download (default 60 MB), at RATE (default 24mbit)
#   TOKEN_TTL=D     the client tokens' lifetime (default 60s)
#   BIN=DIR         the binaries (default target/debug)
#
# Needs root (namespaces, nftables), curl, jq, tc, tcpdump; the binaries built
# (cargo build -p edgeshare-gateway -p edgeshare-agent -p edgeshare-standin --bins).
# Cleans up on any exit.
# shellcheck source=tests/system/netns.bash
. "$(dirname "$0")/netns.bash"

SIZE=${SIZE:-60000000}
RATE=${RATE:-24mbit}
TOKEN_TTL=${TOKEN_TTL:-60s}
WINDOW=10 # snapshot_interval, seconds
real_binaries_test telemetry_restarts '*.json'
command -v tcpdump >/dev/null || unavailable "tcpdump is missing (bash scripts/install-deps)"

netns_testbed tr
in_ns "$NS_U" tc qdisc add dev u0 root tbf rate "$RATE" burst 64kb latency 200ms
netns_start_standin "$NS_U" "$WORK/backend" "$STANDIN" --listen 10.99.0.2:8080 \
  --client-token-ttl "$TOKEN_TTL"
netns_start_standin "$NS_U" "$WORK/internet" "$STANDIN" --listen 10.99.0.3:80
BACKEND=http://10.99.0.2:8080

# The gateway with local codes; flows idle after 15 s (2 min shipped) to keep the test short.
# Its table stays while it restarts, as shipped (the namespace's removal deletes it).
netns_gateway_config "$WORK/gateway.toml" "$WORK/state" "$WORK/gateway.sock" "es_tr_$$" local
sed -i 's/^remove_on_exit = true$/remove_on_exit = false/' "$WORK/gateway.toml"
printf '[capture]\nflow_idle = "15s"\n' >>"$WORK/gateway.toml"
GW=("$BIN/edgeshare-gateway" --config "$WORK/gateway.toml")
netns_start_gateway "$WORK/gateway.sock" "$WORK/gateway.log" "${GW[@]}"

# The agent: telemetry only, flows read every second, windows of $WINDOW s.
cat >"$WORK/agent.toml" <<EOF
[device]
id = "telemetry-test"

[telemetry]
url = "$BACKEND"
email = "edge@example.com"
password = "Edge@123"
tenant = "tenant-edge"
interval = "1s"
snapshot_interval = "${WINDOW}s"

[gateway]
control_socket = "$WORK/gateway.sock"

[state]
dir = "$WORK/agent-state"

[metrics]
listen = "127.0.0.1:9475"
EOF
AGENT=("$BIN/edgeshare-agent" --config "$WORK/agent.toml")
agent_logs=0
start_agent() {
  agent_logs=$((agent_logs + 1))
  ip netns exec "$NS_G" "${AGENT[@]}" run >"$WORK/agent-$agent_logs.log" 2>&1 &
  AGENT_PID=$!
  netns_track_pid "$AGENT_PID"
  netns_wait_for "the agent" "$AGENT_PID" "$WORK/agent-$agent_logs.log" netns_agent_answers
}
start_agent

code=$(in_ns "$NS_G" "${GW[@]}" codes create --mb 1000 --hours 1)
page=$(in_ns "$NS_C" curl -sS -m 10 -d "code=$code" http://10.66.0.1:8080/login)
grep -q "You are online" <<<"$page" || fail "the code was not accepted: $page"

# The truth: every packet between the client and the download server, on the client's side.
ip netns exec "$NS_C" tcpdump -i c0 -nn -U -s 96 -w "$WORK/client.pcap" 'tcp and host 10.99.0.3' \
  2>"$WORK/tcpdump.log" &
TCPDUMP_PID=$!
netns_track_pid "$TCPDUMP_PID"
netns_wait_for tcpdump "$TCPDUMP_PID" "$WORK/tcpdump.log" grep -q "listening on" "$WORK/tcpdump.log"

# download NAME: starts a download of SIZE bytes in the background; its local port goes to
# WORK/NAME.port when it ends.
download() {
  ip netns exec "$NS_C" curl -sS -m 120 -o /dev/null -w '%{local_port} %{size_download}\n' \
    "http://10.99.0.3/__standin/download/$SIZE" >"$WORK/$1.port" 2>"$WORK/$1.log" &
  DOWNLOAD_PID=$!
  netns_track_pid "$DOWNLOAD_PID"
}
# finish NAME: waits for the download; its client port in PORT.
finish() {
  local got
  wait "$DOWNLOAD_PID" || fail "download $1 failed: $(cat "$WORK/$1.log")"
  read -r PORT got <"$WORK/$1.port"
  [ "$got" = "$SIZE" ] || fail "download $1 got $got bytes of $SIZE"
}

# windows_posted: the bytes in the windows the backend has.
windows_posted() {
  in_ns "$NS_U" curl -sS -m 3 "$BACKEND/__standin/snapshots/tenant-edge" | jq '[.[].bandwidthIn] | add // 0'
}

echo "download A ($SIZE bytes), the agent restarted in the middle"
download A
# After a window with some of it was posted, so that the restart meets both a flow with
# history and a window in the making.
for _ in $(seq 1 300); do
  [ "$(windows_posted)" -gt 0 ] && break
  sleep 0.1
done
[ "$(windows_posted)" -gt 0 ] || fail "no window of download A was posted within 30 s"
sleep 2
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null || true
start_agent
finish A
port_a=$PORT

sleep $((WINDOW + 4))
split=$(date +%s)
echo "download B ($SIZE bytes), the gateway restarted in the middle"
download B
sleep 5
kill -TERM "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null || true
netns_start_gateway "$WORK/gateway.sock" "$WORK/gateway-2.log" "${GW[@]}"
finish B
port_b=$PORT

# Idle past flow_idle (15 s) and the agent's margin (2 reads + 5 s), then a window closes.
sleep $((15 + 7 + WINDOW + 3))
kill -INT "$TCPDUMP_PID"
wait "$TCPDUMP_PID" 2>/dev/null || true
grep -q "^0 packets dropped by kernel" "$WORK/tcpdump.log" ||
  fail "tcpdump lost packets: the truth is incomplete: $(cat "$WORK/tcpdump.log")"

in_ns "$NS_U" curl -sS -m 5 "$BACKEND/__standin/connections/tenant-edge" >"$WORK/connections.json"
in_ns "$NS_U" curl -sS -m 5 "$BACKEND/__standin/snapshots/tenant-edge" >"$WORK/snapshots.json"
in_ns "$NS_U" curl -sS -m 5 "$BACKEND/__standin/received" >"$WORK/received.json"

# pcap_bytes PORT: the IP bytes (total length) the server sent to the client's port PORT.
pcap_bytes() {
  tcpdump -r "$WORK/client.pcap" -nn -v "src host 10.99.0.3 and dst port $1" 2>/dev/null |
    grep -o 'proto TCP (6), length [0-9]*' | awk '{ sum += $NF } END { print sum + 0 }'
}
# flow_field PORT FIELD: FIELD of every record of the flow from the client's port PORT.
flow_field() {
  jq -r --argjson p "$1" --arg f "$2" \
    '[.[] | select(.sourcePort == $p and .destIp == "10.99.0.3")] | map(.[$f]) | .[]' \
    "$WORK/connections.json"
}
# windows_bytes FIRST_PHASE: the sum of bandwidthIn over the windows of phase A (ending by
# the split) or B (the rest).
windows_bytes() {
  jq -r --argjson split "$split" --argjson len "$WINDOW" --arg phase "$1" '
    map(select(((.timestamp | sub("\\.[0-9]+"; "") | fromdateiso8601) + $len <= $split)
      == ($phase == "A")) | .bandwidthIn) | add // 0' "$WORK/snapshots.json"
}

failures=()
printf '\n%-22s %12s %12s %12s %10s %10s %8s\n' "RESTART" "PCAP B" "FLOW B" "WINDOWS B" "LOST" "DOUBLED" "RECORDS"
report() {
  local what=$1 port=$2 phase=$3 truth flow windows records lost doubled
  truth=$(pcap_bytes "$port")
  flow=$(flow_field "$port" bytesIn | awk '{ s += $1 } END { print s + 0 }')
  records=$(flow_field "$port" id | sort -u | wc -l)
  windows=$(windows_bytes "$phase")
  lost=0 doubled=0
  for counted in "$flow" "$windows"; do
    [ "$counted" -ge "$truth" ] || lost=$((lost > truth - counted ? lost : truth - counted))
    [ "$counted" -le "$truth" ] || doubled=$((doubled > counted - truth ? doubled : counted - truth))
  done
  printf '%-22s %12s %12s %12s %10s %10s %8s\n' "$what" "$truth" "$flow" "$windows" "$lost" "$doubled" "$records"
  [ "$truth" -gt "$SIZE" ] || failures+=("$what: the pcap holds only $truth bytes")
  [ "$doubled" = 0 ] || failures+=("$what: $doubled bytes counted twice")
  [ "$records" = 1 ] || failures+=("$what: the flow has $records records (its id changed)")
  if [ "$phase" = A ] && [ "$lost" != 0 ]; then failures+=("$what: $lost bytes lost"); fi
}
report "agent restart (A)" "$port_a" A
report "gateway restart (B)" "$port_b" B

active=$(jq '[.[] | select(.status == "active")] | length' "$WORK/connections.json")
twice=$(jq '[.[].timestamp] | length - (unique | length)' "$WORK/snapshots.json")
lengths=$(jq -r --argjson len "$WINDOW" '[.[].timestamp | sub("\\.[0-9]+"; "") | fromdateiso8601]
  | [.[] | select(. % $len != 0)] | length' "$WORK/snapshots.json")
elapsed=$(($(date +%s) - began))
signins=$(jq '[.[] | select(.path == "/auth/signin")] | length' "$WORK/received.json")
calls=$(jq '[.[] | select(.path | startswith("/api/"))] | length' "$WORK/received.json")
echo "records still active after both flows idled out: $active"
echo "windows sent twice: $twice; windows not on a ${WINDOW} s boundary: $lengths"
echo "sign-ins with a $TOKEN_TTL client token: $signins for $calls ingest calls over ${elapsed} s (2 agent starts)"
[ "$active" = 0 ] || failures+=("$active records stuck active")
[ "$twice" = 0 ] || failures+=("$twice windows sent twice")
[ "$lengths" = 0 ] || failures+=("$lengths windows off the boundaries")
ttl=$(awk -v t="$TOKEN_TTL" 'BEGIN { sub(/s$/, "", t); print t }')
[ "$signins" -le $((elapsed * 100 / (ttl * 80) + 3)) ] ||
  failures+=("$signins sign-ins: more than one per 80 % of a token's life")
echo "telemetry_restarts: ${elapsed} s"
[ "${#failures[@]}" = 0 ] || fail "$(printf '%s; ' "${failures[@]}")"
echo "telemetry_restarts: OK"
