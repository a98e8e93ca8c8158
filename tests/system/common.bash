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

# cargo_on_path: cargo where rustup installed it (~/.cargo), for the tests that run it.
cargo_on_path() {
  if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
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

# debian_root_tar INCLUDE TAG LOG [OPTION…]: prints the path of a Debian 12 (minbase) root
# tarball with the packages INCLUDE (comma-separated), built once with mmdebstrap (apt's lists
# kept, and its further OPTIONs, such as a hook) and then kept in /var/cache/edgeshare-tests
# under a name of INCLUDE and TAG (a root built with other OPTIONs needs another TAG).
debian_root_tar() {
  local include=$1 tag=$2 log=$3 cache=/var/cache/edgeshare-tests tar sources
  shift 3
  tar=$cache/bookworm-amd64-$(echo "$include $tag" | md5sum | cut -c1-12).tar
  if [ ! -s "$tar" ]; then
    mkdir -p "$cache"
    sources=/etc/apt/sources.list.d/debian.sources
    [ -f "$sources" ] || sources=/etc/apt/sources.list
    # A name of this run's for the tar in the making: another run may be making the same.
    mmdebstrap --quiet --format=tar --variant=minbase --include="$include" \
      --skip=cleanup/apt/lists,cleanup/apt/cache "$@" \
      bookworm "$tar.$$.tmp" - <"$sources" >"$log" 2>&1 ||
      fail "mmdebstrap failed: $(tail -20 "$log")"
    mv "$tar.$$.tmp" "$tar"
  fi
  echo "$tar"
}

# amd64_debs DIR REVISION…: puts the amd64 .debs (edgeshare-gateway and edgeshare-agent) of
# each Debian REVISION, made by packaging/deb/build from this build's binaries (stripped), in
# DIR/REVISION: copies of those tests/system/run made once for every test (SYSTEM_TEST_DEBS,
# see tests/system/prepare.bash), or made here when the test runs alone.
amd64_debs() {
  local dir=$1 revision made bin
  shift
  if [ -n "${SYSTEM_TEST_DEBS:-}" ]; then
    for revision in "$@"; do
      [ -f "$SYSTEM_TEST_DEBS/$revision/made" ] || break
      mkdir -p "$dir/$revision"
      cp "$SYSTEM_TEST_DEBS/$revision"/*.deb "$dir/$revision/"
      shift
    done
    [ "$#" != 0 ] || return 0
  fi
  made=$(mktemp -d)
  mkdir "$made/bin"
  for bin in edgeshare-gateway edgeshare-agent; do
    [ -x "$BIN_DIR/$bin" ] || fail "$BIN_DIR/$bin is missing: run cargo build --workspace --bins first"
    strip -o "$made/bin/$bin" "$BIN_DIR/$bin"
  done
  # The man pages and completions of this build's commands.
  if [ -x "$BIN_DIR/edgeshare-gen" ]; then
    "$BIN_DIR/edgeshare-gen" "$made/gen" >/dev/null
  else
    cargo run --quiet --locked -p edgeshare-gen -- "$made/gen" >/dev/null
  fi
  for revision in "$@"; do
    DEB_COMPRESSION=gzip DEB_REVISION=$revision bash packaging/deb/build amd64 "$made/bin" "$dir/$revision" "$made/gen" >/dev/null ||
      fail "packaging/deb/build amd64 (revision $revision) failed"
  done
  rm -rf "$made"
}

# wait_for SECONDS WHAT COMMAND…: retries COMMAND every 0.2 s until it succeeds.
wait_for() {
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within $seconds s"
    sleep 0.2
  done
}

# boot_container ROOT MACHINE LOG NSPAWN_OPTIONS…: boots ROOT with systemd-nspawn (systemd as
# PID 1, a private network, a cgroup of its own), sets NSPAWN_PID and CT (the container's
# PID 1) and returns once systemd's control socket answers. stop_container shuts it down.
NSPAWN_PID=
CT=
NSPAWN_MACHINE=
boot_container() {
  local root=$1 machine=$2 log=$3 i pid
  shift 3
  (
    own_cgroup "$machine" || exit
    export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
    exec systemd-nspawn --quiet --boot --directory="$root" \
      --machine="$machine" --register=no --keep-unit --private-network "$@" \
      --system-call-filter=bpf --console=passive
  ) </dev/null >>"$log" 2>&1 &
  NSPAWN_PID=$!
  NSPAWN_MACHINE=$machine
  CT=
  for i in $(seq 1 100); do
    for pid in $(pgrep -P "$NSPAWN_PID" || true); do
      [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ] && CT=$pid
    done
    [ -n "$CT" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || fail "systemd-nspawn exited: $(tail -20 "$log")"
    sleep 0.1
  done
  [ -n "$CT" ] || fail "no systemd in the container after 10 s"
  wait_for 20 "systemd's control socket in the container" nsenter -t "$CT" -a test -S /run/systemd/private
}

stop_container() {
  [ -n "$NSPAWN_PID" ] || return 0
  if kill -0 "$NSPAWN_PID" 2>/dev/null; then
    # SIGTERM asks nspawn to shut the container down (systemd powers off); SIGKILL if stuck.
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
  fi
  wait "$NSPAWN_PID" 2>/dev/null || true
  NSPAWN_PID=
  drop_cgroup "$NSPAWN_MACHINE"
}

# container_test TAG VETH UNIT…: the start shared by the tests that boot a Debian root in a
# container. Sets the names, unique to this shell's PID, of the machine (MACHINE: es-TAG-PID),
# of the client's and the upstream's namespaces (NS_C, NS_U) and of the veths' host-side ends
# (VETH_LAN, VETH_WAN: VETH, l or w, PID; at most 15 characters), WORK (under /var/tmp: the
# root is large) with ROOT in it, and T0. On exit: the journal of the UNITs printed if the
# test failed, then the container stopped and the namespaces, the processes started and WORK
# removed.
# shellcheck disable=SC2034 # for the caller
container_test() {
  local id=$$
  MACHINE=es-$1-$id
  NS_C=es-$1-c-$id
  NS_U=es-$1-u-$id
  VETH_LAN=$2l$id
  VETH_WAN=$2w$id
  WORK=$(mktemp -d "/var/tmp/es-$1.XXXXXX")
  ROOT=$WORK/root
  T0=$(date +%s)
  shift 2
  CONTAINER_UNITS=("$@")
  trap finish_container_test EXIT
}

# finish_container_test: container_test's EXIT trap.
finish_container_test() {
  local status=$? unit journal=()
  if [ "$status" -ne 0 ] && [ -n "$CT" ] && kill -0 "$CT" 2>/dev/null; then
    for unit in "${CONTAINER_UNITS[@]}"; do journal+=(-u "$unit"); done
    echo "--- the container's journal (${CONTAINER_UNITS[*]}), last lines:" >&2
    nsenter -t "$CT" -a journalctl --no-pager -n 60 "${journal[@]}" >&2 2>&1 || true
  fi
  stop_container
  ip netns del "$NS_C" 2>/dev/null || true
  ip netns del "$NS_U" 2>/dev/null || true
  cleanup_started
  rm -rf "$WORK"
}

# cgroup_dirs NAME: the cgroup NAME under this shell's own, in each hierarchy systemd-nspawn
# uses (systemd's v1 one and the unified one, or the one of cgroup v2).
cgroup_dirs() {
  local hierarchy path mount
  while IFS=: read -r _ hierarchy path; do
    case $hierarchy in
      name=systemd) mount=/sys/fs/cgroup/systemd ;;
      "") if [ -f /sys/fs/cgroup/cgroup.controllers ]; then mount=/sys/fs/cgroup; else mount=/sys/fs/cgroup/unified; fi ;;
      *) continue ;;
    esac
    [ ! -d "$mount" ] || echo "$mount${path%/}/$1"
  done </proc/self/cgroup
}

# own_cgroup NAME: moves this shell into the cgroups NAME (cgroup_dirs). With --keep-unit,
# systemd-nspawn puts its container's "payload" and its "supervisor" under the cgroup it was
# started in: two containers booted side by side from one cgroup (tests/system/run runs tests
# in parallel) would share one payload, and each container's systemd would manage, and kill,
# the other's processes.
own_cgroup() {
  local dir
  for dir in $(cgroup_dirs "$1"); do
    mkdir -p "$dir" && echo "$BASHPID" >"$dir/cgroup.procs" ||
      { echo "cannot move into a cgroup of its own at $dir" >&2; return 1; }
  done
}

# drop_cgroup NAME: removes the cgroups own_cgroup made (and those a container's systemd left
# in them) once nothing runs in them.
drop_cgroup() {
  local dir
  [ -n "$1" ] || return 0
  for dir in $(cgroup_dirs "$1"); do
    [ ! -d "$dir" ] || find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}
