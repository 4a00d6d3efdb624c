#!/usr/bin/env bash
# The demo, end to end on this machine:
#   1. set up the Python environment (scripts/setup.sh);
#   2. build and start the local control plane: kube-apiserver, controller-manager,
#      scheduler, etcd, KWOK GPU nodes, MinIO, Helm (tests/cluster; cached after the first run);
#   3. helm install the operator, stage the MiniLM model and the demo dataset in MinIO,
#      kubectl apply examples/demo/finetunejob.yaml (2 pods x 1 process, LoRA sentiment),
#      show its progress from the resource's status, and print where the model is.
# The pods run as containers on a real node: scripts/images.sh builds both images with podman,
# tests/cluster/node.sh runs a kubelet with containerd + runc, CNI and CoreDNS (first run: ~25 min).
# The cluster keeps running afterwards (kubectl --kubeconfig .cache/cluster/run/admin.kubeconfig
# get ftj -A); stop it with tests/cluster/down.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "==> setting up the Python environment"
scripts/setup.sh
echo "==> building the local control plane (first run on a machine: ~20 min; then cached)"
tests/cluster/build.sh
exec env HF_HUB_OFFLINE=1 .venv/bin/python -m tests.e2e.demo
