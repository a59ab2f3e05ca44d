"""The manifests in deploy/ are valid Kubernetes objects: every document deserializes into the
`kubernetes` client's typed model (required fields present, client-side validation on) and
serializes back to itself (no misspelt or unknown field silently dropped); RBAC reads what the
agent reads (services, endpointslices, nodes, namespaces, the Gateway API kinds) and writes
nothing but the status subresource of the Gateway API kinds it gives status to; the DaemonSet
has what the agent needs and no `privileged`. No API server involved."""
import json
from pathlib import Path

import pytest
import yaml

kubernetes = pytest.importorskip("kubernetes")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MODELS = {"Namespace": "V1Namespace", "ServiceAccount": "V1ServiceAccount",
          "ClusterRole": "V1ClusterRole", "ClusterRoleBinding": "V1ClusterRoleBinding",
          "DaemonSet": "V1DaemonSet"}


class _Response:
    def __init__(self, doc):
        self.data = json.dumps(doc)


def documents():
    out = []
    for f in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                out.append((f.name, doc))
    return out


def by_kind(kind):
    return [d for _, d in documents() if d["kind"] == kind]


@pytest.mark.parametrize("name,doc", documents(),
                         ids=lambda v: v if isinstance(v, str) else v.get("kind"))
def test_document_is_a_valid_typed_object_and_round_trips(name, doc):
    api = kubernetes.client.ApiClient()
    assert doc["kind"] in MODELS, f"{name}: unexpected kind {doc['kind']}"
    obj = api.deserialize(_Response(doc), MODELS[doc["kind"]])
    assert obj.metadata.name
    back = api.sanitize_for_serialization(obj)
    assert back == doc, f"{name}: {doc['kind']} lost or changed fields in the typed model"


def test_every_kind_is_there():
    kinds = sorted(d["kind"] for _, d in documents())
    assert kinds == sorted(MODELS)


GATEWAY_GROUP = "gateway.networking.k8s.io"
READ = {("", "services"), ("", "nodes"), ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices")} | {
    (GATEWAY_GROUP, r) for r in ("gatewayclasses", "gateways", "tcproutes", "udproutes",
                                 "referencegrants")}
# The status writer (ebpflb.sources.gateway_status_writer): merge patches of the status
# subresource (update for a client that replaces it); ReferenceGrants have no status.
WRITE_STATUS = {(GATEWAY_GROUP, f"{r}/status")
                for r in ("gatewayclasses", "gateways", "tcproutes", "udproutes")}


def test_cluster_role_reads_what_the_agent_reads_and_writes_only_gateway_status():
    (role,) = by_kind("ClusterRole")
    read, written = set(), set()
    for rule in role["rules"]:
        assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "*" not in rule["verbs"] and "resourceNames" not in rule
        pairs = {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
        if sorted(rule["verbs"]) == ["get", "list", "watch"]:
            read |= pairs
        else:
            assert sorted(rule["verbs"]) == ["patch", "update"], rule
            assert all(r.endswith("/status") for _, r in pairs), rule  # never a spec
            written |= pairs
    assert read == READ
    assert written == WRITE_STATUS


def test_the_role_covers_what_the_source_and_the_writer_ask_for():
    """The resources the code reads and writes are the ones the ClusterRole names."""
    from ebpflb.sources.gateway_status_writer import PLURALS
    from ebpflb.sources.kubernetes import GATEWAY_RESOURCES

    read = {(GATEWAY_GROUP, r.plural) for r in GATEWAY_RESOURCES if r.custom}
    assert read | {("", "namespaces")} <= READ
    assert {(GATEWAY_GROUP, f"{p}/status") for p in PLURALS.values()} == WRITE_STATUS


def test_binding_names_the_service_account_the_daemonset_uses():
    (binding,) = by_kind("ClusterRoleBinding")
    (sa,) = by_kind("ServiceAccount")
    (ds,) = by_kind("DaemonSet")
    (ns,) = by_kind("Namespace")
    assert binding["roleRef"]["name"] == by_kind("ClusterRole")[0]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert ds["metadata"]["namespace"] == sa["metadata"]["namespace"] == ns["metadata"]["name"]


def test_daemonset_has_what_the_agent_needs_and_no_more():
    (ds,) = by_kind("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["hostPID"] is True  # the stale-socket pass reaches pods' namespaces by their pids
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc.get("privileged") is not True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON",
                                              "SYS_PTRACE"}
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/sys/fs/bpf", "/lib/modules", "/usr/src", "/run/ebpflb/host-cgroup"}
    assert mounts["/lib/modules"]["readOnly"] and mounts["/usr/src"]["readOnly"]
    # The socket hooks attach to the node's cgroup v2 root, mounted read-only, not to the
    # container's own cgroup namespace.
    assert mounts["/run/ebpflb/host-cgroup"]["readOnly"]
    assert "--cgroup=/run/ebpflb/host-cgroup" in c["args"]
    assert not mounts["/sys/fs/bpf"].get("readOnly")
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert {volumes[m["name"]] for m in c["volumeMounts"]} == set(mounts) - {
        "/run/ebpflb/host-cgroup"} | {"/sys/fs/cgroup"}


def test_daemonset_args_are_options_the_agent_accepts():
    from ebpflb.cli import agent

    (ds,) = by_kind("DaemonSet")
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "agent"
    known = {o for p in agent.params for o in p.opts}
    for a in args[1:]:
        assert a.split("=", 1)[0] in known, f"unknown agent option {a}"
    health = next(a for a in args if a.startswith("--health-address="))
    port = int(health.rsplit(":", 1)[1])
    c = ds["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["port"] == c["readinessProbe"]["httpGet"]["port"] == port
    assert health.split("=", 1)[1].startswith("127.0.0.1:")


def test_dockerfile_is_debian_bookworm_with_bcc_and_iproute2():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM debian:bookworm" in text
    for pkg in ("python3-bpfcc", "iproute2"):
        assert pkg in text
