#!/usr/bin/env bash
# Install statecast-edge as a systemd service on Raspberry Pi OS 64-bit or Debian/Ubuntu.
# Safe to run again: it upgrades the package and keeps an existing config and password.
#
#   sudo deploy/install.sh            # from a checkout of this repository
#   sudo systemctl enable --now statecast-edge
#
# What it does: a virtualenv in /opt/statecast with only the 'edge' extra (numpy, onnxruntime,
# paho-mqtt; no TensorFlow), the system user 'statecast', /etc/statecast/edge.toml (an example,
# only if none exists), and the unit in /etc/systemd/system.
#
# onnxruntime publishes wheels for 64-bit ARM (aarch64) and x86_64, but none for 32-bit ARM
# (armv7l/armv6l, the 32-bit Raspberry Pi OS): there, install the 64-bit OS.
set -euo pipefail

PREFIX=/opt/statecast
CONF=/etc/statecast
UNIT=/etc/systemd/system/statecast-edge.service
SRC=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "install.sh: $*" >&2; exit 1; }

arch=${STATECAST_ARCH:-$(uname -m)}
bits=${STATECAST_BITS:-$(getconf LONG_BIT 2>/dev/null || echo 64)}
case "$arch" in
    aarch64|arm64|x86_64|amd64) ;;
    armv6l|armv7l|armhf|i386|i686)
        die "this is a 32-bit system ($arch): onnxruntime publishes no wheels for it. Install the 64-bit Raspberry Pi OS (or Debian arm64) and run this again." ;;
    *) die "untested machine type $arch: onnxruntime publishes wheels for aarch64 and x86_64 only." ;;
esac
# A 64-bit kernel under a 32-bit userland (32-bit Raspberry Pi OS on a Pi 4) reports aarch64.
[[ $bits == 64 ]] || die "the userland is ${bits}-bit on a $arch kernel: onnxruntime needs a 64-bit OS. Install the 64-bit Raspberry Pi OS."
[[ $(id -u) == 0 ]] || die "run it as root (sudo $0)."
[[ -f $SRC/pyproject.toml && -d $SRC/edge ]] || die "run it from a checkout of statecast ($SRC has no pyproject.toml)."

command -v python3 >/dev/null || die "python3 is missing: apt-get install python3 python3-venv"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python 3.11 or later is needed (for tomllib); Raspberry Pi OS bookworm has 3.11."
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi

if ! id statecast >/dev/null 2>&1; then
    echo "creating the system user statecast"
    useradd --system --home /var/lib/statecast --shell /usr/sbin/nologin statecast
fi

[[ -x $PREFIX/bin/python ]] || python3 -m venv "$PREFIX"
echo "installing statecast[edge] into $PREFIX (no TensorFlow)"
"$PREFIX/bin/pip" install --quiet --upgrade pip
"$PREFIX/bin/pip" install --quiet --upgrade "$SRC[edge]"
"$PREFIX/bin/python" -c 'import sys, edge; sys.exit("tensorflow" in sys.modules)' \
    || die "the edge package pulled in TensorFlow; this is a bug in statecast."

install -d -m 0750 -g statecast "$CONF"
if [[ ! -f $CONF/edge.toml ]]; then
    install -m 0640 -g statecast "$SRC/deploy/systemd/edge.toml" "$CONF/edge.toml"
    echo "wrote $CONF/edge.toml: set model, broker, subscribe and the TLS files in it"
else
    echo "kept the existing $CONF/edge.toml"
fi
if [[ ! -f $CONF/mqtt-password ]]; then
    install -m 0640 -g statecast /dev/null "$CONF/mqtt-password"
    echo "wrote an empty $CONF/mqtt-password: put the broker password on its first line"
fi
install -m 0644 "$SRC/deploy/systemd/statecast-edge.service" "$UNIT"
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
cat <<DONE
statecast-edge is installed. Next:
  sudoedit $CONF/edge.toml $CONF/mqtt-password
  sudo $PREFIX/bin/statecast-edge --config $CONF/edge.toml --check-config
  sudo systemctl enable --now statecast-edge && journalctl -u statecast-edge -f
DONE
