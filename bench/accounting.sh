#!/usr/bin/env bash
# The gateway's two meters against ground truth, with iperf3 in network namespaces (a benchmark,
# not a test: it prints a table and asserts nothing beyond the set-up working). As root:
#
#   bash bench/accounting.sh            # builds target/release first (cargo build --release)
#   BENCH_NO_BUILD=1 bash bench/accounting.sh
#   EDGESHARE_CAPTURE__BUFFER_BYTES=67108864 CAPTURE_NICE=-10 bash bench/accounting.sh
#     (experiments: the gateway reads the first from its environment; the second renices its
#     capture thread; both are named in the table's set-up line)
#
#   client c0 (10.66.0.2), ── lan0 [gateway] wan0 ── upstream u0: iperf3 -s on 10.99.0.2,
#   macvlans on c0           10.66.0.1/16 10.99.0.1   the stand-in on 10.99.0.3:9000 (downloads)
#
# Meter 2 (billing) is the kernel's nftables element counters, meter 1 (audit) the gateway's
# packet capture on lan0; both count the IP total length of packets forwarded between a client
# and the WAN, up and down apart. Both are read from the metrics endpoint as deltas around a
# run, SETTLE seconds after it ends (each meter is read about once a second).
#
# Ground truth is the gateway's interface counters, bytes minus 14 × packets (the Ethernet
# header): up = lan0 rx, down = wan0 rx. They count only the traffic under test because the
# links are kept silent (netns_quiet: IPv6 off, permanent neighbour entries, so no ARP or ND)
# and the counters are read after the client's login. They count what entered the gateway;
# what it forwarded is read on the far side (wan0 tx, lan0 tx) and shown beside it, with the
# veths' drop counters, so a frame lost inside the gateway shows up as a difference there.
#
# What it measures:
#   1. one client, iperf3 to the upstream for DURATION s per row: TCP 1 and 8 streams, upload
#      and download (-R), as fast as it goes, and 1 stream held to 1 Gbit/s each way; UDP with
#      64- and 1400-byte payloads at UDP_RATES (upload; 0 = as fast as iperf3 can send), and
#      each at full speed downloading. Per row:
#      the rate and frames/s into the gateway, iperf3's own payload count, the bytes by ground
#      truth and by each meter and their error, capture drops, the gateway's CPU (utime +
#      stime, children included, over the run) and its largest RSS sampled during the run;
#   2. CLIENTS clients at once (a macvlan each: own MAC, address and code), each downloading
#      CLIENT_MB MB with curl, at full speed and with the upstream limited to CLIENTS_RATE:
#      each meter per client against that client's macvlan counters (tx = up, rx = down,
#      minus 14 × packets): max and mean |error|, clients exact;
#   3. quota overshoot: QUOTA_RUNS clients (a macvlan each), each with a QUOTA_MB MB code,
#      download from the stand-in at full speed until cut off: bytes past the quota as billed
#      (the code's used_bytes), as forwarded (wan0 tx + lan0 tx) and as captured.
#
# Every client, the gateway and the upstream run in namespaces made here; traffic stays in
# them. Every run is bounded in time (iperf3 and curl under timeouts), about 4 minutes in all.
# Everything is removed on exit, on Ctrl-C too. The table goes to stdout and to
# bench/results/accounting-<date>.txt; progress to stderr. Needs python3 (standard library).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
UDP_RATES=${UDP_RATES-50M 200M 500M 1G 0}
QUOTA_RUNS=${QUOTA_RUNS:-3}
QUOTA_MB=${QUOTA_MB:-10}
CLIENTS=${CLIENTS:-200}
CLIENT_MB=${CLIENT_MB:-2}
CLIENTS_RATE=${CLIENTS_RATE:-400mbit}
# Both meters are read about once a second: wait this long after a run before reading them.
SETTLE=${SETTLE:-2.5}
# If set, the gateway's capture thread is reniced to this (e.g. -10) once it runs.
CAPTURE_NICE=${CAPTURE_NICE:-}

[ "$(id -u)" = 0 ] || { echo "bench: run as root (network namespaces, nftables)" >&2; exit 1; }
if ! command -v iperf3 >/dev/null 2>&1; then
  echo "bench: installing iperf3 (apt-get install -y iperf3)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
fi
# The testbed (client — gateway — upstream namespaces), clients as macvlans, silent links, the
# gateway's configuration, starting the daemons, the clean-up and the benchmarks' preparation:
# scripts/lib/netns.bash.
# shellcheck source=scripts/lib/netns.bash
. scripts/lib/netns.bash
bench_prepare ip nft jq curl python3 iperf3
bench_work artifacts/bench-accounting
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

netns_testbed acct 16
netns_quiet
say "network namespaces $NS_C, $NS_G, $NS_U (IPv6 off, neighbours pinned)"

say "upstream: iperf3 -s on 10.99.0.2:5201, the stand-in on 10.99.0.3:9000"
ip netns exec "$NS_U" iperf3 -s -B 10.99.0.2 -p 5201 >"$WORK/iperf3-server.log" 2>&1 &
IPERF3_PID=$!
netns_track_pid "$IPERF3_PID"
iperf3_listening() { [ -n "$(in_ns "$NS_U" ss -Hltn 'sport = :5201')" ]; }
netns_wait_for "iperf3 server" "$IPERF3_PID" "$WORK/iperf3-server.log" iperf3_listening
netns_start_standin "$NS_U" "$WORK/upstream" "$BIN/edgeshare-standin" --listen 10.99.0.3:9000

netns_gateway_config "$WORK/gateway.toml" "$WORK/state" "$WORK/gateway.sock" "es_acct_$ID" local
GW=("$BIN/edgeshare-gateway" --config "$WORK/gateway.toml")
netns_start_gateway "$WORK/gateway.sock" "$WORK/gateway.log" "${GW[@]}"
metrics_up() { in_ns "$NS_G" curl -sf -m 2 -o /dev/null http://127.0.0.1:9464/metrics; }
netns_wait_for "the gateway's metrics endpoint" "$GATEWAY_PID" "$WORK/gateway.log" metrics_up
CAPTURE_TID=$(grep -lx "capture lan0" /proc/"$GATEWAY_PID"/task/*/comm | head -1 | cut -d/ -f5)
[ -n "$CAPTURE_TID" ] || netns_fail "the gateway has no capture thread: $(cat "$WORK/gateway.log")"
if [ -n "$CAPTURE_NICE" ]; then
  # An experiment, not a setting of the gateway: does the capture keep up when it is served
  # first? (A thread's nice value is its own: renice with its TID.)
  renice -n "$CAPTURE_NICE" -p "$CAPTURE_TID" >/dev/null
  say "the capture thread $CAPTURE_TID runs at nice $CAPTURE_NICE"
fi

# The gateway's CPU time, its own and its reaped children's (nft), in clock ticks.
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$GATEWAY_PID/stat"; }
# The gateway's VmRSS or VmHWM in KiB, read without a fork (it is sampled while iperf3 runs).
status_kib() {
  local key value _
  while read -r key value _; do
    if [ "$key" = "$1:" ]; then
      echo "$value"
      return
    fi
  done <"/proc/$GATEWAY_PID/status"
}
codes() { # codes MB COUNT: COUNT new codes, one a line
  in_ns "$NS_G" "${GW[@]}" codes create --mb "$1" --hours 1 --count "$2"
}
online() { in_ns "$NS_G" "${GW[@]}" status | jq -r .online_devices; }
# login IFACE CODE: the portal's form, from the client IFACE; fails unless the code is taken.
login() {
  local status
  status=$(in_ns "$NS_C" curl -sS -m 10 --interface "$1" -o /dev/null -w '%{http_code}' \
    -d "code=$2" http://10.66.0.1:8080/login) || netns_fail "login from $1: curl failed"
  [ "$status" = 200 ] || netns_fail "login from $1: the portal answered $status"
}
# wait_online N: waits (up to 10 s) until the gateway has N devices online.
wait_online() {
  local _
  for _ in $(seq 1 100); do
    [ "$(online)" = "$1" ] && return
    sleep 0.1
  done
  netns_fail "$(online) devices online, expected $1"
}
# snap PREFIX: both meters (the metrics text) and every interface's counters in the three
# namespaces (keyed c/IF, g/IF, u/IF), read while nothing is in flight.
snap() {
  in_ns "$NS_G" curl -sf -m 5 http://127.0.0.1:9464/metrics >"$1.metrics" ||
    netns_fail "reading the metrics endpoint failed"
  { ip -n "$NS_C" -s -j link show; ip -n "$NS_G" -s -j link show; ip -n "$NS_U" -s -j link show; } |
    jq -s '[["c", "g", "u"], .] | transpose
           | map(.[0] as $ns | .[1][] | {key: "\($ns)/\(.ifname)", value: .stats64})
           | from_entries' >"$1.links.json"
}
# sample_while PID: samples the gateway's RSS every 0.2 s until PID ends; sets MAX_RSS (KiB).
sample_while() {
  local rss
  MAX_RSS=0
  while kill -0 "$1" 2>/dev/null; do
    rss=$(status_kib VmRSS)
    [ "$rss" -le "$MAX_RSS" ] || MAX_RSS=$rss
    sleep 0.2
  done
}
# mark NAME: sets the array NAME to the gateway's CPU ticks, the capture thread's time on a CPU
# and time spent runnable but waiting for one (ns, its schedstat: tells a capture thread
# starved of CPU apart from a slow one), and the clock; at the start and the end of a run.
mark() {
  local -n marks=$1
  local run wait _
  read -r run wait _ <"/proc/$GATEWAY_PID/task/$CAPTURE_TID/schedstat"
  # shellcheck disable=SC2034 # a nameref: this sets the caller's array
  marks=("$(cpu_ticks)" "$run" "$wait" "$(date +%s.%N)")
}
# meta PREFIX KIND LABEL [EXTRA_JSON]: what python needs besides the files (after mark MARK1).
meta() {
  local extra=${4:-}
  [ -n "$extra" ] || extra='{}'
  jq -n --arg kind "$2" --arg label "$3" --argjson ticks "$((MARK1[0] - MARK0[0]))" \
    --argjson hz "$(getconf CLK_TCK)" --argjson t0 "${MARK0[3]}" --argjson t1 "${MARK1[3]}" \
    --argjson capture_run_ns "$((MARK1[1] - MARK0[1]))" --argjson capture_wait_ns "$((MARK1[2] - MARK0[2]))" \
    --argjson max_rss "$MAX_RSS" --argjson hwm "$(status_kib VmHWM)" --argjson extra "$extra" \
    '$ARGS.named + $extra | del(.extra)' >"$1.meta.json"
}

cat >"$WORK/acct.py" <<'PY'
import json, re, statistics, sys

ETH = 14  # Ethernet header: interface counters include it, the meters (IP length) do not
LABEL = re.compile(r'(\w+)="([^"]*)"')


def metrics(path):
    out = {}
    for line in open(path):
        if not line.strip() or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        name, _, labels = key.partition("{")
        out[(name, frozenset(LABEL.findall(labels)))] = float(value)
    return out


class Snap:
    def __init__(self, prefix):
        self.m = metrics(prefix + ".metrics")
        self.links = json.load(open(prefix + ".links.json"))

    def metric(self, name, **labels):
        return self.m.get((name, frozenset(labels.items())), 0)

    def ip_bytes(self, iface, side):
        s = self.links[iface][side]
        return s["bytes"] - ETH * s["packets"]


class Delta:
    def __init__(self, prefix):
        self.a = Snap(prefix + ".before")
        self.b = Snap(prefix + ".after")

    def metric(self, name, **labels):
        return int(self.b.metric(name, **labels) - self.a.metric(name, **labels))

    def meter(self, meter, direction):
        return self.metric("edgeshare_metered_bytes_total", meter=meter, direction=direction)

    def client_meter(self, mac, ip, meter, direction):
        return self.metric("edgeshare_client_metered_bytes", mac=mac, ip=ip, meter=meter,
                           direction=direction)

    def ip_bytes(self, iface, side):
        return self.b.ip_bytes(iface, side) - self.a.ip_bytes(iface, side)

    def link(self, iface, side, field):
        return self.b.links[iface][side][field] - self.a.links[iface][side][field]

    def gateway(self):
        """Ground truth (what entered the gateway), what it forwarded, both meters, drops."""
        d = {
            "truth": {"up": self.ip_bytes("g/lan0", "rx"), "down": self.ip_bytes("g/wan0", "rx")},
            "forwarded": {"up": self.ip_bytes("g/wan0", "tx"), "down": self.ip_bytes("g/lan0", "tx")},
            "frames": {"up": self.link("g/lan0", "rx", "packets"),
                       "down": self.link("g/wan0", "rx", "packets")},
            "kernel": {"up": self.meter("kernel", "up"), "down": self.meter("kernel", "down")},
            "capture": {"up": self.meter("capture", "up"), "down": self.meter("capture", "down")},
            "capture_drops": self.metric("edgeshare_capture_drops_total", interface="lan0"),
            "capture_packets": self.metric("edgeshare_capture_packets_total", interface="lan0"),
            # A veth counts a frame its peer's backlog refused as its own tx_dropped.
            "veth_drops": {i: self.link(i, "tx", "dropped") for i in ("c/c0", "g/lan0", "g/wan0", "u/u0")},
        }
        return d


def load_meta(prefix):
    m = json.load(open(prefix + ".meta.json"))
    m["seconds"] = m["t1"] - m["t0"]
    m["cpu"] = m["ticks"] / m["hz"] / m["seconds"] * 100
    m["sched"] = f"{m['capture_run_ns'] / 1e6:.0f}/{m['capture_wait_ns'] / 1e6:.0f}"
    return m


def total(d):
    return d["up"] + d["down"]


def err_pct(value, truth):
    return (value - truth) / truth * 100 if truth else 0.0


def cmd_iperf(prefix, main):
    """One iperf3 row: prints its JSON, and a line of progress to stderr."""
    m = load_meta(prefix)
    d = Delta(prefix).gateway()
    result = json.load(open(prefix + ".iperf3.json"))
    end = result["end"]
    # The sender's count (payload only): the client's when uploading, the server's with -R.
    sent = end.get("sum_sent") or end.get("sum")
    received = end.get("sum_received") or end.get("sum")
    seconds = sent["seconds"] or m["seconds"]
    row = {**m, **d, "main": main, "iperf_sent": sent["bytes"], "iperf_received": received["bytes"],
           "iperf_seconds": seconds,
           "mbit": d["truth"][main] * 8 / seconds / 1e6, "fps": d["frames"][main] / seconds}
    print(json.dumps(row))
    print(f"bench:   {row['mbit']:.0f} Mbit/s, {row['fps']:.0f} frames/s; kernel − truth "
          f"{total(d['kernel']) - total(d['truth'])} B, capture − truth "
          f"{total(d['capture']) - total(d['truth'])} B, capture drops {d['capture_drops']}",
          file=sys.stderr)


def cmd_quota(prefix, code_json, got):
    m = load_meta(prefix)
    d = Delta(prefix).gateway()
    code = json.loads(code_json)
    row = {**m, **d, "quota": code["total_bytes"], "used": code["used_bytes"], "got": int(got)}
    print(json.dumps(row))
    print(f"bench:   billed − quota {row['used'] - row['quota']} B, forwarded − quota "
          f"{total(d['forwarded']) - row['quota']} B", file=sys.stderr)


def cmd_clients(prefix, list_file, got_file, size):
    m = load_meta(prefix)
    delta = Delta(prefix)
    d = delta.gateway()
    clients = []
    for line in open(list_file):
        iface, ip, mac, _code = line.split()
        truth = {"up": delta.ip_bytes("c/" + iface, "tx"), "down": delta.ip_bytes("c/" + iface, "rx")}
        c = {"iface": iface, "truth": truth}
        for meter in ("kernel", "capture"):
            c[meter] = {k: delta.client_meter(mac, ip, meter, k) for k in ("up", "down")}
        clients.append(c)
    got = [int(line.split()[1]) for line in open(got_file) if line.strip()]
    row = {**m, **d, "clients": clients, "downloads": len(got),
           "complete": sum(1 for g in got if g == int(size))}
    print(json.dumps(row))


def cmd_report(results_file):
    r = json.load(open(results_file))
    out = []
    w = out.append
    w(f"edgeshare-gateway accounting benchmark, {r['date']}, commit {r['commit']}")
    w(f"machine: {r['machine']}")
    w(f"load average before the run: {r['load']} (the machine's 2 cores are shared)")
    w(f"set-up: {r['setup']}")
    w("")
    w("Ground truth = the gateway's interface counters, bytes − 14 × frames: up = lan0 rx, down = wan0 rx")
    w("(links silent: IPv6 off, neighbours pinned; read after the login). Meter 2 = kernel (nft element")
    w("counters, billing), meter 1 = capture (AF_PACKET on lan0, audit). Bytes are up + down (IP lengths).")
    w("Mbit/s and frames/s: into the gateway in the test's main direction (a TCP frame is a GSO")
    w("super-packet of up to 64 KiB). iperf3 B: the sender's payload count, for orientation.")
    w("CPU %: the gateway's utime + stime (its nft children included) over the run, in % of one core;")
    w("cap run/wait ms: the capture thread's time on a CPU / runnable but waiting for a CPU (schedstat).")
    w("RSS: the largest VmRSS sampled every 0.2 s during the run. drops: frames the capture socket lost.")
    w("")
    hdr = (f"{'test':<28} {'Mbit/s':>7} {'frames/s':>9} {'iperf3 B':>12} {'truth B':>12} "
           f"{'kernel B':>12} {'err %':>8} {'capture B':>12} {'err %':>8} {'drops':>7} "
           f"{'CPU %':>6} {'cap run/wait ms':>15} {'RSS MiB':>7}")
    w(hdr)
    w("-" * len(hdr))
    for x in r["rows"]:
        t, k, c = total(x["truth"]), total(x["kernel"]), total(x["capture"])
        w(f"{x['label']:<28} {x['mbit']:>7.0f} {x['fps']:>9.0f} {x['iperf_sent']:>12} {t:>12} "
          f"{k:>12} {err_pct(k, t):>+8.4f} {c:>12} {err_pct(c, t):>+8.4f} {x['capture_drops']:>7} "
          f"{x['cpu']:>6.1f} {x['sched']:>15} {x['max_rss'] / 1024:>7.1f}")
    w("")
    w("The same rows by direction (meter − truth in bytes), and what the gateway passed on: forwarded −")
    w("truth (up: wan0 tx − lan0 rx; down: lan0 tx − wan0 rx); veth drops = tx_dropped of c0/lan0/wan0/u0")
    w("(frames the peer's backlog refused).")
    hdr = (f"{'test':<28} {'truth up':>12} {'truth down':>12} {'kernel Δ up/down':>18} "
           f"{'capture Δ up/down':>20} {'fwd − truth up/down':>20} {'veth drops':>14}")
    w(hdr)
    w("-" * len(hdr))
    for x in r["rows"]:
        tr = x["truth"]
        diff = lambda m: f"{x[m]['up'] - tr['up']}/{x[m]['down'] - tr['down']}"
        drops = "/".join(str(x["veth_drops"][i]) for i in ("c/c0", "g/lan0", "g/wan0", "u/u0"))
        w(f"{x['label']:<28} {tr['up']:>12} {tr['down']:>12} {diff('kernel'):>18} "
          f"{diff('capture'):>20} {diff('forwarded'):>20} {drops:>14}")
    rows = r["rows"]
    w(f"forwarded = truth in {sum(1 for x in rows if x['forwarded'] == x['truth'])} of {len(rows)} rows; "
      f"veth drops in all rows: {sum(sum(x['veth_drops'].values()) for x in rows)}; kernel = truth in "
      f"{sum(1 for x in rows if x['kernel'] == x['truth'])} rows; capture = truth in "
      f"{sum(1 for x in rows if x['capture'] == x['truth'])} rows, of which "
      f"{sum(1 for x in rows if x['capture'] == x['truth'] and x['capture_drops'] == 0)} without capture "
      f"drops; capture drops in the {sum(1 for x in rows if x['capture'] != x['truth'])} others: "
      f"{sum(x['capture_drops'] for x in rows if x['capture'] != x['truth'])}")
    w("")
    q = r["quota"]
    if q:
        w(f"Quota overshoot: a {q[0]['quota'] / 1048576:g} MB code ({q[0]['quota']} B), one download at full "
          "speed from the stand-in until cut off (a new client each run). Bytes past the quota:")
        hdr = (f"{'run':>3} {'billed (used_bytes)':>20} {'kernel meter':>13} {'forwarded':>10} "
               f"{'capture':>10} {'curl body':>10} {'cut off':>8}")
        w(hdr)
        w("-" * len(hdr))
        for i, x in enumerate(q, 1):
            quota = x["quota"]
            w(f"{i:>3} {x['used'] - quota:>20} {total(x['kernel']) - quota:>13} "
              f"{total(x['forwarded']) - quota:>10} {total(x['capture']) - quota:>10} "
              f"{x['got'] - quota:>10} {'yes' if x['cut_off'] else 'NO':>8}")
        w("  (forwarded = wan0 tx + lan0 tx, bytes − 14 × frames; curl body = payload only; cut off = the")
        w("  gateway ended the session; goal: under 64 KiB = 65536 B past the quota; negative = short of it)")
        w("")
    for c in r["clients"]:
        n = len(c["clients"])
        w(f"{n} clients at once (a macvlan each, own MAC, address and code), each downloading "
          f"{r['client_mb']} MB with curl, {c['label']} ({c['complete']} of {c['downloads']} downloads "
          f"complete, {c['seconds']:.1f} s, {total(c['truth']) * 8 / c['seconds'] / 1e6:.0f} Mbit/s):")
        w("per-client ground truth = the client's macvlan counters (tx = up, rx = down), bytes − 14 × frames")
        hdr = (f"{'meter':<8} {'exact':>6} {'max |err| B':>12} {'mean |err| B':>13} {'max |err| %':>12} "
               f"{'sum err B':>10}")
        w(hdr)
        w("-" * len(hdr))
        for meter in ("kernel", "capture"):
            errs = [total(x[meter]) - total(x["truth"]) for x in c["clients"]]
            pct = [abs(err_pct(total(x[meter]), total(x["truth"]))) for x in c["clients"]]
            exact = sum(1 for x in c["clients"] if x[meter] == x["truth"])
            w(f"{meter:<8} {exact:>6} {max(abs(e) for e in errs):>12} "
              f"{statistics.mean(abs(e) for e in errs):>13.1f} {max(pct):>12.4f} {sum(errs):>10}")
        t = total(c["truth"])
        w(f"  all clients: truth (lan0 rx + wan0 rx) {t} B; kernel {err_pct(total(c['kernel']), t):+.4f} %, "
          f"capture {err_pct(total(c['capture']), t):+.4f} %; capture drops {c['capture_drops']} of "
          f"{c['capture_packets']} frames (kernel count)")
        w(f"  sum of the clients' own truths − gateway truth {sum(total(x['truth']) for x in c['clients']) - t} B; "
          f"gateway CPU {c['cpu']:.1f} % of a core; capture thread on a CPU / waiting for one "
          f"{c['sched']} ms; RSS max {c['max_rss'] / 1024:.1f} MiB")
        w("")
    w(f"gateway RSS at the end {r['rss_end'] / 1024:.1f} MiB, peak (VmHWM) {r['hwm'] / 1024:.1f} MiB; "
      f"capture buffer {r['buffer']}")
    print("\n".join(out))


if __name__ == "__main__":
    commands = {"iperf": cmd_iperf, "quota": cmd_quota, "clients": cmd_clients, "report": cmd_report}
    commands[sys.argv[1]](*sys.argv[2:])
PY
acct() { python3 "$WORK/acct.py" "$@"; }

say "a client with a large code logs in"
code=$(codes 1000000 1)
login c0 "$code"
wait_online 1
sleep "$SETTLE"

ROW=0
: >"$WORK/rows.jsonl"
# row LABEL MAIN IPERF3_ARGS…: one iperf3 run from the client to the upstream (MAIN: up or
# down, the direction of the data) and the figures around it.
row() {
  local label=$1 main=$2 prefix pid
  shift 2
  ROW=$((ROW + 1))
  prefix=$WORK/r$ROW
  say "1/3: $label (iperf3 -t $DURATION $*)"
  snap "$prefix.before"
  mark MARK0
  ip netns exec "$NS_C" timeout $((DURATION + 30)) \
    iperf3 -c 10.99.0.2 -p 5201 -t "$DURATION" -J "$@" >"$prefix.iperf3.json" &
  pid=$!
  sample_while "$pid"
  wait "$pid" || netns_fail "iperf3 ($label) failed: $(jq -r '.error // empty' "$prefix.iperf3.json" 2>/dev/null)"
  mark MARK1
  sleep "$SETTLE"
  snap "$prefix.after"
  meta "$prefix" iperf "$label"
  acct iperf "$prefix" "$main" >>"$WORK/rows.jsonl"
}
row "TCP 1 stream, upload" up
row "TCP 1 stream, download" down -R
row "TCP 8 streams, upload" up -P 8
row "TCP 8 streams, download" down -P 8 -R
row "TCP 1 stream, 1 Gbit/s, upload" up -b 1G
row "TCP 1 stream, 1 Gbit/s, download" down -b 1G -R
for size in 64 1400; do
  for rate in $UDP_RATES; do
    row "UDP $size B, upload, $([ "$rate" = 0 ] && echo max || echo "$rate")" up -u -l "$size" -b "$rate"
  done
  row "UDP $size B, download, max" down -u -l "$size" -b 0 -R
done

say "2/3: $CLIENTS clients at once, each its own MAC, address and code, $CLIENT_MB MB each"
netns_add_clients m 1000 "$CLIENTS"
netns_pin_clients m 1000 "$CLIENTS"
codes 1000 "$CLIENTS" >"$WORK/many-codes"
[ "$(wc -l <"$WORK/many-codes")" = "$CLIENTS" ] || netns_fail "codes create gave $(wc -l <"$WORK/many-codes") codes"
n=1000
while read -r code; do
  echo "m$n $(netns_client_ip "$n") $(netns_client_mac "$n") $code"
  n=$((n + 1))
done <"$WORK/many-codes" >"$WORK/many"
# The logins one after another in one shell in the client namespace (a fork per login only).
# shellcheck disable=SC2016 # expanded by that shell
in_ns "$NS_C" bash -c 'while read -r iface _ _ code; do
    curl -sS -m 10 --interface "$iface" -o /dev/null -w "%{http_code}\n" -d "code=$code" http://10.66.0.1:8080/login
  done' <"$WORK/many" >"$WORK/many-logins"
[ "$(grep -c '^200$' "$WORK/many-logins")" = "$CLIENTS" ] ||
  netns_fail "$(grep -c '^200$' "$WORK/many-logins") of $CLIENTS logins were taken"
wait_online $((CLIENTS + 1))
sleep "$SETTLE"
# clients_pass NAME LABEL: every client downloads CLIENT_MB MB from the stand-in at once.
clients_pass() {
  local prefix=$WORK/$1 pid
  say "2/3: $CLIENTS downloads at once, $2"
  snap "$prefix.before"
  mark MARK0
  # shellcheck disable=SC2016 # expanded by that shell
  ip netns exec "$NS_C" timeout 120 bash -c 'url=$1; while read -r iface _ _ _; do
      curl -sS -m 100 --interface "$iface" -o /dev/null -w "$iface %{size_download}\n" "$url" &
    done; wait' _ "http://10.99.0.3:9000/__standin/download/$((CLIENT_MB * 1048576))" \
    <"$WORK/many" >"$prefix.got" 2>"$prefix.curl.log" &
  pid=$!
  sample_while "$pid"
  wait "$pid" || netns_fail "the downloads failed: $(head -3 "$prefix.curl.log")"
  mark MARK1
  sleep "$SETTLE"
  snap "$prefix.after"
  meta "$prefix" clients "$2"
  acct clients "$prefix" "$WORK/many" "$prefix.got" $((CLIENT_MB * 1048576)) >>"$WORK/clients.jsonl"
}
: >"$WORK/clients.jsonl"
clients_pass many-full "full speed"
# The same at a rate the machine carries with time to spare (tbf on the upstream's side, so
# nothing is dropped inside the gateway): tells a capture that cannot keep up with the
# machine's full speed apart from one that loses packets at any rate.
tc -n "$NS_U" qdisc add dev u0 root tbf rate "$CLIENTS_RATE" burst 256kb latency 100ms
clients_pass many-limited "the upstream limited to $CLIENTS_RATE (tbf)"
tc -n "$NS_U" qdisc del dev u0 root

# Last: a download cut off by its quota leaves the upstream retransmitting into the gateway
# (dropped there, so neither billed nor forwarded) for minutes, which would blur wan0 rx, the
# ground truth of any row after it; the quota runs compare with what was forwarded instead.
say "3/3: quota overshoot, $QUOTA_RUNS runs, a $QUOTA_MB MB code each, full speed"
: >"$WORK/quota.jsonl"
for i in $(seq 1 "$QUOTA_RUNS"); do
  netns_add_clients q "$i" 1
  netns_pin_clients q "$i" 1
  code=$(codes "$QUOTA_MB" 1)
  login "q$i" "$code"
  wait_online $((CLIENTS + 2))
  prefix=$WORK/q$i
  snap "$prefix.before"
  mark MARK0
  # Ten times the quota: the gateway ends it; curl gives up after 2 s without data.
  got=$(in_ns "$NS_C" curl -sS --interface "q$i" -m 30 --speed-limit 1 --speed-time 2 -o /dev/null \
    -w '%{size_download}' "http://10.99.0.3:9000/__standin/download/$((QUOTA_MB * 10 * 1048576))" \
    2>/dev/null || true)
  mark MARK1
  sleep "$SETTLE"
  snap "$prefix.after"
  cut_off=false
  [ "$(online)" != $((CLIENTS + 1)) ] || cut_off=true
  meta "$prefix" quota "run $i" "{\"cut_off\": $cut_off}"
  code_json=$(in_ns "$NS_G" "${GW[@]}" codes list --json | jq -c --arg c "$code" '.[] | select(.code == $c)')
  acct quota "$prefix" "$code_json" "${got:-0}" >>"$WORK/quota.jsonl"
done

# The table.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD -- gateway shared Cargo.lock 2>/dev/null || commit+=" (with local changes)"
machine="$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/^Mem:/ {print $2}') GiB"
machine+=", kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME"), $(nft --version | awk '{print $1, $2}')"
machine+=", $(iperf3 --version | head -1 | awk '{print $1, $2}')"
buffer=$(grep -h '^edgeshare_capture_buffer_bytes' "$WORK/many-full.after.metrics" | awk '{print $2 " B"}')
jq -n \
  --arg date "$(date -u '+%F %H:%M UTC')" --arg commit "$commit" --arg machine "$machine" \
  --arg load "$LOAD_BEFORE" --arg buffer "$buffer" --argjson client_mb "$CLIENT_MB" \
  --arg setup "release build, namespaces (veth; clients as macvlans), local codes; iperf3 -t $DURATION; meters read ${SETTLE} s after each run${CAPTURE_NICE:+; capture thread at nice $CAPTURE_NICE}${EDGESHARE_CAPTURE__BUFFER_BYTES:+; capture.buffer_bytes = $EDGESHARE_CAPTURE__BUFFER_BYTES}" \
  --slurpfile rows "$WORK/rows.jsonl" --slurpfile quota "$WORK/quota.jsonl" \
  --slurpfile clients "$WORK/clients.jsonl" \
  --argjson rss_end "$(status_kib VmRSS)" --argjson hwm "$(status_kib VmHWM)" \
  '$ARGS.named' >"$WORK/results.json"
RESULT=bench/results/accounting-$(date -u +%F).txt
mkdir -p bench/results
acct report "$WORK/results.json" | tee "$RESULT"
say "saved to $RESULT"
