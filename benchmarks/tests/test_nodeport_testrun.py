"""benchmarks/nodeport_testrun.py and its report in benchmarks/nodeport.py, without a kernel:
the frames it builds and parses (both families), the check that refuses a row which did not do
what it is timed for, the frontends it programs, and the IPv6-beside-IPv4 table."""
import json

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from benchmarks import common, nodeport
from benchmarks import nodeport_testrun as tr

pytestmark = pytest.mark.unit

ME = "02:00:00:00:00:10"


@pytest.mark.parametrize("fam", tr.FAMILIES, ids=lambda f: f.name)
def test_frames_are_well_formed_and_parse_back(fam):
    raw = tr.frame((fam.client, 40000), fam.np_remote, tr.ACK, ME, tr.CLIENT_MAC, ttl=61)
    pkt = Ether(raw)
    layer = IPv6 if fam is tr.V6 else IP
    assert layer in pkt and TCP in pkt
    fresh = pkt.copy()
    del fresh[TCP].chksum
    if fam is tr.V4:
        del fresh[IP].chksum
    assert bytes(Ether(bytes(fresh))) == raw  # checksums right
    got = tr.parse(raw)
    assert (got["src"], got["dst"], got["ttl"]) == ((fam.client, 40000), fam.np_remote, 61)
    assert got["ip_csum_ok"] and got["tcp_csum_ok"] and got["dmac"] == ME


@pytest.mark.parametrize("fam", tr.FAMILIES, ids=lambda f: f.name)
def test_a_row_that_passed_its_packet_is_refused(fam):
    snat = (fam.node, 1500)
    want = tr._Expect(tr.frame((fam.client, 40002), fam.np_remote, tr.ACK, ME, tr.CLIENT_MAC),
                      dst=fam.remote_be, src=snat, forwarded=True, next_mac=tr.PEER_MAC)
    problems = tr._check(fam, "xdp", "remote_ct_hit", "single", want,
                         tr.Run(tr.XDP_PASS, want.input, 0), ME)
    assert any("verdict 2, expected 3" in p for p in problems)
    assert any("destination" in p for p in problems) and any("TTL" in p for p in problems)
    # The rewrite it should have made passes.
    out = bytearray(tr.frame(snat, fam.remote_be, tr.ACK, tr.PEER_MAC, ME, ttl=63))
    assert tr._check(fam, "xdp", "remote_ct_hit", "single", want,
                     tr.Run(tr.XDP_TX, bytes(out), 0), ME) == []
    # A checksum left stale is caught (a byte of payload changed, checksum not).
    out[-1] ^= 0xFF
    assert any("checksum" in p for p in tr._check(fam, "xdp", "remote_ct_hit", "single", want,
                                                  tr.Run(tr.XDP_TX, bytes(out), 0), ME))


def test_both_families_get_the_same_nodeports():
    state = tr.desired()
    by_family = {fam.name: sorted((f.port, tuple(b.key for b in bs))
                                  for f, bs in state.frontends.items() if (":" in f.vip) == (fam is tr.V6))
                 for fam in tr.FAMILIES}
    assert [p for p, _ in by_family["ipv4"]] == [p for p, _ in by_family["ipv6"]] == [30080, 30081, 30085, 30090]
    assert all(f.kind == "NodePort" for f in state.frontends)
    assert ((tr.V6.remote_be,) in [bs for _, bs in by_family["ipv6"]])


def _testrun(v4: float, v6: float) -> dict:
    rows = {method: {row: common.summary([v4]) for row, m in tr.ROWS if m == method}
            for method in ("steady", "single")}
    rows6 = {method: {row: common.summary([v6]) for row in r} for method, r in rows.items()}
    ratio = {method: {row: common.summary([v6 / v4]) for row in r} for method, r in rows.items()}
    return {"results": {"xdp": rows, "tc": json.loads(json.dumps(rows))},
            "results6": {"xdp": rows6, "tc": json.loads(json.dumps(rows6))},
            "ratio6": {"xdp": ratio, "tc": json.loads(json.dumps(ratio))}}


def test_ipv6_table_puts_each_row_beside_its_ipv4_twin_with_the_ratio():
    t = _testrun(100.0, 125.0)
    del t["results"]["xdp"]["single"]["local_reply"]  # XDP has no egress program
    lines = nodeport.ipv6_table(t)
    assert lines[0].startswith("| path | method | XDP IPv4 | XDP IPv6 | XDP IPv6 / IPv4 |")
    assert len(lines) == 2 + len(nodeport.TR_ROWS) + len(nodeport.REF_ROWS)
    hit = next(line for line in lines if line.startswith("| NodePort, backend on this node, conntrack hit: DNAT (ping-pong) | steady"))
    assert hit.count("100.0 (100.0–100.0)") == 2 and hit.count("125.0 (125.0–125.0)") == 2
    assert hit.count("1.25x (1.25–1.25)") == 2
    egress = next(line for line in lines if "lb6_node_out" in line)
    assert egress.split(" | ")[2:5] == ["—", "—", "—"]
    text = nodeport.ipv6_interpretation(t)
    assert "1.25x" in text and "+25 ns" in text


def test_the_saved_results_render_with_the_ipv6_rows():
    results = json.loads((common.RESULTS / nodeport.RESULTS_FILE).read_text())
    text = nodeport.publish(results, write=False)
    assert text.endswith("\n") and "**IPv6 beside IPv4.**" in text
    assert "| XDP IPv4 | XDP IPv6 | XDP IPv6 / IPv4 |" in text
    old = dict(results, testrun={k: v for k, v in results["testrun"].items()
                                 if k not in ("results6", "ratio6", "samples6")})
    assert "IPv6 beside IPv4" not in nodeport.publish(old, write=False)  # older results still render
