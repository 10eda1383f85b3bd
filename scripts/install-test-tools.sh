#!/usr/bin/env bash
# Tools the tests call that pip cannot install: promtool, which checks and unit-tests the
# alert rules in k8s/ (tests/test_k8s.py). It comes from Debian's prometheus package, of
# which only the promtool binary is unpacked into BIN_DIR (default .venv/bin: on PATH under
# make, and where the tests also look), so nothing is installed system-wide and no
# Prometheus service is started. Idempotent: does nothing when promtool is already on PATH
# or in BIN_DIR. kubectl (kustomize, for the same tests) is part of the machine image.
#
#   scripts/install-test-tools.sh [BIN_DIR]
set -euo pipefail

bin_dir="${1:-.venv/bin}"
if command -v promtool >/dev/null || [ -x "$bin_dir/promtool" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "promtool not found: install Prometheus (it ships promtool) and put promtool" \
        "on PATH, or copy it to $bin_dir" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt downloads as its unprivileged user _apt when it may write there (else it warns).
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi
download() { (cd "$work" && apt-get download -qq prometheus </dev/null); }
# A fresh container has no package lists, and an old list may name a file the mirror has
# dropped: update once, then try again.
if ! download 2>/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq </dev/null
    download
fi
dpkg-deb --extract "$work"/prometheus_*.deb "$work/root"
mkdir -p "$bin_dir"
install -m 0755 "$work/root/usr/bin/promtool" "$bin_dir/promtool"
echo "installed $("$bin_dir/promtool" --version 2>&1 | head -n 1) into $bin_dir"
