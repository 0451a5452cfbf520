#!/bin/bash
# PID 1 of a private PID+mount namespace: hide every path systemd would write or clean on the
# real machine under tmpfs, give systemd a cgroup subtree of its own, then exec a systemd that
# only knows our own unit directory.
# Run as: unshare --pid --fork --mount --kill-child tests/sandbox/boot.sh UNIT_DIR SANDBOX_ID
# Optional environment: HOSTCHAN_STATE_DIR, a directory to use as /var/lib/hostchan (so that
# records outlive the sandbox, as they outlive a reboot); HOSTCHAN_EXTRA_UNITS, a unit directory
# searched before UNIT_DIR.
set -euo pipefail
unit_dir=${1:?usage: boot.sh UNIT_DIR SANDBOX_ID}
sandbox_id=${2:?usage: boot.sh UNIT_DIR SANDBOX_ID}

mount --make-rprivate /
# Each sandbox's systemd starts in a cgroup of its own, /<sandbox id> in every hierarchy, and
# takes it as its root, as systemd in a container does: parallel sandboxes never share
# /system.slice/... (equal scope names would otherwise meet in one cgroup).
for hierarchy in /sys/fs/cgroup/*/; do
    [ -e "$hierarchy/cgroup.procs" ] || continue
    mkdir -p "$hierarchy$sandbox_id"
    # A new cpuset cgroup has no CPUs or memory nodes, and no task may join it.
    for file in cpuset.cpus cpuset.mems; do
        if [ -e "$hierarchy$file" ]; then cat "$hierarchy$file" >"$hierarchy$sandbox_id/$file"; fi
    done
    echo $$ >"$hierarchy$sandbox_id/cgroup.procs"
done

mount -t proc proc /proc
for dir in /run /tmp /var/tmp /var/log/journal /var/lib/systemd /var/lib/hostchan /var/lib/containers; do
    mkdir -p "$dir"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$dir"
done
chmod 1777 /tmp /var/tmp
# /run shared inside the namespace, as systemd makes every mount on a host (it does not in a
# container, which it takes this for): a container bound to a host path under it receives the
# mounts made there afterwards. Its peers are only this namespace's: nothing reaches the host.
mount --make-shared /run
if [ -n "${HOSTCHAN_STATE_DIR:-}" ]; then
    mount --bind "$HOSTCHAN_STATE_DIR" /var/lib/hostchan
fi

export container=hostchan-sandbox
export SYSTEMD_UNIT_PATH="${HOSTCHAN_EXTRA_UNITS:+$HOSTCHAN_EXTRA_UNITS:}$unit_dir:/run/systemd/transient"
unset HOSTCHAN_STATE_DIR HOSTCHAN_EXTRA_UNITS
exec /lib/systemd/systemd --system --unit=hostchan-sandbox.target --log-target=null --show-status=no
