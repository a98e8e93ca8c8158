#!/usr/bin/env bash
# A consumer signs in with their network account, for real: the gateway (codes checked with
# the stand-in backend) and the agent (reporting its ledger) beside it, a client in a network
# namespace. On the portal the client first types a wrong password (the form says so, the
# device stays captive), then consumer@example.com's right one with a code the provider made,
# and downloads DOWNLOAD bytes in two halves, the agent reporting the whole MiB of the first
# while the session runs; then the session ends (the code revoked on the gateway, so the
# agent sends the remainder at once). Then, logged in to the backend as the consumer,
# `GET /api/auth/me` must show `bytesConsumed` equal to what the backend billed the code, and
# that to the ledger's total for the session: every report of the session named the
# consumer, and none of another's.
#
#   DOWNLOAD=N   bytes the client downloads (default 5 MiB + 12345)
#
# Needs root (namespaces, nftables), curl, jq, tc; the binaries built
# (cargo build --workspace --bins). Cleans up on any exit.
# shellcheck source=tests/system/netns.bash
. "$(dirname "$0")/netns.bash"

DOWNLOAD=${DOWNLOAD:-$((5 * 1048576 + 12345))}
real_binaries_test consumer_account 'state/ledger/*.jsonl'

netns_testbed ca
BACKEND=http://10.99.0.2:8080
netns_start_standin "$NS_U" "$WORK/backend" "$STANDIN" --listen 10.99.0.2:8080
netns_start_standin "$NS_U" "$WORK/internet" "$STANDIN" --listen 10.99.0.3:80

netns_start_billing "$WORK" "es_ca_$$" consumer-test 9466 1s

code=$(in_ns "$NS_G" "${GW[@]}" codes create --mb 50 --hours 1)
[[ $code =~ ^[A-Z2-9]{8}$ ]] || fail "no code made: $code"

# portal_login EMAIL PASSWORD: posts the form from the client; prints the status, then the page.
portal_login() {
  in_ns "$NS_C" curl -sS -m 20 -w '\n%{http_code}' --data-urlencode "code=$code" \
    --data-urlencode "email=$1" --data-urlencode "password=$2" http://10.66.0.1:8080/login
}
# online: whether the client reaches the internet (captive, it gets the portal's 302).
online() {
  [ "$(in_ns "$NS_C" curl -sS -m 5 -o /dev/null -w '%{http_code}' http://10.99.0.3/__standin/download/10)" = 200 ]
}

form=$(in_ns "$NS_C" curl -sS -m 10 http://10.66.0.1:8080/)
grep -q 'name="email"' <<<"$form" || fail "the form offers no sign-in with backend codes: $form"

# A wrong password: the form's error, and the device stays captive.
reply=$(portal_login consumer@example.com 'Wrong@123')
status=${reply##*$'\n'}
[ "$status" = 403 ] || fail "a wrong password answered $status: $reply"
grep -q "Wrong email or password" <<<"$reply" || fail "no wrong-password error: $reply"
if grep -q "Wrong@123" <<<"$reply"; then fail "the password came back in the page"; fi
if online; then fail "a wrong password let the device in"; fi
echo "wrong password: $status, the form's error, the device captive"

# The right one.
reply=$(portal_login consumer@example.com 'Consumer@123')
status=${reply##*$'\n'}
[ "$status" = 200 ] || fail "signing in answered $status: $reply"
grep -q "Signed in as consumer@example.com" <<<"$reply" || fail "not signed in: $reply"
online || fail "signed in, but the device is not online"
download() {
  local bytes
  bytes=$(in_ns "$NS_C" curl -sS -m 60 -o /dev/null -w '%{size_download}' \
    "http://10.99.0.3/__standin/download/$1")
  [ "$bytes" = "$1" ] || fail "downloaded $bytes of $1 bytes"
}
reports() {
  in_ns "$NS_U" curl -sS -m 3 "$BACKEND/__standin/received" |
    jq '[.[] | select(.path == "/api/gateway/report-usage")] | length'
}
half=$((DOWNLOAD / 2))
download "$half"
# The gateway writes the running session's totals every few seconds; the agent reports
# their whole MiB.
for _ in $(seq 1 300); do
  [ "$(reports)" -gt 0 ] && break
  sleep 0.1
done
[ "$(reports)" -gt 0 ] || fail "no report while the session ran (30 s)"
download $((DOWNLOAD - half))
got=$DOWNLOAD
if grep -rq 'Consumer@123\|Wrong@123' "$WORK"/*.log "$WORK/state"; then
  fail "a password reached a log or the state directory"
fi

# The session ends: its final record goes to the ledger, and the agent reports the rest.
in_ns "$NS_G" "${GW[@]}" codes revoke "$code" >/dev/null
ledger_records() {
  { cat "$WORK"/state/ledger/usage-*.jsonl 2>/dev/null || true; } | jq -cs --arg c "$code" \
    'map(select(.code == $c))'
}
billed() {
  in_ns "$NS_U" curl -sS -m 3 "$BACKEND/__standin/codes/$code" |
    jq -r '((.totalMB - .remainingMB) * 1048576 | round)'
}
ledger=0
for _ in $(seq 1 600); do
  records=$(ledger_records)
  if [ "$(jq 'map(select(.ended != null)) | length' <<<"$records")" -gt 0 ]; then
    ledger=$(jq 'map(.up + .down) | max' <<<"$records")
    [ "$(billed)" = "$ledger" ] && break
  fi
  sleep 0.1
done
used=$(billed)
[ "$ledger" -gt "$DOWNLOAD" ] || fail "the ledger holds $ledger bytes for a download of $DOWNLOAD"
[ "$used" = "$ledger" ] || fail "the backend billed $used bytes, the ledger holds $ledger (not settled in 60 s)"

# As the consumer: the account the gateway named in every record, and its bytesConsumed.
login=$(in_ns "$NS_U" curl -sS -m 5 -H 'Content-Type: application/json' \
  -d '{"email": "consumer@example.com", "password": "Consumer@123"}' "$BACKEND/api/auth/login")
token=$(jq -r .token <<<"$login")
id=$(jq -r .user.id <<<"$login")
consumers=$(jq -r 'map(.consumer // "none") | unique | join(",")' <<<"$records")
[ "$consumers" = "$id" ] || fail "the ledger's records name $consumers, not the consumer $id"
me=$(in_ns "$NS_U" curl -sS -m 5 -H "Authorization: Bearer $token" "$BACKEND/api/auth/me")
consumed=$(jq -r .bytesConsumed <<<"$me")
named=$(in_ns "$NS_U" curl -sS -m 3 "$BACKEND/__standin/received" | jq -r --arg id "$id" \
  '[.[] | select(.path == "/api/gateway/report-usage" and .status == 200)] |
   [(map(select(.body.consumerId == $id)) | length), length] | map(tostring) | join(" of ")')
printf '\n%-10s %12s %12s %12s %s\n' CODE DOWNLOADED BILLED CONSUMED "REPORTS NAMING THE CONSUMER"
printf '%-10s %12s %12s %12s %s\n' "${code:0:2}…" "$got" "$used" "$consumed" "$named"
[ "$consumed" = "$used" ] || fail "bytesConsumed is $consumed, the code was billed $used"
[ "${named%% *}" -ge 2 ] && [ "${named%% *}" = "${named##* }" ] ||
  fail "$named reports named the consumer (at least 2, and all of them)"
echo "consumer_account: $(($(date +%s) - began)) s"
echo "consumer_account: OK"
