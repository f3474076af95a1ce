#!/usr/bin/env bash
# Prove the hardening of the running mesh from inside every agent container:
# runs tests/e2e/hardening_probe.py in each replica and checks docker inspect.
#   scripts/audit.sh COMPOSE_COMMAND...
set -euo pipefail
cd "$(dirname "$0")/.."
compose=("$@")
status=0
for service in orchestrator planner researcher coder llm gateway memory-gate sandbox mcp-fetch mcp-git mcp-time; do
  # The sandbox's probe adds its own promises (no network family, no x32, no secrets).
  probe_args=(); [ "$service" = sandbox ] && probe_args=(sandbox)
  for id in $("${compose[@]}" ps -q "$service" 2>/dev/null); do
    name=$(docker inspect -f '{{.Name}}' "$id"); name=${name#/}
    report=$(docker exec -i "$id" python3 - "${probe_args[@]}" < tests/e2e/hardening_probe.py) && ok=yes || ok=no
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
# The sandbox (CIS Docker Benchmark 5.x, read from the engine): no network namespace
# shared with anything (5.9, 5.31), nothing mounted but its socket volume, no
# secrets, a healthcheck (5.26), a restart policy (5.14), limits (5.10, 5.11, 5.28).
for id in $("${compose[@]}" ps -q sandbox 2>/dev/null); do
  name=$(docker inspect -f '{{.Name}}' "$id"); name=${name#/}
  facts=$(docker inspect -f 'network={{.HostConfig.NetworkMode}} mounts={{range .Mounts}}{{.Destination}},{{end}} health={{if .Config.Healthcheck}}{{index .Config.Healthcheck.Test 0}}{{end}} restart={{.HostConfig.RestartPolicy.Name}} user={{.Config.User}}' "$id")
  printf '%-36s %s\n' "$name" "$facts"
  case "$facts" in
    "network=none mounts=/run/agentmesh-sandbox, health=CMD"*" restart=unless-stopped user=10002:10002") ;;
    *) echo "   FAILED sandbox isolation: want network=none, only the socket volume, a healthcheck, a restart policy, uid 10002"; status=1 ;;
  esac
done

# Egress and keys: no container but the egress proxy is on a network with a route out
# (the optional Jaeger UI overlay's jaeger excepted), no container but the gateway
# mounts the vendor key. The proxy itself (squid, no python for the probe): CIS Docker
# Benchmark section 5 basics read from the engine.
for id in $("${compose[@]}" ps -q 2>/dev/null); do
  name=$(docker inspect -f '{{.Name}}' "$id"); name=${name#/}
  service=$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$id")
  routed=""
  for net in $(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{println $k}}{{end}}' "$id"); do
    [ "$net" = none ] && continue
    [ "$(docker network inspect -f '{{.Internal}}' "$net")" = true ] || routed="$routed $net"
  done
  key=$(docker inspect -f '{{range .Mounts}}{{println .Destination}}{{end}}' "$id" | grep -c '^/run/secrets/anthropic_api_key$' || true)
  verdict=ok
  if [ -n "$routed" ] && [ "$service" != egress ] && [ "$service" != jaeger ]; then verdict="FAILED: a route out via$routed"; fi
  if [ "$key" != 0 ] && [ "$service" != gateway ]; then verdict="FAILED: mounts the vendor key"; fi
  if [ "$service" = egress ]; then
    cis=$(docker inspect -f 'user={{.Config.User}} readonly={{.HostConfig.ReadonlyRootfs}} capdrop={{.HostConfig.CapDrop}} capadd={{.HostConfig.CapAdd}} nnp={{range .HostConfig.SecurityOpt}}{{.}}{{end}} health={{if .Config.Healthcheck}}yes{{else}}no{{end}} mem={{.HostConfig.Memory}} cpus={{.HostConfig.NanoCpus}} pids={{.HostConfig.PidsLimit}}' "$id")
    case "$cis" in
    user=0* | user=root* | user=\ * | *readonly=false* | *"capadd=[A"* | *health=no* | *mem=0\ * | *cpus=0\ * | *pids=0) verdict="FAILED: $cis" ;;
    *"capdrop=[ALL]"*no-new-privileges:true*) ;;
    *) verdict="FAILED: $cis" ;;
    esac
  fi
  printf '%-36s egress: route-out=%-6s vendor-key=%s %s\n' "$name" "$([ -n "$routed" ] && echo yes || echo no)" "$key" "$verdict"
  [ "$verdict" = ok ] || status=1
done
[ "$status" = 0 ] && echo "audit: every agent container is hardened as configured" || echo "audit: FAILED" >&2
exit "$status"
