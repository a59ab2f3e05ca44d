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
    views = json.loads(ebpflb("service", "list", "-o", "json", "--pin-dir", pin_dir).stdout)
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
    after = json.loads(ebpflb("service", "list", "-o", "json", "--pin-dir", pin_dir).stdout)
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
