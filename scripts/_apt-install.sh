# Sourced by install-deps.sh and install-bench-deps.sh: install the Debian packages named in
# the arguments (nothing when there are none); as non-root, say what to run and fail.
apt_install_missing() {
  if [ $# -eq 0 ]; then return 0; fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing system packages: $*" >&2
    echo "hint: sudo apt-get install -y $*" >&2
    return 1
  fi
  echo "installing: $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt run (unattended upgrades, a parallel install) instead of failing.
  local apt_opts=(-o DPkg::Lock::Timeout=600 -qq)
  apt-get "${apt_opts[@]}" update
  # Where systemd runs, docker.io's postinst starts the system docker service as usual; without
  # systemd (containers, CI) invoke-rc.d finds no runlevel and starts nothing.
  apt-get "${apt_opts[@]}" install -y --no-install-recommends "$@" >/dev/null
}
