#!/usr/bin/env bash
# Billing at a code's expiry, for real: the gateway (codes checked with the stand-in backend)
# and the agent (reporting its ledger, with its default settings) beside it, clients in a
# network namespace downloading without pause through codes that expire after 1 to 3
# minutes. After each expiry the backend refuses every report (400, then 404), so whatever
# was not reported before is lost to the provider: per code, the bytes lost are the ledger's
# total for its session minus what the backend deducted. Must be 0.
#
#   CODES="1 2 3"  the codes' lifetimes in minutes, one client each (default "1")
#   BIN=DIR        the gateway and agent binaries (default target/debug; an older build
#                  gives the "before" figure: it must accept the same config)
#   ALLOW_LOSS=1   print the figures without failing (for measuring an older build)
#
# Needs root (namespaces, nftables), curl, jq, tc; the binaries built
# (cargo build --workspace --bins). Cleans up on any exit.
# shellcheck source=tests/system/netns.bash
. "$(dirname "$0")/netns.bash"

CODES=${CODES:-1}
real_binaries_test billing_expiry

netns_testbed bx 16
count=$(wc -w <<<"$CODES")
netns_add_clients cl 0 "$count"
# About what a Pi's uplink gives, shared by the clients: their downloads never pause.
in_ns "$NS_U" tc qdisc add dev u0 root tbf rate 16mbit burst 64kb latency 200ms

netns_start_standin "$NS_U" "$WORK/backend" "$STANDIN" --listen 10.99.0.2:8080
netns_start_standin "$NS_U" "$WORK/internet" "$STANDIN" --listen 10.99.0.3:80

netns_start_billing "$WORK" "es_bx_$$" billing-test 9465

# Each client: a code of its lifetime, made now, entered at once, then a download that
# lasts until the gateway cuts the session (the code's data, 1000 MB, is never the limit).
read -r -a lifetimes <<<"$CODES"
codes=()
expires=()
n=0
for minutes in "${lifetimes[@]}"; do
  hours=$(awk -v m="$minutes" 'BEGIN { printf "%.6f", m / 60 }')
  code=$(in_ns "$NS_G" "${GW[@]}" codes create --mb 1000 --hours "$hours")
  expires+=($(($(date +%s) + minutes * 60)))
  codes+=("$code")
  page=$(in_ns "$NS_C" curl -sS -m 10 --interface "cl$n" -d "code=$code" http://10.66.0.1:8080/login)
  grep -q "You are online" <<<"$page" || fail "client $n: the code was not accepted: $page"
  ip netns exec "$NS_C" curl -sS --interface "cl$n" -o /dev/null --speed-limit 1 --speed-time 5 \
    -m $((minutes * 60 + 30)) "http://10.99.0.3/__standin/download/$((4 << 30))" \
    >/dev/null 2>&1 &
  netns_track_pid $!
  n=$((n + 1))
done

# The stand-in keeps an expired code for 60 s (answering 400) before deleting it: what it
# deducted is read 20 s after the expiry, when no report can change it any more.
backend_used() {
  in_ns "$NS_U" curl -sS -m 3 "http://10.99.0.2:8080/__standin/codes/$1" |
    jq -r '((.totalMB - .remainingMB) * 1048576 | round)'
}
ledger_total() {
  { cat "$WORK"/state/ledger/usage-*.jsonl 2>/dev/null || true; } | jq -rs --arg c "$1" \
    'map(select(.code == $c)) | if length == 0 then 0 else (map(.up + .down) | max) end'
}
lost_total=0
printf '\n%-8s %14s %14s %10s %s\n' "LIFETIME" "LEDGER B" "BACKEND B" "LOST B" "SESSION END"
for i in "${!codes[@]}"; do
  wait_until=$((expires[i] + 20))
  while [ "$(date +%s)" -lt "$wait_until" ]; do sleep 1; done
  code=${codes[$i]}
  ledger=$(ledger_total "$code")
  used=$(backend_used "$code")
  lost=$((ledger - used))
  lost_total=$((lost_total + lost))
  ended=$({ cat "$WORK"/state/ledger/usage-*.jsonl 2>/dev/null || true; } | jq -rs --arg c "$code" \
    'map(select(.code == $c and .ended != null)) | .[0].ended // "still open"')
  printf '%-8s %14s %14s %10s %s\n' "${lifetimes[$i]} min" "$ledger" "$used" "$lost" "$ended"
  [ "$lost" -ge 0 ] || fail "code $i: the backend deducted $((-lost)) bytes more than the ledger holds"
  [ "$ledger" -gt 1000000 ] || fail "code $i: only $ledger bytes in the ledger: the download did not run"
done
refused=$(in_ns "$NS_U" curl -sS -m 3 http://10.99.0.2:8080/__standin/received |
  jq '[.[] | select(.path == "/api/gateway/report-usage" and (.status // 0) >= 400)] | length')
echo "reports refused by the backend: $refused; bytes lost at expiry in all: $lost_total"
echo "billing_expiry: $(($(date +%s) - began)) s"
if [ "${ALLOW_LOSS:-}" != 1 ]; then
  [ "$lost_total" = 0 ] || fail "$lost_total bytes were used but never billed (see $ARTIFACTS/billing_expiry/)"
  [ "$refused" = 0 ] || fail "$refused reports were refused"
fi
echo "billing_expiry: OK"
