# Shell helpers to boot and stop the sandboxed systemd (sourced by ./demo and the benchmarks).
# The Rust tests have the same in tests/common/mod.rs.

sandbox_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# sandbox_boot UNIT_DIR: boots systemd as PID 1 of new PID+mount namespaces; sets SANDBOX_PID
# (systemd's pid outside) and SANDBOX_UNSHARE_PID. With SANDBOX_HOSTCHAN set to a hostchan
# binary, the sandbox has the shipped hostchan-prune.service running it.
sandbox_boot() {
    local unit_dir=$1
    case "$unit_dir" in
    /tmp/* | /run/* | /var/tmp/*)
        echo "sandbox_boot: $unit_dir is under a directory the sandbox hides under a tmpfs" >&2
        return 1
        ;;
    esac
    SANDBOX_ID=hostchan-sandbox-$$-$RANDOM
    "$sandbox_repo/tests/sandbox/make-units.sh" "$unit_dir" "${SANDBOX_HOSTCHAN:-}"
    unshare --pid --fork --mount --kill-child=SIGKILL \
        "$sandbox_repo/tests/sandbox/boot.sh" "$unit_dir" "$SANDBOX_ID" </dev/null &
    SANDBOX_UNSHARE_PID=$!
    SANDBOX_PID=
    local i
    for i in $(seq 1 300); do
        [ -n "$SANDBOX_PID" ] || SANDBOX_PID=$(cat "/proc/$SANDBOX_UNSHARE_PID/task/$SANDBOX_UNSHARE_PID/children" 2>/dev/null | awk '{print $1}')
        if [ -n "$SANDBOX_PID" ] && [ "$(cat "/proc/$SANDBOX_PID/comm" 2>/dev/null)" = systemd ] &&
            [ "$(sandbox_run systemctl is-system-running 2>/dev/null)" = running ]; then
            return 0
        fi
        kill -0 "$SANDBOX_UNSHARE_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "the sandboxed systemd did not come up" >&2
    sandbox_stop
    return 1
}

# sandbox_run CMD...: runs CMD inside the sandbox.
sandbox_run() {
    nsenter -t "$SANDBOX_PID" -m -p -- "$@"
}

# sandbox_stop: SIGKILL to the namespace's PID 1 ends everything in it, mounts included; then
# the sandbox's cgroups go.
sandbox_stop() {
    [ -n "${SANDBOX_PID:-}" ] && { kill -KILL "$SANDBOX_PID" 2>/dev/null || true; }
    [ -n "${SANDBOX_UNSHARE_PID:-}" ] && { kill -KILL "$SANDBOX_UNSHARE_PID" 2>/dev/null; wait "$SANDBOX_UNSHARE_PID" 2>/dev/null || true; }
    if [ -n "${SANDBOX_ID:-}" ]; then
        local _
        for _ in $(seq 50); do
            find /sys/fs/cgroup/*/"$SANDBOX_ID" -depth -type d -exec rmdir {} + 2>/dev/null || true
            ls -d /sys/fs/cgroup/*/"$SANDBOX_ID" >/dev/null 2>&1 || break
            sleep 0.02
        done
    fi
    SANDBOX_PID=
    SANDBOX_UNSHARE_PID=
    SANDBOX_ID=
    return 0
}

# ensure_packages PACKAGE...: installs the Debian packages that are missing (as root). Packages
# such as docker.io start their daemons on install: not on this machine, whose tests and
# benchmarks start them inside the sandbox only.
ensure_packages() {
    local missing=() package policy made_policy=
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
        made_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
    [ -z "$made_policy" ] || rm -f "$policy"
    return "$rc"
}
