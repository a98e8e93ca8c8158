#!/usr/bin/env bash
# The Raspberry Pi builds, checked here under qemu-user: scripts/release builds the aarch64
# and armv7 glibc binaries and their .debs exactly as a release does (LTO, stripped, linked
# for glibc 2.17; it fails if one needs more than Bullseye's 2.31), then each binary runs
# under qemu: --version, and check-config on the example configurations. The arm64 gateway
# is started in a network namespace made here with systemd's NOTIFY_SOCKET, and the time
# from exec to READY=1 is printed (cold start, 3 runs). Last, the pure-logic unit tests of
# shared and of the gateway run as armv7 binaries under qemu (32-bit: the platform most
# unlike this one). Artifacts land in artifacts/release/.
#
# Needs root (the namespace), qemu-user, the cross libcs and cargo-zigbuild
# (scripts/install-deps); skips where one is missing, except under CI=true, where it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/system/common.bash
# shellcheck source=scripts/lib/cross.bash
. scripts/lib/cross.bash

[ "$(id -u)" = 0 ] || unavailable "needs root (network namespace)"
for tool in qemu-aarch64 qemu-arm readelf python3 ip nft; do
  command -v "$tool" >/dev/null 2>&1 || unavailable "$tool is not installed (bash scripts/install-deps)"
done
[ -d /usr/aarch64-linux-gnu/lib ] && [ -d /usr/arm-linux-gnueabihf/lib ] ||
  unavailable "the cross libcs are missing (libc6-arm64-cross, libc6-armhf-cross)"
cross_env || unavailable "cargo-zigbuild is missing (bash scripts/install-deps)"

TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"
# The builds' dependencies kept from run to run (CROSS_TARGET_DIR: scripts/release), shared with
# arm64_boot.sh: whichever runs second finds the aarch64 build done.
export CROSS_TARGET_DIR=${CROSS_TARGET_DIR:-/var/cache/edgeshare-tests/cross-target}
OUT=$ARTIFACTS/release
VERSION=$(sed -nE 's/^version = "([^"]+)"/\1/p' Cargo.toml | head -n1)
WORK=$(mktemp -d)
NS=es-arm-$$
cleanup() {
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

began=$(date +%s)
rm -rf "$OUT"
TARGETS=$TARGETS OUT=$OUT bash scripts/release >"$WORK/release.log" 2>&1 ||
  fail "scripts/release failed: $(tail -n 30 "$WORK/release.log")"
grep -E 'needs glibc|built in' "$WORK/release.log"
echo "release build of both ARM targets: $(($(date +%s) - began)) s"

for target in $TARGETS; do
  read -r -a run <<<"$(cross_runner "$target")"
  case $target in
    aarch64-*) machine=AArch64 ;;
    armv7-*) machine=ARM ;;
  esac
  for bin in edgeshare-gateway edgeshare-agent; do
    file=$OUT/$target/$bin
    readelf -h "$file" | grep -q "Machine: *$machine" || fail "$target/$bin is not an $machine binary"
    need=$(cross_glibc_needed "$file")
    [ "$(printf '%s\n%s\n' "$need" "$CROSS_GLIBC_MAX" | sort -V | tail -n1)" = "$CROSS_GLIBC_MAX" ] ||
      fail "$target/$bin needs glibc $need (> $CROSS_GLIBC_MAX)"
    version=$("${run[@]}" "$file" --version) || fail "$target/$bin --version failed under qemu"
    [ "$version" = "$bin $VERSION" ] || fail "$target/$bin --version: $version"
  done
  "${run[@]}" "$OUT/$target/edgeshare-gateway" --config packaging/gateway.example.toml check-config |
    grep -q "configuration OK" || fail "$target gateway check-config on the example failed"
  "${run[@]}" "$OUT/$target/edgeshare-agent" --config packaging/agent.example.toml check-config |
    grep -q "configuration OK" || fail "$target agent check-config on the example failed"
  # A broken file is still refused with 78 (EX_CONFIG) on the device.
  printf '[lan]\ninterfase = "wlan0"\n' >"$WORK/bad.toml"
  set +e
  "${run[@]}" "$OUT/$target/edgeshare-gateway" --config "$WORK/bad.toml" check-config 2>/dev/null
  status=$?
  set -e
  [ "$status" = 78 ] || fail "$target: a bad config gave exit $status, not 78"
  echo "$target: --version, check-config (good and bad) OK under qemu; glibc >= $(cross_glibc_needed "$OUT/$target/edgeshare-gateway")"
done

# Cold start to READY=1 of the arm64 gateway under qemu, in a namespace of our own.
ip netns add "$NS"
ip -n "$NS" link set lo up
# veth pairs with both ends inside (the dummy module may be missing).
ip -n "$NS" link add lan0 type veth peer name lan0p
ip -n "$NS" link add wan0 type veth peer name wan0p
ip -n "$NS" link set lan0p up
ip -n "$NS" link set wan0p up
ip -n "$NS" addr add 10.66.0.1/24 dev lan0
ip -n "$NS" link set lan0 up
ip -n "$NS" link set wan0 up
cat >"$WORK/gateway.toml" <<TOML
[lan]
interface = "lan0"
[wan]
interface = "wan0"
[state]
dir = "$WORK/state"
[control]
socket = "$WORK/gateway.sock"
[firewall]
table = "es_arm_$$"
remove_on_exit = true
TOML
cat >"$WORK/ready.py" <<'PY'
# Starts the command with NOTIFY_SOCKET set, prints the milliseconds until READY=1, then
# stops it with SIGTERM and checks STOPPING=1 and its exit.
import os, socket, subprocess, sys, time
path, log, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
sock.settimeout(30)
with open(log, "ab") as out:
    began = time.monotonic()
    proc = subprocess.Popen(cmd, env=dict(os.environ, NOTIFY_SOCKET=path), stdout=out, stderr=out)
    try:
        while not sock.recv(4096).startswith(b"READY=1"):
            pass
        ready = time.monotonic() - began
        proc.terminate()
        while not sock.recv(4096).startswith(b"STOPPING=1"):
            pass
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
sock.close()
os.unlink(path)
if code != 0:
    sys.exit(f"the gateway exited with {code} after SIGTERM")
print(round(ready * 1000))
PY
times=()
for i in 1 2 3; do
  ms=$(python3 "$WORK/ready.py" "$WORK/notify.sock" "$WORK/gateway.log" \
    ip netns exec "$NS" qemu-aarch64 -L /usr/aarch64-linux-gnu \
    "$OUT/aarch64-unknown-linux-gnu/edgeshare-gateway" --config "$WORK/gateway.toml" run) ||
    fail "the arm64 gateway did not come up under qemu: $(tail -n 20 "$WORK/gateway.log")"
  times+=("$ms")
done
echo "arm64 gateway under qemu, exec to READY=1: ${times[*]} ms (3 cold starts)"

# The pure-logic unit tests, as armv7 binaries under qemu. Skipped there:
# missing_nft_is_its_own_error (qemu-user runs a failed exec as a child exiting 127, so
# "program not found" cannot be told apart from a refusal; a real ARM kernel can).
armv7=armv7-unknown-linux-gnueabihf
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="$(cross_runner $armv7)"
began=$(date +%s)
set +e
CARGO_TARGET_DIR=$CROSS_TARGET_DIR cargo-zigbuild test --locked --target "$(cross_zig_target $armv7)" -p edgeshare-shared -p edgeshare-gateway --lib \
  -- --skip missing_nft_is_its_own_error >"$WORK/test.log" 2>&1
status=$?
set -e
grep -E '^test result:|FAILED' "$WORK/test.log" || true
[ "$status" = 0 ] && grep -q '^test result: ok' "$WORK/test.log" || fail "unit tests failed under qemu-arm: $(grep -B2 -A10 'panicked' "$WORK/test.log" | head -40)"
echo "armv7 unit tests (build and run): $(($(date +%s) - began)) s"
echo "cross_arm: ok"
