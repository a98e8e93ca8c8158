#!/usr/bin/env bash
# The amd64 packages installed on this machine for real: builds edgeshare-gateway and
# edgeshare-agent .debs (packaging/deb/build) from the workspace's binaries (target/debug,
# stripped: this tests the packaging, not the release build), installs them with dpkg -i,
# checks the files, the conffiles, the agent's system user, the enabled units, runs
# `systemd-analyze verify` and prints `systemd-analyze security` of each installed unit,
# then removes and purges them and checks that nothing is left behind but the system user
# (kept, as Debian advises).
#
# dpkg runs inside a network namespace made here, so the maintainer scripts' nftables
# calls (the gateway's prerm deletes its table) touch only that namespace. Needs root,
# dpkg, systemd-analyze; skips where one is missing, except under CI=true, where it fails.
# Refuses to run where edgeshare packages are installed already (it would remove them).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/system/common.bash

[ "$(id -u)" = 0 ] || unavailable "needs root (dpkg -i)"
for tool in dpkg dpkg-deb systemd-analyze ip nft strip; do
  command -v "$tool" >/dev/null 2>&1 || unavailable "$tool is not installed (bash scripts/install-deps)"
done
for pkg in edgeshare-gateway edgeshare-agent; do
  if dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'installed\|config-files'; then
    fail "$pkg is installed on this machine already; this test installs and purges it: remove it first"
  fi
done
[ ! -e /etc/edgeshare ] || fail "/etc/edgeshare exists and is not from our packages; not touching it"

WORK=$(mktemp -d)
NS=es-deb-$$
purge_all() {
  ip netns exec "$NS" dpkg --purge edgeshare-gateway edgeshare-agent >/dev/null 2>&1 || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap purge_all EXIT
ip netns add "$NS"
in_ns() { ip netns exec "$NS" "$@"; }

amd64_debs "$WORK/debs" 1
GATEWAY_DEB=$(echo "$WORK"/debs/1/edgeshare-gateway_*.deb)
AGENT_DEB=$(echo "$WORK"/debs/1/edgeshare-agent_*.deb)
for deb in $GATEWAY_DEB $AGENT_DEB; do
  echo "$(basename "$deb"): $(stat -c %s "$deb") bytes, installed size $(dpkg-deb -f "$deb" Installed-Size) KiB"
  echo "  depends: $(dpkg-deb -f "$deb" Depends)"
done

in_ns dpkg -i "$GATEWAY_DEB" "$AGENT_DEB" >"$WORK/install.log" 2>&1 || fail "dpkg -i failed: $(cat "$WORK/install.log")"
grep -q "edgeshare-gateway is installed and enabled, but not started" "$WORK/install.log" ||
  fail "postinst did not say what to do next: $(cat "$WORK/install.log")"

# Files.
for file in /usr/bin/edgeshare-gateway /usr/bin/edgeshare-agent \
  /lib/systemd/system/edgeshare-gateway.service /lib/systemd/system/edgeshare-portal-only.service \
  /lib/systemd/system/edgeshare-agent.service \
  /etc/edgeshare/gateway.toml /etc/edgeshare/agent.toml /etc/edgeshare/locales \
  /usr/share/doc/edgeshare-gateway/locales/en.toml \
  /usr/share/man/man1/edgeshare-gateway.1.gz /usr/share/man/man1/edgeshare-gateway-codes-create.1.gz \
  /usr/share/man/man1/edgeshare-agent.1.gz \
  /usr/share/bash-completion/completions/edgeshare-gateway /usr/share/zsh/vendor-completions/_edgeshare-agent \
  /usr/share/fish/vendor_completions.d/edgeshare-gateway.fish; do
  [ -e "$file" ] || fail "$file is not installed"
done
dpkg-query -W -f '${Conffiles}\n' edgeshare-gateway | grep -q '/etc/edgeshare/gateway.toml' || fail "gateway.toml is not a conffile"
dpkg-query -W -f '${Conffiles}\n' edgeshare-agent | grep -q '/etc/edgeshare/agent.toml' || fail "agent.toml is not a conffile"
[ "$(stat -c '%a %U' /etc/edgeshare/gateway.env)" = "600 root" ] || fail "gateway.env: $(stat -c '%a %U' /etc/edgeshare/gateway.env)"
[ "$(stat -c '%a %U' /etc/edgeshare/agent.env)" = "600 edgeshare" ] || fail "agent.env: $(stat -c '%a %U' /etc/edgeshare/agent.env)"
/usr/bin/edgeshare-gateway --version | grep -q '^edgeshare-gateway ' || fail "the installed gateway does not run"
/usr/bin/edgeshare-gateway check-config >/dev/null || fail "the installed gateway.toml does not pass check-config"
/usr/bin/edgeshare-agent --config /etc/edgeshare/agent.toml check-config >/dev/null || fail "the installed agent.toml does not pass check-config"

# The agent's system user.
getent passwd edgeshare >/dev/null || fail "no system user edgeshare"
uid=$(id -u edgeshare)
[ "$uid" -lt 1000 ] || fail "edgeshare is not a system user (uid $uid)"
getent passwd edgeshare | cut -d: -f7 | grep -q 'nologin\|false' || fail "edgeshare has a login shell"

# Enabled (not started: no systemd runs here, and postinst starts nothing on a fresh install).
for unit in edgeshare-gateway edgeshare-portal-only; do
  [ -L "/etc/systemd/system/multi-user.target.wants/$unit.service" ] || fail "$unit is not enabled"
done
[ ! -e /etc/systemd/system/multi-user.target.wants/edgeshare-agent.service ] || fail "the agent was enabled before it has credentials"

for unit in edgeshare-gateway edgeshare-portal-only edgeshare-agent; do
  out=$(systemd-analyze verify "/lib/systemd/system/$unit.service" 2>&1) || fail "systemd-analyze verify $unit: $out"
  [ -z "$out" ] || fail "systemd-analyze verify $unit complained: $out"
  score=$(systemd-analyze security --offline=yes --no-pager "/lib/systemd/system/$unit.service" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: //p')
  [ -n "$score" ] || fail "no systemd-analyze security score for $unit"
  echo "systemd-analyze security $unit.service: $score"
done

# Removal deletes the gateway's table (in our namespace) and keeps conffiles until purge.
in_ns /usr/bin/edgeshare-gateway firewall install >/dev/null || fail "firewall install in the namespace failed"
in_ns nft list table inet edgeshare >/dev/null || fail "no table after firewall install"
in_ns dpkg -r edgeshare-gateway edgeshare-agent >"$WORK/remove.log" 2>&1 || fail "dpkg -r failed: $(cat "$WORK/remove.log")"
! in_ns nft list table inet edgeshare >/dev/null 2>&1 || fail "the table outlived the package's removal"
[ ! -e /usr/bin/edgeshare-gateway ] || fail "the binary outlived dpkg -r"
[ -e /etc/edgeshare/gateway.toml ] || fail "dpkg -r removed a conffile (only purge may)"

mkdir -p /var/lib/edgeshare/agent
echo '{}' >/var/lib/edgeshare/sessions.json
in_ns dpkg --purge edgeshare-gateway edgeshare-agent >"$WORK/purge.log" 2>&1 || fail "dpkg --purge failed: $(cat "$WORK/purge.log")"
for left in /etc/edgeshare /var/lib/edgeshare /lib/systemd/system/edgeshare-gateway.service \
  /etc/systemd/system/multi-user.target.wants/edgeshare-gateway.service \
  /etc/systemd/system/multi-user.target.wants/edgeshare-portal-only.service; do
  [ ! -e "$left" ] && [ ! -L "$left" ] || fail "$left is left after purge"
done
if dpkg-query -W edgeshare-gateway >/dev/null 2>&1 && dpkg-query -W -f '${Status}' edgeshare-gateway | grep -qv not-installed; then
  fail "dpkg still knows edgeshare-gateway after purge"
fi
echo "deb_install: ok"
