#!/usr/bin/env bash
# No OpenSSL anywhere: `cargo tree -i` finds none of openssl-sys, openssl, native-tls or
# aws-lc-sys in the dependency graph of any crate, for any target (dev and build
# dependencies included). TLS is rustls with ring, which is checked to be there.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/system/common.bash
if [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

for crate in openssl-sys openssl native-tls aws-lc-sys; do
  set +e
  out=$(cargo tree --locked --workspace --target all -e all -i "$crate" 2>&1)
  status=$?
  set -e
  if [ "$status" = 0 ]; then
    fail "$crate is in the dependency graph:
$out"
  fi
  echo "$out" | grep -q "did not match any packages" || fail "cargo tree -i $crate failed: $out"
  echo "no $crate"
done
cargo tree --locked --workspace --target all -e normal -i ring >/dev/null || fail "rustls's ring provider is missing"
echo "no_openssl: ok"
