#!/usr/bin/env bash
# Runs every VBUS test: unit and end-to-end tests of each crate on the simulated device, then the
# vbus-gpu tests, the cache's L1 tests and the state bus's GPU-page tests again on the CUDA backend
# through the fake driver (crates/vbus-fake-cuda, loaded by cudarc as libcuda.so). Needs only a
# Rust toolchain (cargo); cargo builds everything else, including the real S3-compatible server the
# BUS tests run against (s3s-fs, from crates.io, into target/tools the first time); the Python
# package is built with maturin into a virtual environment (target/py-venv) that the script makes
# with python3 (3.11 or later), with pytest, numpy, safetensors and diskcache from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi

target_dir="${CARGO_TARGET_DIR:-target}"
s3s_fs="$target_dir/tools/bin/s3s-fs"
if [ ! -x "$s3s_fs" ]; then
  echo "== installing s3s-fs 0.14.1 (the S3-compatible server of the BUS tests) into $target_dir/tools"
  cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$target_dir/tools"
fi
VBUS_TEST_S3S_FS="$(cd "$(dirname "$s3s_fs")" && pwd)/s3s-fs"
export VBUS_TEST_S3S_FS

echo "== all crates (L1 on the simulated device)"
cargo test --workspace --locked "$@"

echo "== the Python package (crates/vbus-py): built into a virtual environment, then pytest"
venv="$target_dir/py-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
venv="$(cd "$venv" && pwd)"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "maturin>=1.9,<2" "pytest>=8" "numpy>=1.26" "safetensors>=0.4" "diskcache>=5"
(cd crates/vbus-py && VIRTUAL_ENV="$venv" "$venv/bin/maturin" develop --locked --quiet)
"$venv/bin/python" -m pytest -q -p no:cacheprovider crates/vbus-py/tests

echo "== vbus-gpu, then L1 of the cache and GPU pages of the state bus, on the CUDA backend through the fake driver"
cargo build -p vbus-fake-cuda --locked
fake_dir="$target_dir/fake-cuda"
mkdir -p "$fake_dir"
ln -sf "$(cd "$target_dir/debug" && pwd)/libvbus_fake_cuda.so" "$fake_dir/libcuda.so"
export LD_LIBRARY_PATH="$(cd "$fake_dir" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export VBUS_GPU_TEST_BACKEND=cuda
cargo test -p vbus-gpu --locked "$@"
cargo test -p vbus-cache --test it --locked "$@" -- l1:: stress::
cargo test -p vbus-state --test it --locked "$@" -- gpu
