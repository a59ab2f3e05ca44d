"""The kind suite: a real Kubernetes cluster (kind, kube-proxy disabled), the ebpflb image built
and loaded, the DaemonSet from deploy/ applied, real pods behind real Services, and ClusterIP and
NodePort traffic checked from a pod and from a node; the cluster is deleted afterwards.

It needs docker (a working engine, not just the client), kind and kubectl, and it is SKIPPED with
the reason where any is missing (this development machine has no container engine). Run it with
`pytest -m kind tests/kind` (docs/kubernetes.md; the Vagrantfile builds a VM that has all three).
Set EBPFLB_KIND_KEEP=1 to keep the cluster for debugging.
"""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kind

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLUSTER = "ebpflb"
IMAGE = "ebpflb:dev"
NS = "ebpflb-e2e"


def _missing_requirement():
    """Why the suite cannot run here (every reason), or None."""
    reasons = [f"`{tool}` is not installed" for tool in ("docker", "kind", "kubectl")
               if shutil.which(tool) is None]
    if shutil.which("docker") is not None:
        try:
            r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["no output"])[-1]
                reasons.insert(0, f"no container engine: `docker info` failed ({last})")
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.insert(0, f"no container engine: `docker info` failed: {exc}")
    return "; ".join(reasons) or None


def run(*argv, check=True, timeout=600, **kw):
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def kubectl(*argv, **kw):
    return run("kubectl", "--context", f"kind-{CLUSTER}", *argv, **kw)


@pytest.fixture(scope="module")
def cluster():
    reason = _missing_requirement()
    if reason:
        pytest.skip(f"kind suite needs docker, kind and kubectl: {reason}")
    run("kind", "create", "cluster", "--name", CLUSTER, "--config", str(HERE / "kind-config.yaml"),
        "--wait", "120s", timeout=900)
    try:
        run("docker", "build", "-f", str(REPO / "deploy" / "Dockerfile"), "-t", IMAGE, str(REPO),
            timeout=1800)
        run("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)
        nodes = run("kind", "get", "nodes", "--name", CLUSTER).stdout.split()
        for n in nodes:
            # bpffs on every node (kind nodes are containers: mount it inside each) and the
            # kernel-header fallback the agent needs when the host kernel ships none.
            run("docker", "exec", n, "sh", "-c",
                "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf")
        for f in ("namespace.yaml", "rbac.yaml", "daemonset.yaml"):
            kubectl("apply", "-f", str(REPO / "deploy" / f))
        # The agent talks to the API server directly (no kube-proxy for the kubernetes VIP).
        kubectl("-n", "ebpflb-system", "set", "env", "daemonset/ebpflb",
                f"KUBERNETES_SERVICE_HOST={CLUSTER}-control-plane", "KUBERNETES_SERVICE_PORT=6443")
        kubectl("-n", "ebpflb-system", "rollout", "status", "daemonset/ebpflb", "--timeout=300s",
                timeout=360)
        kubectl("apply", "-f", str(HERE / "workloads.yaml"))
        kubectl("-n", NS, "rollout", "status", "deployment/web", "--timeout=300s", timeout=360)
        kubectl("-n", NS, "wait", "--for=condition=Ready", "pod/client", "--timeout=300s",
                timeout=360)
        yield nodes
    finally:
        if not os.environ.get("EBPFLB_KIND_KEEP"):
            run("kind", "delete", "cluster", "--name", CLUSTER, check=False)


def pod_names():
    out = kubectl("-n", NS, "get", "pods", "-l", "app=web", "-o",
                  "jsonpath={.items[*].metadata.name}").stdout
    return set(out.split())


def test_clusterip_from_a_pod_reaches_every_ready_pod(cluster):
    vip = kubectl("-n", NS, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and seen != pod_names():
        r = kubectl("-n", NS, "exec", "client", "--", "curl", "-sS", "--max-time", "3",
                    f"http://{vip}/hostname", check=False)
        if r.returncode == 0:
            seen.add(r.stdout.strip())
    assert seen == pod_names()


def test_clusterip_follows_a_scale_down(cluster):
    kubectl("-n", NS, "scale", "deployment/web", "--replicas=1")
    kubectl("-n", NS, "rollout", "status", "deployment/web", "--timeout=120s")
    time.sleep(5)  # the endpoints controller, the watch and the agent's poll
    vip = kubectl("-n", NS, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    answers = {kubectl("-n", NS, "exec", "client", "--", "curl", "-sS", "--max-time", "3",
                       f"http://{vip}/hostname").stdout.strip() for _ in range(10)}
    assert answers == pod_names()


@pytest.mark.xfail(reason="NodePort is not implemented yet: ebpflb programs ClusterIP frontends "
                          "only (model.desired_state); remove this mark when NodePort lands",
                   strict=False)
def test_nodeport_from_a_node(cluster):
    node = cluster[0]
    r = run("docker", "exec", node, "curl", "-sS", "--max-time", "3",
            "http://127.0.0.1:30080/hostname", check=False)
    assert r.returncode == 0 and r.stdout.strip() in pod_names()
