#!/bin/bash
# PID 1 of a private PID+mount namespace: hide every path systemd would write or clean on the
# real machine under tmpfs, then exec a systemd that only knows our own unit directory.
# Run as: unshare --pid --fork --mount --kill-child tests/sandbox/boot.sh UNIT_DIR [EXTRA_TMPFS...]
set -euo pipefail
unit_dir=${1:?usage: boot.sh UNIT_DIR [EXTRA_TMPFS_DIR...]}
shift

mount --make-rprivate /
mount -t proc proc /proc
for dir in /run /tmp /var/tmp /var/log/journal /var/lib/systemd /var/lib/hostchan "$@"; do
    mkdir -p "$dir"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$dir"
done
chmod 1777 /tmp /var/tmp

export container=hostchan-sandbox
export SYSTEMD_UNIT_PATH="$unit_dir:/run/systemd/transient"
exec /lib/systemd/systemd --system --unit=hostchan-sandbox.target --log-target=null --show-status=no
