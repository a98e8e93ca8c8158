#!/usr/bin/env bash
# The stand-in backend, started alone, answers a login and an authorize-code for the seeded
# provider and code with exactly the shapes of contracts/backend-api.md. Real binary, curl.
# The transcript is kept in artifacts/standin-transcript.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/system/common.bash

CODE=GATE2345
start_standin "$ARTIFACTS/standin.out" --seed-code "$CODE"
grep -qx "seed code: $CODE" "$ARTIFACTS/standin.out" || fail "seed code not announced"

transcript="$ARTIFACTS/standin-transcript.txt"
: >"$transcript"
# call METHOD PATH [BODY] [TOKEN]: prints the status on line 1, the body on line 2, and
# records both with the curl command (token shortened) in the transcript.
call() {
  local method=$1 path=$2 body=${3:-} token=${4:-}
  local args=(-sS -X "$method" -o /dev/stdout -w '\n%{http_code}' "$STANDIN_URL$path")
  local shown="curl -X $method $STANDIN_URL$path"
  if [ -n "$body" ]; then
    args+=(-H 'content-type: application/json' -d "$body")
    shown+=" -H 'content-type: application/json' -d '$body'"
  fi
  if [ -n "$token" ]; then
    args+=(-H "authorization: Bearer $token")
    shown+=" -H 'authorization: Bearer ${token:0:12}…'"
  fi
  local reply status
  reply=$(curl "${args[@]}")
  status=${reply##*$'\n'}
  reply=${reply%$'\n'*}
  printf '$ %s\n%s %s\n\n' "$shown" "$status" "$reply" >>"$transcript"
  printf '%s\n%s\n' "$status" "$reply"
}
expect_json() { # expect_json JSON JQ-FILTER DESCRIPTION
  echo "$1" | jq -e "$2" >/dev/null || fail "$3: $1"
}

out=$(call POST /api/auth/login '{"email":"provider@example.com","password":"Provider@123"}')
status=$(echo "$out" | sed -n 1p); body=$(echo "$out" | sed -n 2p)
[ "$status" = 200 ] || fail "login answered $status"
expect_json "$body" '(keys == ["token","user"]) and (.user | keys == ["email","id","name","role"])' "login shape"
expect_json "$body" '.user.role == "provider" and .user.email == "provider@example.com"' "login user"
token=$(echo "$body" | jq -r .token)
# An HS256 JWT {sub, role} valid 7 days.
claims=$(echo "$token" | cut -d. -f2 | tr '_-' '/+' | base64 -d 2>/dev/null || true)
[ -n "$claims" ] || claims=$(echo "$token" | cut -d. -f2 | tr '_-' '/+' | sed 's/$/==/' | base64 -d 2>/dev/null || true)
expect_json "$claims" '.role == "provider" and (.exp - .iat) == 604800 and has("sub")' "JWT claims"

out=$(call POST /api/gateway/authorize-code "{\"code\":\"$CODE\"}" "$token")
status=$(echo "$out" | sed -n 1p); body=$(echo "$out" | sed -n 2p)
[ "$status" = 200 ] || fail "authorize-code answered $status"
expect_json "$body" 'keys == ["ok","redeemedBy","remainingMB","totalMB"]' "authorize-code shape"
expect_json "$body" '.ok == true and .remainingMB == 500 and .totalMB == 500' "authorize-code values"

out=$(call POST /api/gateway/authorize-code '{"code":"ZZZZ9999"}' "$token")
[ "$(echo "$out" | sed -n 1p)" = 404 ] || fail "unknown code: $out"
expect_json "$(echo "$out" | sed -n 2p)" '. == {"error":"Invalid code"}' "unknown code body"

out=$(call POST /api/gateway/authorize-code '{}' "$token")
[ "$(echo "$out" | sed -n 1p)" = 400 ] || fail "no code: $out"
expect_json "$(echo "$out" | sed -n 2p)" '. == {"error":"code required"}' "no code body"

out=$(call POST /api/gateway/authorize-code "{\"code\":\"$CODE\"}")
[ "$(echo "$out" | sed -n 1p)" = 401 ] || fail "no token: $out"
expect_json "$(echo "$out" | sed -n 2p)" 'has("error")' "no token body"

out=$(call POST /api/auth/login '{"email":"provider@example.com","password":"wrong"}')
[ "$(echo "$out" | sed -n 1p)" = 401 ] || fail "bad password: $out"
expect_json "$(echo "$out" | sed -n 2p)" '. == {"error":"Invalid credentials"}' "bad password body"

out=$(call POST /api/auth/login '{not json')
[ "$(echo "$out" | sed -n 1p)" = 400 ] || fail "malformed JSON: $out"
expect_json "$(echo "$out" | sed -n 2p)" 'has("error")' "malformed JSON body"
kill -0 "$STANDIN_PID" || fail "stand-in died on bad input"

cat "$transcript"
echo "standin_curl: ok"
