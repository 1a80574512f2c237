#!/usr/bin/env bash
# Installs the system packages gymforge needs on a Debian or Ubuntu machine: bubblewrap (the
# sandbox) and a Python 3 with the venv module (the sandbox's Python environment is created from
# it on first use). With --tests, also PostgreSQL's server (the test suite starts its own
# throwaway servers with it). Safe to run again; it only installs what is missing.
set -euo pipefail

tests=false
case "${1:-}" in
  --tests) tests=true ;;
  "") ;;
  *) echo "usage: scripts/bootstrap.sh [--tests]" >&2; exit 2 ;;
esac

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi
command -v cc >/dev/null 2>&1 || missing+=(gcc)
if $tests && ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "bootstrap: system packages present (bubblewrap, python3 with venv$($tests && echo ", postgresql"))"
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
