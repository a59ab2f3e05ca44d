"""The pure parts of connect-time load balancing: which sockets the agent closes when a backend
leaves (from lb4_sock_nat records), where cgroup v2 is mounted, and `explain --socket` for the
cases that need no kernel (the translated ones are checked against the real hooks in
tests/bpf/test_socket_lb.py)."""
import pytest

from ebpflb.dataplane.sock_attach import CgroupError, cgroup2_root, check_cgroup
from ebpflb.dataplane.stale_sockets import SockRecord, Target, stale_targets
from ebpflb.explain import AffinityView
from ebpflb.explain_socket import (PACKET_PATH, REFUSED, TRANSLATED, UNTOUCHED, explain_socket,
                                   packet_path_note)
from ebpflb.maps import (SVC_F_DRAINING, SVC_F_DROP_EMPTY, SVC_F_SRC_RANGES, BackendValue, Records, SvcKey,
                         SvcValue)

pytestmark = pytest.mark.unit


def test_stale_targets_pick_the_sockets_sent_to_a_removed_backend():
    records = [SockRecord(1, 17, "10.244.0.11", 9053, svc_id=3),  # the removed UDP backend
               SockRecord(2, 17, "10.244.0.12", 9053, svc_id=3),  # another backend: kept
               SockRecord(3, 17, "10.244.0.11", 9053, svc_id=4),  # same pod, another Service
               SockRecord(4, 6, "10.244.0.11", 8080, svc_id=5),   # a TCP backend removed
               SockRecord(5, 6, "10.244.0.20", 80, svc_id=9)]     # through a removed frontend
    got = stale_targets(records, svc_ids=[9], udp_backends=[(3, "10.244.0.11", 9053)],
                        tcp_backends=[(5, "10.244.0.11", 8080)])
    assert got == {1: Target(1, 17, "10.244.0.11", 9053), 4: Target(4, 6, "10.244.0.11", 8080),
                   5: Target(5, 6, "10.244.0.20", 80)}
    # A UDP backend removal does not name a TCP socket to the same address and port.
    assert stale_targets([SockRecord(6, 6, "10.244.0.11", 9053, svc_id=3)], [],
                         [(3, "10.244.0.11", 9053)], []) == {}


def test_cgroup2_root_is_read_from_the_mount_table(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"
                      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n")
    assert cgroup2_root(str(mounts)) == "/sys/fs/cgroup/unified"
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n")
    assert cgroup2_root(str(mounts)) is None
    assert cgroup2_root(str(tmp_path / "absent")) is None


def test_a_directory_that_is_no_cgroup_v2_is_refused(tmp_path):
    with pytest.raises(CgroupError, match="not a cgroup v2 directory"):
        check_cgroup(str(tmp_path))
    (tmp_path / "cgroup.procs").write_text("")
    assert check_cgroup(str(tmp_path)) == str(tmp_path)
    (tmp_path / "tasks").write_text("")  # a cgroup v1 directory has both
    with pytest.raises(CgroupError):
        check_cgroup(str(tmp_path))


def snapshot(flags=0, count=2, affinity=0):
    key = SvcKey("10.96.0.10", 80, 6)
    return Records(services={key: SvcValue(1, count, flags, affinity)},
                   slots={1: (11, 12)[:count]},
                   backends={11: BackendValue("10.244.0.11", 8080, 6, 1),
                             12: BackendValue("10.244.0.12", 8080, 6, 1)},
                   meta={1: "demo/web:80"})


@pytest.mark.parametrize("snap,mode,host,verdict", [
    (snapshot(), "all", False, TRANSLATED),
    (snapshot(), "off", True, PACKET_PATH),
    (snapshot(), "host-only", False, PACKET_PATH),
    (snapshot(), "host-only", True, TRANSLATED),
    (snapshot(flags=SVC_F_DRAINING), "all", False, UNTOUCHED),
    (snapshot(flags=SVC_F_SRC_RANGES), "all", True, PACKET_PATH),
    (snapshot(count=0), "all", False, REFUSED),
    (snapshot(count=0, flags=SVC_F_DROP_EMPTY), "all", False, PACKET_PATH),
])
def test_explain_socket_verdicts(snap, mode, host, verdict):
    e = explain_socket(snap, "10.96.0.10", 80, 6, mode, host)
    assert e.verdict == verdict, e.reason
    if verdict == TRANSLATED:
        assert e.candidates == ("10.244.0.11:8080", "10.244.0.12:8080")


def test_explain_socket_not_a_frontend_and_affinity():
    assert explain_socket(snapshot(), "10.96.0.10", 81, 6, "all", False).verdict == UNTOUCHED
    e = explain_socket(snapshot(affinity=60), "10.96.0.10", 80, 6, "all", False, cookie=99,
                       affinity=AffinityView(12, 5.0))
    assert (e.verdict, e.backend) == (TRANSLATED, "10.244.0.12:8080")
    stale = explain_socket(snapshot(affinity=60), "10.96.0.10", 80, 6, "all", False, cookie=99,
                           affinity=AffinityView(12, 61.0))
    assert stale.hash is not None  # an expired binding: the cookie's slot decides


def test_packet_path_note_only_where_the_hooks_could_have_taken_the_socket():
    assert "explain --socket pod" in packet_path_note("all", outside=False, frontend=True)
    assert "explain --socket host" in packet_path_note("host-only", outside=False, frontend=True)
    assert packet_path_note("off", outside=False, frontend=True) is None
    assert packet_path_note("all", outside=True, frontend=True) is None  # from outside: no socket
    assert packet_path_note("all", outside=False, frontend=False) is None
