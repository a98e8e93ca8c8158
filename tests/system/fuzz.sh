#!/usr/bin/env bash
# Fuzzing, bounded: each target (portal, form, config, ledger, control) replays its corpus in
# fuzz/corpus/ and then runs mutated inputs for FUZZ_SECONDS seconds (default 20: about
# 2 minutes in all). Prints per target the inputs tried, the seconds and the crashes found;
# fails on any crash, which is saved under $ARTIFACTS/fuzz/<target>/ (replay it with
# `edgeshare-fuzz --replay TARGET FILE`). See the README's "Fuzzing" section.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/system/common.bash
cargo_on_path

fuzz_bin="$BIN_DIR/edgeshare-fuzz"
if [ ! -x "$fuzz_bin" ]; then
  cargo build --locked -p edgeshare-fuzz
fi
export FUZZ_SECONDS=${FUZZ_SECONDS:-20}
export FUZZ_ARTIFACTS=${FUZZ_ARTIFACTS:-$ARTIFACTS/fuzz}
# The whole run is bounded even if a target misbehaves: each input has its own 10 s limit
# inside, and this is the limit of all of it.
limit=$((5 * FUZZ_SECONDS + 120))
timeout --signal=KILL "$limit" "$fuzz_bin" || fail "fuzzing found crashes (or ran past ${limit} s); inputs in $FUZZ_ARTIFACTS"
echo "fuzz: ok"
