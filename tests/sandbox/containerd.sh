#!/bin/bash
# containerd 1.7 with NRI, for the Kubernetes tests and the pod demo. Debian 12's containerd
# (1.6) has no NRI; Debian 13's 1.7.24 runs here (it needs libc6 >= 2.34 and runc). It is
# fetched from Debian's archive with a private apt configuration and unpacked under DIR: the
# machine's apt sources and packages stay as they are.
#
#   containerd.sh fetch DIR        download and unpack into DIR/root (once; kept between runs)
#   containerd.sh image DIR        DIR/image.tar: busybox as hostchan.test/busybox:1 and pause:1
#   containerd.sh start DIR        (inside the sandbox) start it and import the image
#   containerd.sh config DIR NRI   DIR/config.toml for a containerd under /run/hc-containerd,
#                                  NRI listening at NRI (a path inside the sandbox)
set -euo pipefail

PACKAGE=containerd
SUITE=trixie
MIRROR=${HOSTCHAN_DEBIAN_MIRROR:-http://deb.debian.org/debian}

fetch() {
    local dir=$1
    [ -x "$dir/root/usr/bin/containerd" ] && return 0
    mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial"
    echo "deb $MIRROR $SUITE main" >"$dir/apt/sources.list"
    local apt=(apt-get -q -o "Dir::Etc::SourceList=$dir/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache" -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
    "${apt[@]}" update >/dev/null
    (cd "$dir" && "${apt[@]}" download "$PACKAGE" >/dev/null)
    rm -rf "$dir/root"
    dpkg-deb -x "$dir"/${PACKAGE}_*.deb "$dir/root"
    "$dir/root/usr/bin/containerd" --version
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
    cat >"$dir/config.toml" <<TOML
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
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = "$nri"
  plugin_path = "/run/hc-containerd/nri-plugins"
  plugin_config_path = "/run/hc-containerd/nri-conf"
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "2s"
TOML
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
    "$dir/root/usr/bin/ctr" --address /run/hc-containerd/containerd.sock -n k8s.io images import \
        "$dir/image.tar" >/dev/null
}

command=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
"$command" "$dir" "$@"
