#!/usr/bin/env bash
# Calls (WebRTC over UDP, STUN, TURN) through the real gateway, with a real WebRTC stack
# (Python aiortc: ICE, DTLS, SCTP data channels) and a real STUN/TURN server (Debian's coturn):
#
#   consumer A (10.66.0.11) ─┐ macvlans on c0, "private" mode:          coturn 10.99.0.2 and
#   consumer B (10.66.0.12) ─┴ the AP isolates its clients ── lan0 [gateway, NAT] wan0 ── u0
#                                                          10.66.0.1     10.99.0.1   .2 and .3
#                                                      peer P (10.98.0.2, no NAT) ── p0 10.98.0.1
#
# Each consumer logs in at the portal with its own code; B's is small. Then (calls.py):
#   1. the NAT's mapping, filtering and hairpinning, RFC 4787/5780, measured from A with
#      coturn's turnutils_natdiscovery (coturn listens on two addresses for CHANGE-REQUEST),
#      beside the calls;
#   2. ICE trials: A calls P and B calls A, CALLS times each, STUN and TURN configured on
#      every side; per call the time from offer to connected and the candidate pair ICE chose;
#      the first call of each pair carries 2 MB each way over a data channel, the others 64 kB;
#   3. the meters: per consumer the kernel meter equals the capture meter to the byte, the
#      session's used_bytes equals the kernel meter, and both are compared with the payload;
#   4. B calls P and streams both ways until its quota: how long after the quota the data
#      stopped, and when ICE gave up.
# A summary block ends the output. Fails if a call fails, the meters disagree or the call is
# not cut at the quota.
#
#   CALLS=N         ICE trials per pair (default 10)
#   B_MB=N          B's code, MB (default 11: what the trials use, and 2-4 MB for the last call)
#   CALLS_DEBUG=1   aiortc's and aioice's debug log in the agents' logs (artifacts/calls/)
#   LAN_MODE=bridge the consumers reach each other on the LAN (an access point without client
#                   isolation; default private: isolated, as above)
#
# Needs root, coturn, curl, jq and the aiortc venv (bash scripts/install-deps makes it; this
# script makes it if it is missing and PyPI is reachable). Every namespace is made here and
# removed on exit; about two minutes.
# shellcheck source=tests/system/netns.bash
. "$(dirname "$0")/netns.bash"

CALLS=${CALLS:-10}
B_MB=${B_MB:-11}
LAN_MODE=${LAN_MODE:-private}
case $BIN_DIR in /*) BIN=$BIN_DIR ;; *) BIN=$PWD/$BIN_DIR ;; esac
VENV=/opt/edgeshare-test/venv
[ "$(id -u)" = 0 ] || unavailable "needs root"
for tool in curl jq nft turnserver turnutils_natdiscovery; do
  command -v "$tool" >/dev/null || unavailable "$tool is missing (bash scripts/install-deps)"
done
[ -x "$BIN/edgeshare-gateway" ] || fail "$BIN/edgeshare-gateway is missing (cargo build --workspace --bins)"
if ! "$VENV/bin/python" -c 'import aiortc' 2>/dev/null; then
  echo "calls: making $VENV (aiortc from PyPI)" >&2
  /usr/bin/python3 -m venv "$VENV" || unavailable "no python3-venv (bash scripts/install-deps)"
  "$VENV/bin/pip" install -q -r tests/system/calls-requirements.txt ||
    unavailable "cannot install aiortc (bash scripts/install-deps)"
fi

began=$(date +%s)
WORK=$(mktemp -d)
keep_logs() {
  mkdir -p "$ARTIFACTS/calls"
  cp "$WORK"/*.log "$WORK"/*.txt "$ARTIFACTS/calls/" 2>/dev/null
  rm -rf "$WORK"
}
netns_exit_traps "" keep_logs

# The namespaces: L holds the LAN's "access point" (c0, the other end of the gateway's lan0),
# A and B the consumers, G the gateway, U the upstream (coturn, and the router to P), P the peer.
tag=calls
NS_L=es-$tag-l-$$ NS_A=es-$tag-a-$$ NS_B=es-$tag-b-$$ NS_G=es-$tag-g-$$ NS_U=es-$tag-u-$$ NS_P=es-$tag-p-$$
for ns in "$NS_L" "$NS_A" "$NS_B" "$NS_G" "$NS_U" "$NS_P"; do
  ip netns add "$ns"
  netns_track_ns "$ns"
  ip -n "$ns" link set lo up
  # IPv4 only: the calls run over IPv4 (the NAT66 path is not measured here), and no router
  # or neighbour solicitations add noise to the meters.
  in_ns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip link add c0 netns "$NS_L" type veth peer name lan0 netns "$NS_G"
ip link add wan0 netns "$NS_G" type veth peer name u0 netns "$NS_U"
ip link add p0 netns "$NS_U" type veth peer name pe0 netns "$NS_P"
ip -n "$NS_L" link set c0 up
# Two consumers on the LAN, each its own MAC and address. "private" macvlans cannot reach each
# other directly, as on a hotspot whose access point isolates its clients: whatever passes
# between A and B goes through the gateway (or around it, through TURN).
mac_a=02:00:00:00:0a:01 mac_b=02:00:00:00:0b:01
for side in "a $NS_A $mac_a 10.66.0.11" "b $NS_B $mac_b 10.66.0.12"; do
  read -r name ns mac ip <<<"$side"
  ip -n "$NS_L" link add link c0 name "c$name" address "$mac" type macvlan mode "$LAN_MODE"
  ip -n "$NS_L" link set "c$name" netns "$ns"
  ip -n "$ns" -batch - <<EOF
addr add $ip/24 dev c$name
link set c$name up
route add default via 10.66.0.1
EOF
done
ip -n "$NS_G" -batch - <<EOF
addr add 10.66.0.1/24 dev lan0
addr add 10.99.0.1/24 dev wan0
link set lan0 up
link set wan0 up
route add default via 10.99.0.2
EOF
ip -n "$NS_U" -batch - <<EOF
addr add 10.99.0.2/24 dev u0
addr add 10.99.0.3/24 dev u0
addr add 10.98.0.1/24 dev p0
link set u0 up
link set p0 up
EOF
in_ns "$NS_U" sysctl -qw net.ipv4.ip_forward=1
# The rest of the internet: a default route into a veth whose other end is down, where
# packets vanish (as those to private addresses do out there). Without it coturn's relay gets
# ENETUNREACH sending to a consumer's private host candidate and drops the whole allocation.
ip -n "$NS_U" link add inet0 type veth peer name inet1
ip -n "$NS_U" -batch - <<EOF
link set inet0 up
neigh add 192.0.2.1 lladdr 02:00:00:00:00:fe dev inet0 nud permanent
route add default via 192.0.2.1 dev inet0 onlink
EOF
ip -n "$NS_P" -batch - <<EOF
addr add 10.98.0.2/24 dev pe0
link set pe0 up
route add default via 10.98.0.1
EOF

# coturn: STUN and TURN (UDP, long-term credentials) on both upstream addresses, which also
# makes it answer RFC 5780's CHANGE-REQUEST (other address 10.99.0.3, other port 3479).
cat >"$WORK/turnserver.conf" <<EOF
listening-ip=10.99.0.2
listening-ip=10.99.0.3
listening-port=3478
relay-ip=10.99.0.2
min-port=49152
max-port=49999
realm=edgeshare.test
lt-cred-mech
user=calls:calls-secret
fingerprint
no-tls
no-dtls
no-cli
userdb=$WORK/turndb
pidfile=$WORK/turnserver.pid
log-file=stdout
simple-log
verbose
EOF
ip netns exec "$NS_U" turnserver -c "$WORK/turnserver.conf" >"$WORK/turnserver.log" 2>&1 &
netns_track_pid $!
turn_up() { in_ns "$NS_U" ss -lun | grep -q '10.99.0.3:3479'; }
netns_wait_for coturn "$!" "$WORK/turnserver.log" turn_up

# The gateway: NAT on, both meters, metrics inside its namespace.
netns_gateway_config "$WORK/gateway.toml" "$WORK/state" "$WORK/gateway.sock" "es_calls_$$" local
printf '[metrics]\nlisten = "127.0.0.1:9464"\n' >>"$WORK/gateway.toml"
GW=("$BIN/edgeshare-gateway" --config "$WORK/gateway.toml")
netns_start_gateway "$WORK/gateway.sock" "$WORK/gateway.log" "${GW[@]}"

# A's code is large; B's is small enough that its last call ends at the quota.
for side in "a $NS_A 200" "b $NS_B $B_MB"; do
  read -r name ns mb <<<"$side"
  code=$(in_ns "$NS_G" "${GW[@]}" codes create --mb "$mb" --hours 1)
  page=$(in_ns "$ns" curl -sS -m 10 -d "code=$code" http://10.66.0.1:8080/login)
  grep -q "You are online" <<<"$page" || fail "consumer $name: the code was not accepted: $page"
  printf '%s\n' "$code" >"$WORK/code_$name.txt"
done

# 1. The NAT's behaviour, from consumer A, against coturn's RFC 5780 service, beside the
# calls (it spends most of its ~12 s waiting out the probes that get no answer); the
# controller waits for its status file.
(
  status=0
  in_ns "$NS_A" timeout 30 turnutils_natdiscovery -m -f -H 10.99.0.2 >"$WORK/natdiscovery.txt" 2>&1 ||
    status=$?
  echo "$status" >"$WORK/natdiscovery.status"
) &
netns_track_pid $!

# The WebRTC agents, one per party, each in its own namespace, driven over Unix sockets.
PY=("$VENV/bin/python" tests/system/calls.py)
for side in "a $NS_A" "b $NS_B" "p $NS_P"; do
  read -r name ns <<<"$side"
  ip netns exec "$ns" "${PY[@]}" agent "$WORK/$name.sock" >"$WORK/agent_$name.log" 2>&1 &
  netns_track_pid $!
  netns_wait_for "agent $name" "$!" "$WORK/agent_$name.log" test -S "$WORK/$name.sock"
done

"${PY[@]}" controller --work "$WORK" --calls "$CALLS" --gateway-ns "$NS_G" \
  --gateway "$BIN/edgeshare-gateway" --config "$WORK/gateway.toml" --table "es_calls_$$" \
  --namespaces "a=$NS_A,b=$NS_B,p=$NS_P" --quota-mb "$B_MB" \
  --mac-a "$mac_a" --mac-b "$mac_b" |
  tee "$WORK/summary.txt"
status=${PIPESTATUS[0]}
echo "calls: $(($(date +%s) - began)) s"
[ "$status" = 0 ] || fail "see the lines above (logs in $ARTIFACTS/calls/)"
echo "calls: OK"
