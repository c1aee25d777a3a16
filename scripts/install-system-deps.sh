#!/usr/bin/env bash
# System packages the project needs: espeak-ng (Hindi speech), sox, libsndfile; for the web app
# ffmpeg (converts what browsers record), and chromium + chromium-driver (+ a Devanagari font for
# its screenshot) for its browser test; curl (the README HTTP example's test); Node.js and npm
# (the Node client example's test).
# Idempotent: installs only what is missing. Debian/Ubuntu (apt-get).
set -euo pipefail

packages=(espeak-ng sox libsndfile1 ffmpeg chromium chromium-driver fonts-lohit-deva curl)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# Node runs the tested Node client example (client/examples/node); any node >= 18 already on PATH will do.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    missing+=(nodejs npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "Missing system packages: ${missing[*]}; install them with your package manager." >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "Installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
