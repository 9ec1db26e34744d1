#!/usr/bin/env bash
# Installs what stemflow needs to build and test on Debian, when missing:
# libhdf5-dev + pkg-config (HDF5 recording), python3-venv (interoperability tests that run
# LiberTEM-live's simulator and client, and h5py readback, from PyPI), and a C compiler.
set -euo pipefail
need=()
for pkg in libhdf5-dev pkg-config python3-venv gcc; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "stemflow: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "stemflow: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
