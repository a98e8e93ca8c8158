"""The WebRTC half of tests/system/calls.sh (run by it, with the aiortc venv's Python).

    calls.py agent SOCKET      one party of the calls (run inside its network namespace):
                               answers the controller on the Unix socket SOCKET, one call per
                               connection, as caller or callee, with aiortc
    calls.py controller ...    drives the calls (run outside the namespaces; standard library
                               only): signalling between the agents goes over their Unix
                               sockets, so that the only traffic on the networks is the calls'

A call, over one connection to each agent (JSON lines):
    controller -> caller  {"op": "call", "send": N, "expect": M, "timeout": S}
    caller -> controller  {"sdp": OFFER}          (ICE candidates gathered: no trickle)
    controller -> callee  {"op": "answer", "sdp": OFFER, "send": N, "expect": M, ...}
    callee -> controller  {"sdp": ANSWER}
    controller -> caller  {"sdp": ANSWER}
    each -> controller    {"result": {...}}       (connected or not, the pair, bytes, times)
    controller -> each    {"op": "close"}         (the call ends on both sides together)
send < 0 streams until the call dies (the quota call); expect < 0 waits until then.
"""

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time

TURN = "10.99.0.2"
TURN_USER, TURN_PASSWORD = "calls", "calls-secret"
CHUNK = 16 * 1024
# The payload of the first call of each pair, each way, and of the others.
BIG, SMALL = 2 * 1024 * 1024, 64 * 1024
CONNECT_TIMEOUT = 15
# aioice gives up on a pair after 6 consent checks lost, ~5 s apart: ICE closes ~30 s after
# the path dies. The quota call waits that long, and a margin.
QUOTA_CALL_TIMEOUT = 50
METERS_SETTLE = 2.5  # both meters are read about once a second


# --- the agent (aiortc) ------------------------------------------------------------------


def ice_servers():
    from aiortc import RTCIceServer

    return [
        RTCIceServer(urls=[f"stun:{TURN}:3478"]),
        RTCIceServer(
            urls=[f"turn:{TURN}:3478?transport=udp"],
            username=TURN_USER,
            credential=TURN_PASSWORD,
        ),
    ]


def selected_pair(pc):
    """The candidate pair ICE nominated: aiortc has no getStats for it, so read aioice's."""
    connection = pc.sctp.transport.transport._connection
    pair = connection._nominated.get(1)
    if pair is None:
        return None
    local, remote = pair.local_candidate, pair.remote_candidate
    return {
        "local": f"{local.type} {local.host}:{local.port}",
        "remote": f"{remote.type} {remote.host}:{remote.port}",
        "types": f"{local.type}-{remote.type}",
    }


async def pump(channel, total, stats):
    """Sends `total` bytes (forever if < 0) on the channel, at the pace SCTP takes them."""
    low = asyncio.Event()
    channel.bufferedAmountLowThreshold = 256 * 1024
    channel.on("bufferedamountlow", low.set)
    chunk = b"\x00" * CHUNK
    while total < 0 or stats["tx"] < total:
        if channel.readyState != "open":
            return
        if channel.bufferedAmount > 1024 * 1024:
            low.clear()
            try:
                await asyncio.wait_for(low.wait(), 1)
            except asyncio.TimeoutError:
                pass
            continue
        n = CHUNK if total < 0 else min(CHUNK, total - stats["tx"])
        channel.send(chunk[:n])
        stats["tx"] += n
        await asyncio.sleep(0)


async def run_call(reader, writer, request):
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    async def say(message):
        writer.write((json.dumps(message) + "\n").encode())
        await writer.drain()

    async def hear():
        return json.loads(await reader.readline())

    began = time.time()
    stats = {"tx": 0, "rx": 0, "first_rx": None, "last_rx": None}
    states = []
    connected = asyncio.Event()
    dead = asyncio.Event()
    received_all = asyncio.Event()
    opened = asyncio.Event()
    holder = {}
    expect = request["expect"]

    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers()))

    def on_consent_expired():
        states.append([round(time.time() - began, 3), "consent-expired"])
        dead.set()

    CONSENT.listeners.append(on_consent_expired)

    @pc.on("connectionstatechange")
    def on_state():
        states.append([round(time.time() - began, 3), pc.connectionState])
        if pc.connectionState == "connected":
            connected.set()
        if pc.connectionState in ("failed", "closed"):
            dead.set()

    def attach(channel):
        holder["channel"] = channel

        @channel.on("message")
        def on_message(message):
            now = time.time()
            stats["rx"] += len(message)
            stats["first_rx"] = stats["first_rx"] or now
            stats["last_rx"] = now
            if 0 <= expect <= stats["rx"]:
                received_all.set()

        @channel.on("close")
        def on_close():
            dead.set()

        if channel.readyState == "open":
            opened.set()
        channel.on("open", opened.set)

    if expect == 0:
        received_all.set()
    if request["op"] == "call":
        attach(pc.createDataChannel("media"))
        await pc.setLocalDescription(await pc.createOffer())
        await say({"sdp": pc.localDescription.sdp})
        answer = await hear()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    else:

        @pc.on("datachannel")
        def on_channel(channel):
            attach(channel)
            opened.set()

        await pc.setRemoteDescription(RTCSessionDescription(request["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await say({"sdp": pc.localDescription.sdp})

    result = {"connected": False}
    try:
        await asyncio.wait_for(connected.wait(), CONNECT_TIMEOUT)
        result["connected"] = True
        result["connect_s"] = round(time.time() - began, 3)
        result["pair"] = selected_pair(pc)
        await asyncio.wait_for(opened.wait(), CONNECT_TIMEOUT)
        sender = asyncio.ensure_future(pump(holder["channel"], request["send"], stats))
        if request["send"] < 0:
            await asyncio.wait_for(dead.wait(), request["timeout"])
        else:
            await asyncio.wait_for(
                asyncio.gather(sender, received_all.wait()), request["timeout"]
            )
        sender.cancel()
    except asyncio.TimeoutError:
        result["timed_out"] = True
    result.update(stats)
    result["states"] = states
    result["began"] = began
    await say({"result": result})
    await hear()  # close
    CONSENT.listeners.remove(on_consent_expired)
    await pc.close()
    await say({"closed": True})


class ConsentWatch(logging.Handler):
    """aioice logs when consent to send expires (RFC 7675: ~30 s without an answer to its
    checks) but closes the connection only after it has released its TURN allocation, which
    takes another ~40 s of retries when the TURN server is out of reach too (as for a consumer
    cut off at its quota): the expiry is the moment the stack gave up on the path."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.listeners = []

    def emit(self, record):
        if "Consent to send expired" in record.getMessage():
            for listener in self.listeners:
                listener()


CONSENT = ConsentWatch()


async def agent(path):
    logging.basicConfig(level=logging.DEBUG if os.environ.get("CALLS_DEBUG") else logging.WARNING)
    ice_logger = logging.getLogger("aioice.ice")
    ice_logger.setLevel(logging.DEBUG if os.environ.get("CALLS_DEBUG") else logging.INFO)
    ice_logger.addHandler(CONSENT)
    async def serve(reader, writer):
        try:
            request = json.loads(await reader.readline())
            await run_call(reader, writer, request)
        except Exception as error:  # the controller reports it: a call that failed
            writer.write((json.dumps({"error": repr(error)}) + "\n").encode())
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path)
    async with server:
        await server.serve_forever()


# --- the controller (standard library only) ----------------------------------------------


class Gateway:
    def __init__(self, args):
        self.ns, self.bin, self.config = args.gateway_ns, args.gateway, args.config
        self.table = args.table

    def run(self, *command):
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *command],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def clients(self):
        return json.loads(self.run(self.bin, "--config", self.config, "clients", "--json"))

    def quotas(self):
        """The session quota objects in the gateway's table (only B's has one that fills)."""
        listing = json.loads(self.run("nft", "-j", "list", "quotas", "table", "inet", self.table))
        return [
            x["quota"] for x in listing["nftables"] if "quota" in x and x["quota"]["bytes"] < 50 << 20
        ]

    def metrics(self):
        text = self.run("curl", "-sS", "-m", "5", "http://127.0.0.1:9464/metrics")
        out = {}
        for line in text.splitlines():
            m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
            if m:
                labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                out[(m.group(1), labels)] = float(m.group(3))
        return out


def udp_receive_errors(namespace):
    """The namespace's count of UDP datagrams dropped for a full socket buffer."""
    snmp = subprocess.run(
        ["ip", "netns", "exec", namespace, "cat", "/proc/net/snmp"],
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout
    names, values = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")][:2]
    return int(dict(zip(names, values))["RcvbufErrors"])


def client_meter(metrics, mac, ip, meter, direction):
    key = frozenset(
        {("mac", mac), ("ip", ip), ("meter", meter), ("direction", direction)}
    )
    return int(metrics.get(("edgeshare_client_metered_bytes", key), 0))


async def call(work, caller, callee, send, timeout=CONNECT_TIMEOUT + 30):
    """One call from `caller` to `callee` (agent names), `send` bytes each way."""
    r1, w1 = await asyncio.open_unix_connection(os.path.join(work, caller + ".sock"))
    r2, w2 = await asyncio.open_unix_connection(os.path.join(work, callee + ".sock"))

    async def say(w, message):
        w.write((json.dumps(message) + "\n").encode())
        await w.drain()

    async def hear(r):
        line = await r.readline()
        if not line:
            raise RuntimeError("an agent hung up")
        message = json.loads(line)
        if "error" in message:
            raise RuntimeError("agent: " + message["error"])
        return message

    common = {"send": send, "expect": send, "timeout": timeout}
    try:
        await say(w1, {"op": "call", **common})
        offer = await hear(r1)
        await say(w2, {"op": "answer", "sdp": offer["sdp"], **common})
        answer = await hear(r2)
        await say(w1, answer)
        results = await asyncio.gather(hear(r1), hear(r2))
        for w in (w1, w2):
            await say(w, {"op": "close"})
        await asyncio.gather(hear(r1), hear(r2))
        return [x["result"] for x in results]
    finally:
        w1.close()
        w2.close()


def parse_natdiscovery(text):
    """turnutils_natdiscovery's verdicts, one line each."""
    found = {}
    for key, pattern in (
        ("mapping", r"NAT with (.*?[Mm]apping)"),
        ("filtering", r"NAT with (.*?[Ff]iltering)"),
    ):
        m = re.search(pattern, text)
        found[key] = m.group(1).strip() if m else "(not reported)"
    # The hairpinning probe sends a Binding request to the client's own mapped address from
    # the same socket: natdiscovery prints a verdict only when it comes back.
    section = text.partition("Hairpinning Behavior Discovery")[2].partition("-= ")[0]
    if re.search(r"[Hh]airpin", section):
        found["hairpinning"] = re.search(r"(\S.*[Hh]airpin.*)", section).group(1).strip()
    elif "STUN receive timeout" in section:
        found["hairpinning"] = "no hairpinning (the probe to its own mapped address timed out)"
    else:
        found["hairpinning"] = "(not reported)"
    return found


async def controller(args):
    gateway = Gateway(args)
    failures = []
    ip_a, ip_b = "10.66.0.11", "10.66.0.12"

    # 2. ICE trials.
    pairs = {}
    payload = {"a": 0, "b": 0}  # application bytes each consumer sent and received
    for caller, callee in (("a", "p"), ("b", "a")):
        trials = pairs.setdefault(f"{caller}->{callee}", [])
        for n in range(args.calls):
            size = BIG if n == 0 else SMALL
            try:
                ours, theirs = await call(args.work, caller, callee, size)
            except Exception as error:
                ours, theirs = {"connected": False, "error": repr(error)}, {}
            ok = (
                ours.get("connected")
                and ours.get("rx") == size
                and theirs.get("rx") == size
                and not ours.get("timed_out")
            )
            trials.append({**ours, "ok": bool(ok)})
            # A call between two consumers' host candidates stays on the LAN (an access point
            # without client isolation): the gateway never sees it, nor bills it.
            pair_hosts = [(ours.get("pair") or {}).get(k, "") for k in ("local", "remote")]
            on_lan = all(" 10.66.0." in host for host in pair_hosts)
            for side in (caller, callee):
                if side in payload and ok and not on_lan:
                    payload[side] += 2 * size
            pair = (ours.get("pair") or {}).get("types", "-")
            print(
                f"calls: {caller}->{callee} #{n + 1}: "
                f"{'connected' if ok else 'FAILED'} in {ours.get('connect_s', '-')} s, "
                f"pair {pair} ({(ours.get('pair') or {}).get('local', '')} -> "
                f"{(ours.get('pair') or {}).get('remote', '')}), {2 * size} B",
                file=sys.stderr,
            )
            if not ok:
                failures.append(f"{caller}->{callee} #{n + 1}: {ours}")

    # 3. The meters after the trials.
    await asyncio.sleep(METERS_SETTLE)
    namespaces = dict(x.split("=", 1) for x in args.namespaces.split(","))
    rcvbuf = {name: udp_receive_errors(ns) for name, ns in namespaces.items()}
    metrics = gateway.metrics()
    codes = {n: open(os.path.join(args.work, f"code_{n}.txt")).read().strip() for n in "ab"}
    sessions = {s["code"]: s for s in gateway.clients()}
    meters = {}
    for name, mac, ip in (("a", args.mac_a, ip_a), ("b", args.mac_b, ip_b)):
        m = {
            (meter, d): client_meter(metrics, mac, ip, meter, d)
            for meter in ("kernel", "capture")
            for d in ("up", "down")
        }
        kernel = m["kernel", "up"] + m["kernel", "down"]
        capture = m["capture", "up"] + m["capture", "down"]
        used = sessions.get(codes[name], {}).get("used_bytes")
        meters[name] = {
            "kernel": kernel,
            "capture": capture,
            "used": used,
            "payload": payload[name],
            **{f"{a}_{b}": v for (a, b), v in m.items()},
        }
        if kernel != capture:
            failures.append(f"consumer {name}: kernel meter {kernel} B, capture {capture} B")
        if used != kernel:
            failures.append(f"consumer {name}: session used {used} B, kernel meter {kernel} B")
        if kernel < payload[name]:
            failures.append(f"consumer {name}: metered {kernel} B < payload {payload[name]} B")

    # 4. B calls P and streams both ways until its quota is used.
    session_b = sessions.get(codes["b"]) or {}
    quota = session_b.get("quota_bytes", 0)
    left = quota - session_b.get("used_bytes", 0)
    print(f"calls: B has {left} B of its quota left; streaming to P until cut", file=sys.stderr)
    if left < 512 * 1024:
        failures.append(f"B has only {left} B left before the quota call: raise B_MB")
    quota_task = asyncio.ensure_future(
        call(args.work, "b", "p", -1, timeout=QUOTA_CALL_TIMEOUT)
    )
    quota_at = None
    seen = False
    while not quota_task.done():
        # The kernel drops B's packets from the moment its session's quota object is used
        # up; the daemon notices within a tick and removes the object with the session.
        if quota_at is None:
            now = time.time()
            quotas = gateway.quotas()
            seen = seen or bool(quotas)
            if any(q["used"] >= q["bytes"] for q in quotas) or (seen and not quotas):
                quota_at = now
        await asyncio.sleep(0.1)
    try:
        quota_b, quota_p = quota_task.result()
    except Exception as error:
        failures.append(f"the quota call: {error!r}")
        quota_b, quota_p = {"states": []}, {"states": []}
    last_rx = max((x for x in (quota_b.get("last_rx"), quota_p.get("last_rx")) if x), default=None)
    dead_b = next(
        (t for t, s in quota_b["states"] if s in ("consent-expired", "failed", "closed")), None
    )
    cut = {
        "connected": quota_b.get("connected"),
        "pair": (quota_b.get("pair") or {}).get("types"),
        "tx_b": quota_b.get("tx"),
        "rx_b": quota_b.get("rx"),
        "tx_p": quota_p.get("tx"),
        "rx_p": quota_p.get("rx"),
        "stopped_after_quota": None if None in (quota_at, last_rx) else last_rx - quota_at,
        "ice_dead_after_stop": None
        if None in (dead_b, last_rx)
        else quota_b["began"] + dead_b - last_rx,
        "states_b": quota_b["states"],
        "states_p": quota_p["states"],
    }
    if not quota_b.get("connected"):
        failures.append("the quota call did not connect")
    if quota_at is None:
        failures.append("B's session did not reach its quota")
    elif last_rx is None:
        failures.append("no data flowed in the quota call")
    elif abs(cut["stopped_after_quota"]) > 1:
        failures.append(f"data flowed {cut['stopped_after_quota']:.1f} s past the quota")
    if dead_b is None:
        failures.append("ICE on B did not fail or close after the cut")
    await asyncio.sleep(METERS_SETTLE)
    after = gateway.metrics()
    over = {
        d: client_meter(after, args.mac_b, ip_b, "capture", d)
        - client_meter(after, args.mac_b, ip_b, "kernel", d)
        for d in ("up", "down")
    }

    # The summary.
    # natdiscovery ran beside the calls (calls.sh): wait for its verdicts.
    done = os.path.join(args.work, "natdiscovery.status")
    for _ in range(300):
        if os.path.exists(done):
            break
        await asyncio.sleep(0.1)
    if not os.path.exists(done) or open(done).read().strip() != "0":
        failures.append("turnutils_natdiscovery failed (see natdiscovery.txt)")
    nat = parse_natdiscovery(open(os.path.join(args.work, "natdiscovery.txt")).read())
    lines = ["", "== calls: summary"]
    for name, trials in pairs.items():
        good = [t for t in trials if t["ok"]]
        times = [t["connect_s"] for t in good]
        types = sorted({t["pair"]["types"] for t in good if t.get("pair")})
        lines.append(
            f"ICE {name}: {len(good)}/{len(trials)} connected "
            f"({100 * len(good) / max(1, len(trials)):.0f}%); time offer->connected "
            f"median {round(statistics.median(times), 3) if times else '-'} s, "
            f"max {max(times) if times else '-'} s; pair (caller-callee) {', '.join(types) or '-'}"
        )
    for name, m in meters.items():
        overhead = m["kernel"] - m["payload"]
        lines.append(
            f"meters {name.upper()}: kernel {m['kernel']} B (up {m['kernel_up']}, down "
            f"{m['kernel_down']}) = capture {m['capture']} B: diff {m['kernel'] - m['capture']} B; "
            f"session used {m['used']} B; payload {m['payload']} B, IP overhead "
            f"{overhead} B ({100 * overhead / max(1, m['payload']):.1f}%)"
        )
    lines.append(
        "UDP datagrams dropped for a full socket buffer (the Python receivers fall behind; "
        "SCTP resends them, which the meters count): "
        + ", ".join(f"{name.upper()} {n}" for name, n in rcvbuf.items())
    )
    stopped, dead = cut["stopped_after_quota"], cut["ice_dead_after_stop"]
    stopped = "-" if stopped is None else f"{stopped:+.2f}"
    dead = "-" if dead is None else f"{dead:.1f}"
    lines.append(
        f"quota B: {args.quota_mb} MB code, call B->P {cut['pair']}: B's app queued {cut['tx_b']} B "
        f"and received {cut['rx_b']} B, "
        f"P received {cut['rx_p']} B; data stopped "
        f"{stopped} s after the session reached its quota "
        f"(quota object read every 0.1 s); ICE on B gave up "
        f"{dead} s "
        f"after the last data; after the cut capture - kernel: up {over['up']} B, "
        f"down {over['down']} B"
    )
    lines.append(
        "NAT (turnutils_natdiscovery -m -f -H 10.99.0.2 from A): "
        f"mapping: {nat['mapping']}; filtering: {nat['filtering']}; hairpinning: "
        f"{nat['hairpinning']}"
    )
    print("\n".join(lines))
    print(json.dumps({"pairs": pairs, "meters": meters, "cut": cut, "nat": nat}), file=open(
        os.path.join(args.work, "calls.json.txt"), "w"))
    if failures:
        print("calls: FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("agent")
    a.add_argument("socket")
    c = sub.add_parser("controller")
    c.add_argument("--work", required=True)
    c.add_argument("--calls", type=int, default=10)
    c.add_argument("--gateway-ns", required=True)
    c.add_argument("--gateway", required=True)
    c.add_argument("--config", required=True)
    c.add_argument("--table", required=True)
    c.add_argument("--namespaces", required=True, help="a=NS,b=NS,p=NS")
    c.add_argument("--quota-mb", type=float, required=True)
    c.add_argument("--mac-a", required=True)
    c.add_argument("--mac-b", required=True)
    args = parser.parse_args()
    if args.command == "agent":
        asyncio.run(agent(args.socket))
    else:
        sys.exit(asyncio.run(controller(args)))


if __name__ == "__main__":
    main()
