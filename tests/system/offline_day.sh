#!/usr/bin/env bash
# The backend down for a (scaled) day, for real: the gateway (backend codes, the provider's
# list read every 5 s) and the agent beside it, the stand-in backend, three clients in a
# network namespace. Before the outage one client uses a code for a while. Then the backend
# refuses every connection for OUTAGE seconds, and meanwhile: the portal, `status` say since
# when; another account's code is refused; the provider's own codes admit consumers, capped
# at what they had left (less what this gateway used of them), a device re-enters a code it
# had used online, the gateway restarts, a third code logs in after the restart. When the
# backend is back the agent reports the ledger. Checked per code: billed (the backend's
# debit) = the ledger's total (every byte billed, none twice), never above the code's total;
# printed beside the clients' own counters.
#
#   OUTAGE=S   seconds without the backend (default 90)
#   BIN=DIR    the binaries (default target/debug)
#
# Needs root (namespaces, nftables), curl, jq, tc, nft; the binaries built
# (cargo build --workspace --bins). Cleans up on any exit.
# shellcheck source=tests/system/netns.bash
. "$(dirname "$0")/netns.bash"

OUTAGE=${OUTAGE:-90}
BACKEND=http://10.99.0.2:8080
MiB=1048576
real_binaries_test offline_day 'state/ledger/*.jsonl'

netns_testbed od 16
netns_add_clients cl 0 3
in_ns "$NS_U" tc qdisc add dev u0 root tbf rate 16mbit burst 64kb latency 200ms
netns_start_standin "$NS_U" "$WORK/backend" "$STANDIN" --listen 10.99.0.2:8080
netns_start_standin "$NS_U" "$WORK/internet" "$STANDIN" --listen 10.99.0.3:80
export CODES_EXTRA='list_refresh = "5s"\n'
netns_start_billing "$WORK" "es_od_$$" offline-test 9468 2s

# Each client's own count of its downloads (IP packets, as the gateway counts them).
truth_rules=""
for n in 0 1 2; do
  ip=$(netns_client_ip "$n")
  truth_rules+="add rule inet odtruth input ip daddr $ip ip saddr 10.99.0.3 counter comment \"cl$n\"; "
  truth_rules+="add rule inet odtruth output ip saddr $ip ip daddr 10.99.0.3 counter comment \"cl$n\"; "
done
in_ns "$NS_C" nft "add table inet odtruth; \
  add chain inet odtruth input { type filter hook input priority 0; }; \
  add chain inet odtruth output { type filter hook output priority 0; }; $truth_rules"
client_bytes() {
  in_ns "$NS_C" nft -j list table inet odtruth | jq --arg c "cl$1" \
    '[.nftables[] | .rule? // empty | select(.comment == $c) | .expr[] | .counter? // empty | .bytes] | add'
}

code_a=$(in_ns "$NS_G" "${GW[@]}" codes create --mb 8 --hours 1)
code_b=$(in_ns "$NS_G" "${GW[@]}" codes create --mb 30 --hours 1)
code_c=$(in_ns "$NS_G" "${GW[@]}" codes create --mb 40 --hours 1)
token=$(in_ns "$NS_U" curl -sS -m 5 -H 'Content-Type: application/json' \
  -d '{"email": "admin@example.com", "password": "Admin@123"}' "$BACKEND/api/auth/login" | jq -r .token)
code_f=$(in_ns "$NS_U" curl -sS -m 5 -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"totalMB": 100, "expireHours": 1}' "$BACKEND/api/provider/codes" | jq -r '.codes[0].code')

login() { # CLIENT CODE: the portal's status code
  in_ns "$NS_C" curl -sS -m 20 -o "$WORK/page" -w '%{http_code}' --interface "cl$1" \
    -d "code=$2" http://10.66.0.1:8080/login
}
download() { # CLIENT BYTES: what arrived (a download cut at the quota ends early)
  in_ns "$NS_C" curl -sS -m 60 --speed-limit 1 --speed-time 4 -o /dev/null -w '%{size_download}' \
    --interface "cl$1" "http://10.99.0.3/__standin/download/$2" 2>/dev/null || true
}
billed() {
  in_ns "$NS_U" curl -sS -m 3 "$BACKEND/__standin/codes/$1" 2>/dev/null |
    jq -r '((.totalMB - .remainingMB) * 1048576 | round)'
}
ledger_total() {
  { cat "$WORK"/state/ledger/usage-*.jsonl 2>/dev/null || true; } | jq -rs --arg c "$1" \
    '[map(select(.code == $c)) | group_by(.session)[] | map(.up + .down) | max] | add // 0'
}

# Online: client 0 uses B for 5 MiB; the agent reports it, the list is read again.
[ "$(login 0 "$code_b")" = 200 ] || fail "B refused with the backend up: $(cat "$WORK/page")"
download 0 $((5 * MiB)) >/dev/null
for _ in $(seq 1 100); do
  [ "$(billed "$code_b")" -ge $((5 * MiB)) ] && break
  sleep 0.2
done
sleep 6

# The backend goes away.
in_ns "$NS_U" curl -sS -m 5 -d "{\"for_ms\": $((OUTAGE * 1000))}" "$BACKEND/__standin/refuse-connections" >/dev/null
outage_began=$(date +%s)
for _ in $(seq 1 100); do
  in_ns "$NS_G" "${GW[@]}" status | jq -e '.backend | startswith("unreachable since")' >/dev/null && break
  sleep 0.2
done
status=$(in_ns "$NS_G" "${GW[@]}" status | jq -r .backend)
[[ $status == "unreachable since "* ]] || fail "status says the backend is '$status'"
echo "status: backend $status"
form=$(in_ns "$NS_C" curl -sS -m 5 --interface cl1 http://10.66.0.1:8080/)
grep -q "unreachable since [0-2][0-9]:[0-5][0-9] UTC" <<<"$form" || fail "the form has no note: $form"

admitted=0
refused=0
[ "$(login 1 "$code_f")" = 503 ] || fail "another account's code while down: $(cat "$WORK/page")"
grep -q "can&#39;t be checked right now" "$WORK/page" || fail "no reason given: $(cat "$WORK/page")"
refused=$((refused + 1))
[ "$(login 1 "$code_a")" = 200 ] || fail "own code A refused while down: $(cat "$WORK/page")"
admitted=$((admitted + 1))
got_a=$(download 1 $((20 * MiB)))
# Client 0 leaves and enters B again, offline: what is left of its session.
in_ns "$NS_G" "${GW[@]}" kick "$(netns_client_mac 0)" >/dev/null
[ "$(login 0 "$code_b")" = 200 ] || fail "own code B refused while down: $(cat "$WORK/page")"
admitted=$((admitted + 1))
got_b=$(download 0 $((40 * MiB)))
# The gateway restarts during the outage: the kept list survives it.
kill -TERM "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null || true
netns_start_gateway "$WORK/gateway.sock" "$WORK/gateway-2.log" "${GW[@]}"
[ "$(login 2 "$code_c")" = 200 ] || fail "own code C refused after a restart while down: $(cat "$WORK/page")"
admitted=$((admitted + 1))
got_c=$(download 2 $((10 * MiB)))
[ $(($(date +%s) - outage_began)) -lt "$OUTAGE" ] || fail "the outage ended before the logins were done (raise OUTAGE)"
echo "while down: $admitted logins admitted, $refused refused; downloaded A $got_a, B $got_b, C $got_c bytes"

# Back: the agent reports what waited in the ledger. C's session is still open (under 1 MiB
# of it may wait for the session's end, the agent's batching): ended, so all of it is due.
while [ $(($(date +%s) - outage_began)) -lt "$OUTAGE" ]; do sleep 1; done
in_ns "$NS_G" "${GW[@]}" codes revoke "$code_c" >/dev/null
settled=0
for _ in $(seq 1 120); do
  settled=1
  for code in "$code_a" "$code_b" "$code_c"; do
    [ "$(billed "$code")" = "$(ledger_total "$code")" ] || settled=0
  done
  [ "$settled" = 1 ] && break
  sleep 1
done
printf '\n%-5s %10s %12s %12s %12s\n' CODE "TOTAL B" "LEDGER B" "BILLED B" "CLIENT B"
total_ledger=0
total_billed=0
for row in "A $code_a 8 1" "B $code_b 30 0" "C $code_c 40 2"; do
  read -r name code mb client <<<"$row"
  ledger=$(ledger_total "$code")
  used=$(billed "$code")
  printf '%-5s %10s %12s %12s %12s\n' "$name" $((mb * MiB)) "$ledger" "$used" "$(client_bytes "$client")"
  [ "$used" = "$ledger" ] || fail "code $name: billed $used, the ledger holds $ledger"
  [ "$ledger" -le $((mb * MiB)) ] || fail "code $name used $ledger bytes of its $((mb * MiB))"
  total_ledger=$((total_ledger + ledger))
  total_billed=$((total_billed + used))
done
[ "$got_a" -gt $((7 * MiB)) ] || fail "A gave only $got_a bytes offline (8 MiB code)"
[ "$got_b" -gt $((20 * MiB)) ] || fail "B gave only $got_b bytes offline (25 MiB left)"
refused_reports=$(in_ns "$NS_U" curl -sS -m 3 "$BACKEND/__standin/received" |
  jq '[.[] | select(.path == "/api/gateway/report-usage" and (.status // 0) >= 400)] | length')
status=$(in_ns "$NS_G" "${GW[@]}" status | jq -r .backend)
echo "after ${OUTAGE} s without the backend: $admitted logins admitted, $refused refused; billed $total_billed bytes, ledger $total_ledger; reports refused $refused_reports; backend $status"
[ "$status" = reachable ] || fail "status still says $status"
echo "offline_day: $(($(date +%s) - began)) s"
echo "offline_day: OK"
