#!/usr/bin/env bash
# The packages under a real systemd as PID 1: a Debian 12 root (mmdebstrap, minbase) booted
# with systemd-nspawn, the amd64 packages built by packaging/deb/build installed with
# `apt-get install ./….deb` (so Depends are resolved: netbase comes from them), and then, for
# real, with the units exactly as shipped:
#
#   client ns (br0 10.66.0.2) ── lan0 [container: systemd, gateway, agent] wan0 ── upstream ns
#     fd00:66::2                  10.66.0.1                          10.99.0.1   (br0: stand-in
#                                 fd00:66::1                         fd00:99::1   backend at
#                                                                                 10.99.0.2:8080,
#                                                                                 downloads at
#                                                                                 10.99.0.3:80 and
#                                                                                 [fd00:99::3]:80)
#
# - the gateway reaches READY (time printed) and `systemd-analyze security` scores are printed;
# - the client is captive, logs in through the portal, downloads;
# - dual stack: the client is captive over IPv6 too (its web traffic lands on the portal,
#   nothing else gets through), and once online downloads over IPv6 from an IPv6 upstream,
#   through the forwarding the gateway turned on itself (nothing here sets a sysctl for it);
# - the agent as shipped (user edgeshare) reads the ledger and reports it to the stand-in:
#   the backend's count equals the ledger's;
# - the watchdog restarts a frozen gateway; `systemctl stop` / `restart` keep the client
#   online and its bytes counted (stop times printed);
# - after a reboot of the container, edgeshare-portal-only loaded the table before the network
#   came up and the gateway restored the session;
# - upgrade: with the client downloading, packages of a higher revision are installed over the
#   old ones: the client stays online, and the ledger equals the client's own counters (no
#   byte lost or counted twice);
# - the client is cut off at its quota;
# - `apt-get purge` leaves nothing but the system user `edgeshare` (as the README says).
#
# The client and the upstream are network namespaces of the host, each with a bridge that the
# container's veth ends join (so they survive the container's reboot). Traffic stays in them.
# Needs root, systemd-nspawn (systemd-container), mmdebstrap, jq, curl; fails under CI=true
# where one is missing, skips otherwise. Everything made here is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/system/common.bash

[ "$(id -u)" = 0 ] || unavailable "needs root"
for tool in systemd-nspawn mmdebstrap nsenter jq curl nft ip strip dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || unavailable "$tool is not installed (bash scripts/install-deps)"
done
for bin in edgeshare-gateway edgeshare-agent edgeshare-standin; do
  [ -x "$BIN_DIR/$bin" ] || fail "$BIN_DIR/$bin is missing: run cargo build --workspace --bins first"
done

MB=1048576
QUOTA_MB=60
container_test sd es edgeshare-gateway edgeshare-agent edgeshare-portal-only

elapsed() { echo "$(($(date +%s) - T0)) s"; }
step() { echo "== [$(elapsed)] $*"; }
now_ms() { date +%s%3N; }
in_ct() { nsenter -t "$CT" -a "$@"; }
in_c() { ip netns exec "$NS_C" "$@"; }
in_u() { ip netns exec "$NS_U" "$@"; }
unit_prop() { in_ct systemctl show -p "$2" --value "$1"; }

# ---- the Debian root: built once per package list, then kept in /var/cache ----
# netbase is downloaded into apt's cache but not installed (and the package lists are kept), so
# that `apt-get install ./edgeshare-gateway….deb` inside the container, which has no network,
# must resolve it from the package's Depends (Recommends, hostapd and dnsmasq, are not installed:
# no network in there).
INCLUDE=systemd,systemd-sysv,dbus,nftables,iproute2,adduser,procps,curl
step "a Debian 12 root (minbase + systemd) in $ROOT"
ROOT_TAR=$(debian_root_tar "$INCLUDE" "netbase-cached v1" "$WORK/mmdebstrap.log" \
  --customize-hook='chroot "$1" apt-get install --download-only -y -qq netbase')
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$ROOT_TAR"
[ ! -e "$ROOT/etc/protocols" ] || fail "the root has netbase already; the test of Depends would prove nothing"

# systemd-networkd configures the container's links at boot: wan0 must be up for
# network-online.target; lan0 gets its address with or without a carrier (like a Pi's Wi-Fi).
mkdir -p "$ROOT/etc/systemd/network"
cat >"$ROOT/etc/systemd/network/10-lan0.network" <<'EOF'
[Match]
Name=lan0
[Link]
RequiredForOnline=no
[Network]
Address=10.66.0.1/24
Address=fd00:66::1/64
ConfigureWithoutCarrier=yes
LinkLocalAddressing=ipv6
EOF
cat >"$ROOT/etc/systemd/network/10-wan0.network" <<'EOF'
[Match]
Name=wan0
[Network]
Address=10.99.0.1/24
Address=fd00:99::1/64
LinkLocalAddressing=ipv6
EOF
systemctl --root="$ROOT" enable systemd-networkd.service systemd-networkd-wait-online.service >/dev/null 2>&1
echo "es-sd-test" >"$ROOT/etc/hostname"

# ---- the packages: this revision, and a higher one for the upgrade ----
step "packages (packaging/deb/build) of revisions 1 and 2"
amd64_debs "$ROOT/root/debs" 1 2
ls "$ROOT"/root/debs/*/

# ---- the networks around the container ----
# Each side is a namespace with a bridge; the container's veth end joins it at every boot.
ip netns add "$NS_C"
ip netns add "$NS_U"
ip -n "$NS_C" link set lo up
ip -n "$NS_U" link set lo up
ip -n "$NS_C" link add br0 address 02:00:00:00:00:02 type bridge
ip -n "$NS_C" addr add 10.66.0.2/24 dev br0
ip -n "$NS_C" addr add fd00:66::2/64 dev br0 nodad
ip -n "$NS_C" link set br0 up
ip -n "$NS_C" route add default via 10.66.0.1
ip -n "$NS_C" -6 route add default via fd00:66::1
ip -n "$NS_U" link add br0 type bridge
ip -n "$NS_U" addr add 10.99.0.2/24 dev br0
ip -n "$NS_U" addr add 10.99.0.3/24 dev br0
ip -n "$NS_U" addr add fd00:99::3/64 dev br0 nodad
ip -n "$NS_U" link set br0 up
ip -n "$NS_U" route add 10.66.0.0/24 via 10.99.0.1 # never used with NAT on; for clarity of errors
ip -n "$NS_U" -6 route add fd00:66::/64 via fd00:99::1

start_standin_at() { # ADDRESS OUT: a stand-in listening at ADDRESS in the upstream namespace
  local address=$1 out=$2 pid
  ip netns exec "$NS_U" "$BIN_DIR/edgeshare-standin" --listen "$address" >"$out" 2>"$out.log" &
  pid=$!
  STARTED_PIDS+=("$pid")
  wait_for 10 "the stand-in at $address" grep -q "listening" "$out"
}
start_standin_at 10.99.0.2:8080 "$WORK/backend"
start_standin_at 10.99.0.3:80 "$WORK/internet"
# The IPv6 internet: web on 80, and a port (8443) a captive client must not reach.
start_standin_at "[fd00:99::3]:80" "$WORK/internet6"
start_standin_at "[fd00:99::3]:8443" "$WORK/internet6-8443"

boot() {
  boot_container "$ROOT" "$MACHINE" "$WORK/console.log" \
    --network-veth-extra="$VETH_LAN:lan0" --network-veth-extra="$VETH_WAN:wan0"
  # The container's veth ends join the bridges (its links come up as soon as they do).
  wait_for 10 "the container's veth ends" ip link show "$VETH_WAN"
  ip link set "$VETH_LAN" netns "$NS_C"
  ip link set "$VETH_WAN" netns "$NS_U"
  ip -n "$NS_C" link set "$VETH_LAN" master br0 up
  ip -n "$NS_U" link set "$VETH_WAN" master br0 up
  local state
  state=$(timeout 90 nsenter -t "$CT" -a systemctl is-system-running --wait 2>>"$WORK/console.log" || true)
  case $state in
    running | degraded) ;;
    *) fail "the container did not finish booting: '$state'; $(tail -20 "$WORK/console.log")" ;;
  esac
  if [ "$state" = degraded ]; then
    echo "note: failed units in the container: $(in_ct systemctl --failed --no-legend --plain | awk '{print $1}' | xargs)"
  fi
}

step "boot: systemd as PID 1 in $MACHINE"
boot
echo "PID 1 of the container: $(in_ct cat /proc/1/comm), system state $(in_ct systemctl is-system-running || true)"

# ---- install ----
step "apt-get install ./edgeshare-gateway…deb ./edgeshare-agent…deb (revision 1)"
in_ct sh -c 'apt-get install -y -qq --no-install-recommends /root/debs/1/edgeshare-gateway_*.deb /root/debs/1/edgeshare-agent_*.deb' \
  >"$WORK/install.log" 2>&1 || fail "apt-get install failed: $(tail -30 "$WORK/install.log")"
in_ct dpkg-query -W -f '${Status}\n' netbase | grep -q "install ok installed" || fail "netbase was not pulled in by Depends"
echo "installed: $(in_ct dpkg-query -W -f '${Package} ${Version}, ' edgeshare-gateway edgeshare-agent netbase)"

cat >"$ROOT/etc/edgeshare/gateway.toml" <<'EOF'
[lan]
interface = "lan0"
[wan]
interface = "wan0"
nat = true
[portal]
port = 8080
[codes]
source = "backend"
[backend]
url = "http://10.99.0.2:8080"
email = "provider@example.com"
[state]
dir = "/var/lib/edgeshare"
[control]
socket = "/run/edgeshare/gateway.sock"
group = "edgeshare"
EOF
# The env files exist (made by the packages, with their owners and modes): only their text
# changes.
DASHBOARD_PASSWORD="systemd boot dashboard $$"
in_ct sh -c "printf 'EDGESHARE_BACKEND__PASSWORD=Provider@123\nEDGESHARE_DASHBOARD__PASSWORD=$DASHBOARD_PASSWORD\n' >/etc/edgeshare/gateway.env"
in_ct edgeshare-gateway check-config >/dev/null || fail "check-config refused the test's gateway.toml"

step "start edgeshare-portal-only and edgeshare-gateway (units as shipped)"
asked=$(now_ms)
in_ct systemctl start edgeshare-portal-only edgeshare-gateway || fail "systemctl start failed"
ready=$(now_ms)
[ "$(unit_prop edgeshare-gateway ActiveState)" = active ] || fail "the gateway is not active"
start_us=$(unit_prop edgeshare-gateway ExecMainStartTimestampMonotonic)
ready_us=$(unit_prop edgeshare-gateway ActiveEnterTimestampMonotonic)
echo "FIGURE gateway READY: $(((ready_us - start_us) / 1000)) ms after its process started ($((ready - asked)) ms for systemctl start, check-config included)"
in_ct ls -ld /var/lib/edgeshare/ledger
for unit in edgeshare-gateway edgeshare-portal-only edgeshare-agent; do
  score=$(in_ct systemd-analyze security --no-pager "$unit.service" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: //p')
  [ -n "$score" ] || fail "no systemd-analyze security score for $unit"
  echo "FIGURE systemd-analyze security $unit.service: $score"
done

step "the provider's dashboard under the shipped unit's sandbox, on the container's loopback"
status=$(in_ct curl -sS -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:8090/login) ||
  fail "the dashboard does not answer on 127.0.0.1:8090"
[ "$status" = 200 ] || fail "the dashboard's login page: HTTP $status"
in_ct curl -sS -m 5 -o /dev/null -c /run/dashboard.jar --data-urlencode "password=$DASHBOARD_PASSWORD" \
  http://127.0.0.1:8090/login || fail "logging in to the dashboard"
page=$(in_ct curl -sS -m 10 -b /run/dashboard.jar http://127.0.0.1:8090/)
grep -q "<dt>Points</dt>" <<<"$page" || fail "the dashboard shows no earnings from the backend: $page"
in_ct rm -f /run/dashboard.jar
if in_c curl -sS -m 2 -o /dev/null http://10.66.0.1:8090/ 2>/dev/null; then
  fail "the dashboard answered the LAN"
fi
echo "dashboard: login page 200, earnings shown, not reachable from the LAN"

# ---- the client ----
step "the client is captive"
status=$(in_c curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://10.99.0.3/__standin/download/1000" || true)
[ "$status" != 200 ] || fail "a captive client reached the internet"
echo "GET http://10.99.0.3/… while captive → $status (the portal)"
if in_c curl -sS -m 2 -o /dev/null "http://10.99.0.3:8443/" 2>/dev/null; then
  fail "port 8443 upstream reachable while captive"
fi

step "the client is captive over IPv6 too"
# Nothing in this test turns forwarding on: the gateway did, once its table was in place.
forwarding=$(in_ct sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding | xargs)
[ "$forwarding" = "1 1" ] || fail "IPv4 and IPv6 forwarding in the container: '$forwarding', not '1 1'"
in_ct journalctl --no-pager -o cat -u edgeshare-gateway | grep "kernel setting" | sed 's/^/  /'
answer=$(in_c curl -sS -m 5 -o /dev/null -w '%{http_code} %{redirect_url}' "http://[fd00:99::3]/__standin/download/1000" || true)
[ "$answer" = "302 http://10.66.0.1:8080/" ] || fail "a captive client's IPv6 web request did not land on the portal: '$answer'"
echo "GET http://[fd00:99::3]/… while captive → $answer (the portal)"
# The stand-in answers on [fd00:99::3]:8443: only the gateway can keep the client from it.
if in_c curl -sS -m 2 -o /dev/null "http://[fd00:99::3]:8443/__standin/download/1000" 2>/dev/null; then
  fail "the IPv6 upstream's port 8443 reachable while captive"
fi
if command -v ping >/dev/null && in_c ping -6 -c 1 -W 1 fd00:99::3 >/dev/null 2>&1; then
  fail "a captive client's ICMPv6 echo reached the IPv6 upstream"
fi
echo "IPv6 while captive: the portal only (port 8443 and ICMPv6 echo to [fd00:99::3] dropped)"

step "a $QUOTA_MB MB code from the backend; the client logs in through the portal"
CODE=$(in_ct edgeshare-gateway codes create --mb "$QUOTA_MB" --hours 1)
[ -n "$CODE" ] || fail "no code made"
page=$(in_c curl -sS -m 10 -d "code=$CODE" http://10.66.0.1:8080/login)
grep -q "You are online" <<<"$page" || fail "login did not say online: $page"

# The gateway learns the client's IPv6 address from its neighbour table once the client talks
# to it over IPv6 (here the portal, on the gateway itself: nothing forwarded, nothing billed).
in_c curl -sS -m 5 -o /dev/null "http://[fd00:66::1]:8080/" || fail "the portal over IPv6"
learned_ipv6() { in_ct edgeshare-gateway clients --json | jq -e '[.[].devices[].also[]?] | index("fd00:66::2")'; }
wait_for 10 "the gateway learning the client's IPv6 address" learned_ipv6

# Ground truth from here on: the client counts its own traffic with the internet, each family
# on its own.
in_c nft -f - <<'EOF'
table inet truth {
  counter up4 {}
  counter down4 {}
  counter up6 {}
  counter down6 {}
  chain output {
    type filter hook output priority 0;
    ip daddr 10.99.0.3 counter name up4
    ip6 daddr fd00:99::3 counter name up6
  }
  chain input {
    type filter hook input priority 0;
    ip saddr 10.99.0.3 counter name down4
    ip6 saddr fd00:99::3 counter name down6
  }
}
EOF
truth_counters() { # the four counters as one JSON object
  in_c nft -j list table inet truth | jq -c '[.nftables[] | select(.counter) | {(.counter.name): .counter.bytes}] | add'
}
truth() { # "up down" as the client counted them, both families
  truth_counters | jq -r '"\(.up4 + .up6) \(.down4 + .down6)"'
}
truth6() { # "up down" over IPv6 only
  truth_counters | jq -r '"\(.up6) \(.down6)"'
}
ledger_of_code() { # "up down" of the code's latest ledger record ("0 0" before the first)
  # A session writes its first record with its first bytes, so there may be no segment yet.
  { cat "$ROOT"/var/lib/edgeshare/ledger/usage-*.jsonl 2>/dev/null || true; } |
    jq -rs --arg code "$CODE" 'map(select(.code == $code)) | max_by(.seq) // {up: 0, down: 0} | "\(.up) \(.down)"'
}
download() { # BYTES [curl options]: downloads BYTES from upstream; fails if not whole
  local bytes=$1 got
  shift
  got=$(in_c curl -sS -m 60 "$@" -o /dev/null -w '%{size_download}' "http://10.99.0.3/__standin/download/$bytes") || return 1
  [ "$got" = "$bytes" ]
}
# ledger_equals_truth WHAT: waits for the gateway's next ledger write, then compares.
ledger_equals_truth() {
  local what=$1 t l i
  for i in $(seq 1 60); do
    t=$(truth)
    l=$(ledger_of_code)
    [ "$t" = "$l" ] && break
    sleep 0.5
  done
  read -r tu td <<<"$t"
  read -r lu ld <<<"$l"
  echo "FIGURE $what: ledger up $lu down $ld; the client's own count up $tu down $td; lost $(((tu + td) - (lu + ld))) bytes"
  [ "$t" = "$l" ] || fail "$what: the ledger ($l) is not the client's count ($t)"
}
download $((2 * MB)) || fail "the online client cannot download"
ledger_equals_truth "after login and a 2 MiB download"

step "the online client downloads over IPv6 from the IPv6 upstream"
got=$(in_c curl -sS -m 60 -o /dev/null -w '%{size_download}' "http://[fd00:99::3]/__standin/download/$((3 * MB))") ||
  fail "the online client cannot download over IPv6"
[ "$got" = $((3 * MB)) ] || fail "the IPv6 download was cut short: $got bytes"
read -r t6u t6d <<<"$(truth6)"
echo "FIGURE IPv6 through the shipped units: a $((3 * MB))-byte download over IPv6; the client's own count over IPv6: up $t6u down $t6d bytes"
[ "$t6d" -gt $((3 * MB)) ] || fail "the client's IPv6 counters saw $t6d bytes"
ledger_equals_truth "after an IPv6 download (both families)"

# ---- the agent, as shipped ----
step "the agent as shipped (user edgeshare) reports the ledger to the backend"
cat >"$ROOT/etc/edgeshare/agent.toml" <<'EOF'
[device]
id = "es-systemd-test"
[backend]
url = "http://10.99.0.2:8080"
email = "provider@example.com"
[usage]
ledger = "/var/lib/edgeshare/ledger"
interval = "1s"
[stream]
auth_url = "http://10.99.0.2:8080"
ws_url = "ws://10.99.0.2:8080/producer"
username = "device-001"
[[source]]
kind = "system"
interval = "2s"
[gateway]
control_socket = "/run/edgeshare/gateway.sock"
interval = "2s"
[metrics]
listen = "127.0.0.1:9465"
[state]
dir = "/var/lib/edgeshare/agent"
EOF
in_ct sh -c 'printf "EDGESHARE_BACKEND__PASSWORD=Provider@123\nEDGESHARE_STREAM__PASSWORD=Device@123\n" >/etc/edgeshare/agent.env'
in_ct systemctl enable --now edgeshare-agent >/dev/null 2>&1 || fail "the agent did not start"
[ "$(unit_prop edgeshare-agent ActiveState)" = active ] || fail "the agent is not active"
[ "$(in_ct ps -o user= -p "$(unit_prop edgeshare-agent MainPID)")" = edgeshare ] || fail "the agent does not run as edgeshare"
backend_used() { # the code's bytes used as the backend has it
  in_u curl -sS -m 3 "http://10.99.0.2:8080/__standin/codes/$CODE" |
    jq -r '((.totalMB - .remainingMB) * 1048576 | round)'
}
# The first whole MiB of the session reaches the backend: the agent read the ledger.
agent_reported() { [ "$(backend_used)" -gt 0 ]; }
wait_for 30 "a usage report from the agent (does it read the ledger?)" agent_reported
if in_ct journalctl --no-pager -u edgeshare-agent | grep -qi "permission denied"; then
  fail "the agent cannot read something: $(in_ct journalctl --no-pager -u edgeshare-agent | grep -i 'permission denied' | tail -3)"
fi
[ -d "$ROOT/var/lib/edgeshare/agent/spool" ] || fail "the spool is not in /var/lib/edgeshare/agent/spool"
[ ! -e "$ROOT/var/lib/edgeshare/agent/agent" ] || fail "the spool went to /var/lib/edgeshare/agent/agent"
in_ct edgeshare-agent --config /etc/edgeshare/agent.toml status | sed 's/^/  /'

# ---- the watchdog ----
step "the watchdog restarts a frozen gateway (WatchdogSec=30s as shipped)"
frozen=$(unit_prop edgeshare-gateway MainPID)
restarts=$(unit_prop edgeshare-gateway NRestarts)
in_ct kill -STOP "$frozen"
froze_at=$(now_ms)
download $MB || fail "the client lost access while the gateway was frozen"
gateway_replaced() {
  local pid
  pid=$(unit_prop edgeshare-gateway MainPID)
  [ "$pid" != 0 ] && [ "$pid" != "$frozen" ] && [ "$(unit_prop edgeshare-gateway ActiveState)" = active ]
}
wait_for 75 "a restart by the watchdog" gateway_replaced
echo "FIGURE watchdog: the frozen gateway was replaced and READY again $(($(now_ms) - froze_at)) ms after it froze (NRestarts $restarts → $(unit_prop edgeshare-gateway NRestarts))"
download $MB || fail "the client is not online after the watchdog's restart"
ledger_equals_truth "after the watchdog's restart"

# ---- stop, start, restart ----
step "systemctl stop / start / restart keep the client online and its bytes counted"
asked=$(now_ms)
in_ct systemctl stop edgeshare-gateway
echo "FIGURE gateway stop: $(($(now_ms) - asked)) ms (systemctl stop)"
in_ct nft list table inet edgeshare >/dev/null || fail "the table went with the daemon"
download $((2 * MB)) || fail "the client lost access while the gateway was stopped"
in_ct systemctl start edgeshare-gateway
asked=$(now_ms)
in_ct systemctl restart edgeshare-gateway
echo "FIGURE gateway restart: $(($(now_ms) - asked)) ms (systemctl restart, until READY)"
download $((2 * MB)) || fail "the client is not online after a restart"
ledger_equals_truth "after stop, start and restart"

asked=$(now_ms)
in_ct systemctl stop edgeshare-agent
echo "FIGURE agent stop: $(($(now_ms) - asked)) ms (systemctl stop)"
[ -z "$(in_ct pgrep -u edgeshare || true)" ] || fail "agent processes left after stop: $(in_ct pgrep -a -u edgeshare)"
in_ct systemctl start edgeshare-agent

# ---- reboot ----
step "reboot of the container"
in_ct systemctl reboot || true
for _ in $(seq 1 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$NSPAWN_PID" 2>/dev/null && fail "the container did not shut down within 30 s"
stop_container
boot
portal_only_at=$(unit_prop edgeshare-portal-only ActiveEnterTimestampMonotonic)
networkd_at=$(unit_prop systemd-networkd ExecMainStartTimestampMonotonic)
network_pre_at=$(unit_prop network-pre.target ActiveEnterTimestampMonotonic)
[ "$portal_only_at" -gt 0 ] || fail "edgeshare-portal-only did not run at boot"
[ "$portal_only_at" -le "$network_pre_at" ] && [ "$portal_only_at" -lt "$networkd_at" ] ||
  fail "the table came after the network: portal-only $portal_only_at, network-pre $network_pre_at, networkd $networkd_at (µs)"
echo "FIGURE boot: portal-only's table in place at $((portal_only_at / 1000)) ms, network-pre.target at $((network_pre_at / 1000)) ms, systemd-networkd started at $((networkd_at / 1000)) ms"
wait_for 30 "the gateway after the reboot" test "$(unit_prop edgeshare-gateway ActiveState)" = active
in_ct edgeshare-gateway clients --json | jq -e 'length == 1' >/dev/null || fail "the session was not restored: $(in_ct edgeshare-gateway clients --json)"
download $((2 * MB)) || fail "the client is not online after the reboot"
ledger_equals_truth "after the reboot"

# ---- upgrade with the client downloading ----
step "upgrade to revision 2 while the client downloads"
before_pid=$(unit_prop edgeshare-gateway MainPID)
in_c curl -sS -m 60 --limit-rate 1500K -o /dev/null -w '%{size_download}' \
  "http://10.99.0.3/__standin/download/$((9 * MB))" >"$WORK/upgrade-download" 2>"$WORK/upgrade-download.err" &
curl_pid=$!
sleep 1.5
in_ct sh -c 'apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold /root/debs/2/edgeshare-gateway_*.deb /root/debs/2/edgeshare-agent_*.deb' \
  >"$WORK/upgrade.log" 2>&1 || fail "the upgrade failed: $(tail -30 "$WORK/upgrade.log")"
wait "$curl_pid" || fail "the download broke across the upgrade: $(cat "$WORK/upgrade-download.err")"
[ "$(cat "$WORK/upgrade-download")" = $((9 * MB)) ] || fail "the download across the upgrade was cut short"
[ "$(in_ct dpkg-query -W -f '${Version}' edgeshare-gateway)" = "$(in_ct dpkg-query -W -f '${Version}' edgeshare-agent)" ] || fail "versions differ"
echo "now installed: $(in_ct dpkg-query -W -f '${Version}' edgeshare-gateway); gateway PID $before_pid → $(unit_prop edgeshare-gateway MainPID)"
[ "$(unit_prop edgeshare-gateway MainPID)" != "$before_pid" ] || fail "the upgrade did not restart the gateway on the new binary"
ledger_equals_truth "across the upgrade (lost > 0: lost; < 0: counted twice)"

# ---- the quota ----
step "the client downloads until its quota cuts it off"
in_c curl -sS -m 60 --speed-limit 1 --speed-time 3 -o /dev/null "http://10.99.0.3/__standin/download/$((QUOTA_MB * MB))" 2>/dev/null && fail "a download past the quota completed"
session_ended() { in_ct edgeshare-gateway clients --json | jq -e 'length == 0'; }
wait_for 10 "the end of the session at its quota" session_ended
# The client's count is read at the end of the session, before it meets the portal again (the
# portal's answers come back from 10.99.0.3 too). Down: all the client received went through the
# session, so the two agree exactly, but for the two bare TCP segments the gateway itself sends
# the client at the cut-off to reset its connection (a probe and the RST, 40-60 bytes each, in
# the server's name: not carried, not billed). Up: the client's last ACKs and retransmits after
# the cut are counted by it but refused by the gateway (not carried, so not billed): the ledger
# may be below.
CUTOFF_MAX=120
read -r tu td <<<"$(truth)"
ledger_caught_up() {
  local ld
  ld=$(ledger_of_code | cut -d' ' -f2)
  [ "$ld" -le "$td" ] && [ $((td - ld)) -le $CUTOFF_MAX ]
}
wait_for 10 "the ledger's record of the session's end" ledger_caught_up
read -r lu ld <<<"$(ledger_of_code)"
echo "FIGURE quota: $QUOTA_MB MiB = $((QUOTA_MB * MB)) bytes; the ledger's total $((lu + ld)) bytes (up $lu down $ld); the client's own count up $tu down $td: $((tu - lu)) bytes it sent after the cut were refused, $((td - ld)) bytes of the gateway's own reset reached it"
[ $((lu + ld)) -le $((QUOTA_MB * MB)) ] || fail "billed past the quota"
[ $((lu + ld)) -ge $(((QUOTA_MB - 1) * MB)) ] || fail "cut off more than 1 MiB before the quota"
[ "$ld" -le "$td" ] && [ $((td - ld)) -le $CUTOFF_MAX ] ||
  fail "at the quota: the ledger's down ($ld) is not what the client received ($td) less the reset"
[ "$lu" -le "$tu" ] || fail "at the quota: the ledger's up ($lu) is more than the client sent ($tu)"
status=$(in_c curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://10.99.0.3/__standin/download/1000" || true)
[ "$status" != 200 ] || fail "the client is still online after its quota"
ledger_total=$((lu + ld))
for _ in $(seq 1 60); do
  [ "$(backend_used)" = "$ledger_total" ] && break
  sleep 0.5
done
echo "FIGURE agent: the backend counts $(backend_used) bytes used on the code; the ledger $ledger_total"
[ "$(backend_used)" = "$ledger_total" ] || fail "the backend's count is not the ledger's"

# ---- purge ----
step "apt-get purge"
in_ct apt-get purge -y -qq edgeshare-gateway edgeshare-agent >"$WORK/purge.log" 2>&1 || fail "purge failed: $(tail -20 "$WORK/purge.log")"
! in_ct nft list table inet edgeshare >/dev/null 2>&1 || fail "the table outlived the purge"
left=$(in_ct sh -c 'find / -xdev \( -path /proc -o -path /sys -o -path /root/debs \) -prune -o -name "*edgeshare*" -print' | grep -v '^/root/debs' || true)
[ -z "$left" ] || fail "left after purge: $left"
in_ct getent passwd edgeshare >/dev/null || fail "the system user edgeshare is gone (the README says it stays)"
[ -z "$(in_ct pgrep -f edgeshare || true)" ] || fail "edgeshare processes left after purge"
echo "left after purge: the system user edgeshare only (as the README says)"

echo "FIGURE test duration: $(elapsed)"
echo "systemd_boot: ok"
