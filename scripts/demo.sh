#!/usr/bin/env bash
# `make demo`: ebpflb balancing real HTTP and UDP traffic in a lab built from network namespaces:
# pods and the node's own processes to ClusterIPs (balanced at connect() by the socket hooks,
# attached to each lab node's own cgroup), then traffic from outside the cluster to a LoadBalancer
# Service whose pods run on two nodes (XDP on the nodes' eth0, SNAT to the other node's pods), and
# a dual-stack Service answered over IPv4 and IPv6 (the lab is dual-stack), and the Ingress
# pattern: HTTPS from outside to a LoadBalancer Service in front of two nginx Ingress pods, which
# terminate TLS and route by host and path to ClusterIP Services; then the same backends through a
# Gateway API TCPRoute with a 90/10 canary split.
# Exit status 0 only if every request succeeds, every ready pod serves, the not-ready pod
# (web-4) never does, every HTTPS request reaches the pods of its Ingress rule's Service, and the
# Gateway's connections all succeed with about a tenth going to the canary.
# Everything it creates is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

EBPFLB=.venv/bin/ebpflb
PY=.venv/bin/python
LAB=demo
PIN=/sys/fs/bpf/ebpflb-lab-$LAB
MANIFESTS=examples/demo.yaml
NS_MANIFESTS=examples/northsouth.yaml
DUAL_MANIFESTS=examples/dualstack.yaml
INGRESS_MANIFESTS=examples/ingress.yaml
GATEWAY_MANIFESTS=examples/gateway-canary.yaml
GATEWAY_IP=192.168.200.202
GATEWAY_PORT=9080
CANARY_CONNECTIONS=200
DUAL_VIP4=10.96.0.30
DUAL_VIP6=fd00:10:96::30
WEB_VIP=10.96.0.10
ECHO_VIP=10.96.0.20
LB_IP=192.168.200.200
INGRESS_LB=192.168.200.201
NODE0=192.168.200.10
NODE1=192.168.200.11
REQUESTS=100
work=$(mktemp -d /tmp/ebpflb-demo.XXXXXX)
agent_pid=""
agent1_pid=""
ingress_dir=""

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

finish() {
    status=$?
    for pid in "$agent_pid" "$agent1_pid"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$ingress_dir" ]; then
        "$PY" -m ebpflb.lab.ingress down "$ingress_dir" || true
    fi
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

step "1. Lab (dual-stack): node $LAB-node (web-1..web-4, ingress-0, a client pod), node $LAB-node1 (n1-web-1, n1-web-2, ingress-1), an external client $LAB-ext"
"$EBPFLB" --log-level warning lab down --name "$LAB" >/dev/null 2>&1 || true  # an interrupted run
"$EBPFLB" --log-level warning lab up --name "$LAB" --pods 4 --nodes 2 --ip-family dual >/dev/null
# The Ingress controller's pods (nginx runs in them in step 8), one per node.
"$EBPFLB" --log-level warning lab add-pod --name "$LAB" --node 0 ingress-0 10.244.0.40 >/dev/null
"$EBPFLB" --log-level warning lab add-pod --name "$LAB" --node 1 ingress-1 10.244.1.40 >/dev/null
"$EBPFLB" lab status --name "$LAB" | sed 's/^/    /' | head -20
# Each lab node's processes (its pods', its host-network ones) run in a cgroup of its own, where
# that node's agent attaches its socket hooks: the machine's other processes are never touched.
cgroups=$("$EBPFLB" lab status --name "$LAB" -o json | "$PY" -c '
import json, sys
print(" ".join(n["cgroup"] for n in json.load(sys.stdin)["nodes"]))')
read -r CG0 CG1 <<< "$cgroups"
mkdir "$work/manifests"
cp "$MANIFESTS" "$NS_MANIFESTS" "$DUAL_MANIFESTS" "$INGRESS_MANIFESTS" "$GATEWAY_MANIFESTS" \
    "$work/manifests/"

step "2. Manifests: Service demo/web (web-4 not ready), UDP Service demo/echo, LoadBalancer Service demo/store, dual-stack Service demo/dual, the Ingress controller's LoadBalancer Service and the Ingress shop/shop's ClusterIP Services"
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
    --external-ip-allow "$GATEWAY_IP/32" \
    --on-exit remove --ready-file "$work/ready" > "$work/agent.log" 2>&1 &
agent_pid=$!
"$EBPFLB" agent --netns "$LAB-node1" --manifests "$work/manifests" --pin-dir "$PIN-node1" \
    --node-name node-1 --node-device eth0 --node-mode xdp --cgroup "$CG1" \
    --external-ip-allow "$GATEWAY_IP/32" \
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

step "8. The Ingress pattern: HTTPS from $LAB-ext to the load balancer IP $INGRESS_LB (XDP) -> nginx in ingress-0 or ingress-1 (TLS, host and path rules) -> ClusterIP Services (nginx's connect() balanced by its node's socket hooks, as every pod's here) -> pods"
# Its files (config, certificates, logs) go to a directory of its own, which `down` removes.
ingress_dir=$("$PY" -m ebpflb.lab.ingress up --lab "$LAB" --manifests "$INGRESS_MANIFESTS" \
              --pod ingress-0 --pod ingress-1)
CA=$ingress_dir/ca.pem
echo "    nginx configured from the Ingress shop/shop; certificates from a throwaway CA the client trusts"
https_get() {  # HOST PATH: one GET from outside, a connection of its own -> "<pod>\t<status>\t<ingress pod>"
    { ip netns exec "$LAB-ext" curl -s -m 3 --resolve "$1:443:$INGRESS_LB" --cacert "$CA" \
          -w '\t%{http_code}\t%header{x-ingress-pod}' "https://$1$2" || true; } | tr -d '\n'
    echo
}
: > "$work/ingress"
ingress_bad=0
for route in "shop.example.test /cart web-1|n1-web-1" "shop.example.test / web-2|n1-web-2" \
             "api.example.test / web-3"; do
    read -r host path pods <<< "$route"
    for _ in $(seq 12); do https_get "$host" "$path"; done > "$work/one"
    printf '    %-30s %s\n' "https://$host$path" "$(cut -f1 "$work/one" | sort | uniq -c | xargs)"
    bad=$(awk -F'\t' -v ok="^($pods)\$" '$2 != 200 || $1 !~ ok' "$work/one" | wc -l)
    ingress_bad=$((ingress_bad + bad))
    cat "$work/one" >> "$work/ingress"
done
echo "    served by the Ingress pods: $(cut -f3 "$work/ingress" | sort | uniq -c | xargs)"
ip netns exec "$LAB-ext" curl -sv -o /dev/null -m 3 --resolve "shop.example.test:443:$INGRESS_LB" \
    --cacert "$CA" https://shop.example.test/ 2>&1 | grep -E '^\*  (subject|issuer):|verify ok' \
    | sed 's/^\* */    TLS: /' || true
redirect=$(ip netns exec "$LAB-ext" curl -s -o /dev/null -m 3 --resolve "shop.example.test:80:$INGRESS_LB" \
           -w '%{http_code} %{redirect_url}' http://shop.example.test/cart || true)
echo "    http://shop.example.test/cart -> $redirect"
[ "$redirect" = "308 https://shop.example.test/cart" ] || ingress_bad=$((ingress_bad + 1))
unknown=$(ip netns exec "$LAB-ext" curl -sS -m 3 --resolve "other.example.test:443:$INGRESS_LB" \
          --cacert "$CA" https://other.example.test/ 2>&1 || true)
echo "    https://other.example.test/ (no rule, no certificate): ${unknown#curl: }"
case $unknown in *"unrecognized name"*) ;; *) ingress_bad=$((ingress_bad + 1)) ;; esac

step "9. The same backends through a Gateway API TCPRoute: $CANARY_CONNECTIONS connections from $LAB-ext to the Gateway shop/edge at $GATEWAY_IP:$GATEWAY_PORT (XDP), split 90/10 between shop/storefront and shop/api"
"$EBPFLB" gateway list --pin-dir "$PIN" | sed 's/^/    /'
for _ in $(seq "$CANARY_CONNECTIONS"); do
    ip netns exec "$LAB-ext" curl -s -m 2 "http://$GATEWAY_IP:$GATEWAY_PORT/" || echo FAILED
done > "$work/canary"
printf '    answered by: %s\n' "$(sort "$work/canary" | uniq -c | xargs)"
canary_api=$(grep -cx 'web-3' "$work/canary" || true)
canary_stable=$(grep -cxE 'web-2|n1-web-2' "$work/canary" || true)
echo "    shop/api (the canary) took $canary_api of $CANARY_CONNECTIONS ($((100 * canary_api / CANARY_CONNECTIONS))%), shop/storefront $canary_stable"

step "10. Verdict"
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
[ "$ingress_bad" -eq 0 ] || { echo "    FAIL: $ingress_bad Ingress checks failed (an HTTPS request failed or reached another Service's pod, or the redirect or the refused name)"; ok=0; }
for pod in ingress-0 ingress-1; do
    grep -qx "$pod" <(cut -f3 "$work/ingress") || { echo "    FAIL: Ingress pod $pod served no request"; ok=0; }
done
# Binomial at n = 200, p = 0.1: 20 +- 4.2; 6 to 40 is well over three deviations either way.
[ $((canary_api + canary_stable)) -eq "$CANARY_CONNECTIONS" ] || { echo "    FAIL: $((CANARY_CONNECTIONS - canary_api - canary_stable)) Gateway connections failed or reached another pod"; ok=0; }
[ "$canary_api" -ge 6 ] && [ "$canary_api" -le 40 ] || { echo "    FAIL: the canary took $canary_api of $CANARY_CONNECTIONS, not about 10%"; ok=0; }
if [ "$ok" -eq 1 ]; then
    echo "    PASS: $served/$REQUESTS requests answered by the 3 ready pods, none by web-4"
    echo "    PASS: 60/60 requests from outside answered by the pods of both nodes"
    echo "    PASS: 36/36 HTTPS requests through both Ingress pods answered by their rule's Service"
    echo "    PASS: $CANARY_CONNECTIONS/$CANARY_CONNECTIONS connections through the Gateway, $canary_api to the canary"
fi

step "11. Teardown: nginx stops, the agents stop (--on-exit remove detaches and unpins), lab down"
"$PY" -m ebpflb.lab.ingress down "$ingress_dir"
ingress_dir=""
kill -TERM "$agent_pid" "$agent1_pid"
wait "$agent_pid" "$agent1_pid" || true
agent_pid=""; agent1_pid=""
tail -n 1 "$work/agent.log" | sed 's/^[0-9-]* [0-9:,]* /    /'
[ "$ok" -eq 1 ]
