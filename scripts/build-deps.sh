#!/usr/bin/env bash
# Installs the system packages Switchyard's build needs, if missing (Debian/Ubuntu): a C
# compiler (ring), pkg-config, fontconfig and freetype headers (PNG charts of
# `switchyard router eval --plot`). Idempotent: does nothing when they are there.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
missing=()
have cc || missing+=(build-essential)
have pkg-config || missing+=(pkg-config)
if ! have pkg-config || ! pkg-config --exists fontconfig 2>/dev/null; then missing+=(libfontconfig1-dev); fi
if ! have pkg-config || ! pkg-config --exists freetype2 2>/dev/null; then missing+=(libfreetype-dev); fi
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if ! have cargo; then
  echo "build-deps: cargo is not installed; install Rust first (https://rustup.rs)" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "build-deps: installing ${missing[*]}" >&2
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
