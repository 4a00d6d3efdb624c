#!/usr/bin/env bash
# Start the local test cluster in the background: etcd + kube-apiserver,
# kube-controller-manager, kube-scheduler, KWOK (simulated GPU nodes) and MinIO.
#
# Waits until the API server is ready, the default ServiceAccount exists, the KWOK
# nodes are Ready and MinIO answers, then writes the env file (RUN/cluster.env) and
# prints it. If a healthy cluster already runs from the same run dir, it is reused.
#
# Environment:
#   FTJ_GPU_NODES         number of simulated GPU nodes (default 2), 8 x nvidia.com/gpu each
#   FTJ_CLUSTER_RUN_DIR   run dir (default .cache/cluster/run)
#   FTJ_CLUSTER_BIN_DIR   binary cache (default .cache/cluster/bin)
#   FTJ_KUBECTL           kubectl to use (default: kubectl on PATH, else one built by build.sh)
#   FTJ_CLUSTER_OWNER     recorded in RUN/started-by (the pytest fixture sets "pytest")
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

run_dir="${FTJ_CLUSTER_RUN_DIR:-$root/.cache/cluster/run}"
bin_dir="${FTJ_CLUSTER_BIN_DIR:-$root/.cache/cluster/bin}"
export FTJ_CLUSTER_BIN_DIR="$bin_dir"
gpu_nodes="${FTJ_GPU_NODES:-2}"
env_file="$run_dir/cluster.env"
timeout_s="${FTJ_CLUSTER_TIMEOUT:-120}"

# Fixed test credentials for MinIO (S3). Never used outside this machine.
s3_access_key="ftj-test-access"
s3_secret_key="ftj-test-secret-key"
s3_region="us-east-1"

start=$SECONDS
log() { printf '[up %3ds] %s\n' "$((SECONDS - start))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ "$gpu_nodes" =~ ^[0-9]+$ ]] || die "FTJ_GPU_NODES must be a number, got '$gpu_nodes'"

mkdir -p "$(dirname "$run_dir")"
# One up.sh at a time per run dir (two test sessions may start together).
exec 9>"$run_dir.lock"
flock 9

"$here/build.sh" controlplane kwok helm minio
controlplane="$("$here/build.sh" print-controlplane)"
kwok="$bin_dir/kwok-$KWOK_VERSION"
helm="$bin_dir/helm-$HELM_VERSION"
minio="$bin_dir/minio-$MINIO_VERSION"

kubectl="${FTJ_KUBECTL:-$(command -v kubectl || true)}"
if [[ -z "$kubectl" ]]; then
  "$here/build.sh" kubectl
  kubectl="$bin_dir/kubectl-$KUBERNETES_VERSION"
fi

# Reuse a cluster that is already up from this run dir.
if [[ -f "$env_file" ]]; then
  # shellcheck disable=SC1090
  if (source "$env_file" && curl -fsS --max-time 2 --cacert "$FTJ_CLUSTER_CA" "$FTJ_KUBE_APISERVER/readyz" >/dev/null 2>&1 &&
      curl -fsS --max-time 2 "$FTJ_S3_ENDPOINT/minio/health/ready" >/dev/null 2>&1); then
    log "cluster already running; env file: $env_file"
    cat "$env_file"
    exit 0
  fi
fi
if [[ -d "$run_dir" ]]; then
  log "stale run dir, stopping what is left of it"
  FTJ_CLUSTER_RUN_DIR="$run_dir" FTJ_CLUSTER_LOCK_HELD=1 "$here/down.sh"
fi

mkdir -p "$run_dir"/{logs,pids}
# On failure, stop whatever started and keep the logs for a look.
failed_logs="$(dirname "$run_dir")/failed-logs"
on_exit() {
  local rc=$?
  if ((rc != 0)); then
    rm -rf "$failed_logs"
    FTJ_CLUSTER_RUN_DIR="$run_dir" FTJ_CLUSTER_LOCK_HELD=1 "$here/down.sh" --keep-logs "$failed_logs" || true
    log "up.sh failed (exit $rc); component logs kept in $failed_logs"
  fi
}
trap on_exit EXIT
mapfile -t ports < <("$controlplane" free-ports 6)
apiserver_port=${ports[0]} etcd_port=${ports[1]} etcd_peer_port=${ports[2]}
kcm_port=${ports[3]} scheduler_port=${ports[4]} minio_port=${ports[5]}
apiserver="https://127.0.0.1:$apiserver_port"
s3_endpoint="http://127.0.0.1:$minio_port"

# Each component gets its own process group (set -m), so a Ctrl-C aimed at whoever
# ran up.sh does not reach it; down.sh stops them by PID.
set -m
launch() {
  local name="$1"
  shift
  # 9>&-: the component must not inherit (and so keep holding) up.sh's lock.
  nohup "$@" >"$run_dir/logs/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$run_dir/pids/$name.pid"
}

"$controlplane" pki --run-dir "$run_dir" --apiserver-port "$apiserver_port"
admin_kubeconfig="$run_dir/admin.kubeconfig"

# A real node (node.sh) registers as its InternalIP; its name does not resolve.
launch apiserver "$controlplane" apiserver --run-dir "$run_dir" --port "$apiserver_port" \
  --etcd-port "$etcd_port" --etcd-peer-port "$etcd_peer_port" -- --kubelet-preferred-address-types=InternalIP,Hostname

mkdir -p "$run_dir/minio-data"
MINIO_ROOT_USER="$s3_access_key" MINIO_ROOT_PASSWORD="$s3_secret_key" MINIO_BROWSER=off \
  MINIO_UPDATE=off MINIO_CI_CD=1 MINIO_SITE_REGION="$s3_region" \
  launch minio "$minio" server --quiet \
  --address "127.0.0.1:$minio_port" --console-address "127.0.0.1:0" "$run_dir/minio-data"

# alive NAME: fail early with the log when a component died.
alive() {
  local pid
  pid="$(cat "$run_dir/pids/$1.pid")"
  kill -0 "$pid" 2>/dev/null || { tail -n 30 "$run_dir/logs/$1.log" >&2; die "$1 exited; log: $run_dir/logs/$1.log"; }
}

# wait_for WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
  local what="$1"
  shift
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    for p in "$run_dir"/pids/*.pid; do alive "$(basename "$p" .pid)"; done
    ((SECONDS < deadline)) || die "timed out after ${timeout_s}s waiting for $what"
    sleep 0.2
  done
  log "$what: ready"
}

wait_for "kube-apiserver $apiserver" curl -fsS --max-time 2 --cacert "$run_dir/pki/ca.crt" "$apiserver/readyz"

launch controller-manager "$controlplane" controller-manager --run-dir "$run_dir" --port "$kcm_port"
launch scheduler "$controlplane" scheduler --run-dir "$run_dir" --port "$scheduler_port"
# KWOK manages only nodes annotated kwok.x-k8s.io/node=fake; other nodes (a real node
# agent's) and their pods are left alone. KWOK_WORKDIR keeps ~/.kwok out of it.
KWOK_WORKDIR="$run_dir/kwok" launch kwok "$kwok" \
  --kubeconfig "$run_dir/kwok.kubeconfig" \
  --config "$here/kwok/stages.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --cidr=10.244.0.0/16 \
  --node-lease-duration-seconds=40

# gpu_node I: one simulated 8-GPU node, labelled like a GPU cloud node with the
# NVIDIA GPU operator's feature-discovery labels.
gpu_node() {
  local name="kwok-gpu-$1"
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    node.kubernetes.io/instance-type: p5.48xlarge
    topology.kubernetes.io/region: local
    topology.kubernetes.io/zone: local-a
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3
    nvidia.com/gpu.count: "8"
    nvidia.com/gpu.memory: "81559"
    nvidia.com/gpu.family: hopper
    nvidia.com/cuda.driver.major: "550"
status:
  addresses:
  - type: InternalIP
    address: 10.1.0.$(($1 + 1))
  - type: Hostname
    address: $name
  capacity:
    cpu: "192"
    memory: 2048Gi
    ephemeral-storage: 7500Gi
    pods: "110"
    nvidia.com/gpu: "8"
  allocatable:
    cpu: "190"
    memory: 2000Gi
    ephemeral-storage: 7000Gi
    pods: "110"
    nvidia.com/gpu: "8"
EOF
}

k() { "$kubectl" --kubeconfig "$admin_kubeconfig" "$@"; }
if ((gpu_nodes > 0)); then
  for ((i = 0; i < gpu_nodes; i++)); do gpu_node "$i"; done | k apply -f - >/dev/null
fi

wait_for "MinIO $s3_endpoint" curl -fsS --max-time 2 "$s3_endpoint/minio/health/ready"
wait_for "default ServiceAccount" k get serviceaccount default -n default
if ((gpu_nodes > 0)); then
  wait_for "$gpu_nodes KWOK GPU nodes" k wait --for=condition=Ready node -l type=kwok --timeout=2s
fi

mkdir -p "$run_dir/helm"/{cache,config,data}
cat >"$env_file.tmp" <<EOF
# Written by tests/cluster/up.sh; source it (bash) or read KEY=VALUE lines.
KUBECONFIG=$admin_kubeconfig
FTJ_KUBE_APISERVER=$apiserver
FTJ_CLUSTER_CA=$run_dir/pki/ca.crt
FTJ_CLUSTER_RUN_DIR=$run_dir
FTJ_KUBECTL=$kubectl
FTJ_HELM=$helm
FTJ_KWOK_GPU_NODES=$gpu_nodes
FTJ_KUBERNETES_VERSION=$KUBERNETES_VERSION
FTJ_S3_ENDPOINT=$s3_endpoint
FTJ_S3_ACCESS_KEY=$s3_access_key
FTJ_S3_SECRET_KEY=$s3_secret_key
FTJ_S3_REGION=$s3_region
AWS_ENDPOINT_URL=$s3_endpoint
AWS_ACCESS_KEY_ID=$s3_access_key
AWS_SECRET_ACCESS_KEY=$s3_secret_key
AWS_DEFAULT_REGION=$s3_region
HELM_CACHE_HOME=$run_dir/helm/cache
HELM_CONFIG_HOME=$run_dir/helm/config
HELM_DATA_HOME=$run_dir/helm/data
FTJ_PORT_APISERVER=$apiserver_port
FTJ_PORT_ETCD=$etcd_port
FTJ_PORT_ETCD_PEER=$etcd_peer_port
FTJ_PORT_CONTROLLER_MANAGER=$kcm_port
FTJ_PORT_SCHEDULER=$scheduler_port
FTJ_PORT_MINIO=$minio_port
EOF
# Who started it: the pytest fixture stops only clusters it started itself.
echo "${FTJ_CLUSTER_OWNER:-up.sh}" >"$run_dir/started-by"
mv "$env_file.tmp" "$env_file"
log "cluster ready in $((SECONDS - start)) s; env file: $env_file"
cat "$env_file"
