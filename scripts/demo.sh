#!/usr/bin/env bash
# The demo, end to end on this machine:
#   1. set up the Python environment (scripts/setup.sh);
#   2. build and start the local control plane: kube-apiserver, controller-manager,
#      scheduler, etcd, KWOK GPU nodes, MinIO, Helm (tests/cluster; cached after the first run);
#   3. helm install the operator, stage the MiniLM model and the demo dataset in MinIO,
#      kubectl apply examples/demo/finetunejob.yaml (2 pods x 1 process, LoRA sentiment),
#      show its progress from the resource's status, and print where the model is;
#   4. kubectl finetune plot (the loss and eval curves, also saved to .cache/demo-curves.png) and
#      kubectl finetune predict on two sentences (the trained model read back from MinIO).
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
env HF_HUB_OFFLINE=1 .venv/bin/python -m tests.e2e.demo

# kubectl finetune: kubectl runs the plugin it finds on PATH (.venv/bin/kubectl-finetune, installed by setup.sh).
source .cache/cluster/run/cluster.env
finetune() {
  # kubectl refuses flags before a plugin's name: the kubeconfig goes by environment.
  KUBECONFIG="$KUBECONFIG" PATH="$root/.venv/bin:$PATH" HF_HUB_OFFLINE=1 "$FTJ_KUBECTL" finetune -n demo "$@"
}
echo "==> kubectl finetune plot demo-sentiment-lora (the curves in status.history)"
finetune plot demo-sentiment-lora
finetune plot demo-sentiment-lora --output .cache/demo-curves.png
echo "==> kubectl finetune predict: the trained model from MinIO, on two sentences"
# The pods reach MinIO through the node's bridge; this machine reaches it on 127.0.0.1.
finetune predict demo-sentiment-lora --s3-endpoint "$FTJ_S3_ENDPOINT" \
  "A warm, funny film with a wonderful cast." "Dull, far too long, and the ending makes no sense."
