#!/usr/bin/env bash
# Licences, bans and sources of every dependency, with nothing to install: the
# policy is deny.toml (the one cargo-deny reads), the graph is `cargo metadata` (all
# targets; normal, build and dev dependencies), the checker is packaging/depcheck. Fails on a
# licence the allow-list does not satisfy (a GPL crate), a banned crate (openssl, native-tls,
# aws-lc: TLS is rustls with ring, which is checked to be there), or a package from anywhere
# but crates.io and the workspace. Advisories: see the README's "Dependencies".
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/system/common.bash
cargo_on_path

metadata="$ARTIFACTS/cargo-metadata.json"
# The graph covers every platform's dependencies (Windows ones too), which a Linux build never
# downloads: fetch what is missing from crates.io (a no-op once cached), then read offline.
cargo fetch --locked --quiet || fail "cargo fetch could not get the dependencies' sources from crates.io"
cargo metadata --locked --offline --format-version 1 >"$metadata" || fail "cargo metadata failed"
cargo run --locked --offline --quiet -p edgeshare-depcheck -- deny.toml "$metadata" ||
  fail "a dependency breaks deny.toml's policy (above)"
cargo tree --locked --offline --workspace --target all -e normal -i ring >/dev/null ||
  fail "rustls's ring provider is missing"
echo "licences: ok"
