#!/usr/bin/env bash
# Prove the hardening of the running mesh from inside every agent container:
# runs tests/e2e/hardening_probe.py in each replica and checks docker inspect.
#   scripts/audit.sh COMPOSE_COMMAND...
set -euo pipefail
cd "$(dirname "$0")/.."
compose=("$@")
status=0
for service in orchestrator researcher coder llm; do
  for id in $("${compose[@]}" ps -q "$service" 2>/dev/null); do
    name=$(docker inspect -f '{{.Name}}' "$id"); name=${name#/}
    report=$(docker exec -i "$id" python3 - < tests/e2e/hardening_probe.py) && ok=yes || ok=no
    inspect=$(docker inspect -f 'user={{.Config.User}} readonly={{.HostConfig.ReadonlyRootfs}} capdrop={{.HostConfig.CapDrop}} capadd={{.HostConfig.CapAdd}} mem={{.HostConfig.Memory}} cpus={{.HostConfig.NanoCpus}} pids={{.HostConfig.PidsLimit}}' "$id")
    seccomp=$(docker inspect -f '{{range .HostConfig.SecurityOpt}}{{println .}}{{end}}' "$id" | grep -c '^seccomp={' || true)
    nnp=$(docker inspect -f '{{range .HostConfig.SecurityOpt}}{{println .}}{{end}}' "$id" | grep -c '^no-new-privileges:true' || true)
    printf '%-36s probe=%-3s seccomp-profile=%s no-new-privileges=%s %s\n' "$name" "$ok" "$seccomp" "$nnp" "$inspect"
    if [ "$ok" != yes ] || [ "$seccomp" != 1 ] || [ "$nnp" != 1 ]; then
      status=1
      echo "$report" | python3 -c 'import json,sys; r=json.load(sys.stdin); [print("   FAILED", k, v["detail"]) for k, v in r["checks"].items() if not v["ok"]]' || true
    fi
  done
done
[ "$status" = 0 ] && echo "audit: every agent container is hardened as configured" || echo "audit: FAILED" >&2
exit "$status"
