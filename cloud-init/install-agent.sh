#!/bin/sh
# Installs the s3-postbox agent into /opt/postbox, creates its system user `postbox`, hands it
# the grant and the agent's dirs, and starts its service.
# Written and run by the user-data that `postbox-issuer user-data` renders, once, at first boot.
# Usage: install-agent PIP-REQUIREMENT WATCH-DIR STATE-DIR GRANT-FILE
#   PIP-REQUIREMENT: what pip installs, e.g. 's3-postbox==0.1.0' or a wheel's URL.
set -eu
requirement="$1"
watch_dir="$2"
state_dir="$3"
grant_file="$4"
prefix=/opt/postbox  # the unit runs /opt/postbox/bin/postbox-agent

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

# The unit runs the agent as `postbox` (User= in the unit). cloud-init writes the grant before
# its users module runs, so the user is made here and given the grant afterwards.
if ! getent passwd postbox >/dev/null; then
    log "creating the system user postbox"
    useradd --system --user-group --home-dir "$state_dir" --no-create-home \
        --shell /usr/sbin/nologin --comment "s3-postbox agent" postbox
fi
chown postbox:postbox "$grant_file"
chmod 0600 "$grant_file"
# A grant with a renewal URL is replaced by the agent itself (write, then rename in its folder):
# the folder is the group's to add to, and sticky, so the agent can replace only its own files
# there (the grant), never root's (agent.env). The user-data's drop-in makes it writable.
if grep -q '"renew"' "$grant_file"; then
    grant_dir=$(dirname "$grant_file")
    chown root:postbox "$grant_dir"
    chmod 1770 "$grant_dir"
fi
# Batch jobs write results into the watch dir: run them as a member of the group postbox
# (usermod -aG postbox USER) or as root. setgid keeps new files in the group, so the agent reads
# them even when the job's own group differs.
install -d -o postbox -g postbox -m 2770 "$watch_dir"
install -d -o postbox -g postbox -m 0700 "$state_dir"
systemctl daemon-reload
systemctl enable --now --no-block postbox-agent.service
log "postbox-agent enabled; follow it with: journalctl -u postbox-agent"
