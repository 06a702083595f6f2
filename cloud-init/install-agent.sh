#!/bin/sh
# Installs the s3-postbox agent into /opt/postbox and starts its service.
# Written and run by the user-data that `postbox-issuer user-data` renders, once, at first boot.
# Usage: install-agent PIP-REQUIREMENT WATCH-DIR STATE-DIR
#   PIP-REQUIREMENT: what pip installs, e.g. 's3-postbox==0.1.0' or a wheel's URL.
set -eu
requirement="$1"
watch_dir="$2"
state_dir="$3"
# The unit runs /opt/postbox/bin/postbox-agent; only the installer's tests move it elsewhere.
prefix="${POSTBOX_PREFIX:-/opt/postbox}"

log() { echo "postbox-install: $*" >&2; }

# Debian and Ubuntu ship python3 without venv; Amazon Linux and Fedora ship it whole.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if command -v apt-get >/dev/null 2>&1; then
        log "installing python3-venv"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y -q python3 python3-pip
    elif command -v yum >/dev/null 2>&1; then
        yum install -y -q python3 python3-pip
    fi
fi

log "installing $requirement into $prefix"
python3 -m venv "$prefix"
"$prefix/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "$requirement"
"$prefix/bin/postbox-agent" --version

install -d -m 0755 "$watch_dir"
install -d -m 0700 "$state_dir"
systemctl daemon-reload
systemctl enable --now --no-block postbox-agent.service
log "postbox-agent enabled; follow it with: journalctl -u postbox-agent"
