#!/usr/bin/env bash
# Builds the safehold container image from Debian's packages only (no image is pulled) and
# imports it into a Docker engine:
#   1. wheels     safehold's wheel and its dependencies at the versions of requirements.lock
#   2. debootstrap bookworm minbase from deb.debian.org (the .debs cached)
#   3. rootfs     packaging/image/setup-rootfs.sh in a chroot: packages, venv, user, slimming
#   4. import     tar of the rootfs | docker import with the image's settings and labels
# Usage: scripts/build-image.sh [--tag safehold:VERSION] [--docker-host unix:///PATH]
#                               [--cache-dir DIR] [--work-dir DIR] [--keep-work] [--verbose]
# Needs root (debootstrap, chroot), debootstrap, the docker CLI and a bootstrapped .venv
# (Python 3.11, like the image). Each step prints its name and how long it took; its output
# goes to BUILD.log in the work folder (--verbose: to the terminal), whose end is shown on failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image_files="$root/packaging/image"
python="${PYTHON:-$root/.venv/bin/python}"
mirror="http://deb.debian.org/debian"
suite=bookworm
uid=10001
tag=""
cache="${SAFEHOLD_IMAGE_CACHE:-$root/.cache/image}"
work=""
keep=0
verbose=0

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
fail() {
  echo "error: $1" >&2
  if [ -n "${2:-}" ]; then echo "hint: $2" >&2; fi
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --docker-host) export DOCKER_HOST="${2:?--docker-host needs a value}"; shift 2 ;;
    --cache-dir) cache="${2:?--cache-dir needs a value}"; shift 2 ;;
    --work-dir) work="${2:?--work-dir needs a value}"; shift 2 ;;
    --keep-work) keep=1; shift ;;
    --verbose) verbose=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; fail "unknown argument: $1" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || fail "building the image needs root (debootstrap, chroot)" \
  "run it as root, e.g. sudo scripts/build-image.sh"
command -v debootstrap >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
command -v debootstrap >/dev/null || fail "debootstrap is not installed" \
  "apt-get install debootstrap, or run scripts/install-deps.sh"
command -v docker >/dev/null || fail "the docker CLI is not installed" "apt-get install docker.io"
command -v unshare >/dev/null || fail "unshare (util-linux) is not installed"
[ -x "$python" ] || fail "no Python at $python" "run scripts/bootstrap.sh (or set PYTHON)"
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || fail "$python is not Python 3.11, the image's (bookworm) Python" \
    "set PYTHON to a Python 3.11 with safehold's dependencies installed"
version="$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$root/pyproject.toml")"
tag="${tag:-safehold:$version}"

mkdir -p "$cache/debootstrap" "$cache/apt"
cache="$(cd "$cache" && pwd)" # debootstrap wants an absolute --cache-dir
if [ -z "$work" ]; then work="$(mktemp -d "${TMPDIR:-/tmp}/safehold-image-XXXXXX")"; fi
mkdir -p "$work"
work="$(cd "$work" && pwd)"
rootfs="$work/rootfs"
log="$work/BUILD.log"
: >"$log"

mounts_under() { awk -v p="$1/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo; }
cleanup() {
  local status=$?
  # The chroot's mounts live in a namespace that ends with its process; should one still show
  # here, rm -rf must not walk through it into the host (the apt cache, /dev, /proc).
  if [ -n "$(mounts_under "$work")" ]; then
    echo "warning: mounts remain under $work; left in place: $(mounts_under "$work" | tr '\n' ' ')" >&2
  elif [ "$keep" -eq 0 ] && [ "$status" -eq 0 ]; then
    rm -rf "$work"
  fi
  if [ "$status" -ne 0 ]; then echo "the build's log and rootfs are kept in $work" >&2; fi
}
trap cleanup EXIT

since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
started_all=$(date +%s.%N)
step_no=0
# step NAME DESCRIPTION COMMAND...: runs COMMAND with its output in the log, timed.
step() {
  local name="$1" what="$2" started status=0
  shift 2
  step_no=$((step_no + 1))
  echo "build-image: [$step_no/4] $name: $what ..."
  started=$(date +%s.%N)
  echo "==== $name" >>"$log"
  if [ "$verbose" -eq 1 ]; then
    "$@" 2>&1 | tee -a "$log" || status=$?
  else
    "$@" >>"$log" 2>&1 || status=$?
  fi
  if [ "$status" -ne 0 ]; then
    tail -n 25 "$log" >&2
    fail "step $name failed (exit $status); the whole log is $log"
  fi
  echo "build-image: [$step_no/4] $name: done in $(since "$started")s"
}

build_wheels() {
  # A copy of the sources, so the build writes nothing into the checkout (build/, egg-info).
  mkdir -p "$work/src" "$work/wheels" "$cache/wheels"
  tar -C "$root" --exclude=__pycache__ --exclude='*.egg-info' -c pyproject.toml README.md src \
    | tar -C "$work/src" -x
  "$python" -m pip wheel --disable-pip-version-check --no-deps --wheel-dir "$work/wheels" "$work/src"
  # The dependencies at the pinned versions the tests run against (requirements.lock, else what
  # .venv holds), kept in the cache under a key of those pins and safehold's requirements: a
  # rebuild downloads nothing.
  if [ -f "$root/requirements.lock" ]; then
    grep -v -i -e '^safehold\b' -e '^-e' "$root/requirements.lock" >"$work/constraints.txt"
  else
    "$python" -m pip freeze --exclude-editable | grep -v -i '^safehold\b' >"$work/constraints.txt"
  fi
  local key deps
  key="$(cat "$work/constraints.txt" "$root/pyproject.toml" | sha256sum | cut -c1-16)"
  deps="$cache/wheels/$key"
  if [ ! -f "$deps/.complete" ]; then
    rm -rf "$deps.partial"
    "$python" -m pip wheel --disable-pip-version-check --wheel-dir "$deps.partial" \
      --constraint "$work/constraints.txt" "$work/wheels"/safehold-*.whl
    rm -f "$deps.partial"/safehold-*.whl
    touch "$deps.partial/.complete"
    rm -rf "$deps"
    mv "$deps.partial" "$deps"
  fi
  cp "$deps"/*.whl "$work/wheels/"
  # Only the current pins stay cached.
  find "$cache/wheels" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
  ls "$work/wheels"
}

run_debootstrap() {
  # Mount namespaces of their own: whatever debootstrap mounts in the target ends with them.
  unshare --mount --propagation private debootstrap --foreign --variant=minbase \
    --cache-dir="$cache/debootstrap" "$suite" "$rootfs" "$mirror"
  # dpkg without an fsync per file (setup-rootfs.sh removes this): the rootfs is a scratch
  # folder that ends as a tar, and a crash means a rebuild anyway.
  mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
  echo force-unsafe-io >"$rootfs/etc/dpkg/dpkg.cfg.d/safehold-build-unsafe-io"
  unshare --mount --propagation private chroot "$rootfs" /debootstrap/debootstrap --second-stage
}

setup_rootfs() {
  local inputs="$rootfs/tmp/safehold-image"
  mkdir -p "$inputs"
  cp "$image_files/setup-rootfs.sh" "$image_files/packages.txt" "$image_files/dpkg-slim.cfg" "$inputs/"
  cp -r "$work/wheels" "$inputs/wheels"
  cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
  # /proc, /dev and the apt cache are mounted only inside this namespace: when the chroot's
  # process ends, so do they, whatever way it ends.
  unshare --mount --propagation private sh -euc '
    rootfs=$1 cache=$2; shift 2
    mount -t proc proc "$rootfs/proc"
    mount --rbind /dev "$rootfs/dev"
    mount --bind "$cache" "$rootfs/var/cache/apt/archives"
    exec chroot "$rootfs" "$@"
  ' sh "$rootfs" "$cache/apt" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root SAFEHOLD_VERSION="$version" SAFEHOLD_UID="$uid" \
    /bin/sh /tmp/safehold-image/setup-rootfs.sh
  if [ -n "$(mounts_under "$rootfs")" ]; then fail "mounts remain under $rootfs"; fi
  # What the engine provides at run time, or what belonged to this build host only.
  rm -rf "$inputs"
  # debootstrap's own copies of the base .debs (its cache keeps them).
  find "$rootfs/var/cache/apt/archives" -name '*.deb' -delete
  find "$rootfs/tmp" "$rootfs/var/tmp" "$rootfs/dev" -mindepth 1 -delete
  rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
  du -sh "$rootfs"
}

import_image() {
  local revision created
  revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  tar --numeric-owner --xattrs -C "$rootfs" -c . | docker import \
    --change 'ENTRYPOINT ["/usr/bin/tini", "--", "/opt/safehold/bin/safehold"]' \
    --change 'CMD ["daemon"]' \
    --change "USER $uid:$uid" \
    --change 'WORKDIR /etc/safehold' \
    --change 'ENV PATH=/opt/safehold/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV BACKUP_DIR=/backups' \
    --change 'VOLUME ["/backups"]' \
    --change 'LABEL org.opencontainers.image.title="safehold"' \
    --change 'LABEL org.opencontainers.image.description="Backup and disaster recovery for PostgreSQL and Docker volume applications"' \
    --change "LABEL org.opencontainers.image.version=\"$version\"" \
    --change "LABEL org.opencontainers.image.revision=\"$revision\"" \
    --change "LABEL org.opencontainers.image.created=\"$created\"" \
    --change 'LABEL org.opencontainers.image.licenses="MIT"' \
    --change 'LABEL org.opencontainers.image.base.name="debian:bookworm (debootstrap minbase, built locally)"' \
    --message "safehold $version from Debian $suite packages" \
    - "$tag"
}

echo "build-image: $tag from Debian $suite ($mirror); cache $cache, work $work"
step wheels "safehold $version and its pinned dependencies" build_wheels
step debootstrap "$suite minbase" run_debootstrap
step rootfs "packages, venv, user, slimming (chroot)" setup_rootfs
step import "into the engine at ${DOCKER_HOST:-the default socket}" import_image
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "build-image: built $tag in $(since "$started_all")s, $((size / 1000000)) MB"
