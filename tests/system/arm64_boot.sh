#!/usr/bin/env bash
# The arm64 packages on an arm64 kernel: qemu-user cannot open the nf_tables netlink socket
# (cross_arm.sh runs the binaries, not the firewall), so here Debian 12 arm64 boots under
# full-system emulation (qemu-system-aarch64 -M virt, systemd as PID 1), the arm64 .debs that
# scripts/release builds are installed with apt-get, and tests/system/arm64_boot-guest.bash,
# run at boot by a unit, checks with the units as shipped that the gateway reaches READY,
# installs its table over netlink, opens its capture socket, catches a client namespace,
# logs it in with a local code and cuts it at its quota, with the ledger equal to the
# client's own count and the billing and audit meters equal. The VM has no network card:
# the client and the upstream are namespaces inside it.
#
# The Debian root (mmdebstrap under qemu-user + binfmt: ~4 min on an idle 2-core machine,
# 12.5 min on a loaded one) is built once per recipe (its hash names the tar) and
# kept in /var/cache/edgeshare-tests; a run with it cached costs the VM's boot and test.
# The release build is the one cross_arm.sh also makes (scripts/release, the same target dir
# in /var/cache/edgeshare-tests, kept from run to run): whichever runs second finds it done.
#
# Needs root, mmdebstrap, qemu-system-aarch64, qemu-user-static with binfmt_misc (for a root
# not yet cached), mkfs.ext4 and cargo-zigbuild (scripts/install-deps); fails under CI=true
# where one is missing, skips otherwise. Prints the boot, READY and login times and its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/system/common.bash
# shellcheck source=scripts/lib/cross.bash
. scripts/lib/cross.bash

[ "$(id -u)" = 0 ] || unavailable "needs root (mmdebstrap, the image's owners)"
for tool in mmdebstrap qemu-system-aarch64 mkfs.ext4 update-binfmts timeout; do
  command -v "$tool" >/dev/null 2>&1 || unavailable "$tool is not installed (bash scripts/install-deps)"
done
cross_env || unavailable "cargo-zigbuild is missing (bash scripts/install-deps)"

TARGET=aarch64-unknown-linux-gnu
# The builds' dependencies kept from run to run (CROSS_TARGET_DIR: scripts/release), shared with
# cross_arm.sh.
export CROSS_TARGET_DIR=${CROSS_TARGET_DIR:-/var/cache/edgeshare-tests/cross-target}
# The whole VM run (boot, install, test, power off) is bounded; ~80 s on an idle 2-core
# machine, several times that on a loaded one.
VM_TIMEOUT=${ARM64_VM_TIMEOUT:-900}
T0=$(date +%s)
WORK=$(mktemp -d /var/tmp/es-arm64.XXXXXX)
ROOT=$WORK/root
QEMU_PID=
finish() {
  if [ -n "$QEMU_PID" ]; then
    kill "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap finish EXIT
elapsed() { echo "$(($(date +%s) - T0)) s"; }
step() { echo "== [$(elapsed)] $*"; }

step "the arm64 release build and its .debs (scripts/release)"
OUT=$ARTIFACTS/arm64-boot
rm -rf "$OUT"
TARGETS=$TARGET OUT=$OUT bash scripts/release >"$WORK/release.log" 2>&1 ||
  fail "scripts/release failed: $(tail -n 30 "$WORK/release.log")"
VERSION=$(sed -nE 's/^version = "([^"]+)"/\1/p' Cargo.toml | head -n1)
for package in edgeshare-gateway edgeshare-agent; do
  [ -f "$OUT/${package}_$VERSION-1_arm64.deb" ] || fail "scripts/release made no $OUT/${package}_$VERSION-1_arm64.deb"
done

# ---- the Debian 12 arm64 root: built once per recipe, then kept as a tar ----
# The packages' Depends are all included (apt-get install ./….deb runs offline in the VM);
# busybox is the upstream's web server, jq reads the ledger and nft's JSON.
INCLUDE=systemd,systemd-sysv,udev,dbus,kmod,nftables,iproute2,netbase,adduser,procps,curl,jq,busybox,linux-image-arm64
# The initramfs holds only what -M virt needs to mount the root (MODULES=list and a hook
# that force-loads these): with the default MODULES=most, initramfs-tools builds it twice
# under qemu-user at ~12 min each; with the list the whole root takes ~4 min (idle machine).
# shellcheck disable=SC2016 # the hook's own text, run by mkinitramfs
INITRAMFS_HOOK='#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for module in virtio_pci virtio_mmio virtio_blk ext4; do force_load "$module"; done'
# shellcheck disable=SC2016 # expanded by mmdebstrap's shell: $1 is the root, the hook is in the environment
SETUP_HOOK='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks" &&
echo MODULES=list >"$1/etc/initramfs-tools/conf.d/edgeshare-test" &&
printf "%s\n" "$INITRAMFS_HOOK" >"$1/etc/initramfs-tools/hooks/edgeshare-test-virtio" &&
chmod 0755 "$1/etc/initramfs-tools/hooks/edgeshare-test-virtio"'
CACHE=/var/cache/edgeshare-tests
ROOT_TAR=$CACHE/bookworm-arm64-$(printf '%s\n' "$INCLUDE" "$INITRAMFS_HOOK" "$SETUP_HOOK" | md5sum | cut -c1-12).tar
if [ -s "$ROOT_TAR" ]; then
  step "the Debian 12 arm64 root: cached ($ROOT_TAR)"
else
  step "the Debian 12 arm64 root: not cached, mmdebstrap under qemu-user (4 to 13 min)"
  # mmdebstrap runs the arm64 maintainer scripts through binfmt_misc and qemu-user-static.
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
    unavailable "cannot mount binfmt_misc (a container without it?)"
  update-binfmts --enable qemu-aarch64 2>/dev/null || true
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
    unavailable "no binfmt handler for arm64 binaries (qemu-user-static, binfmt-support: bash scripts/install-deps)"
  mkdir -p "$CACHE"
  sources=/etc/apt/sources.list.d/debian.sources
  [ -f "$sources" ] || sources=/etc/apt/sources.list
  began=$(date +%s)
  INITRAMFS_HOOK=$INITRAMFS_HOOK mmdebstrap --quiet --arch=arm64 --format=tar --variant=minbase \
    --include="$INCLUDE" --setup-hook="$SETUP_HOOK" bookworm "$ROOT_TAR.$$.tmp" - <"$sources" \
    >"$WORK/mmdebstrap.log" 2>&1 || fail "mmdebstrap failed: $(tail -20 "$WORK/mmdebstrap.log")"
  mv "$ROOT_TAR.$$.tmp" "$ROOT_TAR"
  echo "FIGURE arm64 root built (uncached): $(($(date +%s) - began)) s, $(stat -c %s "$ROOT_TAR") bytes"
fi
mkdir -p "$ROOT"
# Numeric owners: the root's users are not this machine's.
tar -C "$ROOT" --numeric-owner -xf "$ROOT_TAR"
kernels=("$ROOT"/boot/vmlinuz-*)
initrds=("$ROOT"/boot/initrd.img-*)
kernel=${kernels[0]}
initrd=${initrds[0]}
if [ ! -f "$kernel" ] || [ ! -f "$initrd" ]; then
  fail "the cached root has no kernel or initramfs in /boot: delete $ROOT_TAR"
fi

# ---- the image: the root, the packages, the test and its unit ----
step "the image: packages, the guest test and its unit"
mkdir -p "$ROOT/root/debs" "$ROOT/srv/www"
cp "$OUT"/edgeshare-gateway_"$VERSION"-1_arm64.deb "$OUT"/edgeshare-agent_"$VERSION"-1_arm64.deb "$ROOT/root/debs/"
install -m 0755 tests/system/arm64_boot-guest.bash "$ROOT/root/arm64-guest.bash"
head -c 1000 /dev/zero >"$ROOT/srv/www/small"
truncate -s 5M "$ROOT/srv/www/5m"
truncate -s 40M "$ROOT/srv/www/big"
cat >"$ROOT/etc/systemd/system/edgeshare-arm64-test.service" <<'EOF'
[Unit]
Description=edgeshare arm64 system test (tests/system/arm64_boot.sh)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/root/arm64-guest.bash
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyAMA0
TimeoutStartSec=30min
# The VM ends with the test, passed or not: at once (nothing in it is kept), as a clean
# shutdown under emulation takes minutes.
ExecStopPost=/usr/bin/systemctl poweroff --force --force
[Install]
WantedBy=multi-user.target
EOF
systemctl --root="$ROOT" enable edgeshare-arm64-test.service >/dev/null 2>&1
# The console is the test's: no login prompt on it, and no first-boot questions (a machine-id
# given here makes it no first boot).
systemctl --root="$ROOT" mask serial-getty@ttyAMA0.service systemd-firstboot.service >/dev/null 2>&1
systemd-machine-id-setup --root="$ROOT" >/dev/null 2>&1
echo es-arm64-test >"$ROOT/etc/hostname"
truncate -s 3G "$WORK/disk.img"
mkfs.ext4 -q -F -L root -d "$ROOT" "$WORK/disk.img" || fail "mkfs.ext4 -d failed"
cp "$kernel" "$WORK/vmlinuz"
cp "$initrd" "$WORK/initrd.img"
rm -rf "$ROOT"

# ---- the VM ----
step "boot: qemu-system-aarch64 -M virt, cortex-a72, 2 CPUs, 1 GiB, no network card"
began=$(date +%s)
timeout "$VM_TIMEOUT" qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 -nographic -no-reboot \
  -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" -append "root=/dev/vda rw console=ttyAMA0" \
  -drive if=none,id=hd,file="$WORK/disk.img",format=raw,cache=unsafe -device virtio-blk-pci,drive=hd \
  -device virtio-rng-pci -nic none </dev/null >"$WORK/console.log" 2>&1 &
QEMU_PID=$!
set +e
wait "$QEMU_PID"
status=$?
set -e
QEMU_PID=
vm_seconds=$(($(date +%s) - began))
console=$(tr -d '\r' <"$WORK/console.log")
grep -a '^FIGURE' <<<"$console" || true
echo "FIGURE arm64 VM run (boot, install, test, power off): $vm_seconds s"
if ! grep -aqx 'GUEST_PASS' <<<"$console"; then
  echo "--- the VM's console, last lines:" >&2
  tail -n 60 <<<"$console" >&2
  [ "$status" != 124 ] || fail "the VM did not finish within $VM_TIMEOUT s"
  fail "the arm64 guest test: $(grep -a '^GUEST_FAIL' <<<"$console" | tail -n1 || echo "no verdict (qemu exit $status)")"
fi
[ "$status" = 0 ] || fail "qemu exited with $status after the guest passed"
echo "FIGURE arm64_boot test duration: $(elapsed)"
echo "arm64_boot: ok"
