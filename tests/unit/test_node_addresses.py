"""Where the agent serves NodePorts: the node devices' addresses unless --node-address names them,
filtered by --nodeport-addresses; a change of address replans without a source change (pure: the
agent's decision, no kernel)."""
import pytest

from ebpflb.agent import Agent, AgentOptions
from ebpflb.model import EndpointSlice, Service, ServicePort

pytestmark = pytest.mark.unit


class OneShotSource:
    """Yields its manifests once, then reports no change, like an unchanged file."""
    description = "test source"
    changed_at = None

    def __init__(self, manifests):
        self.manifests = manifests

    def poll(self):
        out, self.manifests = self.manifests, None
        return out


class Manifests:
    def __init__(self):
        self.services = [Service("demo", "web", "NodePort", ("10.96.0.10",),
                                 (ServicePort("http", "TCP", 80, 8080, 30080),))]
        self.slices: list = []


def agent(**options) -> Agent:
    class Config:
        pin_dir = "/sys/fs/bpf/ebpflb-unit-never-created"
        map_limits: dict = {}
    return Agent(OneShotSource(Manifests()), Config(), AgentOptions(devices=["lxc*"], **options))


def test_node_devices_addresses_filtered_by_nodeport_addresses():
    a = agent(nodeport_cidrs=("192.168.200.0/24",))
    a.node_addresses_changed(["10.0.2.15", "192.168.200.10"])
    assert a._node_addresses == ("192.168.200.10",)
    assert a._replan


def test_explicit_node_addresses_win_over_devices():
    a = agent(node_addresses=("192.168.200.99",))
    a.node_addresses_changed(["192.168.200.10"])
    assert a._node_addresses == ("192.168.200.99",) and not a._replan


def test_unchanged_addresses_do_not_replan():
    a = agent()
    a.node_addresses_changed(["192.168.200.10"])
    a._replan = False
    a.node_addresses_changed(["192.168.200.10"])
    assert not a._replan


def test_address_change_replans_the_last_good_source_state(monkeypatch):
    """The first sync programs NodePorts on the address found then; a new address replans from the
    same manifests although the source reports no change."""
    import ebpflb.agent as agent_mod

    programmed = []

    def fake_reconcile(desired, writer, limits, current=None, defaults=None):
        programmed.append(sorted(str(fe) for fe in desired.frontends if fe.kind == "NodePort"))

        class Result:
            snapshot: dict = {"lb4_services": {}}
            applied = True
            plan: list = []
        return Result()

    monkeypatch.setattr(agent_mod, "reconcile", fake_reconcile)
    monkeypatch.setattr(agent_mod, "conntrack_purge", lambda plan, remaining=None: None)
    a = agent()
    monkeypatch.setattr(a, "_write_status", lambda: None)
    a.node_addresses_changed(["192.168.200.10"])
    a.sync(writer=None)
    assert programmed == [["192.168.200.10:30080/TCP"]]
    a.sync(writer=None)  # nothing changed: nothing planned
    assert len(programmed) == 1
    a.node_addresses_changed(["192.168.200.20"])
    a.sync(writer=None)
    assert programmed[-1] == ["192.168.200.20:30080/TCP"]


def test_snat_ports_overlapping_the_ephemeral_range_are_warned(tmp_path, caplog):
    from ebpflb.agent import _warn_snat_overlap

    sysctl = tmp_path / "ip_local_port_range"
    sysctl.write_text("32768\t60999\n")
    assert not _warn_snat_overlap((1024, 29999), str(sysctl))
    assert _warn_snat_overlap((32768, 65535), str(sysctl))
    assert "ip_local_port_range 32768-60999" in caplog.text


def test_snat_ports_must_not_overlap_node_ports():
    from ebpflb.dataplane.config import DataplaneConfig

    with pytest.raises(ValueError, match="overlap the NodePort range 30000-32767"):
        DataplaneConfig(snat_ports=(29000, 30500))
    assert DataplaneConfig().snat_ports == (1024, 29999)
