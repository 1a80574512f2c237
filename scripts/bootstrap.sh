#!/usr/bin/env bash
# Installs the system packages gymforge needs on a Debian or Ubuntu machine: bubblewrap (the
# sandbox) and a Python 3 with the venv module (the sandbox's Python environment is created from
# it on first use). Safe to run again; it only installs what is missing.
set -euo pipefail

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi
command -v cc >/dev/null 2>&1 || missing+=(gcc)

if [ ${#missing[@]} -eq 0 ]; then
  echo "bootstrap: system packages present (bubblewrap, python3 with venv)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: missing system packages: ${missing[*]}" >&2
  echo "bootstrap: install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: missing system packages: ${missing[*]} (install them with your package manager)" >&2
  exit 1
fi
echo "bootstrap: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "bootstrap: done"
