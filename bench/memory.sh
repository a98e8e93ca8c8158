#!/usr/bin/env bash
# The gateway's memory, idle and with CLIENTS online, the capture meter on (its default), and
# where it is: RSS by kind of mapping (the binary, libraries, malloc's main heap and other
# arenas, thread stacks, other anonymous mappings; bench/memory.py), threads, arenas. A
# benchmark, not a test: it prints a table and asserts nothing beyond the set-up working.
# As root:
#
#   bash bench/memory.sh                      # builds target/release first
#   BENCH_NO_BUILD=1 CLIENTS=200 bash bench/memory.sh
#   BASELINE=/tmp/old/edgeshare-gateway bash bench/memory.sh   # that build first, side by side
#   LABELS="O3 Os" BASELINE=…   # the columns' names (default "before after"; letters, digits)
#
# Per build, in the testbed of scripts/lib/netns.bash (clients as macvlans on one veth, each
# its own MAC and address; the reference figures for openNDS were taken the same way): the
# gateway starts with a fresh state, waits SETTLE_S seconds, is measured idle; CLIENTS
# clients log in one after another, each with its own code (curl, POST /login); once its
# status says all are online and SETTLE_S more seconds have passed, it is measured again,
# then stopped. Everything runs in namespaces made here and is removed on exit. About 1 min
# per build. The table goes to stdout and to bench/results/memory-<date>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-200}
SETTLE_S=${SETTLE_S:-5}
BASELINE=${BASELINE:-}
read -r LABEL_BEFORE LABEL_AFTER <<<"${LABELS:-before after}"

[ "$(id -u)" = 0 ] || { echo "bench: run as root (network namespaces, nftables)" >&2; exit 1; }
# shellcheck source=scripts/lib/netns.bash
. scripts/lib/netns.bash
bench_prepare ip nft jq curl python3
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || { echo "bench: BASELINE $BASELINE is not a program" >&2; exit 1; }
bench_work artifacts/bench

netns_testbed mem 16
say "network namespaces $NS_C, $NS_G, $NS_U; $CLIENTS clients"
netns_start_standin "$NS_U" "$WORK/upstream" "$BIN/edgeshare-standin" --listen 10.99.0.3:9000
netns_add_clients m 1000 "$CLIENTS"
netns_pin_gateway m 1000 "$CLIENTS"

measure() { # measure LABEL GATEWAY_BINARY: one build's figures, as a JSON line on stdout
  local label=$1 binary=$2 run=$WORK/$1 n code idle online latency
  mkdir -p "$run"
  netns_gateway_config "$run/gateway.toml" "$run/state" "$run/gateway.sock" "es_mem_${ID}_$label" local
  local gw=("$binary" --config "$run/gateway.toml")
  say "$label: $binary"
  netns_start_gateway "$run/gateway.sock" "$WORK/$label.log" "${gw[@]}"
  grep -q "capture meter running" "$WORK/$label.log" || netns_fail "$label: the capture meter is not running: $(cat "$WORK/$label.log")"
  sleep "$SETTLE_S"
  idle=$(python3 bench/memory.py snapshot "$GATEWAY_PID")
  in_ns "$NS_G" "${gw[@]}" codes create --mb 50 --hours 1 --count "$CLIENTS" >"$run/codes"
  [ "$(wc -l <"$run/codes")" = "$CLIENTS" ] || netns_fail "$label: codes create gave $(wc -l <"$run/codes") codes"
  say "$label: $CLIENTS logins one after another"
  n=1000
  : >"$run/latency"
  while read -r code; do
    # --interface binds to the client's macvlan (SO_BINDTODEVICE), so the login comes from
    # its MAC and address.
    in_ns "$NS_C" curl -sS --max-time 30 --interface "m$n" -d "code=$code" \
      -w '\n%{time_total}\n' http://10.66.0.1:8080/login >"$run/reply"
    grep -q "You are online" "$run/reply" || netns_fail "$label: login of client $n failed: $(head -c 300 "$run/reply")"
    tail -n 1 "$run/reply" >>"$run/latency"
    n=$((n + 1))
  done <"$run/codes"
  online=$(in_ns "$NS_G" "${gw[@]}" status | jq -r .online_devices)
  [ "$online" = "$CLIENTS" ] || netns_fail "$label: $online online after $CLIENTS logins"
  sleep "$SETTLE_S"
  online=$(python3 bench/memory.py snapshot "$GATEWAY_PID")
  latency=$(jq -sc 'map(. * 1000)' "$run/latency")
  kill "$GATEWAY_PID"
  wait "$GATEWAY_PID" || true
  jq -nc --arg label "$label" --argjson idle "$idle" --argjson online "$online" \
    --argjson latency "$latency" '$ARGS.named'
}

: >"$WORK/builds.jsonl"
[ -z "$BASELINE" ] || measure "$LABEL_BEFORE" "$BASELINE" >>"$WORK/builds.jsonl"
measure "$([ -z "$BASELINE" ] && echo this || echo "$LABEL_AFTER")" "$BIN/edgeshare-gateway" >>"$WORK/builds.jsonl"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD -- gateway shared Cargo.lock 2>/dev/null || commit+=" (with local changes)"
machine="$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/^Mem:/ {print $2}') GiB"
machine+=", kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME"), glibc $(ldd --version | awk 'NR == 1 {print $NF}')"
jq -n --arg date "$(date -u '+%F %H:%M UTC'), commit $commit" --arg machine "$machine" \
  --arg setup "release build, namespaces (veth; clients as macvlans), local codes, capture meter on, lan.max_clients 2048 (the default); measured ${SETTLE_S} s after start and after the last login; load average before: $(cut -d' ' -f1-3 /proc/loadavg)" \
  --argjson clients "$CLIENTS" --slurpfile builds "$WORK/builds.jsonl" '$ARGS.named' >"$WORK/results.json"
RESULT=bench/results/memory-$(date -u +%F).txt
mkdir -p bench/results
python3 bench/memory.py report "$WORK/results.json" | tee "$RESULT"
say "saved to $RESULT"
