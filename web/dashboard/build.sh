#!/usr/bin/env bash
# Bundle the dashboard's browser code (src/app.js + Chart.js, at the versions package-lock.json pins)
# into operator/finetune_dashboard/static/app.js, which is committed: the Python package and the operator
# image carry it and need no Node.js. Rebuild after changing src/ or the lockfile;
# tests/unit/test_dashboard_bundle.py fails while the committed bundle is stale.
#   web/dashboard/build.sh [OUTFILE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out="${1:-../../operator/finetune_dashboard/static/app.js}"
# npm ci installs exactly the lockfile (from npm's cache after the first time); skipped when current.
if [[ ! -x node_modules/.bin/esbuild ]] || ! cmp -s package-lock.json node_modules/.package-lock.json.ftj; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.package-lock.json.ftj
fi
node_modules/.bin/esbuild src/app.js --bundle --minify --format=iife --target=es2020 \
  --legal-comments=eof --log-level=warning --outfile="$out"
