#!/usr/bin/env bash
# Join this machine to the local cluster (tests/cluster/up.sh) as a real node: the kubelet
# and kube-proxy of the pinned Kubernetes release (cmd/ftj-node), containerd + runc, CNI
# (Debian's bridge, host-local, loopback and portmap plugins) and CoreDNS as cluster DNS.
# The node reports this machine's CPU and memory and no GPU; the KWOK GPU nodes stay.
#
#   tests/cluster/node.sh            start (or reuse) the node; prints its env lines
#   tests/cluster/node.sh import REF import a podman image into the node's containerd
#   tests/cluster/node.sh stop       stop the node (down.sh calls it)
#
# One real node per machine (it owns the CNI bridge and iptables rules): the node belongs
# to the cluster of FTJ_CLUSTER_RUN_DIR; a node left from another cluster is stopped first.
# Needs root. Installs its Debian packages on first use; binaries are cached by build.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
run_dir="${FTJ_CLUSTER_RUN_DIR:-$root/.cache/cluster/run}"
bin_dir="${FTJ_CLUSTER_BIN_DIR:-$root/.cache/cluster/bin}"
node_dir="$run_dir/node"
# containerd's images outlive a cluster (an import of the trainer image takes minutes) and are
# shared by every checkout on the machine (tagged by image id; 14 GB for the trainer image).
image_root="${FTJ_NODE_IMAGE_ROOT:-/var/lib/kube-finetune/containerd}"
node_name="${FTJ_NODE_NAME:-ftj-node}"
# The pods' network, on the bridge; the host is its gateway and serves DNS there.
pod_cidr=10.85.0.0/24
bridge=ftj0
gateway=10.85.0.1
sock="$node_dir/containerd/containerd.sock"
timeout_s="${FTJ_NODE_TIMEOUT:-180}"

start=$SECONDS
log() { printf '[node %3ds] %s\n' "$((SECONDS - start))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

k() { "$FTJ_KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }
ctr_() { ctr --address "$sock" --namespace k8s.io "$@"; }

ensure_packages() {
  local missing=()
  for pkg in containerd runc containernetworking-plugins iptables conntrack socat podman gcc libc6-dev openssl; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian starts a system containerd on install; the node runs its own.
  systemctl disable --now containerd >/dev/null 2>&1 || true
}

# Images reach containerd through a local registry (distribution's, built from its Go module by
# build.sh; on 127.0.0.1 only, for the length of an import): podman pushes only the layers the
# registry lacks and containerd pulls and unpacks only the layers it lacks, so after a code-only
# change an import moves the few MB that changed. (`podman save | ctr import` wrote and read the
# whole 7 GB trainer image every time: ~140 s.) The registry's storage is kept beside containerd's.
registry_root="${FTJ_NODE_REGISTRY_ROOT:-/var/lib/kube-finetune/registry}"
registry_addr="127.0.0.1:${FTJ_NODE_REGISTRY_PORT:-5155}"
registry_pid=""

start_registry() {
  "$here/build.sh" registry
  mkdir -p "$registry_root/store"
  # One import at a time on this machine (the address is fixed): wait for another one to end.
  exec {registry_lock}>"$registry_root/lock"
  if ! flock -n "$registry_lock"; then
    log "waiting for another image import on this machine to end (lock $registry_root/lock)"
    flock -w 1800 "$registry_lock" || die "another image import held $registry_root/lock for 30 min"
  fi
  cat >"$registry_root/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: "$registry_root/store"}
  delete: {enabled: true}
http: {addr: "$registry_addr"}
YAML
  # The registry does not inherit the lock: a registry left behind must not hold it.
  OTEL_TRACES_EXPORTER=none "$bin_dir/registry-$REGISTRY_VERSION" serve "$registry_root/config.yml" \
    >"$registry_root/registry.log" 2>&1 {registry_lock}>&- &
  registry_pid=$!
  trap 'stop_registry; unlock_registry' EXIT
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/${registry_addr%:*}/${registry_addr#*:}") 2>/dev/null; do
    kill -0 "$registry_pid" 2>/dev/null || die "the image registry exited: $(tail -n 5 "$registry_root/registry.log")"
    ((SECONDS < deadline)) || die "the image registry did not listen on $registry_addr in 30 s"
    sleep 0.2
  done
}

stop_registry() {
  [[ -n "$registry_pid" ]] || return 0
  kill -TERM "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null || true
  registry_pid=""
}

# unlock_registry: let the next import on this machine go. Closing the descriptor matters as
# much as the unlock: the daemons the node starts afterwards would inherit it and hold the lock
# for as long as they run (every later import waited for ever on a fresh machine).
registry_lock=""
unlock_registry() {
  [[ -n "$registry_lock" ]] || return 0
  flock -u "$registry_lock" 2>/dev/null || true
  exec {registry_lock}>&-
  registry_lock=""
}

# registry_repo REF: localhost/kube-finetune/trainer:ID -> kube-finetune/trainer
registry_repo() {
  local name="${1%:*}"
  echo "${name#*/}"
}

# collect_registry REF...: in the repositories of these references keep only their tags, then
# drop every manifest and blob no tag needs (garbage-collect runs with the registry stopped, as
# it requires).
collect_registry() {
  local ref dir repos="$registry_root/store/docker/registry/v2/repositories"
  for ref in "$@"; do
    for dir in "$repos/$(registry_repo "$ref")"/_manifests/tags/*; do
      [[ -d "$dir" && "${dir##*/}" != "${ref##*:}" ]] && rm -rf "$dir"
    done
  done
  "$bin_dir/registry-$REGISTRY_VERSION" garbage-collect --delete-untagged "$registry_root/config.yml" \
    >"$registry_root/gc.log" 2>&1 || log "registry garbage-collect failed (this costs disk only): $registry_root/gc.log"
}

# import REF: podman image -> the node's containerd (k8s.io namespace), skipped when present;
# sets imported=1 when it moved anything.
imported=0
import_image() {
  local ref="$1" id
  id="$(CONTAINERS_CONF="$root/scripts/containers.conf" podman image inspect -f '{{.Id}}' "$ref")"
  if ctr_ images ls -q | grep -x "$ref" >/dev/null && [[ "$(cat "$image_root/imported/$(echo "$ref" | tr '/:' '__')" 2>/dev/null)" == "$id" ]]; then
    log "$ref: already in containerd"
    return
  fi
  [[ -n "$registry_pid" ]] || start_registry
  local staged
  staged="$registry_addr/$(registry_repo "$ref"):${ref##*:}"
  log "$ref: podman push, ctr pull (the layers each side lacks)"
  # zstd: the first push of the 7 GB trainer image compresses it; containerd 1.6 unpacks zstd.
  CONTAINERS_CONF="$root/scripts/containers.conf" podman push --quiet --tls-verify=false \
    --compression-format zstd "$ref" "docker://$staged"
  ctr_ images pull --plain-http "$staged" >/dev/null
  ctr_ images tag --force "$staged" "$ref" >/dev/null
  ctr_ images rm "$staged" >/dev/null
  # Older builds of the same image are only disk now (a running container keeps its snapshot),
  # and so are the image-ID names the runtime gave them.
  ctr_ images ls -q | grep "^${ref%:*}:" | grep -vx "$ref" | xargs -r ctr --address "$sock" --namespace k8s.io images rm >/dev/null || true
  remove_orphan_ids
  mkdir -p "$image_root/imported"
  echo "$id" >"$image_root/imported/$(echo "$ref" | tr '/:' '__')"
  imported=1
}

# remove_orphan_ids: drop the "sha256:<image id>" names whose image no other name points at.
remove_orphan_ids() {
  local named name target
  named="$(ctr_ images ls | awk 'NR > 1 && $1 !~ /^sha256:/ {print $3}')"
  ctr_ images ls | awk 'NR > 1 && $1 ~ /^sha256:/ {print $1, $3}' | while read -r name target; do
    grep -qx "$target" <<<"$named" || ctr_ images rm "$name" >/dev/null || true
  done
}

# The sandbox ("pause") image, built here from the pinned release's own pause.c (the Go
# module holds it): no registry to pull registry.k8s.io/pause from.
pause_ref="localhost/kube-finetune/pause:$KUBERNETES_VERSION"
build_pause() {
  export CONTAINERS_CONF="$root/scripts/containers.conf"
  podman image exists "$pause_ref" && return
  local src tmp
  src="$(cd "$here" && PATH="$PATH:/usr/local/go/bin" go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  tmp="$(mktemp -d)"
  gcc -Os -static -DVERSION="$KUBERNETES_VERSION" -o "$tmp/pause" "$src"
  strip "$tmp/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$tmp/Containerfile"
  podman build --quiet -t "$pause_ref" -f "$tmp/Containerfile" "$tmp" >/dev/null
  rm -rf "$tmp"
}

running() { [[ -f "$node_dir/pids/$1.pid" ]] && kill -0 "$(cat "$node_dir/pids/$1.pid")" 2>/dev/null; }

set -m
launch() {
  local name="$1"
  shift
  nohup "$@" >"$node_dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$node_dir/pids/$name.pid"
}

wait_for() {
  local what="$1" name="$2"
  shift 2
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    running "$name" || { tail -n 40 "$node_dir/logs/$name.log" >&2; die "$name exited; log: $node_dir/logs/$name.log"; }
    ((SECONDS < deadline)) || { tail -n 40 "$node_dir/logs/$name.log" >&2; die "timed out after ${timeout_s}s waiting for $what"; }
    sleep 0.5
  done
  log "$what: ready"
}

# cert NAME CN O: a client certificate signed by the cluster CA, and its kubeconfig.
client_kubeconfig() {
  local name="$1" cn="$2" org="$3" pki="$node_dir/pki"
  mkdir -p "$pki"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "/O=$org/CN=$cn" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$FTJ_CLUSTER_CA" -CAkey "$run_dir/pki/ca.key" -CAcreateserial \
    -days 30 -out "$pki/$name.crt" 2>/dev/null
  cat >"$node_dir/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$FTJ_KUBE_APISERVER", certificate-authority: "$FTJ_CLUSTER_CA"}}]
users: [{name: $name, user: {client-certificate: "$pki/$name.crt", client-key: "$pki/$name.key"}}]
contexts: [{name: local, context: {cluster: local, user: $name}}]
current-context: local
EOF
}

marker=/run/ftj-node.dir
stop_node() {  # stop the node this machine runs, for whichever cluster it is
  local old
  old="$(cat "$marker" 2>/dev/null || true)"
  [[ -n "$old" && -d "$old/pids" ]] || { rm -f "$marker"; return 0; }
  log "stopping the node of $old"
  # Its containers first, while containerd still answers (they would outlive their shims).
  ctr --address "$old/containerd/containerd.sock" --namespace k8s.io tasks ls -q 2>/dev/null |
    xargs -r -n1 ctr --address "$old/containerd/containerd.sock" --namespace k8s.io tasks kill --all --signal SIGKILL 2>/dev/null || true
  for name in kube-proxy kubelet coredns s3-relay api-relay containerd; do
    [[ -f "$old/pids/$name.pid" ]] || continue
    local pid
    pid="$(cat "$old/pids/$name.pid")"
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  [[ -f "$old/iptables.undo" ]] && read -ra rule <"$old/iptables.undo" && { iptables "${rule[@]}" 2>/dev/null || true; }
  # The containers (shims) outlive containerd: stop them too, and what mounts they left.
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $old/containerd/containerd.sock" || true); do
    kill -TERM "$pid" 2>/dev/null || true
  done
  grep -o " $old/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -f "$marker"
}

if [[ "${1:-}" == "stop" ]]; then
  [[ "$(cat "$marker" 2>/dev/null)" == "$node_dir" ]] && stop_node
  exit 0
fi
[[ -f "$run_dir/cluster.env" ]] || die "no cluster at $run_dir: run tests/cluster/up.sh first"
# shellcheck disable=SC1091
source "$run_dir/cluster.env"
if [[ "${1:-}" == "import" ]]; then
  shift
  for ref in "$@"; do import_image "$ref"; done
  if ((imported)); then
    stop_registry
    collect_registry "$@"
    unlock_registry
  fi
  exit 0
fi

if [[ "$(cat "$marker" 2>/dev/null)" == "$node_dir" ]] && running kubelet && running containerd; then
  log "node $node_name already running"
else
  ensure_packages
  "$here/build.sh" node coredns registry
  node_bin="$("$here/build.sh" print-node)"
  stop_node
  rm -rf "$node_dir"
  mkdir -p "$node_dir"/{logs,pids,containerd,kubelet,cni/net.d} "$image_root"
  echo "$node_dir" >"$marker"

  # containerd: images under the cache (kept between clusters), state under the run dir.
  cat >"$node_dir/containerd/config.toml" <<EOF
version = 2
root = "$image_root/root"
state = "$node_dir/containerd/state"
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  enable_unprivileged_ports = true
  # No CAP_SYS_RESOURCE here: a negative oom_score_adj (the kubelet asks -998 for sandboxes)
  # cannot be set, so runc's init dies; keep every container at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni/net.d"
EOF
  cat >"$node_dir/cni/net.d/10-ftj.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ftj",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr", "gateway": "$gateway"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  # The bridge exists before the first pod, so that CoreDNS can listen on its address.
  ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
  [[ "$(ip -4 addr show dev "$bridge")" == *"inet $gateway/"* ]] || ip addr add "$gateway/24" dev "$bridge"
  ip link set "$bridge" up
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 2>/dev/null || modprobe br_netfilter 2>/dev/null || true

  build_pause
  launch containerd containerd --config "$node_dir/containerd/config.toml"
  wait_for "containerd" containerd ctr --address "$sock" version
  import_image "$pause_ref"
  stop_registry
  unlock_registry

  client_kubeconfig kubelet "system:node:$node_name" system:nodes
  client_kubeconfig kube-proxy system:kube-proxy system:node-proxier

  # CoreDNS on the host, answering the pods at the gateway for cluster.local.
  cat >"$node_dir/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 {
    bind $gateway
    errors
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $KUBECONFIG
        pods insecure
        fallthrough in-addr.arpa
    }
    cache 5
}
.:53 {
    bind $gateway
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
  launch coredns "$bin_dir/coredns-$COREDNS_VERSION" -conf "$node_dir/Corefile"

  # The pods reach the API server and MinIO (both on 127.0.0.1) at the gateway.
  api_port="${FTJ_KUBE_APISERVER##*:}"
  launch api-relay socat "TCP-LISTEN:$api_port,bind=$gateway,reuseaddr,fork" "TCP:127.0.0.1:$api_port"
  # The `kubernetes` Service's endpoint is the API server's 127.0.0.1, which kube-proxy cannot
  # send pod traffic to: send that Service's address to the relay instead (in-cluster clients
  # such as the operator and the trainer's status reporter use it).
  kube_svc="$(k get service kubernetes -n default -o jsonpath='{.spec.clusterIP}')"
  iptables -t nat -C PREROUTING -s "$pod_cidr" -d "$kube_svc" -p tcp --dport 443 -j DNAT --to-destination "$gateway:$api_port" 2>/dev/null ||
    iptables -t nat -I PREROUTING 1 -s "$pod_cidr" -d "$kube_svc" -p tcp --dport 443 -j DNAT --to-destination "$gateway:$api_port"
  echo "-t nat -D PREROUTING -s $pod_cidr -d $kube_svc -p tcp --dport 443 -j DNAT --to-destination $gateway:$api_port" >"$node_dir/iptables.undo"
  launch s3-relay socat "TCP-LISTEN:$FTJ_PORT_MINIO,bind=$gateway,reuseaddr,fork" "TCP:127.0.0.1:$FTJ_PORT_MINIO"

  kubelet_port="$("$("$here/build.sh" print-controlplane)" free-ports 1)"
  cat >"$node_dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has a hybrid cgroup v1 layout; Kubernetes 1.35+ refuses it unless told (KEP-5573).
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$sock
address: $gateway
port: $kubelet_port
healthzPort: 0
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$FTJ_CLUSTER_CA"}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$gateway]
resolvConf: ""
failSwapOn: false
registerNode: true
# Only pods that tolerate this taint (tests/e2e/real_node.py RealNode.scheduling) are scheduled here.
registerWithTaints: [{key: "ftj.dev/real-node", value: "true", effect: NoSchedule}]
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%"}
podPidsLimit: -1
EOF
  launch kubelet "$node_bin" kubelet \
    --config "$node_dir/kubelet/config.yaml" \
    --kubeconfig "$node_dir/kubelet.kubeconfig" \
    --root-dir "$node_dir/kubelet/root" \
    --hostname-override "$node_name" \
    --node-ip "$gateway" \
    --node-labels "type=real,ftj.dev/real-node=true" \
    --v 2
  wait_for "node $node_name Ready" kubelet k wait --for=condition=Ready "node/$node_name" --timeout=2s

  cat >"$node_dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$node_dir/kube-proxy.kubeconfig"}
mode: iptables
clusterCIDR: $pod_cidr
bindAddress: 127.0.0.1
healthzBindAddress: ""
metricsBindAddress: ""
EOF
  launch kube-proxy "$node_bin" proxy --config "$node_dir/kube-proxy.yaml" --hostname-override "$node_name"
  log "node $node_name up in $((SECONDS - start)) s"
fi

cat <<EOF
FTJ_NODE_NAME=$node_name
FTJ_NODE_DIR=$node_dir
FTJ_NODE_CONTAINERD=$sock
FTJ_NODE_GATEWAY=$gateway
FTJ_NODE_S3_ENDPOINT=http://$gateway:$FTJ_PORT_MINIO
EOF
