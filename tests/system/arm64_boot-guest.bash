#!/bin/bash
# The inside of tests/system/arm64_boot.sh: runs at boot in the Debian 12 arm64 VM (systemd as
# PID 1, an arm64 kernel under qemu-system-aarch64), started by edgeshare-arm64-test.service,
# which powers the VM off when it ends. Not a test of its own (tests/system/run runs *.sh only).
#
# The VM has no network card: the client and the upstream are network namespaces made here,
#
#   client ns (c0 10.66.0.2) ── lan0 [VM: systemd, gateway] wan0 ── upstream ns (u0 10.99.0.3:
#                                10.66.0.1            10.99.0.1       busybox httpd)
#
# and everything below happens in the VM. Prints FIGURE lines and, last, one verdict line
# (GUEST_PASS or GUEST_FAIL: reason) that the host reads on the serial console.
set -euo pipefail

MB=1048576
QUOTA_MB=20
T0=$(date +%s%3N)

fail() {
  echo "GUEST_FAIL: $*"
  exit 1
}
on_exit() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "--- the VM's journal (edgeshare units), last lines:"
    journalctl --no-pager -n 40 -u edgeshare-gateway -u edgeshare-portal-only 2>&1 || true
    # A failure that did not say why (set -e) still gives a verdict the host can read.
    echo "GUEST_FAIL: exit $status (see above)"
  fi
}
trap on_exit EXIT

now_ms() { date +%s%3N; }
step() { echo "== [$((($(now_ms) - T0) / 1000)) s] $*"; }
in_c() { ip netns exec client "$@"; }
# within SECONDS COMMAND…: retries COMMAND every 0.2 s until it succeeds; false after SECONDS.
within() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
# wait_for SECONDS WHAT COMMAND…: within, or fails naming WHAT.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  within "$seconds" "$@" || fail "$what: not within $seconds s"
}
unit_prop() { systemctl show -p "$2" --value "$1"; }

read -r uptime _ </proc/uptime
echo "FIGURE arm64 boot: the test unit started ${uptime%.*} s after the kernel did ($(uname -m), kernel $(uname -r))"
[ "$(uname -m)" = aarch64 ] || fail "not an arm64 kernel: $(uname -m)"
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm), not systemd"

step "the client and the upstream: network namespaces with veths to lan0 and wan0"
ip netns add client
ip netns add upstream
ip link add lan0 type veth peer name c0 netns client
ip link add wan0 type veth peer name u0 netns upstream
ip addr add 10.66.0.1/24 dev lan0
ip addr add 10.99.0.1/24 dev wan0
ip link set lan0 up
ip link set wan0 up
ip -n client link set lo up
ip -n client addr add 10.66.0.2/24 dev c0
ip -n client link set c0 up
ip -n client route add default via 10.66.0.1
ip -n upstream link set lo up
ip -n upstream addr add 10.99.0.3/24 dev u0
ip -n upstream link set u0 up
# The upstream's web server: busybox httpd serving /srv/www (small, 5m and big: files of
# 1000 bytes, 5 MiB and 40 MiB the host made).
ip netns exec upstream busybox httpd -p 10.99.0.3:80 -h /srv/www ||
  fail "busybox httpd did not start in the upstream namespace"

step "apt-get install ./edgeshare-gateway…arm64.deb ./edgeshare-agent…arm64.deb (offline)"
began=$(now_ms)
apt-get install -y -qq --no-install-recommends /root/debs/edgeshare-gateway_*_arm64.deb \
  /root/debs/edgeshare-agent_*_arm64.deb >/root/install.log 2>&1 ||
  fail "apt-get install failed: $(tail -20 /root/install.log)"
echo "FIGURE arm64 apt-get install of both packages: $(($(now_ms) - began)) ms"
dpkg-query -W -f '${Package} ${Version} ${Architecture}\n' edgeshare-gateway edgeshare-agent
[ "$(dpkg-query -W -f '${Architecture}' edgeshare-gateway)" = arm64 ] || fail "the gateway package is not arm64"

cat >/etc/edgeshare/gateway.toml <<'EOF'
[lan]
interface = "lan0"
[wan]
interface = "wan0"
nat = true
[portal]
port = 8080
[codes]
source = "local"
[state]
dir = "/var/lib/edgeshare"
[control]
socket = "/run/edgeshare/gateway.sock"
group = "edgeshare"
[capture]
enabled = true
[metrics]
listen = "127.0.0.1:9464"
EOF
edgeshare-gateway check-config >/dev/null || fail "check-config refused the test's gateway.toml"

step "start edgeshare-portal-only and edgeshare-gateway (units as shipped)"
asked=$(now_ms)
systemctl start edgeshare-portal-only edgeshare-gateway || fail "systemctl start failed"
started=$(now_ms)
[ "$(unit_prop edgeshare-gateway ActiveState)" = active ] || fail "the gateway is not active"
start_us=$(unit_prop edgeshare-gateway ExecMainStartTimestampMonotonic)
ready_us=$(unit_prop edgeshare-gateway ActiveEnterTimestampMonotonic)
echo "FIGURE arm64 gateway READY: $(((ready_us - start_us) / 1000)) ms after its process started ($((started - asked)) ms for systemctl start, check-config included)"

# The table, over netlink from the arm64 binary (what qemu-user cannot do).
table=$(nft list table inet edgeshare) || fail "no nftables table inet edgeshare"
echo "table inet edgeshare: $(grep -c 'chain ' <<<"$table") chains, $(grep -c 'set ' <<<"$table") sets"
metrics() { curl -sS -m 5 http://127.0.0.1:9464/metrics; }
# metric SERIES: its value (the line that starts with SERIES and a space), else nothing.
metric() { metrics | awk -v s="$1" 'index($0, s " ") == 1 { print $2 }'; }
wait_for 10 "the capture socket on lan0 (edgeshare_capture_buffer_bytes)" \
  test -n "$(metric 'edgeshare_capture_buffer_bytes{interface="lan0"}')"
echo "capture socket on lan0: buffer $(metric 'edgeshare_capture_buffer_bytes{interface="lan0"}') bytes"

step "the client is captive"
status=$(in_c curl -sS -m 5 -o /dev/null -w '%{http_code} %{redirect_url}' http://10.99.0.3/small || true)
[ "$status" = "302 http://10.66.0.1:8080/" ] || fail "a captive client's web request did not land on the portal: '$status'"
echo "GET http://10.99.0.3/small while captive → $status (the portal)"

step "a $QUOTA_MB MB local code; the client logs in through the portal"
CODE=$(edgeshare-gateway codes create --mb "$QUOTA_MB" --hours 1)
[ -n "$CODE" ] || fail "no code made"
# Ground truth: the client counts its own traffic with the upstream.
in_c nft -f - <<'EOF'
table inet truth {
  counter up {}
  counter down {}
  chain output { type filter hook output priority 0; ip daddr 10.99.0.3 counter name up; }
  chain input { type filter hook input priority 0; ip saddr 10.99.0.3 counter name down; }
}
EOF
truth() { in_c nft -j list table inet truth | jq -r '[.nftables[] | select(.counter) | {(.counter.name): .counter.bytes}] | add | "\(.up) \(.down)"'; }
asked=$(now_ms)
page=$(in_c curl -sS -m 20 -d "code=$CODE" http://10.66.0.1:8080/login)
grep -q "You are online" <<<"$page" || fail "login did not say online: $page"
online() { [ "$(in_c curl -sS -m 5 -o /dev/null -w '%{http_code}' http://10.99.0.3/small)" = 200 ]; }
wait_for 10 "the client online after its login" online
echo "FIGURE arm64 login: the client online $(($(now_ms) - asked)) ms after it sent its code to the portal"

ledger_of_code() { # "up down" of the code's latest ledger record ("0 0" before the first)
  { cat /var/lib/edgeshare/ledger/usage-*.jsonl 2>/dev/null || true; } |
    jq -rs --arg code "$CODE" 'map(select(.code == $code)) | max_by(.seq) // {up: 0, down: 0} | "\(.up) \(.down)"'
}
# meters: "kernel capture", each the sum of up and down since the daemon started.
meters() {
  metrics | awk '/^edgeshare_metered_bytes_total\{meter="kernel"/ { k += $2 } /^edgeshare_metered_bytes_total\{meter="capture"/ { c += $2 } END { printf "%d %d\n", k, c }'
}
meters_agree() { read -r k c <<<"$(meters)"; [ "$k" -gt 0 ] && [ "$k" = "$c" ]; }
# meters_equal WHEN: waits (30 s at most) for the audit meter to report, then both meters'
# totals must be the same number.
meters_equal() {
  local kernel capture
  within 30 meters_agree || true
  read -r kernel capture <<<"$(meters)"
  echo "FIGURE arm64 meters $1: kernel (billing) $kernel bytes, capture (audit) $capture bytes"
  [ "$kernel" -gt 0 ] && [ "$kernel" = "$capture" ] || fail "$1: the meters differ (kernel $kernel, capture $capture)"
}

step "a 5 MiB download through the gateway"
began=$(now_ms)
got=$(in_c curl -sS -m 120 -o /dev/null -w '%{size_download}' http://10.99.0.3/5m) ||
  fail "the online client cannot download"
took=$(($(now_ms) - began))
[ "$got" = $((5 * MB)) ] || fail "the download was cut short: $got bytes"
echo "FIGURE arm64 throughput: 5 MiB through the gateway in $took ms ($((5 * MB * 1000 / (took + 1) / 1024)) KiB/s)"
in_sync() { [ "$(truth)" = "$(ledger_of_code)" ]; }
within 30 in_sync ||
  fail "the ledger (up down: $(ledger_of_code)) is not the client's own count ($(truth))"
meters_equal "after 5 MiB"
echo "FIGURE after 5 MiB: ledger (up down) $(ledger_of_code), the client's own count $(truth), meters (kernel capture) $(meters)"

step "the client downloads until its quota cuts it off"
if in_c curl -sS -m 120 --speed-limit 1 --speed-time 5 -o /dev/null http://10.99.0.3/big 2>/dev/null; then
  fail "a download past the quota completed"
fi
session_ended() { edgeshare-gateway clients --json | jq -e 'length == 0'; }
wait_for 20 "the end of the session at its quota" session_ended
# As in systemd_boot.sh: down, the client received what was carried plus the gateway's own
# reset at the cut (two bare segments, not billed); up, its ACKs after the cut were refused.
CUTOFF_MAX=120
read -r tu td <<<"$(truth)"
ledger_caught_up() {
  local ld
  ld=$(ledger_of_code | cut -d' ' -f2)
  [ "$ld" -le "$td" ] && [ $((td - ld)) -le $CUTOFF_MAX ]
}
wait_for 20 "the ledger's record of the session's end" ledger_caught_up
read -r lu ld <<<"$(ledger_of_code)"
echo "FIGURE arm64 quota: $QUOTA_MB MiB = $((QUOTA_MB * MB)) bytes; the ledger's total $((lu + ld)) (up $lu down $ld); the client's own count up $tu down $td"
[ $((lu + ld)) -le $((QUOTA_MB * MB)) ] || fail "billed past the quota"
[ $((lu + ld)) -ge $(((QUOTA_MB - 1) * MB)) ] || fail "cut off more than 1 MiB before the quota"
[ "$lu" -le "$tu" ] || fail "the ledger's up ($lu) is more than the client sent ($tu)"
# At the cut the meters part by exactly the bytes refused: the kernel's (billing) stays the
# ledger's, the capture on lan0 (audit) also saw what the client sent after the cut and the
# gateway's reset, i.e. the client's own count, read before any other traffic.
meters_at_cut() { read -r k c <<<"$(meters)"; [ "$k" = $((lu + ld)) ] && [ "$c" = $((tu + td)) ]; }
within 30 meters_at_cut || true
read -r kernel capture <<<"$(meters)"
echo "FIGURE arm64 meters at the quota: kernel (billing) $kernel bytes = the ledger's $((lu + ld)); capture (audit) $capture bytes = the client's own count $((tu + td)) ($((capture - kernel)) bytes refused after the cut)"
[ "$kernel" = $((lu + ld)) ] || fail "at the quota: the kernel meter ($kernel) is not the ledger ($((lu + ld)))"
[ "$capture" = $((tu + td)) ] || fail "at the quota: the capture meter ($capture) is not the client's own count ($((tu + td)))"
status=$(in_c curl -sS -m 5 -o /dev/null -w '%{http_code}' http://10.99.0.3/small || true)
[ "$status" != 200 ] || fail "the client is still online after its quota"

echo "FIGURE arm64 guest test: $((($(now_ms) - T0) / 1000)) s"
echo GUEST_PASS
