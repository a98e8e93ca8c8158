# The start shared by the system tests that run the real daemons in network namespaces, and
# their helpers. Sourced, not run, as a test's first command: `. "$(dirname "$0")/netns.bash"`.
# It sets bash's strict mode, moves to the repository's root (where the tests' paths start),
# sources common.bash and scripts/lib/netns.bash (the testbed, the daemons and the clean-up),
# and reports the testbed's failures with common.bash's `fail`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=tests/system/common.bash
. tests/system/common.bash
# shellcheck source=scripts/lib/netns.bash
. scripts/lib/netns.bash
netns_fail() { fail "$@"; }

# real_binaries_test NAME [EXTRA…]: the start shared by the tests of the real gateway, agent and
# stand-in: root, curl, jq, tc and nft present, the binaries built (BIN may name another
# build's, to compare with), WORK made, and on exit WORK's logs (and the files EXTRA names,
# globs under WORK) kept in $ARTIFACTS/NAME and WORK removed. Sets BIN, STANDIN, WORK and
# began.
real_binaries_test() {
  KEEP_AS=$1
  shift
  KEEP_EXTRA=("$@")
  local built=$BIN_DIR tool bin
  [[ $built == /* ]] || built=$PWD/$built
  BIN=${BIN:-$built}
  STANDIN=$built/edgeshare-standin
  [ "$(id -u)" = 0 ] || unavailable "needs root"
  for tool in curl jq tc nft; do
    command -v "$tool" >/dev/null || unavailable "$tool is missing (bash scripts/install-deps)"
  done
  for bin in "$BIN/edgeshare-gateway" "$BIN/edgeshare-agent" "$STANDIN"; do
    [ -x "$bin" ] || fail "$bin is missing (cargo build --workspace --bins)"
  done
  # shellcheck disable=SC2034 # for the caller
  began=$(date +%s)
  WORK=$(mktemp -d)
  netns_exit_traps "" keep_test_logs
}

keep_test_logs() {
  local glob kept=()
  for glob in "${KEEP_EXTRA[@]}"; do
    # shellcheck disable=SC2206 # the glob is meant to expand
    kept+=("$WORK"/$glob)
  done
  mkdir -p "$ARTIFACTS/$KEEP_AS"
  cp "$WORK"/*.log "${kept[@]}" "$ARTIFACTS/$KEEP_AS/" 2>/dev/null
  rm -rf "$WORK"
}
