#!/usr/bin/env bash
# Submit an `m1` command to a Ray cluster as a job, the one documented way:
#
#   cluster/submit.sh [--address http://HEAD:8265] [--no-wait] -- curate CONFIG.yaml --run-dir /shared/runs/NAME
#
# It runs, from the repository root:
#   ray job submit --address ADDR --working-dir . --runtime-env cluster/runtime_env.yaml \
#     --metadata-json '{"git_commit": "<HEAD>[-dirty]"}' -- python -m curation <your m1 arguments>
# - the working dir (this checkout, minus .gitignore'd files) is shipped to every node; a config and data files
#   inside it resolve there on every node;
# - `python -m curation`, not `m1`: it runs the shipped code, and needs only the nodes' python on PATH
#   (cluster/start-node.sh puts the venv there);
# - Ray does not ship .git: the commit goes along as job metadata and lands in the run's manifest.
# ADDRESS (or --address, or RAY_API_SERVER_ADDRESS / RAY_ADDRESS) defaults to http://127.0.0.1:8265.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ADDRESS=${ADDRESS:-${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-http://127.0.0.1:8265}}}
RAY=${RAY:-ray}
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --address) ADDRESS=$2; shift 2 ;;
    --address=*) ADDRESS=${1#--address=}; shift ;;
    --) shift; break ;;
    -*) EXTRA+=("$1"); shift ;;  # other `ray job submit` flags (--no-wait, --submission-id=ID, ...)
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "usage: $0 [--address http://HEAD:8265] [ray job submit flags] -- M1_COMMAND [ARGS...]" >&2
  exit 2
fi
COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)
# Uncommitted changes to tracked files: the commit alone does not say what ran (the manifest's code_hash does).
if [ -n "$COMMIT" ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  COMMIT="$COMMIT-dirty"
fi
META=$(printf '{"git_commit": "%s"}' "$COMMIT")
cd "$ROOT"
exec "$RAY" job submit --address "$ADDRESS" --working-dir . --runtime-env cluster/runtime_env.yaml \
  --metadata-json "$META" "${EXTRA[@]}" -- python -m curation "$@"
