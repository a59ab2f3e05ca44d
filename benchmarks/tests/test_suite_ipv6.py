"""The suite's IPv6 measure (issue 16), the parts that check without a run: the dual-stack
Services it generates (IPv6 cluster IPs unique and inside the lab's IPv6 Service range, an
EndpointSlice per family, read by ebpflb's own manifest path), the load client's targets of
both families, and the report with and without the IPv6 modes (older results render n/a)."""
import ipaddress
import json
import shutil
import subprocess

import pytest

from ebpflb.lab import kubeproxy_rules as kp
from benchmarks.suite import modes as md
from benchmarks.suite import report
from benchmarks.suite import run

pytestmark = pytest.mark.unit

WEB = ["10.244.0.11", "10.244.0.12", "10.244.0.13", "10.244.0.14"]
WEB6 = ["fd00:10:244::b", "fd00:10:244::c", "fd00:10:244::d", "fd00:10:244::e"]


def dual(n):
    return kp.make_services(n, WEB, 8081, pod_ips6=WEB6)


def test_ipv6_range_is_the_labs():
    from ebpflb.lab import topology

    assert kp.SERVICE_CIDR6 == topology.SERVICE_CIDR6
    assert [topology.pod_ip6(ip) for ip in WEB] == WEB6


def test_ipv6_cluster_ips_unique_in_range_and_the_labs_twins():
    from ebpflb.lab.family import ipv6_twin

    svcs = dual(10000)
    net = ipaddress.IPv6Network(kp.SERVICE_CIDR6)
    vips6 = [s.vip6 for s in svcs]
    assert len(set(vips6)) == 10000
    assert all(ipaddress.IPv6Address(v) in net for v in vips6)
    # Numbered as the lab numbers the twins of its IPv4 cluster IPs, so the twins of 10.96.0.x
    # (demo and test VIPs) stay free here as they do in IPv4.
    assert all(s.vip6 == ipv6_twin(s.vip) for s in svcs[::97] + [svcs[-1]])
    assert not any(int(ipaddress.IPv6Address(v)) & 0xFFFF < 0x100 for v in vips6)
    # Each IPv6 endpoint is the same pod as the IPv4 one beside it.
    for s in svcs[:8]:
        assert [ip6 for ip6, _ in s.endpoints6] == [WEB6[WEB.index(ip)] for ip, _ in s.endpoints]
        assert {p for _, p in s.endpoints6} == {8081}


def test_make_services_ipv4_only_unchanged():
    svcs = kp.make_services(3, WEB, 8081)
    assert all(s.vip6 is None and s.endpoints6 == () for s in svcs)


def test_make_services_refuses_mismatched_ipv6_list():
    with pytest.raises(ValueError, match="pod_ips6: 2 addresses for 4 pods"):
        kp.make_services(3, WEB, 8081, pod_ips6=WEB6[:2])


def test_dual_stack_manifest_shape():
    doc = json.loads(kp.manifests(dual(3)))
    services = [i for i in doc["items"] if i["kind"] == "Service"]
    slices = [i for i in doc["items"] if i["kind"] == "EndpointSlice"]
    assert len(services) == 3 and len(slices) == 6
    for svc in services:
        spec = svc["spec"]
        assert spec["ipFamilies"] == ["IPv4", "IPv6"]
        assert spec["ipFamilyPolicy"] == "RequireDualStack"
        assert spec["clusterIP"] == spec["clusterIPs"][0]
        assert ipaddress.ip_address(spec["clusterIPs"][1]).version == 6
        mine = [s for s in slices
                if s["metadata"]["labels"]["kubernetes.io/service-name"] == svc["metadata"]["name"]]
        assert sorted(s["addressType"] for s in mine) == ["IPv4", "IPv6"]
        assert len({s["metadata"]["name"] for s in mine}) == 2
        for s in mine:
            version = 4 if s["addressType"] == "IPv4" else 6
            assert all(ipaddress.ip_address(e["addresses"][0]).version == version
                       for e in s["endpoints"])


def test_ipv4_half_is_the_manifest_of_before():
    """The IPv4 modes' agent reads what it read before the IPv6 measure."""
    svcs = dual(3)
    v4_only = kp.make_services(3, WEB, 8081)
    assert kp.manifests(svcs, dual_stack=False) == kp.manifests(v4_only)
    assert "IPv6" not in kp.manifests(svcs, dual_stack=False)


def test_dual_stack_manifest_refuses_ipv6_vip_without_endpoints():
    s = kp.Svc("bench", "x", "http", "10.96.1.1", 80, (("10.244.0.11", 8081),), vip6="fd00:10:96::101")
    with pytest.raises(ValueError, match="endpoints6 empty"):
        kp.manifests([s])


def test_dual_stack_manifest_parses_to_frontends_of_both_families():
    from ebpflb.manifests import parse_documents
    from ebpflb.model import desired_state

    svcs = dual(5)
    m = parse_documents(kp.manifests(svcs), "bench.json")
    desired = desired_state(m.services, m.slices)
    got = {(fe.vip, fe.port): sorted((b.ip, b.port) for b in bes)
           for fe, bes in desired.frontends.items()}
    want = {(s.vip, 80): sorted(s.endpoints) for s in svcs}
    want.update({(s.vip6, 80): sorted(s.endpoints6) for s in svcs})
    assert got == want


def test_ipv6_agent_maps_sized_for_both_families(tmp_path):
    """Backend ids are one space for both families: the dual-stack agent at 10,000 Services
    needs more than the default, the IPv4 one keeps the default (and its memory figures)."""
    svcs = dual(10000)
    v4 = md.Ebpflb("ns", "lab", tmp_path, None, socket_lb="off", family=4)
    v6 = md.Ebpflb("ns", "lab", tmp_path, None, socket_lb="off", family=6)
    v4.load(svcs)
    v6.load(svcs)
    assert v4.max_backends is None
    assert v6.max_backends == 131072
    assert v4.manifest != v6.manifest
    assert "IPv6" not in v4.manifest.read_text() and "IPv6" in v6.manifest.read_text()
    assert v6.name == "ebpflb6"
    with pytest.raises(ValueError, match="family 5"):
        md.Ebpflb("ns", "lab", tmp_path, None, family=5)


def test_mode_targets_per_family():
    probe = dual(3)[-1]
    assert run.mode_targets(md.Direct("ns"), probe) == [f"{ip}:8081" for ip, _ in probe.endpoints]
    assert run.mode_targets(md.Direct6("ns"), probe) == [f"[{ip}]:8081" for ip in WEB6]

    class Vip6(md.Mode):
        family = 6

    assert run.mode_targets(Vip6("ns"), probe) == [f"[{probe.vip6}]:80"]
    assert run.mode_targets(md.Mode("ns"), probe) == [f"{probe.vip}:80"]
    with pytest.raises(RuntimeError, match="no IPv6 cluster IP"):
        run.mode_targets(Vip6("ns"), kp.make_services(1, WEB, 8081)[0])


def test_change_pair_drops_an_endpoint_of_each_family():
    less, full = run.change_pair(dual(1)[0])
    assert len(less.endpoints) == len(less.endpoints6) == 3
    assert full.endpoints6 == dual(1)[0].endpoints6


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the load client cannot be built")
    return md.build_loadgen(str(tmp_path_factory.mktemp("loadgen")))


@pytest.mark.parametrize("spec,error", [
    ("10.96.1.1", "expected a.b.c.d:port or [ipv6]:port"),
    ("fd00:10:96::101:80", "expected a.b.c.d:port or [ipv6]:port"),
    ("[fd00:10:96::101]80", "an IPv6 target is [address]:port"),
    ("[fd00:10:96::zz]:80", "fd00:10:96::zz is not an IPv6 address"),
    ("[10.96.1.1]:80", "10.96.1.1 is not an IPv6 address"),
    ("10.96.1.1.1:80", "is not an IPv4 address"),
    ("10.96.1.1:0", "port must be 1-65535"),
    ("[fd00::1]:70000", "port must be 1-65535"),
    ("[]:80", "address missing"),
])
def test_loadgen_refuses_bad_targets(loadgen, spec, error):
    """Parsing fails before any socket is opened: no traffic leaves."""
    r = subprocess.run([loadgen, "conn", "1", "1", "10.96.1.1:80", spec], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 2
    assert f"bad target {spec}: " in r.stderr and error in r.stderr


# ---- report, from synthetic results


def _client(rate, p50):
    return {"count": int(rate * 2), "errors": 0, "seconds": 2.0, "rate": rate, "p50_us": p50,
            "p90_us": p50 * 1.5, "p99_us": p50 * 3, "max_us": p50 * 10, "cpu": 0.5,
            "machine_busy": 0.9}


def _slot(rate, p50, verdicts=None):
    out = {"lat": _client(rate / 8, p50), "rate": _client(rate, p50 * 1.2),
           "keep": _client(rate * 5, p50 / 3)}
    if verdicts:
        out["verdicts"] = verdicts
    return out


def _results(with_v6: bool, scales=(100, 10000)):
    base = {"direct": (10000, 70), "ebpflb": (9000, 80), "ebpflb-sock": (9800, 72),
            "iptables": (7000, 95), "nftables": (9100, 78)}
    if with_v6:
        base.update({"direct6": (9500, 73), "ebpflb6": (8100, 84), "ebpflb-sock6": (9300, 75)})
    vd = {"socket_lb": 0, "dnat_new": 100, "no_backend": 0, "pass": 10}
    vs = {"socket_lb": 100, "dnat_new": 0, "no_backend": 0, "pass": 10}
    prog = {"frontends": 100, "writes": 1600, "ms": 10.0}
    mem = [{"rss_bytes": 100 << 20, "map_memlock_bytes": 200 << 20, "maps": 30, "startup_s": 4.0}]
    out = {"scales": {}, "meta": {
        "machine": {"nproc": 2, "cpu_model": "test", "kernel": "6.18"}, "nft": "nftables v1",
        "iptables_default": "iptables v1.8.9 (nf_tables)", "iptables_legacy": "iptables v1.8.9 (legacy)",
        "source": "git test", "reps": 2, "scales": list(scales), "conc": 16, "web_pods": 4,
        "durations_s": {"latency": 1.0, "rate": 2.0, "keepalive": 1.5, "warmup": 0.3},
        "iptables_nft_max_scale": 1000, "wall_s": 60.0, "measured": "2026-12-05T00:00:00Z"}}
    if with_v6:
        out["meta"]["ip_family"] = "dual"
    for n in scales:
        traffic = {}
        for mode, (rate, p50) in base.items():
            v = vs if "sock" in mode else vd if mode.startswith("ebpflb") else None
            traffic[mode] = [_slot(rate * k, p50 / k, v) for k in (0.95, 1.05)]
        sc = {"services": n, "endpoints_per_service": 4,
              "probe": {"vip": "10.96.1.1", "port": 80, "name": "bench/svc:http"},
              "traffic": traffic, "full": {"iptables": [0.1, 0.2], "nftables": [0.5]},
              "change": {"iptables": [0.01], "iptables_full_restore": [0.1], "nftables": [0.02],
                         "ebpflb": [{"frontends": 1, "writes": 5, "ms": 1.0}]},
              "ebpflb_full": [prog, prog], "agent_memory": mem,
              "agent_memory_after_changes": mem[0]}
        if with_v6:
            sc["probe"]["vip6"] = "fd00:10:96::101"
            sc["ebpflb6_full"] = [dict(prog, frontends=200, writes=3200, ms=15.0)]
            sc["agent_memory6"] = mem
        out["scales"][str(n)] = sc
    return out


def test_report_shows_ipv6_beside_ipv4_with_ratios():
    res = _results(with_v6=True)
    t, _ = report.traffic_table(res)
    text, g = report.v6_section(res, t)
    assert text.startswith(report.S_V6)
    # ebpflb6 / ebpflb conn/s: 8100 / 9000; direct6 / direct 0.95; ebpflb6 / direct6 8100 / 9500.
    assert g["ipv6"]["10000"]["ebpflb6_vs_ebpflb_rate"] == pytest.approx(0.9)
    assert g["ipv6"]["10000"]["direct6_vs_direct_rate"] == pytest.approx(0.95)
    assert g["ipv6"]["10000"]["ebpflb6_vs_direct6_rate"] == pytest.approx(8100 / 9500)
    ratio_rows = [l for l in text.splitlines() if l.startswith("| 10,000 | 0.900x")]
    assert len(ratio_rows) == 1
    for scale in ("100", "10,000"):
        assert f"| {scale} | ebpflb / ebpflb6 |" in text
        assert f"| {scale} | direct / direct6 |" in text
        assert f"| {scale} | dual-stack manifest (ebpflb6) | 200 | 3,200 |" in text
    assert "n/a" not in text.split("Ratios")[1].split("At 10,000")[0]
    # The IPv6 modes also appear in the main tables, and their verdict rows.
    conn, _ = report.conn_section(res, t)
    assert "| 10,000 | ebpflb6 |" in conn and "| 10,000 | ebpflb-sock6 |" in conn
    assert "[IPv6 beside IPv4](#suite-ipv6-beside-ipv4)" in conn
    assert "were retried\n(1.5 s, at most twice, before a slot fails): none." in conn
    res["scales"]["10000"]["traffic"]["ebpflb-sock6"][1]["warmup_retries"] = 1
    assert "fails): 10,000 ebpflb-sock6: 1." in report.conn_section(res, t)[0]


def test_report_of_results_without_ipv6_modes(capsys):
    """Results from before the IPv6 modes still render: the IPv6 figures are n/a."""
    res = _results(with_v6=False)
    t, _ = report.traffic_table(res)
    text, g = report.v6_section(res, t)
    assert "Not measured in this run" in text
    ratios = g["ipv6"]["10000"]
    assert all(v is None for k, v in ratios.items() if "6" in k)
    assert ratios["ebpflb_vs_direct_rate"] == pytest.approx(0.9)  # the IPv4 ones are there
    conn, _ = report.conn_section(res, t)
    assert "ebpflb6" not in conn
    out = report.publish(res, write=False)
    assert report.S_V6 in capsys.readouterr().out
    assert out["goals"]["ipv6"]["100"]["ebpflb6_vs_ebpflb_rate"] is None


def test_report_publishes_ipv6_section(capsys):
    report.publish(_results(with_v6=True), write=False)
    printed = capsys.readouterr().out
    assert printed.index(report.S_KEEP) < printed.index(report.S_V6) < printed.index(report.S_PROG)
