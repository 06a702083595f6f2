#!/bin/sh
# Installs the s3-postbox agent into /opt/postbox, creates its system user `postbox`, hands it
# the grant and the agent's dirs, and starts its service.
# Written and run by the user-data that `postbox-issuer user-data` renders, once, at first boot.
# Usage: install-agent WATCH-DIR STATE-DIR GRANT-FILE SOURCE..., a SOURCE being
#   index REQUIREMENT [INDEX-URL]  pip install REQUIREMENT (s3-postbox==VERSION, a wheel's URL)
#   wheelhouse URL SHA256          the `postbox-issuer wheelhouse` archive, checked by its
#                                  SHA-256, alone (no index), every wheel pinned by its hash
set -eu
watch_dir="$1"
state_dir="$2"
grant_file="$3"
source="$4"
shift 4
prefix=/opt/postbox  # the unit runs /opt/postbox/bin/postbox-agent

log() { echo "postbox-install: $*" >&2; }
fail() { log "$*"; exit 1; }

# The instance's own Python and machine, as the wheelhouse names its locks: cp311-x86_64.
tag_of() { "$1" -c 'import platform, sys; print("cp%d%d-%s" % (sys.version_info[:2] + (platform.machine(),)))' 2>/dev/null; }
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; }

# The agent needs Python 3.9 or newer: python3 on Debian 11+, Ubuntu 20.04+ and Amazon Linux
# 2023; RHEL 8 and its rebuilds keep 3.6 as python3 and ship newer ones as python3.X.
python=""
pick_python() {
    for candidate in python3 python3.14 python3.13 python3.12 python3.11 python3.10 python3.9; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        new_enough "$candidate" || continue
        if [ -z "${1:-}" ] || [ -f "$1/locks/$(tag_of "$candidate").txt" ]; then
            python=$(command -v "$candidate")
            return 0
        fi
    done
    return 1
}

case "$source" in
index)
    requirement="$1"
    index_url="${2:-}"
    if ! pick_python; then
        log "installing Python 3 (none of 3.9 or newer found)"
        if command -v apt-get >/dev/null 2>&1; then
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
        elif command -v dnf >/dev/null 2>&1; then
            dnf install -y -q python3.11
        fi
        pick_python || fail "no Python 3.9 or newer: install one in the image (python3.11)"
    fi
    # Debian and Ubuntu ship python3 without ensurepip (package python3-venv); RHEL-family
    # images ship it whole.
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        if command -v apt-get >/dev/null 2>&1; then
            log "installing python3-venv"
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
        elif command -v dnf >/dev/null 2>&1; then
            dnf install -y -q python3-pip
        fi
    fi
    log "installing $requirement into $prefix with $python"
    "$python" -m venv "$prefix"
    set -- install --quiet --disable-pip-version-check --no-cache-dir
    if [ -n "$index_url" ]; then
        set -- "$@" --index-url "$index_url"
    fi
    "$prefix/bin/pip" "$@" "$requirement"
    ;;
wheelhouse)
    url="$1"
    sha256="$2"
    pick_python || fail "no Python 3.9 or newer: install one in the image (python3.11)"
    house=$(mktemp -d /var/tmp/postbox-wheelhouse.XXXXXX)
    trap 'rm -rf "$house"' EXIT
    log "downloading the wheelhouse ${url%%\?*}"
    # Any Python can fetch, check and unpack it; the archive is opened only once its SHA-256 is
    # the one the user-data names, and only plain files under wheels/ and locks/ come out.
    "$python" - "$url" "$sha256" "$house" <<'EOF'
import hashlib, io, os, sys, tarfile, time, urllib.error, urllib.request
url, sha256, house = sys.argv[1:]
limit = 512 * 1024 * 1024
for attempt in range(6):
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            data = answer.read(limit + 1)
        break
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            sys.exit("postbox-install: the store refused the wheelhouse URL (%d): it has expired"
                     " or was revoked; render the user-data again (postbox-issuer user-data)"
                     % exc.code)
        if exc.code < 500 or attempt == 5:
            sys.exit("postbox-install: the wheelhouse URL answered %d" % exc.code)
    except OSError as exc:
        if attempt == 5:
            sys.exit("postbox-install: the wheelhouse could not be downloaded: %s" % exc)
    time.sleep(2 ** attempt)
if len(data) > limit:
    sys.exit("postbox-install: the wheelhouse is over %d bytes" % limit)
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit("postbox-install: the wheelhouse's SHA-256 is not the one in the user-data:"
             " it was changed since it was built; nothing installed")
with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
    for member in tar.getmembers():
        folder, _, name = member.name.partition("/")
        if not member.isfile() or folder not in ("wheels", "locks") or not name or "/" in name \
                or name.startswith("."):
            sys.exit("postbox-install: the wheelhouse holds %r: not a wheelhouse" % member.name)
        os.makedirs(os.path.join(house, folder), exist_ok=True)
        with open(os.path.join(house, folder, name), "wb") as out:
            out.write(tar.extractfile(member).read())
EOF
    if ! pick_python "$house"; then
        has=""
        for found in "$house"/locks/*.txt; do has="$has $(basename "$found" .txt)"; done
        fail "the wheelhouse has no lock for this instance's Python 3.9+ ($(tag_of python3 || echo 'no python3')), only for:$has; build it with that --python and --arch"
    fi
    lock="$house/locks/$(tag_of "$python").txt"
    pip_wheel="$house/wheels/$(sed -n 's/^pip==\([^ ]*\) .*/pip-\1-py3-none-any.whl/p' "$lock")"
    log "installing from the wheelhouse's $(basename "$lock" .txt) lock into $prefix with $python"
    # No ensurepip needed (Debian leaves it out): pip runs from its own wheel, which the lock pins.
    "$python" -m venv --without-pip "$prefix"
    "$prefix/bin/python" "$pip_wheel/pip" install --quiet --disable-pip-version-check \
        --no-cache-dir --no-index --find-links "$house/wheels" --require-hashes -r "$lock"
    ;;
*)
    fail "unknown source '$source': index or wheelhouse"
    ;;
esac
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
install -d -o postbox -g postbox -m 0750 "$state_dir"
# Metrics for node_exporter's textfile collector (POSTBOX_METRICS_FILE in agent.env): the agent
# writes beside the file and renames over it, so the folder is the group's to write, and sticky,
# so postbox can replace only its own file there; the collector reads it as before.
metrics_file=$(sed -n 's/^POSTBOX_METRICS_FILE=//p' "$(dirname "$grant_file")/agent.env")
if [ -n "$metrics_file" ]; then
    metrics_dir=$(dirname "$metrics_file")
    install -d -m 0755 "$metrics_dir"
    chgrp postbox "$metrics_dir"
    chmod g+w,+t "$metrics_dir"
fi
systemctl daemon-reload
systemctl enable --now --no-block postbox-agent.service
log "postbox-agent enabled; follow it with: journalctl -u postbox-agent"
