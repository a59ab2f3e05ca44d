"""Where the agent serves NodePorts: the node devices' addresses unless --node-address names them,
filtered by --nodeport-addresses; a change of address replans without a source change (pure: the
agent's decision, no kernel)."""
import pytest

from ebpflb.agent import Agent, AgentOptions
from ebpflb.changes import Change, ChangeBatch
from ebpflb.convert import SERVICE as SERVICE_KIND
from ebpflb.draining import is_draining
from ebpflb.maps import SERVICES, frontend_kind
from ebpflb.model import Service, ServicePort
from tests.helpers.dict_writer import DictWriter

pytestmark = pytest.mark.unit


class QuietSource:
    """A source whose state was read once and never changes."""
    description = "test source"
    synced = True

    def take(self):
        return ChangeBatch()

    def revision(self):
        return 0

    def problems(self):
        return []


SERVICE = Service("demo", "web", "NodePort", ("10.96.0.10",),
                  (ServicePort("http", "TCP", 80, 8080, 30080),))


def agent(**options) -> Agent:
    class Config:
        pin_dir = "/sys/fs/bpf/ebpflb-unit-never-created"
        map_limits: dict = {}
    a = Agent(QuietSource(), Config(), AgentOptions(devices=["lxc*"], **options))
    a.start_syncer(DictWriter())
    a.syncer.take([Change(SERVICE_KIND, ("demo", "web"), SERVICE)])
    return a


def node_ports(a: Agent):
    return sorted(str(k) + (" draining" if is_draining(v) else "")
                  for k, v in a.syncer.writer.dump(SERVICES).items()
                  if frontend_kind(v.flags) == "NodePort")


def test_node_devices_addresses_filtered_by_nodeport_addresses():
    a = agent(nodeport_cidrs=("192.168.200.0/24",))
    a.node_addresses_changed(["10.0.2.15", "192.168.200.10"])
    assert a._nodeport_addresses() == ("192.168.200.10",)
    a.sync()
    assert node_ports(a) == ["192.168.200.10:30080/TCP"]


def test_explicit_node_addresses_win_over_devices():
    a = agent(node_addresses=("192.168.200.99",))
    a.node_addresses_changed(["192.168.200.10"])
    assert a._node_addresses == ("192.168.200.99",)
    a.sync()
    assert node_ports(a) == ["192.168.200.99:30080/TCP"]


def test_unchanged_addresses_do_not_replan():
    a = agent()
    a.node_addresses_changed(["192.168.200.10"])
    a.sync()
    assert not a.syncer.pending
    a.node_addresses_changed(["192.168.200.10"])
    assert not a.syncer.pending and a.sync() is None


def test_address_change_replans_the_services_with_node_ports():
    """The first sync programs NodePorts on the address found then; a new address replans the
    Services with node ports, although the source reports no change."""
    a = agent()
    a.node_addresses_changed(["192.168.200.10"])
    a.sync()
    assert node_ports(a) == ["192.168.200.10:30080/TCP"]
    assert a.sync() is None  # nothing changed: nothing planned
    a.node_addresses_changed(["192.168.200.20"])
    outcome = a.sync()
    assert outcome.kind == "incremental" and outcome.services == 1
    # The old address's NodePort drains: connections open to it go on.
    assert node_ports(a) == ["192.168.200.10:30080/TCP draining", "192.168.200.20:30080/TCP"]


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


class NodeSource(QuietSource):
    """The API source's view of this node: its Node object, which a test changes."""
    node = None

    def own_node(self):
        return self.node


def node_object(*addresses, zone=None):
    labels = {"topology.kubernetes.io/zone": zone} if zone else {}
    return {"metadata": {"name": "node-1", "labels": labels},
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}


def test_primary_node_address_as_kube_proxy_picks_it():
    from ebpflb.node_info import primary_ipv4

    assert primary_ipv4(None) is None
    assert primary_ipv4(node_object(("Hostname", "n1"), ("ExternalIP", "203.0.113.5"),
                                    ("InternalIP", "fd00::5"), ("InternalIP", "192.168.200.11"),
                                    ("InternalIP", "192.168.200.12"))) == "192.168.200.11"
    assert primary_ipv4(node_object(("ExternalIP", "203.0.113.5"))) == "203.0.113.5"
    assert primary_ipv4(node_object(("InternalIP", "bogus"))) is None


def test_primary_addresses_are_one_per_family_as_kube_proxys_per_family_proxiers():
    from ebpflb.node_info import primary_addresses

    assert primary_addresses(None) == ()
    assert primary_addresses(node_object(
        ("ExternalIP", "2001:db8::5"), ("InternalIP", "fd00::5"), ("InternalIP", "fd00::6"),
        ("InternalIP", "192.168.200.11"))) == ("192.168.200.11", "fd00::5")
    assert primary_addresses(node_object(("ExternalIP", "2001:db8::5"))) == ("2001:db8::5",)


def test_nodeport_addresses_primary_follows_the_node():
    """--nodeport-addresses primary: the device addresses while no Node is known, then only the
    Node's primary address; the Node's zone label reaches the model too."""
    a = agent(nodeport_primary=True)
    source = NodeSource()
    a.source = source
    a.node_addresses_changed(["10.0.2.15", "192.168.200.11"])
    a.sync()
    assert node_ports(a) == ["10.0.2.15:30080/TCP", "192.168.200.11:30080/TCP"]
    source.node = node_object(("InternalIP", "192.168.200.11"), zone="zone-a")
    a.take_changes()
    a.sync()
    assert a._nodeport_addresses() == ("192.168.200.11",)
    assert a.syncer.model.ctx.node_zone == "zone-a"
    assert node_ports(a) == ["10.0.2.15:30080/TCP draining", "192.168.200.11:30080/TCP"]
