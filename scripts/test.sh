#!/usr/bin/env bash
# Runs every VBUS test: unit tests and the end-to-end tests of each crate.
# Needs only a Rust toolchain (cargo); everything else the tests use is built by cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi
cargo test --workspace --locked "$@"
