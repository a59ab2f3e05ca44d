#!/usr/bin/env bash
# `make demo`: ebpflb balancing real HTTP and UDP traffic in a lab built from network namespaces.
# Exit status 0 only if all 100 requests succeed, every ready pod serves, and the not-ready pod
# (web-4) never does. Everything it creates is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

EBPFLB=.venv/bin/ebpflb
PY=.venv/bin/python
LAB=demo
PIN=/sys/fs/bpf/ebpflb-lab-$LAB
MANIFESTS=examples/demo.yaml
WEB_VIP=10.96.0.10
ECHO_VIP=10.96.0.20
REQUESTS=100
work=$(mktemp -d /tmp/ebpflb-demo.XXXXXX)
agent_pid=""

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

finish() {
    status=$?
    if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
        kill -TERM "$agent_pid"; wait "$agent_pid" 2>/dev/null || true
    fi
    "$EBPFLB" --log-level warning lab down --name "$LAB" >/dev/null 2>&1 || true
    rm -rf "$work"
    exit $status
}
trap finish EXIT INT TERM

step "1. Lab: node namespace $LAB-node, web pods web-1..web-4, a client pod"
"$EBPFLB" --log-level warning lab down --name "$LAB" >/dev/null 2>&1 || true  # an interrupted run
"$EBPFLB" --log-level warning lab up --name "$LAB" --pods 4

step "2. Manifests ($MANIFESTS): Service demo/web (web-4 not ready) and UDP Service demo/echo"
"$PY" - "$MANIFESTS" <<'PYEOF'
import sys
from ebpflb.manifests import load_manifests
m = load_manifests(sys.argv[1])
for svc in m.services:
    ports = ", ".join(f"{p.port}/{p.protocol} -> {p.target_port}" for p in svc.ports)
    print(f"    Service {svc.ref}: {', '.join(svc.cluster_ips)} ports {ports}")
for sl in m.slices:
    eps = ", ".join(f"{e.target.split('/')[-1] if e.target else e.addresses[0]}"
                    f"{'' if e.ready else ' (NOT ready)'}" for e in sl.endpoints)
    print(f"    EndpointSlice {sl.namespace}/{sl.name} for {sl.service_name}: {eps}")
PYEOF

step "3. Agent: compiles the BPF programs, programs the maps, attaches to the pod veths"
"$EBPFLB" agent --netns "$LAB-node" --manifests "$MANIFESTS" --pin-dir "$PIN" \
    --on-exit remove --ready-file "$work/ready" > "$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do
    [ -s "$work/ready" ] && break
    kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log"; exit 1; }
    sleep 0.1
done
[ -s "$work/ready" ] || { echo "agent did not become ready"; cat "$work/agent.log"; exit 1; }
sed 's/^[0-9-]* [0-9:,]* /    /' "$work/agent.log"

step "4. What is programmed, read back from the BPF maps: ebpflb service list"
"$EBPFLB" service list --pin-dir "$PIN"

step "5. $REQUESTS HTTP requests from the client pod to http://$WEB_VIP/ (each answers its pod name)"
failed=0
for _ in $(seq "$REQUESTS"); do
    ip netns exec "$LAB-client" curl -s -m 2 "http://$WEB_VIP/" || { echo FAILED; failed=$((failed + 1)); }
done > "$work/responses"
sort "$work/responses" | uniq -c | sed 's/^/    /'

step "6. UDP echo through $ECHO_VIP:53 (the reply must come from the VIP)"
ip netns exec "$LAB-client" "$PY" - "$ECHO_VIP" <<'PYEOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for i in range(3):
    s.sendto(b"hello-%d" % i, (sys.argv[1], 53))
    data, peer = s.recvfrom(200)
    print(f"    reply {data.decode()!r} from {peer[0]}:{peer[1]}")
    assert peer == (sys.argv[1], 53), peer
PYEOF

step "7. Verdict"
ok=1
served=$(grep -c '^web-' "$work/responses" || true)
[ "$failed" -eq 0 ] || { echo "    FAIL: $failed of $REQUESTS requests failed"; ok=0; }
grep -q '^web-4$' "$work/responses" && { echo "    FAIL: the not-ready pod web-4 got traffic"; ok=0; }
for pod in web-1 web-2 web-3; do
    grep -q "^$pod\$" "$work/responses" || { echo "    FAIL: ready pod $pod got no request"; ok=0; }
done
if [ "$ok" -eq 1 ]; then
    echo "    PASS: $served/$REQUESTS requests answered by the 3 ready pods, none by web-4"
fi

step "8. Teardown: agent stops (--on-exit remove detaches and unpins), lab down"
kill -TERM "$agent_pid"; wait "$agent_pid" || true; agent_pid=""
tail -n 1 "$work/agent.log" | sed 's/^[0-9-]* [0-9:,]* /    /'
[ "$ok" -eq 1 ]
