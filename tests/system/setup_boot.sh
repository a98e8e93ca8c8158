#!/usr/bin/env bash
# `edgeshare-gateway setup` on a booted Debian 12 (systemd as PID 1, systemd-nspawn), from a
# fresh system to a client online, as the README's Pi guide has it:
#
#   client ns ── lan0 [container: ifupdown, dnsmasq, hostapd, the packages] wan0 ── upstream ns
#   (DHCP, SLAAC)       setup gives lan0 its addresses        10.99.0.1/24          10.99.0.3:80
#                                                             fd00:99::1/64        [fd00:99::3]:80
#
# - the packages are installed with apt, then `setup --ssid "Café Sol" --country GB --lan lan0`
#   (a veth stands in for wlan0, so the LAN is named; the uplink is found from the default
#   route). hostapd cannot start without a radio: its file and that its unit is enabled are
#   checked;
# - the client gets its IPv4 address by real DHCP (dhclient; option 114 must name the portal's
#   RFC 8908 API) and its IPv6 address from dnsmasq's router advertisements; it is caught by
#   the portal over both families, logs in with the code setup printed, downloads over both;
# - a second setup changes no file; `setup --undo` leaves every file as it was before setup
#   (checksums and modes compared).
# Figures: the commands and seconds from the booted system to the client online; the files
# setup wrote and undo restored or removed.
#
# Two network stacks, one booted container each: ifupdown (Debian's, the uplink in
# /etc/network/interfaces) and NetworkManager (Raspberry Pi OS Bookworm's, the uplink a
# keyfile connection; ifupdown installed too, as setup gives the LAN its address with it).
# On NetworkManager also: the LAN interface is unmanaged (setup's conf.d file) and keeps its
# addresses across a restart of NetworkManager. `setup_boot.sh ifupdown|networkmanager` runs
# one; without an argument both run side by side, the packages built once.
# Needs root, systemd-nspawn, mmdebstrap, dhclient (isc-dhcp-client), jq, curl; fails under
# CI=true where one is missing, skips otherwise. Everything made here is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/system/common.bash

[ "$(id -u)" = 0 ] || unavailable "needs root"
for tool in systemd-nspawn mmdebstrap nsenter jq curl ip strip dpkg-deb dhclient sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || unavailable "$tool is not installed (bash scripts/install-deps)"
done
for bin in edgeshare-gateway edgeshare-agent edgeshare-standin; do
  [ -x "$BIN_DIR/$bin" ] || fail "$BIN_DIR/$bin is missing: run cargo build --workspace --bins first"
done

STACK=${1:-both}
case $STACK in
  both | ifupdown | networkmanager) ;;
  *) fail "usage: $0 [ifupdown|networkmanager] (both without an argument)" ;;
esac

MB=1048576
container_test setup ess edgeshare-gateway dnsmasq hostapd NetworkManager

elapsed() { echo "$(($(date +%s) - T0)) s"; }
step() { echo "== [$STACK $(elapsed)] $*"; }
in_ct() { nsenter -t "$CT" -a "$@"; }
in_c() { ip netns exec "$NS_C" "$@"; }

# The packages (packaging/deb/build), unless the run of both stacks built them already.
DEBS=${SETUP_BOOT_DEBS:-}
if [ -z "$DEBS" ]; then
  step "packages (packaging/deb/build)"
  amd64_debs "$WORK/debs" 1
  DEBS=$WORK/debs/1
fi
if [ "$STACK" = both ]; then
  # Side by side: each stack has its own container (and cgroup), namespaces and veths, named
  # by its PID. Each one's output is printed whole once both are done.
  declare -A runs=()
  for stack in ifupdown networkmanager; do
    SETUP_BOOT_DEBS=$DEBS bash "$0" "$stack" >"$WORK/$stack.out" 2>&1 &
    runs[$stack]=$!
    STARTED_PIDS+=("$!")
  done
  failed=()
  for stack in ifupdown networkmanager; do
    wait "${runs[$stack]}" || failed+=("$stack")
    cat "$WORK/$stack.out"
  done
  [ "${#failed[@]}" = 0 ] || fail "the ${failed[*]} run failed"
  echo "FIGURE test duration (both stacks, side by side): $(elapsed)"
  echo "setup_boot: ok"
  exit 0
fi

# ---- a Debian 12 root as a Pi would have it (the container has no network: the packages
# setup configures, ifupdown, dnsmasq and hostapd, and NetworkManager, are in the root
# already) ----
INCLUDE=systemd,systemd-sysv,dbus,nftables,iproute2,adduser,procps,curl,netbase,ifupdown,dnsmasq,hostapd
if [ "$STACK" = ifupdown ]; then
  step "a Debian 12 root (minbase, systemd, ifupdown, dnsmasq, hostapd) in $ROOT"
  ROOT_TAR=$(debian_root_tar "$INCLUDE" "setup v1" "$WORK/mmdebstrap.log")
else
  step "a Debian 12 root (minbase, systemd, ifupdown, dnsmasq, hostapd, network-manager) in $ROOT"
  ROOT_TAR=$(debian_root_tar "$INCLUDE,network-manager" "setup NetworkManager v1" "$WORK/mmdebstrap.log")
fi
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$ROOT_TAR"
# The uplink as the provider has it before setup (a Pi's eth0 from its router).
if [ "$STACK" = networkmanager ]; then
  [ -L "$ROOT/etc/systemd/system/multi-user.target.wants/NetworkManager.service" ] ||
    fail "NetworkManager is not enabled in the root"
  # Raspberry Pi OS's interfaces file: loopback only; NetworkManager has the uplink.
  cat >"$ROOT/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF
  install -m 600 /dev/stdin "$ROOT/etc/NetworkManager/system-connections/wan0.nmconnection" <<'EOF'
[connection]
id=wan0
type=ethernet
interface-name=wan0

[ipv4]
method=manual
address1=10.99.0.1/24,10.99.0.2

[ipv6]
method=manual
address1=fd00:99::1/64,fd00:99::2
EOF
else
  cat >"$ROOT/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto wan0
iface wan0 inet static
    address 10.99.0.1/24
    gateway 10.99.0.2
iface wan0 inet6 static
    address fd00:99::1/64
    gateway fd00:99::2
    dad-attempts 0
EOF
fi
echo "es-setup-test" >"$ROOT/etc/hostname"
mkdir -p "$ROOT/root/debs"
cp "$DEBS"/*.deb "$ROOT/root/debs/"

# ---- boot, and the networks around the container ----
step "boot: systemd as PID 1 in $MACHINE"
ip netns add "$NS_C"
ip netns add "$NS_U"
ip -n "$NS_C" link set lo up
ip -n "$NS_U" link set lo up
boot_container "$ROOT" "$MACHINE" "$WORK/console.log" \
  --network-veth-extra="$VETH_LAN:lan0" --network-veth-extra="$VETH_WAN:wan0"
wait_for 10 "the container's veth ends" ip link show "$VETH_WAN"
ip link set "$VETH_LAN" netns "$NS_C"
ip link set "$VETH_WAN" netns "$NS_U"
ip -n "$NS_C" link set "$VETH_LAN" address 02:00:00:00:00:02 up
ip -n "$NS_U" addr add 10.99.0.2/24 dev "$VETH_WAN"
ip -n "$NS_U" addr add 10.99.0.3/24 dev "$VETH_WAN"
ip -n "$NS_U" addr add fd00:99::2/64 dev "$VETH_WAN" nodad
ip -n "$NS_U" addr add fd00:99::3/64 dev "$VETH_WAN" nodad
ip -n "$NS_U" link set "$VETH_WAN" up
state=$(timeout 90 nsenter -t "$CT" -a systemctl is-system-running --wait 2>>"$WORK/console.log" || true)
case $state in
  running | degraded) ;;
  *) fail "the container did not finish booting: '$state'; $(tail -20 "$WORK/console.log")" ;;
esac
[ "$state" = running ] || echo "note: failed units in the container: $(in_ct systemctl --failed --no-legend --plain | awk '{print $1}' | xargs)"
nm_state() { in_ct nmcli -t -f DEVICE,STATE device status | sed -n "s/^$1://p"; }
if [ "$STACK" = networkmanager ]; then
  # The uplink's default route (what setup takes for the uplink) comes with NetworkManager.
  wait_for 30 "NetworkManager connecting wan0 ($(nm_state wan0))" test "$(nm_state wan0)" = connected
  # Else that setup makes NetworkManager leave lan0 alone would prove nothing.
  wait_for 30 "NetworkManager managing lan0 before setup" test "$(nm_state lan0)" != unmanaged
  echo "before setup, NetworkManager has: wan0 $(nm_state wan0), lan0 $(nm_state lan0)"
fi

for address in 10.99.0.3:80 "[fd00:99::3]:80"; do
  out=$WORK/internet-$(echo "$address" | tr -cd '0-9a-f')
  ip netns exec "$NS_U" "$BIN_DIR/edgeshare-standin" --listen "$address" >"$out" 2>"$out.log" &
  STARTED_PIDS+=("$!")
  wait_for 10 "the stand-in at $address" grep -q "listening" "$out"
done

# The files setup will write, with their checksums and modes before it ("absent" if none).
checksums() {
  local path
  for path in "$@"; do
    if in_ct test -e "$path"; then
      echo "$path $(in_ct sha256sum "$path" | cut -d' ' -f1) $(in_ct stat -c %a "$path")"
    else
      echo "$path absent"
    fi
  done
}

# ---- from the booted system to a client online: the README's commands ----
SETUP=(edgeshare-gateway setup --ssid "Café Sol" --country GB --lan lan0)
step "1. apt-get install ./edgeshare-gateway…deb ./edgeshare-agent…deb"
started=$(date +%s%3N)
in_ct sh -c 'apt-get install -y -qq --no-install-recommends /root/debs/edgeshare-gateway_*.deb /root/debs/edgeshare-agent_*.deb' \
  >"$WORK/install.log" 2>&1 || fail "apt-get install failed: $(tail -30 "$WORK/install.log")"

# Errors before anything is written: no Wi-Fi interface here (a veth is none) and none named;
# a country the regulatory database does not know.
etc_before=$(in_ct sh -c 'find /etc /var/lib/edgeshare -type f | sort | xargs sha256sum' | sha256sum)
refused() { # EXPECTED-WORDS ARGS…: setup must fail, saying EXPECTED-WORDS
  local expected=$1 out
  shift
  if out=$(in_ct edgeshare-gateway setup "$@" 2>&1); then fail "setup $* succeeded: $out"; fi
  grep -qF "$expected" <<<"$out" || fail "setup $*: '$out' does not say '$expected'"
  echo "setup $* → $out"
}
refused "name the access point's interface with --lan" --ssid "Café Sol" --country GB
refused "GB, not UK" --ssid "Café Sol" --country UK --lan lan0
refused "no such interface" --ssid "Café Sol" --country GB --lan wlan0
[ "$(in_ct sh -c 'find /etc /var/lib/edgeshare -type f | sort | xargs sha256sum' | sha256sum)" = "$etc_before" ] ||
  fail "a refused setup changed a file in /etc or /var/lib/edgeshare"

in_ct "${SETUP[@]}" --dry-run >"$WORK/dry-run.out" || fail "setup --dry-run failed: $(cat "$WORK/dry-run.out")"
mapfile -t FILES < <(sed -nE 's/^(create|replace|unchanged) +(\/[^ ]+) .*/\2/p' "$WORK/dry-run.out")
[ "${#FILES[@]}" -ge 4 ] || fail "setup --dry-run listed ${#FILES[@]} files: $(cat "$WORK/dry-run.out")"
grep -q '^    dhcp-option=114,"http://10.66.0.1:8080/captive-portal/api"$' "$WORK/dry-run.out" ||
  fail "the dry run does not show dnsmasq's option 114: $(cat "$WORK/dry-run.out")"
checksums "${FILES[@]}" >"$WORK/before"
unit_states() {
  local unit
  for unit in hostapd dnsmasq edgeshare-portal-only edgeshare-gateway; do
    echo "$unit $(in_ct systemctl is-enabled "$unit" || true) $(in_ct systemctl is-active "$unit" || true)"
  done
}
unit_states >"$WORK/units-before"
[ ! -e "$ROOT/etc/dnsmasq.d/edgeshare.conf" ] || fail "--dry-run wrote a file"
echo "setup --dry-run: ${#FILES[@]} files shown, none written"

step "2. ${SETUP[*]}"
in_ct "${SETUP[@]}" >"$WORK/setup.out" 2>"$WORK/setup.err" ||
  fail "setup failed: $(cat "$WORK/setup.out" "$WORK/setup.err")"
head -n -1 "$WORK/setup.out" | sed 's/^/  /' # not the code: a secret
CODE=$(tail -n1 "$WORK/setup.out")
[[ $CODE =~ ^[A-Za-z0-9-]{4,}$ ]] || fail "setup did not end with a code: '$CODE'"
grep -q "^portal: http://10.66.0.1:8080/" "$WORK/setup.out" || fail "setup did not print the portal's address"
grep -q "hostapd" "$WORK/setup.err" && echo "  (expected: hostapd cannot start without a radio) $(grep hostapd "$WORK/setup.err")"

hostapd_conf=$(in_ct cat /etc/hostapd/hostapd.conf)
for line in "interface=lan0" "ssid=Café Sol" "country_code=GB" "ap_isolate=1"; do
  grep -qxF "$line" <<<"$hostapd_conf" || fail "hostapd.conf has no '$line': $hostapd_conf"
done
for unit in hostapd dnsmasq edgeshare-portal-only edgeshare-gateway; do
  [ "$(in_ct systemctl is-enabled "$unit")" = enabled ] || fail "$unit is not enabled"
done
for unit in dnsmasq edgeshare-gateway; do
  [ "$(in_ct systemctl is-active "$unit")" = active ] || fail "$unit is not running"
done
in_ct edgeshare-gateway check-config >/dev/null || fail "check-config refuses what setup wrote"
echo "hostapd.conf as expected, the units enabled, dnsmasq and the gateway running"
if [ "$STACK" = networkmanager ]; then
  step "NetworkManager leaves lan0 alone, also once restarted"
  lan_addresses() { in_ct ip -j addr show dev lan0 scope global | jq -r '[.[].addr_info[]? | select(.local) | "\(.local)/\(.prefixlen)"] | sort | join(" ")'; }
  addresses=$(lan_addresses)
  [[ $addresses == *10.66.0.1/24* && $addresses =~ fd[0-9a-f:]+/64 ]] ||
    fail "lan0 does not have setup's addresses: '$addresses'"
  [ "$(nm_state lan0)" = unmanaged ] || fail "NetworkManager manages lan0: $(in_ct nmcli device status)"
  in_ct systemctl restart NetworkManager
  # Until NetworkManager is done starting (its devices taken over or left alone).
  in_ct nm-online -s -q -t 30 || fail "NetworkManager did not finish starting: $(in_ct nmcli device status)"
  wait_for 30 "NetworkManager connecting wan0 again ($(nm_state wan0))" test "$(nm_state wan0)" = connected
  [ "$(nm_state lan0)" = unmanaged ] || fail "NetworkManager manages lan0 once restarted: $(in_ct nmcli device status)"
  [ "$(lan_addresses)" = "$addresses" ] || fail "lan0's addresses across NetworkManager's restart: '$addresses', then '$(lan_addresses)'"
  in_ct nmcli device status | sed 's/^/  /'
  echo "lan0 unmanaged, its addresses ($addresses) kept across NetworkManager's restart"
fi

step "the client: IPv4 by DHCP (option 114), IPv6 by router advertisements"
cat >"$WORK/dhclient.conf" <<'EOF'
option captive-portal code 114 = text;
request subnet-mask, broadcast-address, routers, domain-name-servers, captive-portal;
EOF
# dhclient-script would rewrite the host's /etc/resolv.conf: this one only sets the address
# and route in the client's namespace and keeps what the server offered.
cat >"$WORK/dhclient-script" <<EOF
#!/bin/sh
case \$reason in
  BOUND|RENEW|REBIND|REBOOT)
    ip addr add "\$new_ip_address/\$new_subnet_mask" dev "\$interface"
    ip route replace default via "\$new_routers"
    env | grep '^new_' >"$WORK/lease.env"
    ;;
esac
exit 0
EOF
chmod +x "$WORK/dhclient-script"
in_c dhclient -d -v -1 -cf "$WORK/dhclient.conf" -sf "$WORK/dhclient-script" \
  -lf "$WORK/dhclient.leases" -pf "$WORK/dhclient.pid" "$VETH_LAN" >"$WORK/dhclient.log" 2>&1 &
STARTED_PIDS+=("$!")
wait_for 30 "a DHCP lease ($(tail -3 "$WORK/dhclient.log" 2>/dev/null | xargs))" test -s "$WORK/lease.env"
grep -E "DHCP(DISCOVER|OFFER|REQUEST|ACK)" "$WORK/dhclient.log" | sed 's/^/  /'
sed 's/^/  /' "$WORK/lease.env"
ipv4=$(sed -n 's/^new_ip_address=//p' "$WORK/lease.env")
api=$(sed -n 's/^new_captive_portal=//p' "$WORK/lease.env")
[[ $ipv4 == 10.66.0.* ]] || fail "the client's DHCP address: '$ipv4'"
[ "$api" = "http://10.66.0.1:8080/captive-portal/api" ] || fail "option 114: '$api'"
echo "IPv4 by DHCP: $ipv4; option 114: $api"
# Once its duplicate address detection is done: a tentative address is not used as a source.
global6() { in_c ip -j -6 addr show dev "$VETH_LAN" scope global -tentative | jq -r '.[].addr_info[]? | .local // empty | select(startswith("fd"))' | head -n1; }
has_global6() { [ -n "$(global6)" ] && in_c ip -6 route show default | grep -q via; }
wait_for 30 "an IPv6 address and route from the router advertisements" has_global6
ipv6=$(global6)
ula=$(in_ct ip -j -6 addr show dev lan0 scope global | jq -r '.[].addr_info[]? | .local // empty' | head -n1)
echo "IPv6 by SLAAC: $ipv6 (the gateway: $ula); default route: $(in_c ip -6 route show default)"

step "the client is caught by the portal over both families"
answer=$(in_c curl -sS -m 5 -o /dev/null -w '%{http_code} %{redirect_url}' "http://10.99.0.3/__standin/download/1000" || true)
[ "$answer" = "302 http://10.66.0.1:8080/" ] || fail "IPv4 while captive: '$answer'"
echo "GET http://10.99.0.3/… → $answer"
answer=$(in_c curl -sS -m 5 -o /dev/null -w '%{http_code} %{redirect_url}' "http://[fd00:99::3]/__standin/download/1000" || true)
[ "$answer" = "302 http://10.66.0.1:8080/" ] || fail "IPv6 while captive: '$answer'"
echo "GET http://[fd00:99::3]/… → $answer"
rfc8908=$(in_c curl -sS -m 5 "$api") || fail "the RFC 8908 API at $api"
jq -e '.captive == true' <<<"$rfc8908" >/dev/null || fail "the RFC 8908 API says: $rfc8908"

step "the client logs in with the code setup printed and downloads over both families"
page=$(in_c curl -sS -m 10 -d "code=$CODE" http://10.66.0.1:8080/login)
grep -q "You are online" <<<"$page" || fail "login did not say online: $page"
download() { # URL BYTES
  local got
  got=$(in_c curl -sS -m 60 -o /dev/null -w '%{size_download}' "$1/__standin/download/$2") && [ "$got" = "$2" ]
}
download http://10.99.0.3 $((2 * MB)) || fail "the client cannot download over IPv4"
online=$(date +%s%3N)
echo "FIGURE ($STACK) from a fresh booted system to a client online: 2 commands (apt-get install of the two packages; setup), $(((online - started) / 1000)).$(((online - started) % 1000 / 100)) s (the client's DHCP and login included)"
# The gateway learns the client's IPv6 address when it talks to it over IPv6 (the portal).
# (With several SLAAC addresses, the one the client's own source selection uses.)
source6=$(in_c curl -sS -m 5 -o /dev/null -w '%{local_ip}' "http://[$ula]:8080/") || fail "the portal over IPv6"
learned() {
  in_c curl -sS -m 2 -o /dev/null "http://[$ula]:8080/"
  in_ct edgeshare-gateway clients --json | jq -e --arg a "$source6" '[.[].devices[].also[]?] | index($a)'
}
wait_for 20 "the gateway learning the client's IPv6 address $source6" learned
download "http://[fd00:99::3]" $((2 * MB)) || fail "the client cannot download over IPv6"
echo "downloaded 2 MiB over IPv4 and 2 MiB over IPv6"

step "a second setup changes nothing"
checksums "${FILES[@]}" >"$WORK/after-setup"
in_ct "${SETUP[@]}" >"$WORK/setup2.out" 2>"$WORK/setup2.err" || fail "the second setup failed: $(cat "$WORK/setup2.out" "$WORK/setup2.err")"
grep -q "setup done: 0 file(s) created, 0 replaced" "$WORK/setup2.out" || fail "the second setup changed files: $(cat "$WORK/setup2.out")"
checksums "${FILES[@]}" | diff "$WORK/after-setup" - || fail "the second setup changed files"
grep -q '^run .*restart' "$WORK/setup2.out" && fail "the second setup restarted a service: $(cat "$WORK/setup2.out")"
download http://10.99.0.3 $MB || fail "the client went offline across the second setup"

step "setup --undo"
in_ct edgeshare-gateway setup --undo >"$WORK/undo.out" || fail "setup --undo failed: $(cat "$WORK/undo.out")"
sed 's/^/  /' "$WORK/undo.out"
checksums "${FILES[@]}" | diff "$WORK/before" - || fail "setup --undo did not put the files back"
written=$(grep -cE '^(create|replace) ' "$WORK/dry-run.out")
echo "FIGURE ($STACK) files: setup wrote $written ($(grep -c '^create ' "$WORK/dry-run.out") created, $(grep -c '^replace ' "$WORK/dry-run.out") replaced); setup --undo restored $(grep -c '^restored ' "$WORK/undo.out") and removed $(grep -c '^removed ' "$WORK/undo.out"): every checksum and mode as before"
in_ct test ! -e /var/lib/edgeshare/setup || fail "setup's backups outlived --undo"
unit_states | diff "$WORK/units-before" - || fail "setup --undo did not put the units back as they were"
[ -z "$(in_ct ip -j addr show dev lan0 scope global | jq -r '.[].addr_info[]?.local // empty')" ] ||
  fail "lan0 kept setup's addresses after --undo: $(in_ct ip addr show dev lan0)"
echo "units after --undo as before setup: $(xargs <"$WORK/units-before"); lan0 has no global address"
if [ "$STACK" = networkmanager ]; then
  wait_for 30 "NetworkManager managing lan0 again after --undo ($(nm_state lan0))" test "$(nm_state lan0)" != unmanaged
  echo "NetworkManager manages lan0 again after --undo: $(nm_state lan0)"
fi

echo "FIGURE ($STACK) test duration: $(elapsed)"
echo "setup_boot $STACK: ok"
