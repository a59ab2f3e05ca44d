#!/usr/bin/env bash
# `make demo`: ebpflb balancing real HTTP and UDP traffic in a lab built from network namespaces:
# pods and the node's own processes to ClusterIPs (balanced at connect() by the socket hooks,
# attached to each lab node's own cgroup), then traffic from outside the cluster to a LoadBalancer
# Service whose pods run on two nodes (XDP on the nodes' eth0, SNAT to the other node's pods), and
# a dual-stack Service answered over IPv4 and IPv6 (the lab is dual-stack).
# Exit status 0 only if every request succeeds, every ready pod serves, and the not-ready pod
# (web-4) never does. Everything it creates is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

EBPFLB=.venv/bin/ebpflb
PY=.venv/bin/python
LAB=demo
PIN=/sys/fs/bpf/ebpflb-lab-$LAB
MANIFESTS=examples/demo.yaml
NS_MANIFESTS=examples/northsouth.yaml
DUAL_MANIFESTS=examples/dualstack.yaml
DUAL_VIP4=10.96.0.30
DUAL_VIP6=fd00:10:96::30
WEB_VIP=10.96.0.10
ECHO_VIP=10.96.0.20
LB_IP=192.168.200.200
NODE0=192.168.200.10
NODE1=192.168.200.11
REQUESTS=100
work=$(mktemp -d /tmp/ebpflb-demo.XXXXXX)
agent_pid=""
agent1_pid=""

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

finish() {
    status=$?
    for pid in "$agent_pid" "$agent1_pid"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
        fi
    done
    "$EBPFLB" --log-level warning lab down --name "$LAB" >/dev/null 2>&1 || true
    rm -rf "$work"
    exit $status
}
trap finish EXIT INT TERM

in_cgroup() {  # CGROUP COMMAND...: run COMMAND as a process of that cgroup (a pod's, a node's)
    local cg=$1; shift
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@"
}

wait_ready() {  # FILE PID LOG
    for _ in $(seq 150); do
        [ -s "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || { cat "$3"; exit 1; }
        sleep 0.1
    done
    echo "agent did not become ready"; cat "$3"; exit 1
}

step "1. Lab (dual-stack): node $LAB-node (web-1..web-4, a client pod), node $LAB-node1 (n1-web-1, n1-web-2), an external client $LAB-ext"
"$EBPFLB" --log-level warning lab down --name "$LAB" >/dev/null 2>&1 || true  # an interrupted run
"$EBPFLB" --log-level warning lab up --name "$LAB" --pods 4 --nodes 2 --ip-family dual >/dev/null
"$EBPFLB" lab status --name "$LAB" | sed 's/^/    /' | head -20
# Each lab node's processes (its pods', its host-network ones) run in a cgroup of its own, where
# that node's agent attaches its socket hooks: the machine's other processes are never touched.
cgroups=$("$EBPFLB" lab status --name "$LAB" -o json | "$PY" -c '
import json, sys
print(" ".join(n["cgroup"] for n in json.load(sys.stdin)["nodes"]))')
read -r CG0 CG1 <<< "$cgroups"
mkdir "$work/manifests"
cp "$MANIFESTS" "$NS_MANIFESTS" "$DUAL_MANIFESTS" "$work/manifests/"

step "2. Manifests: Service demo/web (web-4 not ready), UDP Service demo/echo, LoadBalancer Service demo/store, dual-stack Service demo/dual"
"$PY" - "$work/manifests" <<'PYEOF'
import sys
from ebpflb.manifests import load_manifests
m = load_manifests(sys.argv[1])
for svc in m.services:
    ports = ", ".join(f"{p.port}/{p.protocol} -> {p.target_port}"
                      + (f" (nodePort {p.node_port})" if p.node_port else "") for p in svc.ports)
    lb = f", load balancer {', '.join(svc.lb_ingress_ips)}" if svc.lb_ingress_ips else ""
    print(f"    Service {svc.ref} ({svc.type}): {', '.join(svc.cluster_ips)}{lb}, ports {ports}")
for sl in m.slices:
    eps = ", ".join(f"{e.target.split('/')[-1] if e.target else e.addresses[0]}"
                    f"{'' if e.ready else ' (NOT ready)'}" for e in sl.endpoints)
    print(f"    EndpointSlice {sl.namespace}/{sl.name} for {sl.service_name}: {eps}")
PYEOF

step "3. An agent per node: compiles the programs, programs the maps, attaches to the pod veths, to eth0 at XDP and to the node's cgroup"
"$EBPFLB" agent --netns "$LAB-node" --manifests "$work/manifests" --pin-dir "$PIN" \
    --node-name node-0 --node-device eth0 --node-mode xdp --cgroup "$CG0" \
    --on-exit remove --ready-file "$work/ready" > "$work/agent.log" 2>&1 &
agent_pid=$!
"$EBPFLB" agent --netns "$LAB-node1" --manifests "$work/manifests" --pin-dir "$PIN-node1" \
    --node-name node-1 --node-device eth0 --node-mode xdp --cgroup "$CG1" \
    --metrics-address 127.0.0.1:9412 --health-address 127.0.0.1:9413 \
    --on-exit remove --ready-file "$work/ready1" > "$work/agent1.log" 2>&1 &
agent1_pid=$!
wait_ready "$work/ready" "$agent_pid" "$work/agent.log"
wait_ready "$work/ready1" "$agent1_pid" "$work/agent1.log"
sed 's/^[0-9-]* [0-9:,]* /    /' "$work/agent.log" | grep -v ': device lxc'

step "4. What node 0 has programmed, read back from the BPF maps: ebpflb service list"
"$EBPFLB" service list --pin-dir "$PIN"

step "5. $REQUESTS HTTP requests from the client pod to http://$WEB_VIP/ (each answers its pod name)"
failed=0
for _ in $(seq "$REQUESTS"); do
    in_cgroup "$CG0" ip netns exec "$LAB-client" curl -s -m 2 "http://$WEB_VIP/" || { echo FAILED; failed=$((failed + 1)); }
done > "$work/responses"
sort "$work/responses" | uniq -c | sed 's/^/    /'
echo "    and 20 from a host-network process of node 0 (not a pod: only the socket hooks see it):"
for _ in $(seq 20); do
    in_cgroup "$CG0" ip netns exec "$LAB-node" curl -s -m 2 "http://$WEB_VIP/" || { echo FAILED; failed=$((failed + 1)); }
done | tee -a "$work/responses" | sort | uniq -c | sed 's/^/      /'
REQUESTS=$((REQUESTS + 20))
"$EBPFLB" stats --verdicts -o json --pin-dir "$PIN" | "$PY" -c '
import json, sys
c = json.load(sys.stdin)
v = c["verdicts"]
print("    node 0 counters: %d connect()s balanced by the socket hooks (no packet rewritten),"
      " %d new flows by the TC programs" % (v["socket"]["new"], v["from_pod"]["new"]))'

echo "    and 20 to each family of the dual-stack Service demo/dual, http://$DUAL_VIP4/ and http://[$DUAL_VIP6]/:"
for url in "http://$DUAL_VIP4/" "http://[$DUAL_VIP6]/"; do
    for _ in $(seq 20); do
        in_cgroup "$CG0" ip netns exec "$LAB-client" curl -s -m 2 "$url" || { echo FAILED; failed=$((failed + 1)); }
    done > "$work/one"
    printf '      %-28s %s\n' "$url" "$(sort "$work/one" | uniq -c | xargs)"
    cat "$work/one" >> "$work/responses"
done
REQUESTS=$((REQUESTS + 40))

step "6. UDP echo through $ECHO_VIP:53 (the reply must come from the VIP)"
in_cgroup "$CG0" ip netns exec "$LAB-client" "$PY" - "$ECHO_VIP" <<'PYEOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for i in range(3):
    s.sendto(b"hello-%d" % i, (sys.argv[1], 53))
    data, peer = s.recvfrom(200)
    print(f"    reply {data.decode()!r} from {peer[0]}:{peer[1]}")
    assert peer == (sys.argv[1], 53), peer
PYEOF

step "7. From outside the cluster: 20 requests each from $LAB-ext (192.168.200.2) to both NodePorts and the load balancer IP"
: > "$work/outside"
for url in "http://$NODE0:30080/" "http://$NODE1:30080/" "http://$LB_IP/"; do
    for _ in $(seq 20); do
        ip netns exec "$LAB-ext" curl -s -m 2 "$url" || echo FAILED
    done > "$work/one"
    printf '    %-28s %s\n' "$url" "$(sort "$work/one" | uniq -c | xargs)"
    cat "$work/one" >> "$work/outside"
done
echo "    the client address each pod sees (GET /client through $LB_IP):"
for _ in $(seq 8); do
    ip netns exec "$LAB-ext" curl -s -m 2 "http://$LB_IP/client" || echo FAILED
done | sed 's/:[0-9]*$//' | sort | uniq -c | sed 's/^/      /'
echo "    (node 0's local pod sees the client, 192.168.200.2; node 1's pods see node 0's"
echo "     192.168.200.10: the SNAT that brings their replies back through node 0)"
"$EBPFLB" stats --verdicts -o json --pin-dir "$PIN" | "$PY" -c '
import json, sys
c = json.load(sys.stdin)
e, d = c["events"], c["drops"]
print("    node 0 counters: xdp_forward %d (SNATed and sent on by XDP), node_forward %d (by TC),"
      " drops %d (nat_fail %d)" % (e["xdp_forward"], e["node_forward"], sum(d.values()),
                                    d["nat_fail"]))'

step "8. Verdict"
ok=1
served=$(grep -c '^web-' "$work/responses" || true)
[ "$failed" -eq 0 ] || { echo "    FAIL: $failed of $REQUESTS requests failed"; ok=0; }
grep -q '^web-4$' "$work/responses" && { echo "    FAIL: the not-ready pod web-4 got traffic"; ok=0; }
for pod in web-1 web-2 web-3; do
    grep -q "^$pod\$" "$work/responses" || { echo "    FAIL: ready pod $pod got no request"; ok=0; }
done
outside_failed=$(grep -c '^FAILED' "$work/outside" || true)
[ "$outside_failed" -eq 0 ] || { echo "    FAIL: $outside_failed of 60 requests from outside failed"; ok=0; }
for pod in web-1 n1-web-1 n1-web-2; do
    grep -q "^$pod\$" "$work/outside" || { echo "    FAIL: $pod got no request from outside"; ok=0; }
done
if [ "$ok" -eq 1 ]; then
    echo "    PASS: $served/$REQUESTS requests answered by the 3 ready pods, none by web-4"
    echo "    PASS: 60/60 requests from outside answered by the pods of both nodes"
fi

step "9. Teardown: the agents stop (--on-exit remove detaches and unpins), lab down"
kill -TERM "$agent_pid" "$agent1_pid"
wait "$agent_pid" "$agent1_pid" || true
agent_pid=""; agent1_pid=""
tail -n 1 "$work/agent.log" | sed 's/^[0-9-]* [0-9:,]* /    /'
[ "$ok" -eq 1 ]
