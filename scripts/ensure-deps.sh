#!/usr/bin/env bash
# Installs what stemflow needs to build and test on Debian, when missing:
# libhdf5-dev + pkg-config (HDF5 recording), python3-venv (interoperability tests that run
# LiberTEM-live's simulator and client, and h5py readback, from PyPI), a C compiler, and a
# Rust toolchain (rustup, stable, minimal profile) when there is no `cargo`.
#
# Sourced by run.sh and test.sh (so that a freshly installed cargo is on their PATH).
need=()
want=(libhdf5-dev pkg-config python3-venv gcc)
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null 2>&1 || want+=(curl ca-certificates)
for pkg in "${want[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "stemflow: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "stemflow: installing Rust (rustup, stable)" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# The workspace needs Rust 1.89 or newer (2024 edition; the AVX-512 intrinsics of the
# virtual-detector kernels). An older system toolchain is replaced by rustup's stable one.
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rust_minor:-0}" -lt 89 ]; then
  if ! command -v rustup >/dev/null 2>&1; then
    echo "stemflow: $(rustc --version) is older than 1.89; installing rustup's stable Rust" >&2
    command -v curl >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"; \
      $SUDO apt-get install -y -qq curl ca-certificates >/dev/null; }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  echo "stemflow: updating Rust (rustup, stable)" >&2
  rustup update stable >/dev/null && rustup default stable >/dev/null
fi
