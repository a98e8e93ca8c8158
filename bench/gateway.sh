#!/usr/bin/env bash
# The gateway's figures, measured with the release binaries in network namespaces (a benchmark,
# not a test: it prints a table and asserts nothing beyond the set-up working). As root:
#
#   bash bench/gateway.sh            # builds target/release first (cargo build --release)
#   BENCH_NO_BUILD=1 bash bench/gateway.sh
#   CLIENTS=500 bash bench/gateway.sh   # fewer clients in part 4 (1..2000, default 2000)
#
#   clients (10.66.0.2 and more) ── lan0 [gateway] wan0 ── upstream: a stand-in at
#   one veth, macvlans on it        10.66.0.1/16 10.99.0.1  10.99.0.3:9000 (connect target
#                                                           and download server)
#
# What it measures (issue 3, "Figures for the closing note"):
#   1. code submitted → first packet through: LOGINS logins with as many codes from one client;
#      from the moment the POST /login starts, a TCP connect to the upstream is tried every
#      1 ms until one succeeds; then `edgeshare-gateway kick` and the next code;
#   2. quota crossed → traffic stops: a 2 MB code and one download, RUNS runs each at full
#      speed, with the uplink limited to RATE, and with the LAN link (the Wi-Fi) limited to
#      RATE (tc tbf on the upstream's or on the gateway's LAN side): bytes past the quota as
#      received by the client and as counted by the gateway (the code store's used_bytes), and
#      the time from the quota's crossing to the last byte received;
#   3. code expired → traffic stops: a code valid for EXPIRY_S seconds, a steady download with
#      the uplink at RATE, RUNS runs: time from the code's expiry instant to the last byte;
#   4. CLIENTS clients (issue 15): each a macvlan with its own MAC and address on the client
#      side (the gateway binds a session to MAC+IP and treats one MAC as one device, so
#      clients sharing a MAC would take each other's place), each logging in with its own
#      code: all but the last BURST+COUNTED one after another (login latency), COUNTED more
#      one after another with child processes counted, then BURST at the same moment (time
#      until the last is online); then, all online and idle: the gateway's CPU over IDLE_S
#      seconds, child processes per tick, the time one reading of every kernel counter takes
#      (the daemon's debug line "kernel counters read"), its RSS (VmRSS, VmHWM).
#
# The gateway's child processes are counted, not assumed (netlink starts none): every program
# the daemon could start (CHILDREN: `grep -rn 'Command::new' gateway/src`: nft for the
# firewall's install and removal, tc and ip that read the LAN queue and the addresses before
# rtnetlink did, systemctl of the CLI) is found on its PATH first in a folder of ours, where
# it is a symbolic link to the real one, swapped for a counting script (one line per exec,
# then the real program) only while counting, so that the latencies are measured without the
# script's cost.
#
# The kernel's neighbour table is one for all namespaces, and its limits (gc_thresh1/2/3) are
# the host's: past 1,024 entries new ones are refused. `edgeshare-gateway neighbour-limits`
# raises them, in the host's namespace, for the gateway's lan.max_clients (2048), as the
# daemon does at start on a Pi; the values before are put back on exit unless something
# changed them meanwhile. The clients' entries for the gateway are permanent (on real devices
# they are in each device's own table; permanent entries do not count against the limits).
#
# Every client, the gateway and the upstream run in namespaces made here; traffic stays in
# them. Each loop is bounded in count and time. Everything is removed on exit, on Ctrl-C too.
# The table goes to stdout and to bench/results/gateway-<date>.txt; progress to stderr.
# Needs python3 (the client side and the report; standard library only). About 9 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

LOGINS=${LOGINS:-100}
RUNS=${RUNS:-10}
CLIENTS=${CLIENTS:-2000}
BURST=${BURST:-200}
COUNTED=${COUNTED:-50}
IDLE_S=${IDLE_S:-30}
RATE=${RATE:-20mbit}
QUOTA_MB=${QUOTA_MB:-2}
EXPIRY_S=${EXPIRY_S:-3}
CHILDREN=${CHILDREN:-nft tc ip systemctl}

[ "$(id -u)" = 0 ] || { echo "bench: run as root (network namespaces, nftables)" >&2; exit 1; }
# The testbed (client — gateway — upstream namespaces), the gateway's configuration, starting
# the daemons, the clean-up, and the benchmarks' preparation: scripts/lib/netns.bash.
# shellcheck source=scripts/lib/netns.bash
. scripts/lib/netns.bash
bench_prepare ip nft tc jq python3
[ "$CLIENTS" -gt $((BURST + COUNTED)) ] || { echo "bench: CLIENTS must be more than BURST + COUNTED" >&2; exit 1; }
bench_work artifacts/bench
NEIGH_KEYS=()
for family in ipv4 ipv6; do
  for n in 1 2 3; do
    [ ! -e "/proc/sys/net/$family/neigh/default/gc_thresh$n" ] || NEIGH_KEYS+=("net.$family.neigh.default.gc_thresh$n")
  done
done
NEIGH_BEFORE=$(sysctl -n "${NEIGH_KEYS[@]}" | tr '\n' ' ')
NEIGH_RAISED=
restore_neigh() { # the host's neighbour-table limits as they were, unless changed since ours
  local key before i=0
  [ "$(sysctl -n "${NEIGH_KEYS[@]}" | tr '\n' ' ')" = "$NEIGH_RAISED" ] || return 0
  read -ra before <<<"$NEIGH_BEFORE"
  for key in "${NEIGH_KEYS[@]}"; do
    sysctl -qw "$key=${before[$i]}"
    i=$((i + 1))
  done
}
BENCH_AFTER_CLEANUP=restore_neigh

netns_testbed bench 16
say "network namespaces $NS_C, $NS_G, $NS_U"

say "upstream: the stand-in at 10.99.0.3:9000"
netns_start_standin "$NS_U" "$WORK/upstream" "$BIN/edgeshare-standin" --listen 10.99.0.3:9000
netns_gateway_config "$WORK/gateway.toml" "$WORK/state" "$WORK/gateway.sock" "es_bench_$ID" local
GW=("$BIN/edgeshare-gateway" --config "$WORK/gateway.toml")
say "the host's neighbour-table limits, for lan.max_clients: edgeshare-gateway neighbour-limits"
"${GW[@]}" neighbour-limits >&2
NEIGH_RAISED=$(sysctl -n "${NEIGH_KEYS[@]}" | tr '\n' ' ')
# The gateway's programs: each a link to the real one, or to its counting script while
# counting (one line with its name per exec in child-calls). A program not installed here is
# one the gateway cannot start either.
mkdir "$WORK/bin" "$WORK/count"
: >"$WORK/child-calls"
COUNTED_PROGRAMS=()
for program in $CHILDREN; do
  real=$(command -v "$program") || continue
  printf '#!/bin/sh\necho %s >>"%s"\nexec "%s" "$@"\n' "$program" "$WORK/child-calls" "$real" >"$WORK/count/$program"
  chmod +x "$WORK/count/$program"
  COUNTED_PROGRAMS+=("$program")
done
children_via() { # children_via real|count: what the gateway runs from now on (each swapped atomically)
  local program target
  for program in "${COUNTED_PROGRAMS[@]}"; do
    if [ "$1" = real ]; then target=$(command -v "$program"); else target=$WORK/count/$program; fi
    ln -sfn "$target" "$WORK/bin/$program.new"
    mv -Tf "$WORK/bin/$program.new" "$WORK/bin/$program"
  done
}
children_via real
child_calls() { wc -l <"$WORK/child-calls"; }
# Which programs the calls since line FROM of child-calls were, e.g. "nft 3, tc 10".
child_names() { tail -n +"$(($1 + 1))" "$WORK/child-calls" | sort | uniq -c | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1}'; }
# Debug for the one line per reading of the kernel counters (its duration), info elsewhere.
netns_start_gateway "$WORK/gateway.sock" "$WORK/gateway.log" env PATH="$WORK/bin:$PATH" \
  RUST_LOG=info,edgeshare_gateway::daemon::state=debug "${GW[@]}"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$GATEWAY_PID/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$GATEWAY_PID/status"; }
# CPU time of the gateway and its reaped children (nft, …), and of the gateway alone, in
# clock ticks.
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$GATEWAY_PID/stat"; }
own_ticks() { awk '{print $14 + $15}' "/proc/$GATEWAY_PID/stat"; }
codes() { # codes MB HOURS COUNT FILE
  in_ns "$NS_G" "${GW[@]}" codes create --mb "$1" --hours "$2" --count "$3" >"$4"
  [ "$(wc -l <"$4")" = "$3" ] || { echo "bench: codes create gave $(wc -l <"$4") codes" >&2; exit 1; }
}
sleep 2
RSS_IDLE=$(rss_kib)

# The client side and the report: one Python program (standard library only); the client
# commands run in the client namespace.
cat >"$WORK/client.py" <<'PY'
import json, math, os, select, socket, statistics, subprocess, sys, threading, time

PORTAL = ("10.66.0.1", 8080)
UPSTREAM = ("10.99.0.3", 9000)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def sock(iface, src):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.encode())
    s.bind((src, 0))
    return s


def http(iface, src, request, timeout=30):
    """Sends a request with Connection: close; returns (status, body) once the server closes."""
    s = sock(iface, src)
    s.settimeout(timeout)
    try:
        s.connect(PORTAL)
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        s.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body.decode("utf-8", "replace")


def login(iface, src, code, timeout=30):
    body = f"code={code}".encode()
    request = (b"POST /login HTTP/1.1\r\nHost: 10.66.0.1:8080\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n"
               + f"Content-Length: {len(body)}\r\n".encode()
               + b"Connection: close\r\n\r\n" + body)
    status, page = http(iface, src, request, timeout)
    if status != 200 or "You are online" not in page:
        raise SystemExit(f"login of {src} with {code[:2]}… failed: {status} {page[:300]!r}")


def through_once(iface, src, wait):
    """One TCP connect to the upstream, given `wait` seconds; True if it was answered."""
    s = sock(iface, src)
    s.setblocking(False)
    try:
        s.connect_ex(UPSTREAM)
        _, writable, _ = select.select([], [s], [], wait)
        return bool(writable) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    finally:
        s.close()


def pct(values, p):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


def summary(values):
    return {"n": len(values), "median": statistics.median(values), "p99": pct(values, 99),
            "max": max(values), "min": min(values)}


def cmd_get(iface, src, count):
    """Baseline: GET / (the form), one connection each."""
    times = []
    for _ in range(int(count)):
        t = time.perf_counter()
        status, _ = http(iface, src, b"GET / HTTP/1.1\r\nHost: 10.66.0.1:8080\r\nConnection: close\r\n\r\n")
        times.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise SystemExit(f"GET / answered {status}")
    print(json.dumps(summary(times)))


def cmd_logins(iface, src, mac, codes_file, *gateway):
    """Per code: POST /login while another thread tries a TCP connect to the upstream every
    1 ms from the same moment on; then the device is kicked for the next code."""
    firsts, replies = [], []
    for code in open(codes_file).read().split():
        if through_once(iface, src, 0.05):
            raise SystemExit("the client reaches the upstream before logging in")
        start = time.perf_counter()
        found = []

        def poll():
            while time.perf_counter() < start + 5:
                if through_once(iface, src, 0.001):
                    found.append(time.perf_counter())
                    return

        poller = threading.Thread(target=poll)
        poller.start()
        login(iface, src, code)
        replied = time.perf_counter()
        poller.join()
        if not found:
            raise SystemExit("no packet went through within 5 s of a login")
        firsts.append((found[0] - start) * 1000)
        replies.append((replied - start) * 1000)
        subprocess.run([*gateway, "kick", mac], check=True, stdout=subprocess.DEVNULL)
    print(json.dumps({"first": summary(firsts), "reply": summary(replies)}))


def cmd_transfer(iface, src, code, size, stall, limit, record_until):
    """Logs in, downloads `size` bytes until `stall` s pass without data (or `limit` s in
    all). Reports the body bytes received, when the last one came (wall clock), and the
    moments the running total passed (up to `record_until` bytes)."""
    size, stall, limit, record_until = int(size), float(stall), float(limit), int(record_until)
    login(iface, src, code)
    s = sock(iface, src)
    s.settimeout(5)
    s.connect(UPSTREAM)
    s.sendall(f"GET /__standin/download/{size} HTTP/1.1\r\nHost: 10.99.0.3:9000\r\n"
              "Connection: close\r\n\r\n".encode())
    s.setblocking(False)
    view = memoryview(bytearray(4 << 20))
    head = b""
    body = 0
    timeline = []
    last = started = time.time()
    eof = False
    while time.time() - started < limit:
        ready, _, _ = select.select([s], [], [], 0.05)
        if not ready:
            if time.time() - last >= stall:
                break
            continue
        try:
            n = s.recv_into(view)
        except ConnectionResetError:
            # The gateway resets a client's connections when its access ends (quota,
            # expiry): the download is over, as when it stalls.
            break
        if n == 0:
            eof = True
            break
        last = time.time()
        if head is not None:
            head += bytes(view[:n])
            if b"\r\n\r\n" not in head:
                continue
            n = len(head) - head.index(b"\r\n\r\n") - 4
            head = None
        body += n
        if body - n < record_until:
            timeline.append((last, body))
    s.close()
    print(json.dumps({"got": body, "last": last, "started": started, "eof": eof,
                      "timeline": timeline}))


def cmd_many(list_file):
    """Logs in each `iface ip code` line in turn; reports the latencies."""
    lines = [l.split() for l in open(list_file) if l.strip()]
    latencies = []
    start = time.perf_counter()
    for iface, src, code in lines:
        t = time.perf_counter()
        login(iface, src, code)
        latencies.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"total_s": time.perf_counter() - start, "all": summary(latencies),
                      "first": latencies[0], "last": latencies[-1],
                      "first50": statistics.median(latencies[:50]),
                      "last50": statistics.median(latencies[-50:])}))


def cmd_burst(list_file):
    """Logs in each `iface ip code` line at the same moment, a thread each; reports the time
    from that moment until each was told it is online, and the logins that failed (the
    portal answers 408 to a request it could not finish within its 30 s). Each waits up to
    120 s: the logins are served one at a time, so the last waits for all the others."""
    lines = [l.split() for l in open(list_file) if l.strip()]
    start_line = threading.Barrier(len(lines) + 1)
    done, failed = [], []

    def one(iface, src, code):
        start_line.wait()
        try:
            login(iface, src, code, 120)
            done.append(time.perf_counter())
        except BaseException as err:  # SystemExit from login(): report it, end the thread
            failed.append(str(err))

    threads = [threading.Thread(target=one, args=line) for line in lines]
    for t in threads:
        t.start()
    start_line.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if not done:
        raise SystemExit(f"all {len(lines)} logins at once failed: {failed[0]}")
    print(json.dumps({"n": len(lines), "all": summary([(t - start) * 1000 for t in done]),
                      "failed": len(failed), "failure": failed[0] if failed else ""}))


def cmd_report(results_file):
    r = json.load(open(results_file))
    mb = 1048576
    quota = r["quota_bytes"]
    out = []

    def row(label, a="", b="", n=""):
        out.append(f"{label:<62} {a:>10} {b:>10} {n:>4}")

    def f(v, d=1):
        return f"{v:.{d}f}"

    out.append(f"edgeshare-gateway benchmark, {r['date']}, commit {r['commit']}")
    out.append(f"machine: {r['machine']}")
    out.append(f"set-up: {r['setup']}")
    out.append("")
    row("figure", "median", "p99/worst", "n")
    login_ = r["logins"]
    row("code submitted → first packet through (ms, 1 ms polling)",
        f(login_["first"]["median"]), f(login_["first"]["p99"]), str(login_["first"]["n"]))
    row("code submitted → success page received (ms)",
        f(login_["reply"]["median"]), f(login_["reply"]["p99"]), str(login_["reply"]["n"]))
    row("  for comparison: GET / (the form page) (ms)",
        f(r["get"]["median"]), f(r["get"]["p99"]), str(r["get"]["n"]))
    out.append("  (p99 is the nearest-rank 99th percentile; below, the second column is the worst run)")
    for name, label in (("full", "full speed"), ("uplink", f"{r['rate']} uplink"),
                        ("lan", f"{r['rate']} LAN link")):
        runs = [x for x in r["quota"] if x["variant"] == name]
        if not runs:
            continue
        cut, past_got, past_used, uncounted, speed, drops = [], [], [], [], [], []
        for x in runs:
            # The moment the gateway's count passed the quota, seen from the client: when it
            # had received the same share of its total as the quota is of the gateway's count.
            mark = quota * x["got"] / x["used"] if x["used"] else quota
            t = next((t for t, total in x["timeline"] if total >= mark), None)
            if t is None:
                t = x["timeline"][-1][0] if x["timeline"] else x["last"]
            cut.append((x["last"] - t) * 1000)
            past_got.append((x["got"] - quota) / mb)
            past_used.append((x["used"] - quota) / mb)
            uncounted.append((x["got"] - x["used"]) / mb)
            speed.append(mark / mb / max(t - x["started"], 1e-6))
            drops.append(x.get("drops", 0))
        row(f"quota {quota / mb:g} MB crossed → last byte (ms), {label}",
            f(statistics.median(cut), 0), f(max(cut), 0), str(len(runs)))
        row("  MB past the quota: received by the client",
            f(statistics.median(past_got), 2), f(max(past_got), 2), str(len(runs)))
        row("  MB past the quota: counted by the gateway",
            f(statistics.median(past_used), 2), f(max(past_used), 2), str(len(runs)))
        row("  MB received but not counted (received − counted)",
            f(statistics.median(uncounted), 2), f(max(uncounted), 2), str(len(runs)))
        row("  download speed before the quota (MB/s)",
            f(statistics.median(speed), 1), f(min(speed), 1) + " min", str(len(runs)))
        if name == "lan":
            row("  packets dropped by the LAN link's queue, per run",
                f(statistics.median(drops), 0), f(max(drops), 0), str(len(runs)))
    late = [(x["last"] - x["expires"]) * 1000 for x in r["expiry"]]
    row(f"code expired → last byte received (ms), {r['rate']} uplink",
        f(statistics.median(late), 0), f(max(late), 0), str(len(late)))
    unbilled = [(x["got"] - x["used"]) / mb for x in r["expiry"]]
    row("  MB received but not counted (received − counted)",
        f(statistics.median(unbilled), 2), f(max(unbilled), 2), str(len(unbilled)))
    kib = lambda k: f(k / 1024)
    row("gateway RSS idle (MiB)", kib(r["rss_idle"]))
    row("gateway RSS after the runs above (MiB)", kib(r["rss_after_runs"]))
    row(f"gateway RSS with {r['online']} clients online (MiB); peak (VmHWM)",
        kib(r["rss_many"]), kib(r["hwm"]))
    m = r["many"]
    row(f"{m['all']['n']} logins one after another, one client each: total (s)", f(m["total_s"]))
    row("  login latency (ms; second column p99)", f(m["all"]["median"]), f(m["all"]["p99"]),
        str(m["all"]["n"]))
    row("  worst login latency (ms)", "", f(m["all"]["max"]))
    row(f"  latency of the 1st / of the {m['all']['n']}th login (ms)", f(m["first"]), f(m["last"]))
    row("  median latency of the first 50 / of the last 50 (ms)", f(m["first50"]), f(m["last50"]))
    b = r["burst"]
    row(f"{b['n']} logins at the same moment: until the last is told online (s)",
        "", f(b["all"]["max"] / 1000, 2), str(b["all"]["n"]))
    row("  time until each is told online (ms; median, p99)", f(b["all"]["median"], 0),
        f(b["all"]["p99"], 0), str(b["all"]["n"]))
    if b["failed"]:
        out.append(f"  {b['failed']} of the {b['n']} logins failed, e.g. {b['failure'][:90]!r}")
    per_tick = r["idle_calls"] / 10
    c = r["counted"]
    per_login = (r["counted_calls"] - per_tick * r["counted_s"]) / c["all"]["n"]
    row("child processes per login (ticks' own subtracted)", f(per_login), "", str(c["all"]["n"]))
    row(f"child processes per tick (1 s) with {r['online']} online and idle", f(per_tick), "", "10")
    out.append(f"  (counted: {r['children']}; started while logging in: {r['counted_names'] or 'none'}; "
               f"while idle: {r['idle_names'] or 'none'})")
    row(f"gateway CPU, {r['online']} online and idle (% of a core, with its children)",
        f(r["cpu_many"]))
    row("  the gateway process alone (% of a core)", f(r["cpu_own"]))
    reads = r["reads"]
    row(f"one reading of all kernel counters, {r['online']} online (ms)",
        f(statistics.median(reads)), f(max(reads)) + " max", str(len(reads)))
    out.append(f"clients online per the gateway's status: {r['online']}; "
               f"elements in the kernel's client set: {r['elements']}")
    bad = [x for x in r["quota"] + r["expiry"] if x["eof"]]
    if bad:
        out.append(f"WARNING: {len(bad)} download(s) ended by themselves instead of being cut off")
    print("\n".join(out))


if __name__ == "__main__":
    commands = {"get": cmd_get, "logins": cmd_logins, "transfer": cmd_transfer,
                "many": cmd_many, "burst": cmd_burst, "report": cmd_report}
    commands[sys.argv[1]](*sys.argv[2:])
PY
client() { # client TIMEOUT COMMAND ARGS…: the client program in the client namespace
  local limit=$1
  shift
  timeout "$limit" ip netns exec "$NS_C" python3 "$WORK/client.py" "$@"
}

say "1/4: $LOGINS logins from one client, each code → first packet through"
GET_JSON=$(client 60 get c0 10.66.0.2 20)
codes 50 1 "$LOGINS" "$WORK/login-codes"
LOGIN_JSON=$(client 300 logins c0 10.66.0.2 "$NETNS_CLIENT_MAC" "$WORK/login-codes" "${GW[@]}")

# 2. and 3.: each run on a client of its own, so that a stalled connection of one run cannot
# leak bytes into the next.
NEXT_CLIENT=1
next_client() { # sets IFACE and SRC to a new macvlan client
  netns_add_clients x "$NEXT_CLIENT" 1
  IFACE=x$NEXT_CLIENT
  SRC=$(netns_client_ip "$NEXT_CLIENT")
  NEXT_CLIENT=$((NEXT_CLIENT + 1))
}
shape() { # shape full|uplink|lan: where the link rate RATE applies (tc tbf)
  tc -n "$NS_U" qdisc del dev u0 root 2>/dev/null || true
  tc -n "$NS_G" qdisc del dev lan0 root 2>/dev/null || true
  case $1 in
    uplink) tc -n "$NS_U" qdisc add dev u0 root tbf rate "$RATE" burst 64kb latency 50ms ;;
    lan) tc -n "$NS_G" qdisc add dev lan0 root tbf rate "$RATE" burst 64kb latency 50ms ;;
  esac
}
lan_drops() { tc -n "$NS_G" -s -j qdisc show dev lan0 | jq '[.[] | select(.kind == "tbf") | .drops] | add // 0'; }
used_bytes() { # used_bytes CODE: the code store's figure
  in_ns "$NS_G" "${GW[@]}" codes list --json | jq -r --arg c "$1" '.[] | select(.code == $c) | .used_bytes'
}
# The gateway works in 1 s ticks: start each run at a random point of the tick, so that the
# runs do not all see the same phase.
random_pause() { sleep "0.$(printf '%03d' $((RANDOM % 1000)))"; }
final_used() { # final_used CODE: the code store's count once the gateway has ended the session
  local used='' _
  for _ in $(seq 1 50); do
    used=$(used_bytes "$1")
    [ -n "$used" ] && [ "$used" -gt 0 ] && break
    sleep 0.1
  done
  echo "${used:-0}"
}
QUOTA=$((QUOTA_MB * 1048576))
: >"$WORK/quota.jsonl"
for variant in full uplink lan; do
  say "2/4: quota crossed → traffic stops, $RUNS runs, $variant$([ "$variant" = full ] || echo " at $RATE")"
  shape "$variant"
  for _ in $(seq 1 "$RUNS"); do
    next_client
    codes "$QUOTA_MB" 1 1 "$WORK/code"
    code=$(cat "$WORK/code")
    drops_before=0
    [ "$variant" != lan ] || drops_before=$(lan_drops)
    random_pause
    out=$(client 60 transfer "$IFACE" "$SRC" "$code" $((8 << 30)) 2 20 $((4 * QUOTA)))
    drops=0
    [ "$variant" != lan ] || drops=$(($(lan_drops) - drops_before))
    echo "$out" | jq -c --arg v "$variant" --argjson used "$(final_used "$code")" --argjson drops "$drops" \
      '. + {variant: $v, used: $used, drops: $drops}' >>"$WORK/quota.jsonl"
  done
done

say "3/4: code expired → traffic stops, $RUNS runs at $RATE (uplink)"
shape uplink
: >"$WORK/expiry.jsonl"
hours=$(awk -v s="$EXPIRY_S" 'BEGIN { printf "%.8f", s / 3600 }')
for _ in $(seq 1 "$RUNS"); do
  next_client
  codes 1000 "$hours" 1 "$WORK/code"
  code=$(cat "$WORK/code")
  expires=$(in_ns "$NS_G" "${GW[@]}" codes list --json | jq -r --arg c "$code" '.[] | select(.code == $c) | .expires_at')
  random_pause
  out=$(client 60 transfer "$IFACE" "$SRC" "$code" $((8 << 30)) 2 $((EXPIRY_S + 15)) 0)
  echo "$out" | jq -c --argjson expires "$expires" --argjson used "$(final_used "$code")" \
    '. + {expires: ($expires / 1000), used: $used}' >>"$WORK/expiry.jsonl"
done
shape full
RSS_AFTER_RUNS=$(rss_kib)

say "4/4: $CLIENTS clients, each its own MAC, address and code"
# The machine may be shared: its load goes into the table beside the figures.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
netns_add_clients m 1000 "$CLIENTS"
netns_pin_gateway m 1000 "$CLIENTS"
# `codes create` makes at most 1,000 at a time.
: >"$WORK/many-codes"
for ((left = CLIENTS; left > 0; left -= 1000)); do
  codes 50 1 $((left < 1000 ? left : 1000)) "$WORK/some-codes"
  cat "$WORK/some-codes" >>"$WORK/many-codes"
done
n=1000
while read -r code; do
  echo "m$n $(netns_client_ip "$n") $code"
  n=$((n + 1))
done <"$WORK/many-codes" >"$WORK/many"
ONE_BY_ONE=$((CLIENTS - BURST - COUNTED))
head -n "$ONE_BY_ONE" "$WORK/many" >"$WORK/one-by-one"
sed -n "$((ONE_BY_ONE + 1)),$((ONE_BY_ONE + COUNTED))p" "$WORK/many" >"$WORK/counted"
tail -n "$BURST" "$WORK/many" >"$WORK/burst"
say "4/4: $ONE_BY_ONE logins one after another"
MANY_JSON=$(client 900 many "$WORK/one-by-one")
say "4/4: $COUNTED logins one after another, child processes counted"
children_via count
calls_before=$(child_calls)
t0=$(date +%s.%N)
COUNTED_JSON=$(client 300 many "$WORK/counted")
t1=$(date +%s.%N)
COUNTED_CALLS=$(($(child_calls) - calls_before))
COUNTED_NAMES=$(child_names "$calls_before")
COUNTED_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
children_via real
say "4/4: $BURST logins at the same moment"
BURST_JSON=$(client 300 burst "$WORK/burst")
# The logins the portal gave up on (408) may still be queued for the daemon, whose control
# socket answers once it is through them.
for _ in $(seq 1 120); do
  sleep 1
  ONLINE=$(in_ns "$NS_G" "${GW[@]}" status 2>/dev/null | jq -r .online_devices) && break
done
[ -n "$ONLINE" ] || netns_fail "status did not answer within 120 s of the burst"
ELEMENTS=$(in_ns "$NS_G" nft -j list set inet "es_bench_$ID" clients4_up | jq '[.nftables[] | select(.set) | .set.elem // [] | length] | add')
say "4/4: $ONLINE online and idle: CPU over $IDLE_S s, then child processes per tick over 10 s"
RSS_MANY=$(rss_kib)
log_from=$(wc -l <"$WORK/gateway.log")
ticks_before=$(cpu_ticks)
own_before=$(own_ticks)
sleep "$IDLE_S"
CPU_MANY=$(awk -v a="$ticks_before" -v b="$(cpu_ticks)" -v hz="$(getconf CLK_TCK)" -v s="$IDLE_S" 'BEGIN { print (b - a) / hz / s * 100 }')
CPU_OWN=$(awk -v a="$own_before" -v b="$(own_ticks)" -v hz="$(getconf CLK_TCK)" -v s="$IDLE_S" 'BEGIN { print (b - a) / hz / s * 100 }')
# Each reading of the kernel counters in the idle time: "… elapsed_us=N entries=M …".
tail -n +"$((log_from + 1))" "$WORK/gateway.log" |
  sed -n 's/.*kernel counters read.*elapsed_us=\([0-9]*\).*/\1/p' >"$WORK/reads"
[ -s "$WORK/reads" ] || netns_fail "no \"kernel counters read\" line in the gateway's log"
READS_JSON=$(python3 -c 'import json, sys; print(json.dumps([int(x) / 1000 for x in open(sys.argv[1]).read().split()]))' "$WORK/reads")
children_via count
calls_before=$(child_calls)
sleep 10
IDLE_CALLS=$(($(child_calls) - calls_before))
IDLE_NAMES=$(child_names "$calls_before")
children_via real
HWM_MANY=$(hwm_kib)

# The table.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD -- gateway shared Cargo.lock 2>/dev/null || commit+=" (with local changes)"
machine="$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/^Mem:/ {print $2}') GiB"
machine+=", kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME"), $(nft --version | awk '{print $1, $2}')"
jq -n \
  --arg date "$(date -u '+%F %H:%M UTC')" --arg commit "$commit" --arg machine "$machine" \
  --arg setup "release build, namespaces (veth; clients as macvlans), local codes; gateway tick 1 s; tbf for $RATE; lan.max_clients 2048; load average before part 4: $LOAD_BEFORE" \
  --arg rate "$RATE" --argjson quota_bytes "$QUOTA" \
  --argjson get "$GET_JSON" --argjson logins "$LOGIN_JSON" --argjson many "$MANY_JSON" \
  --slurpfile quota "$WORK/quota.jsonl" --slurpfile expiry "$WORK/expiry.jsonl" \
  --argjson rss_idle "$RSS_IDLE" --argjson rss_after_runs "$RSS_AFTER_RUNS" \
  --argjson rss_many "$RSS_MANY" --argjson hwm "$HWM_MANY" --argjson cpu_many "$CPU_MANY" \
  --argjson cpu_own "$CPU_OWN" --argjson online "$ONLINE" --argjson elements "${ELEMENTS:-0}" \
  --argjson counted "$COUNTED_JSON" --argjson counted_calls "$COUNTED_CALLS" \
  --argjson counted_s "$COUNTED_S" --argjson idle_calls "$IDLE_CALLS" --argjson burst "$BURST_JSON" \
  --arg counted_names "$COUNTED_NAMES" --arg idle_names "$IDLE_NAMES" \
  --arg children "${COUNTED_PROGRAMS[*]}" \
  --argjson reads "$READS_JSON" \
  '$ARGS.named' >"$WORK/results.json"
RESULT=bench/results/gateway-$(date -u +%F).txt
mkdir -p bench/results
python3 "$WORK/client.py" report "$WORK/results.json" | tee "$RESULT"
say "saved to $RESULT"
