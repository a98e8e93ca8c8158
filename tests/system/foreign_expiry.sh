#!/usr/bin/env bash
# Another account's code served to its expiry, for real: the gateway (backend codes with
# codes.serve_other_accounts = true) and the agent beside it, the stand-in backend, a client
# in a network namespace downloading without pause through an admin's code that expires after
# MINUTES. The backend never tells the gateway that code's expiry (authorize-code has none):
# the gateway learns it by asking again every codes.recheck_every (20 s). Prints how long and
# how many bytes (the client's own counters) the client was carried past the expiry, and
# fails above 30 s.
#
#   MINUTES=N     the code's lifetime (default 1)
#   LOGIN_AFTER=S the client logs in S seconds after the code is made (default 11). The
#                 gateway asks about the code at login, then every 20 s: S sets where the
#                 expiry falls between two checks (S just under 20: the worst case).
#   BIN=DIR       the binaries (default target/debug)
#   OLD_KEYS=1    configure an older build (own_codes_only = false) and print its figure
#                 without failing
#
# Needs root (namespaces, nftables), curl, jq, tc, nft; the binaries built
# (cargo build --workspace --bins). Cleans up on any exit.
# shellcheck source=tests/system/netns.bash
. "$(dirname "$0")/netns.bash"

MINUTES=${MINUTES:-1}
real_binaries_test foreign_expiry

netns_testbed fx 16
netns_add_clients cl 0 1
in_ns "$NS_U" tc qdisc add dev u0 root tbf rate 16mbit burst 64kb latency 200ms
netns_start_standin "$NS_U" "$WORK/backend" "$STANDIN" --listen 10.99.0.2:8080
netns_start_standin "$NS_U" "$WORK/internet" "$STANDIN" --listen 10.99.0.3:80

if [ "${OLD_KEYS:-}" = 1 ]; then
  export CODES_EXTRA='own_codes_only = false\n'
else
  export CODES_EXTRA='serve_other_accounts = true\n'
fi
netns_start_billing "$WORK" "es_fx_$$" foreign-test 9467

# The client's own count of the download's bytes (IP packets, as the gateway counts them).
client_ip=$(netns_client_ip 0)
in_ns "$NS_C" nft "add table inet fxtruth; \
  add chain inet fxtruth input { type filter hook input priority 0; }; \
  add chain inet fxtruth output { type filter hook output priority 0; }; \
  add rule inet fxtruth input ip daddr $client_ip ip saddr 10.99.0.3 counter; \
  add rule inet fxtruth output ip saddr $client_ip ip daddr 10.99.0.3 counter"
client_bytes() {
  in_ns "$NS_C" nft -j list table inet fxtruth |
    jq '[.nftables[] | .rule? // empty | .expr[] | .counter? // empty | .bytes] | add'
}

token=$(in_ns "$NS_U" curl -sS -m 5 -H 'Content-Type: application/json' \
  -d '{"email": "admin@example.com", "password": "Admin@123"}' \
  http://10.99.0.2:8080/api/auth/login | jq -r .token)
hours=$(awk -v m="$MINUTES" 'BEGIN { printf "%.6f", m / 60 }')
made=$(in_ns "$NS_U" curl -sS -m 5 -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"totalMB\": 1000, \"expireHours\": $hours}" http://10.99.0.2:8080/api/provider/codes)
code=$(jq -r '.codes[0].code' <<<"$made")
expire_ms=$(jq -r '.codes[0].expireAt | sub("\\.[0-9]+Z$"; "Z") | fromdate * 1000' <<<"$made")
# fromdate drops the milliseconds: add them back.
expire_ms=$((expire_ms + 10#$(jq -r '.codes[0].expireAt' <<<"$made" | sed -E 's/.*\.([0-9]{3}).*/\1/;t;s/.*/000/')))

sleep "${LOGIN_AFTER:-11}"
page=$(in_ns "$NS_C" curl -sS -m 10 --interface cl0 -d "code=$code" http://10.66.0.1:8080/login)
grep -q "You are online" <<<"$page" || fail "the admin's code was not served: $page"
if grep -q "does not expire" <<<"$page"; then fail "the page says the code does not expire"; fi
ip netns exec "$NS_C" curl -sS --interface cl0 -o /dev/null -m $((MINUTES * 60 + 120)) \
  "http://10.99.0.3/__standin/download/$((8 << 30))" >/dev/null 2>&1 &
netns_track_pid $!

now_ms() { date +%s%3N; }
at_expiry=""
last=0
last_change=$(now_ms)
while :; do
  t=$(now_ms)
  bytes=$(client_bytes)
  if [ "$bytes" != "$last" ]; then
    last=$bytes
    last_change=$t
  fi
  if [ -z "$at_expiry" ] && [ "$t" -ge "$expire_ms" ]; then at_expiry=$bytes; fi
  # Cut off: nothing moved for 5 s after the expiry.
  if [ -n "$at_expiry" ] && [ $((t - last_change)) -ge 5000 ]; then break; fi
  [ $((t - expire_ms)) -lt 120000 ] || fail "still downloading 120 s after the expiry"
  sleep 0.2
done
[ "$at_expiry" -gt 1000000 ] || fail "only $at_expiry bytes before the expiry: the download did not run"
past_ms=$((last_change - expire_ms))
past_bytes=$((last - at_expiry))
ended=$({ cat "$WORK"/state/ledger/usage-*.jsonl 2>/dev/null || true; } | jq -rs --arg c "$code" \
  'map(select(.code == $c and .ended != null)) | .[0].ended // "still open"')
echo "another account's ${MINUTES}-minute code: carried $((past_ms / 1000)).$(printf '%03d' $((past_ms % 1000))) s and $past_bytes bytes past its expiry (client's counters; $at_expiry before it); session end: $ended"
echo "foreign_expiry: $(($(date +%s) - began)) s"
if [ "${OLD_KEYS:-}" != 1 ]; then
  [ "$past_ms" -le 30000 ] || fail "carried $past_ms ms past the expiry (more than 30 s)"
  [ "$ended" = expired ] || fail "the session ended as '$ended', not 'expired'"
  grep -q "credited to the code's OWNER" "$WORK/gateway.log" || fail "the log does not say the owner is credited"
fi
echo "foreign_expiry: OK"
