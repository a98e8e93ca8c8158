"""Where a process's resident memory is, from /proc (for bench/memory.sh; standard library only).

  python3 bench/memory.py snapshot PID    one JSON object: RSS by kind of mapping, threads
  python3 bench/memory.py report FILE     the table from bench/memory.sh's results (JSON)

Kinds of mapping (Rss of each, KiB):
  binary     the program's own file (text, read-only data, relocations)
  libraries  other files mapped (libc, the dynamic loader, libgcc_s, locale files)
  heap       [heap]: glibc's main arena (the main thread's allocations, and every thread's
             once MALLOC_ARENA_MAX is reached)
  arenas     glibc's other arenas: anonymous heaps, each at a 64 MiB-aligned address (its
             HEAP_MAX_SIZE on 64-bit), read-write where used and PROT_NONE for the rest
  stacks     thread stacks: the mapping that holds each thread's stack pointer (read from
             /proc/PID/task/TID/syscall), and [stack] for the main thread
  other anon anonymous mappings besides these: allocations past malloc's mmap threshold
             (128 KiB at first, raised up to 32 MiB as large blocks are freed), which glibc
             maps on their own, and the runtime's own mappings
  kernel     [vdso], [vvar]
"""

import json
import os
import statistics
import sys

ARENA_ALIGN = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit targets


def mappings(pid):
    """The mappings of /proc/PID/smaps: dicts with start, end, perms, path and the KiB fields."""
    out = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if "-" in head and not head.endswith(":"):
                fields = line.split(None, 5)
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append({"start": start, "end": end, "perms": fields[1],
                            "inode": int(fields[4]),
                            "path": fields[5].strip() if len(fields) > 5 else "", "kib": {}})
            elif head.endswith(":") and rest.strip().endswith("kB"):
                out[-1]["kib"][head[:-1]] = int(rest.split()[0])
    return out


def threads(pid):
    """Each thread's name and stack pointer (None while it runs on a CPU)."""
    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        base = f"/proc/{pid}/task/{tid}"
        try:
            name = open(f"{base}/comm").read().strip()
            call = open(f"{base}/syscall").read().split()
        except OSError:  # the thread ended meanwhile
            continue
        sp = int(call[-2], 16) if len(call) >= 3 else None
        out.append({"tid": int(tid), "name": name, "sp": sp})
    return out


def classify(maps, tasks, exe):
    """Rss (KiB) by kind, the number of arenas and the stacks' Rss by thread name."""
    kinds = {k: 0 for k in ("binary", "libraries", "heap", "arenas", "stacks", "other anon", "kernel")}
    stack_of = {}
    for t in tasks:
        if t["sp"] is None:
            continue
        for i, m in enumerate(maps):
            if m["start"] <= t["sp"] < m["end"]:
                stack_of.setdefault(i, []).append(t["name"])
    stacks_by_name = {}
    files = {}
    arenas = 0
    for i, m in enumerate(maps):
        rss = m["kib"].get("Rss", 0)
        path = m["path"]
        if i in stack_of or path == "[stack]":
            kinds["stacks"] += rss
            for name in stack_of.get(i, ["main"]):
                # A thread's name without its number: "tokio-runtime-w", "capture lan0".
                key = name.rstrip("0123456789 -")
                stacks_by_name[key] = stacks_by_name.get(key, 0) + rss / len(stack_of.get(i, [1]))
        elif path == "[heap]":
            kinds["heap"] += rss
        elif path in ("[vdso]", "[vvar]", "[vsyscall]", "[vvar_vclock]"):
            kinds["kernel"] += rss
        elif m["inode"] != 0:
            kinds["binary" if path == exe else "libraries"] += rss
            # The binary's text apart from its data: "edgeshare-gateway r-xp".
            key = f"{os.path.basename(path)} {m['perms']}"
            files[key] = files.get(key, 0) + rss
        elif m["start"] % ARENA_ALIGN == 0 and m["perms"].startswith("rw"):
            arenas += 1
            kinds["arenas"] += rss
        elif (m["perms"].startswith("---") and i > 0 and maps[i - 1]["end"] == m["start"]
              and maps[i - 1]["start"] % ARENA_ALIGN == 0):
            kinds["arenas"] += rss  # an arena's PROT_NONE rest (never resident)
        else:
            kinds["other anon"] += rss
    return kinds, arenas, stacks_by_name, files


def snapshot(pid):
    exe = os.readlink(f"/proc/{pid}/exe")
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    rollup = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            rollup[parts[0].rstrip(":")] = int(parts[1])
    tasks = threads(pid)
    kinds, arenas, stacks, files = classify(mappings(pid), tasks, exe)
    names = {}
    for t in tasks:
        key = t["name"].rstrip("0123456789 -")
        names[key] = names.get(key, 0) + 1
    return {"rss": int(status["VmRSS"].split()[0]), "hwm": int(status["VmHWM"].split()[0]),
            "anon": rollup.get("Anonymous", 0), "file": rollup.get("Rss", 0) - rollup.get("Anonymous", 0),
            "private_dirty": rollup.get("Private_Dirty", 0), "kinds": kinds,
            "arenas": arenas + 1,  # and the main arena, [heap]
            "threads": len(tasks), "thread_names": names, "stacks": stacks, "files": files}


def report(results_file):
    r = json.load(open(results_file))
    builds = r["builds"]
    out = [f"edgeshare-gateway memory, {r['date']}", f"machine: {r['machine']}",
           f"set-up: {r['setup']}", ""]
    width = max(12, *(len(b["label"]) + 2 for b in builds))

    def row(label, values):
        out.append(f"{label:<58}" + "".join(f"{v:>{width}}" for v in values))

    def mib(kib):
        return f"{kib / 1024:.1f}"

    n = r["clients"]
    row("figure", [b["label"] for b in builds])
    row("RSS idle, capture meter on (MiB)", [mib(b["idle"]["rss"]) for b in builds])
    row(f"RSS with {n} online (MiB)", [mib(b["online"]["rss"]) for b in builds])
    row(f"  peak (VmHWM) by then (MiB)", [mib(b["online"]["hwm"]) for b in builds])
    row("KiB per login (RSS growth / logins)",
        [f"{(b['online']['rss'] - b['idle']['rss']) / n:.1f}" for b in builds])
    row(f"login latency, median / max (ms), {n} one after another",
        [f"{statistics.median(b['latency']):.0f}/{max(b['latency']):.0f}" for b in builds])
    for phase, name in (("idle", "idle"), ("online", f"{n} online")):
        row(f"threads, {name}", [str(b[phase]["threads"]) for b in builds])
        row(f"malloc arenas, {name}", [str(b[phase]["arenas"]) for b in builds])
    for phase, name in (("idle", "idle"), ("online", f"{n} online")):
        out.append(f"RSS by kind of mapping, {name} (MiB; see bench/memory.py):")
        for kind in builds[0][phase]["kinds"]:
            row(f"  {kind}", [mib(b[phase]["kinds"][kind]) for b in builds])
        row("  (anonymous / file-backed)",
            [f"{mib(b[phase]['anon'])}/{mib(b[phase]['file'])}" for b in builds])
    for b in builds:
        out.append(f"{b['label']}: threads at {n} online: "
                   + ", ".join(f"{k} ×{v}" for k, v in sorted(b["online"]["thread_names"].items())))
        out.append(f"{b['label']}: stacks' RSS at {n} online (KiB): "
                   + ", ".join(f"{k} {v:.0f}" for k, v in sorted(b["online"]["stacks"].items())))
        out.append(f"{b['label']}: files' RSS at {n} online (KiB): "
                   + ", ".join(f"{k} {v}" for k, v in sorted(b["online"]["files"].items(),
                                                             key=lambda kv: -kv[1]) if v))
        if b.get("note"):
            out.append(f"{b['label']}: {b['note']}")
    print("\n".join(out))


if __name__ == "__main__":
    if sys.argv[1] == "snapshot":
        print(json.dumps(snapshot(int(sys.argv[2]))))
    else:
        report(sys.argv[2])
