#!/usr/bin/env bash
# The firewall's per-login and per-tick calls timed over netlink (NetlinkFirewall, what the
# daemon runs; nft only installs and removes the table): one allow, and one clients()
# listing with 1,000 and 2,000 clients allowed (each an upload and a download element, so
# 2,000 and 4,000 set elements). A benchmark, not a test: it prints a table and asserts only
# that the listings are complete. (Until nft's own per-element calls were removed, it timed
# them too: bench/results/firewall-2026-12-04.txt.) As root:
#
#   bash bench/firewall.sh                  # builds the example in release first
#   BENCH_NO_BUILD=1 bash bench/firewall.sh 1000 2000 10000
#
# The program runs in a network namespace of its own (`unshare --net`): its table, and the
# nft processes that install and remove it, see only that namespace, which is gone when it
# exits.
# The table goes to stdout and to bench/results/firewall-<date>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "bench: run as root (a network namespace, nftables)" >&2; exit 1; }
for tool in nft unshare; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is missing" >&2; exit 1; }
done
if [ "${BENCH_NO_BUILD:-}" != 1 ]; then
  echo "bench: cargo build --release -p edgeshare-gateway --example firewall_bench" >&2
  cargo build --release -p edgeshare-gateway --example firewall_bench --locked >&2
fi
BIN=${CARGO_TARGET_DIR:-target}/release/examples/firewall_bench
[ -x "$BIN" ] || { echo "bench: $BIN is missing" >&2; exit 1; }
mkdir -p bench/results
OUT=bench/results/firewall-$(date -u +%F).txt
{
  echo "# bash bench/firewall.sh $*  ($(nproc) cores, $(uname -r), $(nft --version))"
  echo "# load average before: $(cut -d" " -f1-3 /proc/loadavg) (wall times grow with it; CPU times less)"
  echo "# medians of 21 calls; one allow = one batch (add, delete, add of both elements)"
  unshare --net "$BIN" "$@"
} | tee "$OUT"
