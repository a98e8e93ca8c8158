# Helpers for the system tests. Sourced, not run.

BIN_DIR=${BIN_DIR:-target/debug}
ARTIFACTS=${ARTIFACTS:-artifacts}
mkdir -p "$ARTIFACTS"

STARTED_PIDS=()
cleanup_started() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup_started EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# unavailable REASON…: this test cannot run here (no root, a tool missing). Under CI=true that
# is a failure (CI installs everything, so it must run there); elsewhere a skip that says why.
unavailable() {
  local name
  name=$(basename "$0" .sh)
  [ "${CI:-}" = true ] && fail "$name cannot run under CI: $*"
  echo "$name: SKIPPED (not under CI): $*" >&2
  exit 0
}

# start_standin OUTFILE ARGS…: starts the stand-in on a free loopback port, waits until it
# listens and sets STANDIN_URL and STANDIN_PID.
start_standin() {
  local out=$1
  shift
  "$BIN_DIR/edgeshare-standin" --listen 127.0.0.1:0 "$@" >"$out" 2>"$out.log" &
  STANDIN_PID=$!
  STARTED_PIDS+=("$STANDIN_PID")
  local i
  for i in $(seq 1 100); do
    STANDIN_URL=$(sed -n 's/^edgeshare-standin listening on //p' "$out")
    [ -n "$STANDIN_URL" ] && return 0
    kill -0 "$STANDIN_PID" 2>/dev/null || fail "stand-in exited: $(cat "$out.log")"
    sleep 0.1
  done
  fail "stand-in did not start within 10 s"
}

# debian_root_tar INCLUDE TAG LOG: prints the path of a Debian 12 (minbase) root tarball with the
# packages INCLUDE (comma-separated), built once with mmdebstrap (apt's lists kept) and then
# kept in /var/cache/edgeshare-tests under a name of INCLUDE and TAG.
debian_root_tar() {
  local include=$1 tag=$2 log=$3 cache=/var/cache/edgeshare-tests tar sources
  tar=$cache/bookworm-amd64-$(echo "$include $tag" | md5sum | cut -c1-12).tar
  if [ ! -s "$tar" ]; then
    mkdir -p "$cache"
    sources=/etc/apt/sources.list.d/debian.sources
    [ -f "$sources" ] || sources=/etc/apt/sources.list
    mmdebstrap --quiet --format=tar --variant=minbase --include="$include" \
      --skip=cleanup/apt/lists,cleanup/apt/cache \
      bookworm "$tar.tmp" - <"$sources" >"$log" 2>&1 ||
      fail "mmdebstrap failed: $(tail -20 "$log")"
    mv "$tar.tmp" "$tar"
  fi
  echo "$tar"
}
