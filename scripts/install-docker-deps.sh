#!/usr/bin/env bash
# System packages the throwaway Docker engine (safehold.sandbox.dockerd) and its test images need.
# Installs only what is missing (Debian/Ubuntu).
#   docker.io      dockerd; pulls in containerd, runc, tini and iptables as dependencies
#   busybox-static a static /bin/busybox, the whole rootfs of the test images (nothing is pulled)
# No system Docker service is needed: the sandbox starts its own dockerd on a private socket.
set -euo pipefail
missing=()
# An engine installed another way (Docker's docker-ce packages) will do; docker.io would conflict.
for tool in dockerd containerd runc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    missing+=(docker.io)
    break
  fi
done
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" \
  || missing+=(busybox-static)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing system packages: ${missing[*]}" >&2
  echo "hint: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Where systemd runs, docker.io's postinst starts and enables the system docker service as usual;
# without systemd (containers, CI) invoke-rc.d finds no runlevel and starts nothing.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
