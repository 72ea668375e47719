#!/bin/sh
# Runs inside the image's root file system (chroot, started by scripts/build-image.sh in a mount
# namespace of its own): the Debian packages, safehold in a venv from the wheels beside this
# script, the unprivileged user, and the removal of what an image does not need.
#
# Inputs, copied next to this script by build-image.sh: packages.txt, dpkg-slim.cfg, wheels/.
# Environment: SAFEHOLD_VERSION (the wheel's version), SAFEHOLD_UID (the user's uid and gid).
set -eu
here=$(dirname "$0")
: "${SAFEHOLD_VERSION:?}" "${SAFEHOLD_UID:?}"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

say() { echo "setup-rootfs: $*"; }

say "apt sources: bookworm, bookworm-updates, bookworm-security (deb.debian.org)"
rm -f /etc/apt/sources.list
cat >/etc/apt/sources.list.d/debian.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp "$here/dpkg-slim.cfg" /etc/dpkg/dpkg.cfg.d/safehold-slim
# The archives folder is the build's cache (a bind mount): apt must keep what it downloads.
printf 'Binary::apt::APT::Keep-Downloaded-Packages "true";\n' >/etc/apt/apt.conf.d/90safehold-keep
# Nothing may start a service inside a chroot.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

apt-get -q update
# The minbase packages debootstrap took from the release, brought up to the security fixes.
apt-get -q -y upgrade
# shellcheck disable=SC2046 # one word per package
apt-get -q -y install --no-install-recommends $(sed 's/#.*//' "$here/packages.txt")
# The cache keeps only what the archive still offers (superseded versions go).
apt-get -q autoclean
rm -f /usr/sbin/policy-rc.d /etc/apt/apt.conf.d/90safehold-keep

say "safehold $SAFEHOLD_VERSION into /opt/safehold (wheels only, no index)"
python3 -m venv /opt/safehold
/opt/safehold/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check \
  --find-links "$here/wheels" "safehold==$SAFEHOLD_VERSION"
/opt/safehold/bin/pip check
# What the venv holds, for audits: 'docker run --entrypoint cat IMAGE /opt/safehold/requirements.txt'
/opt/safehold/bin/pip freeze >/opt/safehold/requirements.txt
/opt/safehold/bin/safehold --version

say "user safehold ($SAFEHOLD_UID:$SAFEHOLD_UID), /backups, /etc/safehold"
groupadd --system --gid "$SAFEHOLD_UID" safehold
useradd --system --uid "$SAFEHOLD_UID" --gid safehold --home-dir /var/lib/safehold \
  --create-home --shell /usr/sbin/nologin --comment "safehold backups" safehold
chmod 0700 /var/lib/safehold
install -d -o safehold -g safehold -m 0700 /backups
install -d -m 0755 /etc/safehold

say "removing apt lists and caches, documentation, translations, logs"
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/lib/dpkg/*-old
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/groff/* /usr/share/lintian/*
find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find /var/log -type f -delete
# Set by build-image.sh for the build only.
rm -f /etc/dpkg/dpkg.cfg.d/safehold-build-unsafe-io
