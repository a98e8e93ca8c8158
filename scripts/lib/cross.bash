# Cross-building settings shared by scripts/release, packaging/deb/build and
# tests/system/cross_arm.sh. Sourced (from the repository's root), not run.
#
# Builds go through `cargo zigbuild` (PyPI ziglang + cargo-zigbuild, installed by
# scripts/install-deps in CROSS_VENV): zig links glibc targets against the glibc version
# given as a suffix of the target, so the binaries run on Raspberry Pi OS Bullseye
# (glibc 2.31) and older, where Debian 12's own cross gcc would need glibc 2.34 or newer.

# shellcheck disable=SC2034 # used by the scripts that source this file
CROSS_VENV=/opt/edgeshare-build/venv
# The glibc the gnu binaries are linked for (Rust's own minimum).
CROSS_GLIBC_LINK=2.17
# The oldest glibc they must run on: Raspberry Pi OS Bullseye.
CROSS_GLIBC_MAX=2.31
# Every target a release builds; musl ones are static (any router).
CROSS_ALL_TARGETS="x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl x86_64-unknown-linux-musl"

# cross_env: puts zig and cargo-zigbuild on PATH (and cargo, if rustup's); fails with what
# to run if they are missing.
cross_env() {
  if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  if [ ! -x "$CROSS_VENV/bin/cargo-zigbuild" ]; then
    echo "cargo-zigbuild is not installed in $CROSS_VENV: run bash scripts/install-deps" >&2
    return 1
  fi
  PATH=$CROSS_VENV/bin:$PATH
  export PATH
}

# cross_zig_target TARGET: the target as cargo zigbuild takes it (glibc version suffixed).
cross_zig_target() {
  case $1 in
    *-gnu | *-gnueabihf) echo "$1.$CROSS_GLIBC_LINK" ;;
    *) echo "$1" ;;
  esac
}

# cross_glibc_needed BINARY: the highest GLIBC_x.y symbol version BINARY needs; empty for a
# static binary. readelf, not objdump: it reads any architecture's ELF.
cross_glibc_needed() {
  { readelf -W --version-info "$1" 2>/dev/null || true; } | { grep -o 'GLIBC_[0-9][0-9.]*' || true; } |
    sed 's/GLIBC_//' | sort -Vu | tail -n1
}

# cross_deb_arch TARGET: the Debian architecture of a gnu TARGET; empty for others.
cross_deb_arch() {
  case $1 in
    x86_64-unknown-linux-gnu) echo amd64 ;;
    aarch64-unknown-linux-gnu) echo arm64 ;;
    armv7-unknown-linux-gnueabihf) echo armhf ;;
  esac
}

# cross_runner TARGET: the command prefix that runs TARGET's binaries here (qemu-user with
# the Debian cross libc as sysroot; nothing for this machine's own architecture).
cross_runner() {
  case $1 in
    aarch64-unknown-linux-gnu) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7-unknown-linux-gnueabihf) echo "qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    aarch64-unknown-linux-musl) echo "qemu-aarch64" ;;
  esac
}
