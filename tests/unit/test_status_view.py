"""`ebpflb status`'s view from made-up facts: what the owning agent's status file says, each
map's fill, the devices, and every warning. Against real agents: tests/lab/test_ownership.py."""
import pytest

from ebpflb.status_view import DP_FLAGS, build, render

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
MAPS = [{"map": "lb4_services", "entries": 2, "max": 100, "lru": False},
        {"map": "lb_stats", "entries": None, "max": 27, "lru": False}]
DEVICES = [{"device": "lxcweb-1", "ifindex": 4, "tc": ["ingress", "egress"], "xdp": None,
            "xdp_program": None},
           {"device": "eth0", "ifindex": 2, "tc": ["ingress"], "xdp": "native",
            "xdp_program": "lb4_node_xdp"}]


def status(**over):
    st = {"pid": 42, "version": "0.1.0", "started": NOW - 125, "source": "manifests /m",
          "ready": True, "problems": [], "syncs": 3, "rejected": 0, "last_error": None,
          "last_sync": {"kind": "incremental", "reason": "", "services": 1, "writes": 4,
                        "ms": 1.0, "time": NOW - 10},
          "skipped": [{"service": "a/b", "reason": "x"}], "refused": [], "repairs": {"pins": 1},
          "socket_lb": {"mode": "all", "cgroup": "/cg"}, "unmatched_devices": []}
    st.update(over)
    return st


def test_a_healthy_agent():
    view = build("/pins", 42, status(), MAPS, DEVICES, {"cgroup": "/cg", "hooks": ["lb4_connect"]}, NOW)
    assert view["warnings"] == []
    agent = view["agent"]
    assert (agent["pid"], agent["uptime_s"], agent["ready"], agent["skipped"]) == (42, 125.0, True, 1)
    assert view["maps"][0]["fill"] == 0.02 and view["maps"][1]["fill"] is None
    text = render(view, NOW)
    assert "Agent       pid 42, ebpflb 0.1.0, up 2m05s, ready" in text
    assert "last sync incremental, 4 writes, 10s ago" in text
    assert "lxcweb-1 (tc)" in text and "eth0 (xdp native, tc ingress only)" in text
    assert "Repairs     pins 1" in text and "Warnings" not in text


def test_no_agent_and_missing_maps():
    maps = MAPS + [{"map": "ct4", "missing": True}]
    view = build("/pins", None, None, maps, [], None, NOW)
    assert view["agent"] is None and view["pinned"] is False
    assert view["warnings"] == [
        "no agent owns this data plane: it serves what was last programmed, and nothing follows "
        "changes",
        "map ct4 is not pinned",
        "no device of this network namespace runs the programs (a lab node: --netns)"]
    assert "Agent       none" in render(view, NOW) and "not pinned" in render(view, NOW)


def test_an_agent_that_is_not_ready_and_more():
    st = status(ready=False, problems=["node device eth9 not found"], last_error="boom",
                refused=["f.yaml:3: Service a/b: spec.ports[0].port: 0 is not a port"],
                unmatched_devices=["--node-device eth9"])
    view = build("/pins", 42, st, MAPS, DEVICES, {"cgroup": "/cg", "hooks": []}, NOW)
    assert view["warnings"] == [
        "the agent is not ready: node device eth9 not found",
        "the last sync did not program everything: boom",
        "1 objects refused by the source, first: f.yaml:3: Service a/b: spec.ports[0].port: 0 is "
        "not a port",
        "--node-device eth9 matches no device",
        "socket load balancing is all but no hook is attached to /cg"]


def test_a_status_file_of_another_process_is_not_trusted():
    view = build("/pins", 43, status(), MAPS, DEVICES, None, NOW)
    assert view["agent"]["pid"] == 43 and view["agent"]["ready"] is None
    assert view["warnings"][0].startswith("the agent (pid 43) has not written its status file")
    assert "state unknown" in render(view, NOW)


def test_full_maps_say_what_happens():
    maps = [{"map": "ct4", "entries": 95, "max": 100, "lru": True},
            {"map": "lb4_services", "entries": 90, "max": 100, "lru": False},
            {"map": "lb4_backends", "entries": 89, "max": 100, "lru": False}]
    warnings = build("/pins", 42, status(), maps, DEVICES, None, NOW)["warnings"]
    assert warnings == [
        "ct4 holds 95 of 100 entries: the least recently used entries are evicted; raise its "
        "size (ebpflb agent --help)",
        "lb4_services holds 90 of 100 entries: new entries are refused; raise its size "
        "(ebpflb agent --help)"]


def test_a_takeover_incomplete_and_flags_left_to_netfilter_are_warned_about():
    takeover = {"found": ["iptables-legacy IPv4 nat: 3 jumps, 88 chains (239 rules)"],
                "imported": 9, "handed_over": 8, "kept": {"SNATed": 1}, "removed": [],
                "failed": ["removing iptables-legacy IPv4 nat: iptables-restore: line 3 failed"]}
    view = build("/pins", 42, status(takeover=takeover), MAPS, DEVICES, None, NOW,
                 dp_flags=DP_FLAGS["netfilter_grace"])
    assert view["agent"]["takeover"] == takeover and view["dp_flags"] == ["netfilter_grace"]
    assert any("takeover from kube-proxy is incomplete: removing iptables-legacy" in w
               for w in view["warnings"])
    assert any("leave flows to netfilter (netfilter_grace)" in w for w in view["warnings"])
    text = render(view, NOW)
    assert "Takeover    from kube-proxy: 9 flows imported, 8 handed over, 1 kept with " \
           "netfilter, 0 rule tables removed, INCOMPLETE" in text
    quiet = build("/pins", 42, status(), MAPS, DEVICES, None, NOW, dp_flags=0)
    assert quiet["dp_flags"] == [] and not any("netfilter" in w for w in quiet["warnings"])
