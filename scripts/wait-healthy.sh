#!/usr/bin/env bash
# Wait until every container of the mesh is healthy (or running, for a container
# without a health check; exited 0, for a one-shot set-up container). On time-out,
# show what is not and its last logs.
#   scripts/wait-healthy.sh COMPOSE_COMMAND... [-- TIMEOUT_S]
set -euo pipefail
cd "$(dirname "$0")/.."
timeout_s=${WAIT_TIMEOUT_S:-300}
compose=("$@")
deadline=$(( $(date +%s) + timeout_s ))
while :; do
  ids=$("${compose[@]}" ps -q)
  pending=()
  for id in $ids; do
    read -r name state health code one_shot < <(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}} {{index .Config.Labels "agentmesh.one-shot"}}' "$id")
    # a one-shot set-up container (label agentmesh.one-shot) is done when it exited 0
    if [ "${one_shot:-}" = true ] && [ "$state" = exited ] && [ "$code" = 0 ]; then
      continue
    fi
    if [ "$state" != running ] || { [ "$health" != healthy ] && [ "$health" != none ]; }; then
      pending+=("${name#/}($state/$health)")
    fi
  done
  if [ -n "$ids" ] && [ ${#pending[@]} -eq 0 ]; then
    echo "wait-healthy: all $(echo "$ids" | wc -w) containers healthy after $(( timeout_s - (deadline - $(date +%s)) ))s" >&2
    exit 0
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "wait-healthy: not healthy after ${timeout_s}s: ${pending[*]}" >&2
    for p in "${pending[@]}"; do
      c=${p%%(*}
      echo "----- last logs of $c -----" >&2
      docker logs --tail 30 "$c" >&2 || true
    done
    exit 1
  fi
  sleep 2
done
