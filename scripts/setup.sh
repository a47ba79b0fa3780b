#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: the Debian tools the tests and the demo start,
# and the project's Python environment in .venv.  Safe to run again: it only installs what
# is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the real registry, the reference client and unpacker, a forward proxy,
# containerd (a benchmark peer), compressors and GnuPG; Go with containerd/ttrpc to build the
# tests' ttrpc peer (tests/support/ttrpcpeer.py), which plays kata-agent and the AA; the image
# builders of the real-tool corpus (buildah, podman) and GNU tar, the OCI runtime that runs our
# bundles (runc), a static busybox to put in those images, and systemd-analyze (checks the unit).
debs=(docker-registry skopeo umoci tinyproxy containerd zstd pigz gpg gpgv openssl apache2-utils time
      golang-go golang-github-containerd-ttrpc-dev golang-google-protobuf-dev protobuf-compiler
      buildah podman runc busybox-static tar curl systemd)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian registry package starts a system service on :5000; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.guestpull-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ testkit/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # The product, then the test kit (a separate distribution: the guest never installs it).
  .venv/bin/python -m pip install -q -e '.[test]' -e ./testkit
  touch "$stamp"
fi
