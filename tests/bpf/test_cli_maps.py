"""`ebpflb sync`, `sync --dry-run`, `service list` and `cleanup` against real pinned maps (no
programs attached: these commands only need the maps)."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from ..conftest import unique

pytestmark = pytest.mark.bpf

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "demo.yaml")


def ebpflb(*args, check=True):
    return subprocess.run([sys.executable, "-m", "ebpflb.cli", *args], capture_output=True,
                          text=True, timeout=120, check=check)


@pytest.fixture
def pin_dir(require_root):
    path = f"/sys/fs/bpf/{unique('ebpflb-cli-')}"
    yield path
    ebpflb("cleanup", "--yes", "--pin-dir", path, check=False)
    assert not os.path.exists(path)


def test_sync_list_dry_run_cleanup(pin_dir, tmp_path):
    r = ebpflb("service", "list", "--pin-dir", pin_dir, check=False)
    assert r.returncode == 1 and "no ebpflb data plane pinned" in r.stderr
    assert not os.path.exists(pin_dir), "a read-only command must not create pins"

    plan = json.loads(ebpflb("sync", "--manifests", EXAMPLES, "--dry-run", "-o", "json",
                             "--pin-dir", pin_dir).stdout)
    assert plan["dry_run"] and plan["writes"] == 26  # 18 records, 8 counter resets
    assert not os.path.exists(pin_dir)

    assert "wrote 26 map entries" in ebpflb("sync", "--manifests", EXAMPLES, "--pin-dir", pin_dir).stdout
    views = json.loads(ebpflb("service", "list", "-o", "json", "--pin-dir", pin_dir).stdout)["services"]
    assert {v["frontend"]: [b["address"] for b in v["backends"]] for v in views} == {
        "10.96.0.10:80/TCP": ["10.244.0.11", "10.244.0.12", "10.244.0.13"],
        "10.96.0.20:53/UDP": ["10.244.0.11", "10.244.0.12", "10.244.0.13"]}
    assert {v["service"] for v in views} == {"demo/web:http", "demo/echo:udp-echo"}

    assert ebpflb("sync", "--manifests", EXAMPLES, "--dry-run", "--pin-dir", pin_dir).stdout.startswith("no changes")

    # web-2 becomes not ready in both slices: the dry run shows the writes and changes nothing.
    docs = yaml.safe_load(open(EXAMPLES))  # a kind: List, as kubectl prints it
    for item in docs["items"]:
        for ep in item.get("endpoints") or []:
            if ep["addresses"] == ["10.244.0.12"]:
                ep["conditions"]["ready"] = False
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(docs))
    out = ebpflb("sync", "--manifests", str(edited), "--dry-run", "--pin-dir", pin_dir).stdout
    assert "- lb4_backends" in out and "~ lb4_services 10.96.0.10:80/TCP" in out
    after = json.loads(ebpflb("service", "list", "-o", "json", "--pin-dir", pin_dir).stdout)["services"]
    assert after == views

    r = ebpflb("cleanup", "--yes", "--pin-dir", pin_dir)
    assert "removed" in r.stdout and not os.path.exists(pin_dir)


def test_sync_refuses_bad_manifests_and_writes_nothing(pin_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n")
    r = ebpflb("sync", "--manifests", str(bad), "--pin-dir", pin_dir, check=False)
    assert r.returncode == 1
    assert "Service default/x: spec.clusterIP" in r.stderr
    assert not os.path.exists(pin_dir)


def test_cleanup_removes_the_agent_status_file(pin_dir):
    from ebpflb.status import status_path, write_status

    ebpflb("sync", "--manifests", EXAMPLES, "--pin-dir", pin_dir)
    write_status(pin_dir, {"skipped": []})  # as an agent killed before it could clean up leaves it
    r = ebpflb("cleanup", "--yes", "--pin-dir", pin_dir)
    assert f"removed {status_path(pin_dir)}" in r.stdout
    assert not os.path.exists(status_path(pin_dir))


# The JSON shape of each command that reads the maps: key -> type, checked on real output (the
# schemas docs/operations.md documents).
SERVICE_LIST = {"services": list, "skipped": (list, type(None)), "node_devices": (list, type(None)),
                "health_check_ports": (list, type(None))}
SERVICE_VIEW = {"id": int, "frontend": str, "vip": str, "port": int, "protocol": str,
                "service": str, "kind": str, "algorithm": str, "slots": int, "backends": list,
                "problems": list, "external_local": bool, "source_ranges": (list, type(None)),
                "scope": str, "draining": bool, "topology": str, "no_endpoint": str,
                "reject_slots": int}
BACKEND_VIEW = {"id": int, "address": str, "port": int, "slots": int}
STATS_ROW = {"frontend": str, "service": str, "backends": list}


def shaped(doc, schema):
    assert set(doc) == set(schema), set(doc) ^ set(schema)
    for key, kind in schema.items():
        assert isinstance(doc[key], kind), (key, doc[key])


def test_output_shapes_filters_and_formats(pin_dir):
    from ebpflb.status import write_status

    ebpflb("sync", "--manifests", EXAMPLES, "--pin-dir", pin_dir)
    plain = json.loads(ebpflb("service", "list", "-o", "json", "--pin-dir", pin_dir).stdout)
    shaped(plain, SERVICE_LIST)
    assert plain["skipped"] is None
    for view in plain["services"]:
        shaped(view, SERVICE_VIEW)
        for backend in view["backends"]:
            shaped(backend, BACKEND_VIEW)
    # --all keeps the shape, filling what the agent's status adds.
    write_status(pin_dir, {"skipped": [{"service": "demo/gone", "reason": "ExternalName"}],
                           "node_devices": [], "health_check_ports": []})
    full = json.loads(ebpflb("service", "list", "--all", "-o", "json", "--pin-dir", pin_dir).stdout)
    shaped(full, SERVICE_LIST)
    assert full["services"] == plain["services"] and full["skipped"][0]["service"] == "demo/gone"
    # YAML is the same document.
    assert yaml.safe_load(ebpflb("service", "list", "-o", "yaml", "--pin-dir", pin_dir).stdout) == plain
    # Filters: a Service, a Service port; get fails for what is not there.
    one = json.loads(ebpflb("service", "list", "demo/web", "-o", "json", "--pin-dir", pin_dir).stdout)
    assert [v["service"] for v in one["services"]] == ["demo/web:http"]
    port = json.loads(ebpflb("service", "get", "demo/echo:udp-echo", "-o", "json", "--pin-dir",
                             pin_dir).stdout)
    assert [v["frontend"] for v in port["services"]] == ["10.96.0.20:53/UDP"]
    r = ebpflb("service", "get", "demo/nosuch", "--pin-dir", pin_dir, check=False)
    assert r.returncode == 1 and "service demo/nosuch is not programmed" in r.stderr
    r = ebpflb("service", "list", "web", "--pin-dir", pin_dir, check=False)
    assert r.returncode == 2 and "is not NS/NAME" in r.stderr
    wide = ebpflb("service", "list", "-o", "wide", "--pin-dir", pin_dir).stdout
    assert wide.splitlines()[0].split()[4:7] == ["ALGORITHM", "SLOTS", "SCOPE"]
    rows = json.loads(ebpflb("stats", "--service", "demo/echo", "-o", "json", "--pin-dir",
                             pin_dir).stdout)
    assert [r["service"] for r in rows] == ["demo/echo:udp-echo"]
    shaped({k: rows[0][k] for k in STATS_ROW}, STATS_ROW)
