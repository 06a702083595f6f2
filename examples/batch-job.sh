#!/bin/sh
# A batch machine that goes away once its results are stored: user-data that installs the agent,
# runs the job, waits until every file the job left in the watch dir is stored, and powers off.
# On a spot or preemptible instance the agent also watches the cloud's notice (auto), and sends
# what is complete at once when it comes.
# Usage: batch-job.sh GRANT-FILE OUTPUT JOB-COMMAND [USER-DATA-OPTION...]
#   JOB-COMMAND: run as root by cloud-init once the agent is installed; it writes its results
#     into /var/spool/postbox (the watch dir). A job run as another user needs the group postbox.
#   USER-DATA-OPTION: more options for `postbox-issuer user-data`, e.g. --wheelhouse FILE.
# wait's lines go to cloud-init's output, which the console log keeps after the machine is gone
# (`aws ec2 get-console-output`): a file that could not be stored is named there. The machine
# powers off whatever wait says (it exits 0 only if everything is stored); the stop then sends,
# within its budget, anything still complete.
set -eu
grant="$1"
output="$2"
job="$3"
shift 3
postbox-issuer user-data --grant "$grant" --preemption-watch auto "$@" \
    --job "$job; /opt/postbox/bin/postbox-agent wait --timeout 1h; systemctl poweroff" \
    -o "$output"
