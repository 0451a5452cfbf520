#!/bin/bash
# containerd with NRI, for the Kubernetes tests, the pod demo and the benchmarks. Debian 12's
# containerd (1.6) has no NRI. Two series run here (both need only libc6 >= 2.34 and runc):
#   1.7  Debian 13's (trixie) 1.7.24: NRI 0.6.1, configuration version 2, NRI switched on here;
#   2    Debian sid's 2.1.x: NRI 0.8, configuration version 3, NRI on by default. sid moves, so
#        a run takes what sid has, prints it, and fails if it is not 2.x.
# Each is fetched from Debian's archive with a private apt configuration and unpacked under DIR:
# the machine's apt sources and packages stay as they are.
#
#   containerd.sh fetch DIR [SERIES]  download and unpack SERIES (1.7 by default) into
#                                  DIR/root (once; kept between runs)
#   containerd.sh image DIR        DIR/image.tar: busybox as hostchan.test/busybox:1 and pause:1
#   containerd.sh start DIR        (inside the sandbox) start it and import the image
#   containerd.sh config DIR NRI   DIR/config.toml for a containerd under /run/hc-containerd,
#                                  NRI listening at NRI (a path inside the sandbox)
set -euo pipefail

PACKAGE=containerd
MIRROR=${HOSTCHAN_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# The unpacked containerd's version, as "1.7.24" or "2.1.9".
version_of() {
    "$1/root/usr/bin/containerd" --version | awk '{print $3}' | sed 's/[+~-].*//; s/^v//'
}

fetch() {
    local dir=$1 series=${2:-1.7} suite
    case $series in
        1.7) suite=trixie ;;
        2) suite=sid ;;
        *) echo "containerd.sh: unknown series '$series'; use 1.7 or 2" >&2; return 2 ;;
    esac
    if [ ! -x "$dir/root/usr/bin/containerd" ]; then
        download "$dir" "$suite"
    fi
    local version
    version=$(version_of "$dir")
    case $version in
        "$series".*) echo "containerd $version (Debian $suite) in $dir" >&2 ;;
        *)
            echo "containerd.sh: Debian $suite's containerd is $version, not $series.x;" \
                "remove $dir and see tests/sandbox/containerd.sh for the series it knows" >&2
            return 1
            ;;
    esac
}

download() {
    local dir=$1 suite=$2
    mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial"
    echo "deb $MIRROR $suite main" >"$dir/apt/sources.list"
    local apt=(apt-get -q -o "Dir::Etc::SourceList=$dir/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache" -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
    "${apt[@]}" update >/dev/null
    (cd "$dir" && "${apt[@]}" download "$PACKAGE" >/dev/null)
    rm -rf "$dir/root"
    dpkg-deb -x "$dir"/${PACKAGE}_*.deb "$dir/root"
    rm -f "$dir"/${PACKAGE}_*.deb
}

image() {
    local dir=$1 work
    work=$(mktemp -d)
    mkdir -p "$work/rootfs/bin" "$work/rootfs/proc" "$work/rootfs/sys" "$work/rootfs/dev" \
        "$work/rootfs/tmp" "$work/rootfs/etc"
    # busybox-static (tests/run installs it): the image has no libraries.
    cp /bin/busybox "$work/rootfs/bin/busybox"
    for tool in sh cat ls echo sleep dd df mount grep test touch stat; do
        ln -s busybox "$work/rootfs/bin/$tool"
    done
    tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$work/rootfs" -cf "$work/layer.tar" .
    local diff
    diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sleep","2147483647"]},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff"]}}
JSON
    cat >"$work/manifest.json" <<JSON
[{"Config":"config.json","RepoTags":["hostchan.test/busybox:1","hostchan.test/pause:1"],"Layers":["layer.tar"]}]
JSON
    tar -C "$work" -cf "$dir/image.tar" manifest.json config.json layer.tar
    rm -rf "$work"
}

config() {
    local dir=$1 nri=$2
    case $(version_of "$dir") in
        1.*) config_v2 "$nri" ;;
        *) config_v3 "$nri" ;;
    esac >"$dir/config.toml"
}

# The NRI section is the same in both: on (1.7 has it off by default), and NRI's default limits
# written out, since the plugin's deadline and the tests are built on them.
nri_section() {
    cat <<TOML
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = "$1"
  plugin_path = "/run/hc-containerd/nri-plugins"
  plugin_config_path = "/run/hc-containerd/nri-conf"
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "2s"
TOML
}

# containerd 1.7: configuration version 2, one CRI plugin.
config_v2() {
    cat <<TOML
version = 2
root = "/run/hc-containerd/root"
state = "/run/hc-containerd/state"
[grpc]
  address = "/run/hc-containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "hostchan.test/pause:1"
  enable_cdi = true
  # The pause container asks for oom_score_adj -998, which this machine refuses even to root:
  # no lower than containerd's own.
  restrict_oom_score_adj = true
  cdi_spec_dirs = ["/run/cdi"]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # For the CDI device's hook, which reads the channels from the OCI config (the NRI plugin
      # reads the pod's annotations from the runtime and needs none of this).
      pod_annotations = ["io.hostchan.*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
        BinaryName = "/usr/sbin/runc"
TOML
    nri_section "$1"
}

# containerd 2.x: configuration version 3; the CRI plugin is split into images and runtime.
config_v3() {
    cat <<TOML
version = 3
root = "/run/hc-containerd/root"
state = "/run/hc-containerd/state"
[grpc]
  address = "/run/hc-containerd/containerd.sock"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "hostchan.test/pause:1"
[plugins."io.containerd.cri.v1.runtime"]
  enable_cdi = true
  restrict_oom_score_adj = true
  cdi_spec_dirs = ["/run/cdi"]
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    pod_annotations = ["io.hostchan.*"]
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = true
      BinaryName = "/usr/sbin/runc"
# ctr's import goes through the transfer service, which unpacks only for the snapshotters named.
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "native"
TOML
    nri_section "$1"
}

# Inside the sandbox: containerd as the unit hc-containerd.service, and the image imported.
start() {
    local dir=$1 i
    systemd-run --quiet --unit=hc-containerd --property=Delegate=yes --property=KillMode=process \
        --setenv=PATH="$dir/root/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        "$dir/root/usr/bin/containerd" --config "$dir/config.toml"
    for i in $(seq 1 200); do
        [ -S /run/hc-containerd/containerd.sock ] && break
        sleep 0.05
    done
    # Unpacked for the snapshotter the CRI uses: 2.x does not unpack at container creation.
    "$dir/root/usr/bin/ctr" --address /run/hc-containerd/containerd.sock -n k8s.io images import \
        --snapshotter native "$dir/image.tar" >/dev/null
}

command=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
"$command" "$dir" "$@"
