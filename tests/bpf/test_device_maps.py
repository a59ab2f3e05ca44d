"""The device-written maps (lb4_node_ifs, lb4_pod_addrs) go through plan and apply into real maps
(ebpflb.dataplane.device_maps), records packed in the compiled layouts: what is written reads
back, one device's part changes alone, and the rest of the map is left as it was."""
import pytest

from ebpflb.dataplane.device_maps import write_device_map
from ebpflb.maps import NODE_IFS, POD_ADDRS, NodeIfValue, PodAddrKey

from .conftest import maps_only

pytestmark = pytest.mark.bpf


def test_device_maps_write_through_apply_and_touch_only_their_part():
    with maps_only("ebpflb-devmaps-") as (_, writer):
        assert write_device_map(writer, NODE_IFS, {4: NodeIfValue("192.168.200.10"),
                                                   5: NodeIfValue("192.168.201.10")}) == 2
        assert writer.dump(NODE_IFS) == {4: NodeIfValue("192.168.200.10"),
                                         5: NodeIfValue("192.168.201.10")}
        # Device 4's address changes; device 5 is not this write's business.
        assert write_device_map(writer, NODE_IFS, {4: NodeIfValue("192.168.200.11")},
                                only=lambda key: key == 4) == 1
        assert writer.dump(NODE_IFS) == {4: NodeIfValue("192.168.200.11"),
                                         5: NodeIfValue("192.168.201.10")}
        assert write_device_map(writer, NODE_IFS, {}, only=lambda key: key == 5) == 1
        assert set(writer.dump(NODE_IFS)) == {4}

        pods = {PodAddrKey(7, "0.0.0.0"): 1, PodAddrKey(7, "10.244.0.5"): 1,
                PodAddrKey(8, "0.0.0.0"): 1, PodAddrKey(8, "10.244.0.9"): 1}
        write_device_map(writer, POD_ADDRS, pods)
        moved = {PodAddrKey(7, "0.0.0.0"): 1, PodAddrKey(7, "10.244.0.6"): 1}
        assert write_device_map(writer, POD_ADDRS, moved,
                                only=lambda key: key.ifindex == 7) == 2
        assert writer.dump(POD_ADDRS) == {**moved, PodAddrKey(8, "0.0.0.0"): 1,
                                          PodAddrKey(8, "10.244.0.9"): 1}
