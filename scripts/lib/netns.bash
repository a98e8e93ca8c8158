# The network-namespace testbed shared by scripts/demo, bench/gateway.sh and
# tests/system/browser.sh. Sourced (from the repository's root), not run:
#
#   client (10.66.0.2) ── lan0 [gateway] wan0 ── upstream (10.99.0.2 and 10.99.0.3 on u0)
#     c0                   10.66.0.1  10.99.0.1
#
# Clients beyond the first are macvlans on c0 (netns_add_clients); netns_quiet keeps the links
# silent but for the traffic under test (for benchmarks that count bytes on them).
#
# The namespaces are named es-TAG-c-PID, es-TAG-g-PID and es-TAG-u-PID (PID: the script's),
# so that runs side by side do not meet. Every process started here is recorded by its PID and
# every namespace by its name; netns_cleanup ends and removes exactly those, and
# netns_exit_traps makes it run on any exit, Ctrl-C and SIGTERM included. Traffic stays in
# these namespaces.
#
# The functions work under `set -euo pipefail`: a step that fails makes the function return
# non-zero (so the caller stops), and a daemon that does not come up ends the script through
# netns_fail, also where the caller tests the function's status.

# The client's MAC address on c0 (the gateway binds a session to MAC + IP).
# shellcheck disable=SC2034 # used by the scripts that source this file
NETNS_CLIENT_MAC=02:00:00:00:00:02
NS_C='' NS_G='' NS_U='' # the namespaces' names, set by netns_testbed
NETNS_PIDS=()  # processes to end on exit, by PID (each started with `ip netns exec` directly)
NETNS_NAMES=() # namespaces to delete on exit
NETNS_BEFORE_CLEANUP=
NETNS_AFTER_CLEANUP=

# in_ns NS COMMAND…: runs COMMAND in the namespace NS. For commands waited for; a background
# process is started with `ip netns exec` itself instead, so that $! is the program (not a
# subshell running this function) and netns_cleanup can end it by its PID.
in_ns() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}

# netns_fail MESSAGE…: prints MESSAGE on stderr and ends the script with status 1 (which runs
# the clean-up). A script may define its own after sourcing this file (the system tests use
# common.bash's `fail`, which prefixes "FAIL:").
netns_fail() {
  echo "$*" >&2
  exit 1
}

# bench_prepare TOOL…: for a benchmark (as root): fails unless every TOOL is installed and
# CLIENTS (if set) is 1..2000; builds the release binaries unless BENCH_NO_BUILD=1; sets BIN
# to their folder (under CARGO_TARGET_DIR if set).
bench_prepare() {
  local tool bin
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || {
      echo "bench: $tool is missing (bash scripts/install-deps; apt-get install python3)" >&2
      exit 1
    }
  done
  if [ -n "${CLIENTS:-}" ] && { [ "$CLIENTS" -lt 1 ] || [ "$CLIENTS" -gt 2000 ]; }; then
    echo "bench: CLIENTS must be 1..2000" >&2
    exit 1
  fi
  if [ "${BENCH_NO_BUILD:-}" != 1 ]; then
    if [ -f "$HOME/.cargo/env" ]; then
      # shellcheck disable=SC1091
      . "$HOME/.cargo/env"
    fi
    echo "bench: cargo build --release --workspace --bins" >&2
    cargo build --release --workspace --bins --locked >&2
  fi
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
  for bin in edgeshare-gateway edgeshare-standin; do
    [ -x "$BIN/$bin" ] || { echo "bench: $BIN/$bin is missing" >&2; exit 1; }
  done
}

# bench_work ARTIFACTS: a benchmark's run id ($ID), work folder ($WORK), messages (`say`,
# and `netns_fail` prefixed "bench:") and exit traps: on exit the namespaces go, then
# BENCH_AFTER_CLEANUP runs if the script named one, then a failed run's logs are kept in
# ARTIFACTS and the work folder is removed.
bench_work() {
  BENCH_ARTIFACTS=$1
  ID=$$
  WORK=$(mktemp -d)
  netns_exit_traps "" bench_after_cleanup
  trap 'echo "bench: interrupted" >&2; exit 130' INT TERM
  # shellcheck disable=SC2317 # both called by the benchmark after this
  netns_fail() { echo "bench: $*" >&2; exit 1; }
  # shellcheck disable=SC2317
  say() { printf 'bench: %s\n' "$*" >&2; }
}

# bench_after_cleanup STATUS: the exit trap bench_work sets, after the clean-up.
bench_after_cleanup() {
  [ -z "${BENCH_AFTER_CLEANUP:-}" ] || "$BENCH_AFTER_CLEANUP"
  if [ "$1" != 0 ]; then
    mkdir -p "$BENCH_ARTIFACTS"
    cp "$WORK"/*.log "$WORK"/*.json "$WORK"/*.jsonl "$BENCH_ARTIFACTS"/ 2>/dev/null
    echo "bench: failed; logs in $BENCH_ARTIFACTS/" >&2
  fi
  rm -rf "$WORK"
}

# netns_track_pid PID…: records processes for netns_cleanup to end.
netns_track_pid() {
  NETNS_PIDS+=("$@")
}

# netns_track_ns NAME…: records namespaces for netns_cleanup to delete.
netns_track_ns() {
  NETNS_NAMES+=("$@")
}

# netns_testbed TAG [LAN_PREFIX_LENGTH]: makes the client, gateway and upstream namespaces
# (their names in NS_C, NS_G and NS_U, each recorded for clean-up as soon as it exists), joins
# them with two veth pairs (client c0 ── lan0 gateway wan0 ── u0 upstream) and gives them
# their addresses and default routes as drawn at the top. The LAN is a /24 unless told
# otherwise (the benchmark puts many clients on a /16).
netns_testbed() {
  local tag=$1 lan=${2:-24} ns
  NS_C=es-$tag-c-$$
  NS_G=es-$tag-g-$$
  NS_U=es-$tag-u-$$
  for ns in "$NS_C" "$NS_G" "$NS_U"; do
    ip netns add "$ns" || return
    netns_track_ns "$ns"
    ip -n "$ns" link set lo up || return
  done
  ip link add c0 netns "$NS_C" address "$NETNS_CLIENT_MAC" type veth peer name lan0 netns "$NS_G" || return
  ip link add wan0 netns "$NS_G" type veth peer name u0 netns "$NS_U" || return
  ip -n "$NS_C" -batch - <<EOF || return
addr add 10.66.0.2/$lan dev c0
link set c0 up
route add default via 10.66.0.1
EOF
  ip -n "$NS_G" -batch - <<EOF || return
addr add 10.66.0.1/$lan dev lan0
addr add 10.99.0.1/24 dev wan0
link set lan0 up
link set wan0 up
route add default via 10.99.0.2
EOF
  ip -n "$NS_U" -batch - <<EOF
addr add 10.99.0.2/24 dev u0
addr add 10.99.0.3/24 dev u0
link set u0 up
EOF
}

# netns_client_ip N, netns_client_mac N: the address and MAC of client number N made by
# netns_add_clients (N < 60000): 10.66.HH.LL and 02:00:00:HH:LL:01, with HH = 1 + N / 250 and
# LL = 1 + N % 250 (so the testbed's LAN must be a /16: `netns_testbed TAG 16`).
netns_client_ip() { echo "10.66.$((1 + $1 / 250)).$((1 + $1 % 250))"; }
netns_client_mac() { printf '02:00:00:%02x:%02x:01\n' $((1 + $1 / 250)) $((1 + $1 % 250)); }

# netns_add_clients PREFIX FIRST COUNT: clients number FIRST to FIRST + COUNT - 1 in the client
# namespace, each a macvlan PREFIX<n> on c0 with its own MAC and address (netns_client_ip): the
# gateway binds a session to MAC + IP and treats one MAC as one device, so clients sharing a
# MAC would take each other's place.
netns_add_clients() {
  local prefix=$1 first=$2 count=$3 n
  # Many clients on one veth: ARP must answer for an address only on its own interface
  # (arp_ignore=1), or the gateway learns the wrong MAC for it.
  in_ns "$NS_C" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 || return
  for n in $(seq "$first" $((first + count - 1))); do
    printf 'link add link c0 name %s%d address %s type macvlan mode bridge\n' "$prefix" "$n" "$(netns_client_mac "$n")"
    printf 'addr add %s/16 dev %s%d\n' "$(netns_client_ip "$n")" "$prefix" "$n"
    printf 'link set %s%d up\n' "$prefix" "$n"
    # A socket bound to the device needs a default route through it.
    printf 'route add default via 10.66.0.1 dev %s%d metric %d\n' "$prefix" "$n" $((100 + n))
  done | ip -n "$NS_C" -batch -
}

# netns_mac NS IFACE: the MAC address of IFACE in the namespace NS.
netns_mac() {
  ip -n "$1" -br link show dev "$2" | awk '{print $3}'
}

# netns_quiet: keeps the testbed's links silent but for the traffic under test, so that their
# interface counters can serve as the ground truth for the gateway's meters: IPv6 off in the
# three namespaces (no neighbour or router solicitations, no MLD reports) and permanent
# neighbour entries for the testbed's addresses (no ARP). Clients added with
# netns_add_clients are pinned with netns_pin_clients.
netns_quiet() {
  local ns lan wan u0
  for ns in "$NS_C" "$NS_G" "$NS_U"; do
    # "all" applies to the interfaces that exist, "default" to those made later (macvlans).
    in_ns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || return
  done
  lan=$(netns_mac "$NS_G" lan0) && wan=$(netns_mac "$NS_G" wan0) && u0=$(netns_mac "$NS_U" u0) || return
  ip -n "$NS_C" neigh replace 10.66.0.1 lladdr "$lan" dev c0 nud permanent || return
  ip -n "$NS_G" -batch - <<EOF || return
neigh replace 10.66.0.2 lladdr $NETNS_CLIENT_MAC dev lan0 nud permanent
neigh replace 10.99.0.2 lladdr $u0 dev wan0 nud permanent
neigh replace 10.99.0.3 lladdr $u0 dev wan0 nud permanent
EOF
  ip -n "$NS_U" neigh replace 10.99.0.1 lladdr "$wan" dev u0 nud permanent
}

# netns_pin_gateway PREFIX FIRST COUNT: a permanent neighbour entry for the gateway on each of
# the clients FIRST to FIRST + COUNT - 1 made by netns_add_clients (no ARP from them). The
# kernel's neighbour table is one for all namespaces, its limits the host's; permanent entries
# do not count against them, so the clients' side (on real devices, each its own table) does
# not crowd out the gateway's entries.
netns_pin_gateway() {
  local prefix=$1 first=$2 count=$3 n lan
  lan=$(netns_mac "$NS_G" lan0) || return
  for n in $(seq "$first" $((first + count - 1))); do
    printf 'neigh replace 10.66.0.1 lladdr %s dev %s%d nud permanent\n' "$lan" "$prefix" "$n"
  done | ip -n "$NS_C" -batch -
}

# netns_pin_clients PREFIX FIRST COUNT: permanent neighbour entries (no ARP) both ways between
# the gateway and the clients FIRST to FIRST + COUNT - 1 made by netns_add_clients.
netns_pin_clients() {
  local prefix=$1 first=$2 count=$3 n
  netns_pin_gateway "$prefix" "$first" "$count" || return
  for n in $(seq "$first" $((first + count - 1))); do
    printf 'neigh replace %s lladdr %s dev lan0 nud permanent\n' "$(netns_client_ip "$n")" "$(netns_client_mac "$n")"
  done | ip -n "$NS_G" -batch -
}

# netns_gateway_config FILE STATE_DIR SOCKET TABLE SOURCE [BACKEND_URL BACKEND_EMAIL]: writes
# the gateway's configuration for this testbed to FILE: LAN lan0 with the portal on port 8080,
# WAN wan0 with NAT, codes from SOURCE ("local" or "backend", the latter with a [backend]
# section for BACKEND_URL and BACKEND_EMAIL; its password comes from the environment), the
# given state folder, control socket and nftables table, the table removed on exit.
netns_gateway_config() {
  local file=$1 state=$2 socket=$3 table=$4 source=$5 url=${6:-} email=${7:-}
  {
    printf '[lan]\ninterface = "lan0"\n[wan]\ninterface = "wan0"\nnat = true\n'
    printf '[portal]\nport = 8080\n[codes]\nsource = "%s"\n' "$source"
    # More [codes] keys (lines, printf %b escapes), e.g. CODES_EXTRA='serve_other_accounts = true\n'.
    [ -z "${CODES_EXTRA:-}" ] || printf '%b' "$CODES_EXTRA"
    if [ -n "$url" ]; then
      printf '[backend]\nurl = "%s"\nemail = "%s"\n' "$url" "$email"
    fi
    printf '[state]\ndir = "%s"\n[control]\nsocket = "%s"\n' "$state" "$socket"
    printf '[firewall]\ntable = "%s"\nremove_on_exit = true\n' "$table"
  } >"$file"
}

# netns_wait_for WHAT PID LOG TEST…: waits up to 10 s for the command TEST to succeed; if the
# process PID ends first, or the time runs out, fails with WHAT and the contents of LOG (the
# process's own account of what went wrong).
netns_wait_for() {
  local what=$1 pid=$2 log=$3 _
  shift 3
  for _ in $(seq 1 100); do
    "$@" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || netns_fail "$what exited: $(cat "$log" 2>/dev/null)"
    sleep 0.1
  done
  "$@" 2>/dev/null || netns_fail "$what did not start within 10 s: $(cat "$log" 2>/dev/null)"
}

# netns_start_gateway SOCKET LOG GATEWAY…: starts `GATEWAY… run` (the gateway binary with its
# --config) in the gateway namespace, its output in LOG, records it for clean-up (its PID in
# GATEWAY_PID) and waits until its control socket SOCKET exists, i.e. until it serves.
netns_start_gateway() {
  local socket=$1 log=$2
  shift 2
  ip netns exec "$NS_G" "$@" run >"$log" 2>&1 &
  GATEWAY_PID=$!
  netns_track_pid "$GATEWAY_PID"
  netns_wait_for gateway "$GATEWAY_PID" "$log" test -S "$socket"
}

# netns_start_billing WORK TABLE DEVICE_ID METRICS_PORT [USAGE_INTERVAL]: the gateway with
# backend codes (the stand-in at http://10.99.0.2:8080, the seed provider's account) and the
# agent beside it reporting its ledger, both from $BIN, their files in WORK (gateway.toml and
# .env, agent.toml and .env, state/, agent-state/, the logs); waits until both answer. Sets GW
# and AGENT (each binary with its --config) and AGENT_PID.
netns_start_billing() {
  local work=$1 table=$2 device=$3 metrics_port=$4 interval=${5:-}
  netns_gateway_config "$work/gateway.toml" "$work/state" "$work/gateway.sock" "$table" \
    backend http://10.99.0.2:8080 provider@example.com
  printf 'EDGESHARE_BACKEND__PASSWORD=Provider@123\n' >"$work/gateway.env"
  chmod 600 "$work/gateway.env"
  GW=("$BIN/edgeshare-gateway" --config "$work/gateway.toml")
  netns_start_gateway "$work/gateway.sock" "$work/gateway.log" "${GW[@]}"
  {
    printf '[device]\nid = "%s"\n\n' "$device"
    printf '[backend]\nurl = "http://10.99.0.2:8080"\nemail = "provider@example.com"\n\n'
    printf '[usage]\nledger = "%s"\n' "$work/state/ledger"
    [ -z "$interval" ] || printf 'interval = "%s"\n' "$interval"
    printf '\n[state]\ndir = "%s"\n\n' "$work/agent-state"
    printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$metrics_port"
  } >"$work/agent.toml"
  printf 'EDGESHARE_BACKEND__PASSWORD=Provider@123\n' >"$work/agent.env"
  chmod 600 "$work/agent.env"
  AGENT=("$BIN/edgeshare-agent" --config "$work/agent.toml")
  ip netns exec "$NS_G" "${AGENT[@]}" run >"$work/agent.log" 2>&1 &
  AGENT_PID=$!
  netns_track_pid "$AGENT_PID"
  netns_wait_for "the agent" "$AGENT_PID" "$work/agent.log" netns_agent_answers
}

netns_agent_answers() { in_ns "$NS_G" "${AGENT[@]}" status >/dev/null 2>&1; }

# netns_start_standin NS PREFIX STANDIN…: starts the stand-in (STANDIN…: its binary and
# arguments, e.g. --listen ADDRESS) in the namespace NS, its stdout in PREFIX.out and stderr in
# PREFIX.log, records it for clean-up (its PID in STANDIN_PID) and waits for its
# "listening on" line, i.e. until it accepts connections.
netns_start_standin() {
  local ns=$1 prefix=$2
  shift 2
  ip netns exec "$ns" "$@" >"$prefix.out" 2>"$prefix.log" &
  STANDIN_PID=$!
  netns_track_pid "$STANDIN_PID"
  netns_wait_for stand-in "$STANDIN_PID" "$prefix.log" grep -q "listening on" "$prefix.out"
}

# netns_cleanup: ends the recorded processes (SIGTERM, then waits, so that the gateway removes
# its nftables table), then whatever else still runs in the recorded namespaces (children such
# as Chromium's; SIGTERM, then SIGKILL), each by its PID, and deletes the namespaces (which
# removes their veths and anything left in their nftables). Never fails; safe to call twice.
netns_cleanup() {
  local pid ns left
  for pid in "${NETNS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${NETNS_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  NETNS_PIDS=()
  left=0
  for ns in "${NETNS_NAMES[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill "$pid" 2>/dev/null || true
      left=1
    done
  done
  [ "$left" = 0 ] || sleep 0.2
  for ns in "${NETNS_NAMES[@]}"; do
    if [ "$left" != 0 ]; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
  NETNS_NAMES=()
}

# netns_exit_traps [BEFORE [AFTER]]: makes any exit of the script run netns_cleanup: the EXIT
# trap, plus SIGINT (Ctrl-C) and SIGTERM traps that exit with 130 and 143 (a script may set its
# own INT/TERM traps afterwards, e.g. to say "interrupted", as long as they exit). The
# functions BEFORE and AFTER, if given, run with the exit status as argument before the
# clean-up (the processes still run: e.g. a last screenshot) and after it (e.g. keep the logs,
# remove the work folder). The script's exit status is kept; further Ctrl-Cs during the
# clean-up are ignored so that it completes.
netns_exit_traps() {
  NETNS_BEFORE_CLEANUP=${1:-}
  NETNS_AFTER_CLEANUP=${2:-}
  trap netns_on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# netns_on_exit: the EXIT trap set by netns_exit_traps.
netns_on_exit() {
  local status=$?
  trap - EXIT
  trap '' INT TERM
  set +e
  [ -z "$NETNS_BEFORE_CLEANUP" ] || "$NETNS_BEFORE_CLEANUP" "$status"
  netns_cleanup
  [ -z "$NETNS_AFTER_CLEANUP" ] || "$NETNS_AFTER_CLEANUP" "$status"
  exit "$status"
}
