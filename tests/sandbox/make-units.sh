#!/bin/bash
# Writes the minimal unit directory a sandboxed systemd boots from: stub targets, our own
# default target, and D-Bus plus journald from the system's own units; with HOSTCHAN, the
# shipped hostchan-prune.service running that binary (a channel's mount starts it as it stops).
set -euo pipefail
dir=${1:?usage: make-units.sh UNIT_DIR [HOSTCHAN]}
hostchan=${2:-}
mkdir -p "$dir"
if [ -n "$hostchan" ]; then
    sed "s|^ExecStart=/usr/bin/hostchan |ExecStart=$hostchan |" \
        "$(dirname "$0")/../../systemd/hostchan-prune.service" >"$dir/hostchan-prune.service"
    grep -q "^ExecStart=$hostchan gc --no-wait --linger 60$" "$dir/hostchan-prune.service"
else
    rm -f "$dir/hostchan-prune.service"
fi
for target in sysinit sockets basic shutdown local-fs local-fs-pre umount paths timers slices \
              network network-online remote-fs; do
    printf '[Unit]\nDescription=%s (sandbox stub)\n' "$target" >"$dir/$target.target"
done
cat >"$dir/hostchan-sandbox.target" <<'UNIT'
[Unit]
Description=hostchan test sandbox
Wants=dbus.socket systemd-journald.socket systemd-journald-dev-log.socket dbus.service systemd-journald.service
After=dbus.socket systemd-journald.socket systemd-journald-dev-log.socket
UNIT
for unit in dbus.socket dbus.service systemd-journald.socket systemd-journald.service \
            systemd-journald-dev-log.socket; do
    ln -sfn "/lib/systemd/system/$unit" "$dir/$unit"
done
# systemd-nspawn machines, when systemd-container is installed: machined (D-Bus activated under
# its alias) and the machine.slice it needs.
if [ -e /lib/systemd/system/systemd-machined.service ]; then
    for unit in systemd-machined.service machine.slice machines.target systemd-nspawn@.service; do
        ln -sfn "/lib/systemd/system/$unit" "$dir/$unit"
    done
    ln -sfn /lib/systemd/system/systemd-machined.service "$dir/dbus-org.freedesktop.machine1.service"
fi
