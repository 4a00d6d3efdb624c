#!/usr/bin/env bash
# Stop every process of the local test cluster by its PID file and remove the run dir.
#
# Usage: tests/cluster/down.sh [--keep-logs DIR]   (copies RUN/logs to DIR first)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
run_dir="${FTJ_CLUSTER_RUN_DIR:-$root/.cache/cluster/run}"

keep_logs=""
if [[ "${1:-}" == "--keep-logs" ]]; then
  keep_logs="${2:?--keep-logs needs a directory}"
fi

[[ -d "$run_dir" ]] || exit 0
# Wait for an up.sh that is starting this run dir (it holds the lock; it passes
# FTJ_CLUSTER_LOCK_HELD=1 when it calls down.sh itself).
if [[ -z "${FTJ_CLUSTER_LOCK_HELD:-}" ]]; then
  exec 9>"$run_dir.lock"
  flock 9
fi

# The real node first (tests/cluster/node.sh), when this cluster has it.
[[ -d "$run_dir/node" ]] && FTJ_CLUSTER_RUN_DIR="$run_dir" "$here/node.sh" stop

# Stop the clients of the API server first, the API server (and its etcd) and MinIO last.
order=(kwok scheduler controller-manager apiserver minio)
pids=()
for name in "${order[@]}"; do
  pid_file="$run_dir/pids/$name.pid"
  [[ -f "$pid_file" ]] || continue
  pid="$(cat "$pid_file")"
  # Only signal the process we started: a recycled PID runs something else.
  if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$run_dir"; then
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  fi
done

deadline=$((SECONDS + 15))
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "down.sh: $pid did not stop after SIGTERM, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
done

if [[ -n "$keep_logs" && -d "$run_dir/logs" ]]; then
  mkdir -p "$keep_logs"
  cp -r "$run_dir/logs/." "$keep_logs/"
fi
rm -rf "$run_dir"
