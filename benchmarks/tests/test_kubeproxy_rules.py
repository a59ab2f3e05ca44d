"""The kube-proxy-shaped baselines of the benchmark suite (ebpflb/lab/kubeproxy_rules.py) have
kube-proxy's exact shape: chain names hashed as kube-proxy hashes them (checked against names
from kube-proxy's own tests), statistic probabilities as kube-proxy formats them, the masquerade
marks, and the nftables mode's verdict maps."""
import re

import pytest

from ebpflb.lab import kubeproxy_rules as kp

pytestmark = pytest.mark.unit

# The Service kube-proxy's proxier tests use throughout (ns1/svc1:p80, endpoint 10.180.0.1:80).
NS1 = kp.Svc("ns1", "svc1", "p80", "172.30.0.41", 80, (("10.180.0.1", 80),))


def test_chain_names_match_kube_proxy():
    assert kp.svc_chain(NS1) == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert kp.sep_chain(NS1, ("10.180.0.1", 80)) == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert kp.nft_service_chain(NS1) == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert kp.nft_endpoint_chain(NS1, ("10.180.0.1", 80)) == \
        "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


@pytest.mark.parametrize("n,expected", [(1, "1.0000000000"), (2, "0.5000000000"),
                                        (3, "0.3333333333"), (4, "0.2500000000"),
                                        (7, "0.1428571429")])
def test_probability_format(n, expected):
    assert kp.probability(n) == expected


def services(n=3):
    return kp.make_services(n, ["10.244.0.11", "10.244.0.12", "10.244.0.13", "10.244.0.14"], 8081)


def test_make_services_four_endpoints_distinct_vips():
    svcs = services(600)
    assert len({s.vip for s in svcs}) == 600
    assert all(len(s.endpoints) == 4 and len(set(s.endpoints)) == 4 for s in svcs)
    assert all(s.vip.startswith("10.96.") and not s.vip.startswith("10.96.0.") for s in svcs)


def test_iptables_shape():
    svcs = services(3)
    text = kp.iptables_restore(svcs)
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in lines
    assert '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING' in lines
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN" in lines
    assert "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000" in lines
    assert any(l.startswith("-A KUBE-POSTROUTING") and l.endswith("-j MASQUERADE --random-fully")
               for l in lines)
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000" in lines
    # KUBE-SERVICES: one rule per Service in order, the probed (last) Service last before the
    # nodeports rule, which must be the chain's last rule.
    svc_rules = [l for l in lines if l.startswith("-A KUBE-SERVICES")]
    assert len(svc_rules) == 4
    for svc, rule in zip(svcs, svc_rules):
        assert rule.endswith(f"-d {svc.vip}/32 --dport 80 -j {kp.svc_chain(svc)}")
        assert f'--comment "{svc.port_name_string} cluster IP"' in rule
    assert "--dst-type LOCAL -j KUBE-NODEPORTS" in svc_rules[-1]
    last = svcs[-1]
    chain = kp.svc_chain(last)
    body = [l for l in lines if l.startswith(f"-A {chain} ")]
    assert body[0].endswith(f"! -s {kp.CLUSTER_CIDR} -j KUBE-MARK-MASQ")
    jumps = body[1:]
    probs = [re.search(r"--probability (\S+)", l) for l in jumps]
    assert [p.group(1) if p else None for p in probs] == \
        ["0.2500000000", "0.3333333333", "0.5000000000", None]
    for ep, rule in zip(last.endpoints, jumps):
        assert "-m statistic --mode random" in rule or rule is jumps[-1]
        assert rule.endswith(f"-j {kp.sep_chain(last, ep)}")
        sep = [l for l in lines if l.startswith(f"-A {kp.sep_chain(last, ep)} ")]
        assert sep == [f"-A {kp.sep_chain(last, ep)} -m comment --comment {last.port_name_string} "
                       f"-s {ep[0]}/32 -j KUBE-MARK-MASQ",
                       f"-A {kp.sep_chain(last, ep)} -m comment --comment {last.port_name_string} "
                       f"-m tcp -p tcp -j DNAT --to-destination {ep[0]}:{ep[1]}"]
    # Every chain used is declared once.
    declared = [l[1:].split()[0] for l in lines if l.startswith(":")]
    assert len(declared) == len(set(declared)) == 4 + 3 * 5


def test_iptables_partial_sync():
    svcs = services(3)
    old = svcs[-1]
    new = kp.Svc(old.namespace, old.name, old.port_name, old.vip, old.port, old.endpoints[:3])
    text = kp.iptables_partial(svcs[:-1] + [new], old, new)
    lines = text.splitlines()
    assert f"-X {kp.sep_chain(old, old.endpoints[3])}" in lines
    assert len([l for l in lines if l.startswith("-A KUBE-SERVICES")]) == 4
    probs = re.findall(r"--probability (\S+)", text)
    assert probs == ["0.3333333333", "0.5000000000"]


def test_nft_shape():
    svcs = services(2)
    text = kp.nft_ruleset(svcs)
    lines = text.splitlines()
    t = kp.NFT_TABLE
    assert f"add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; " \
           'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }' in lines
    assert f"add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips" in lines
    assert f"add rule ip {t} nat-prerouting jump services" in lines
    assert f"add rule ip {t} masquerading masquerade fully-random" in lines
    assert f"add rule ip {t} mark-for-masquerade mark set mark or 0x4000" in lines
    for svc in svcs:
        chain = kp.nft_service_chain(svc)
        assert f"add element ip {t} service-ips {{ {svc.vip} . tcp . 80 : goto {chain} }}" in lines
        vmap = ", ".join(f"{i} : goto {kp.nft_endpoint_chain(svc, ep)}"
                         for i, ep in enumerate(svc.endpoints))
        assert f"add rule ip {t} {chain} numgen random mod 4 vmap {{ {vmap} }}" in lines
        for ep in svc.endpoints:
            assert (f"add rule ip {t} {kp.nft_endpoint_chain(svc, ep)} meta l4proto tcp "
                    f"dnat to {ep[0]}:{ep[1]}") in lines
    assert not any("nat-prerouting" in l for l in kp.nft_ruleset(svcs, with_prerouting=False).splitlines())


def test_nft_endpoint_change():
    old = services(1)[0]
    new = kp.Svc(old.namespace, old.name, old.port_name, old.vip, old.port, old.endpoints[:3])
    text = kp.nft_endpoint_change(old, new)
    assert "numgen random mod 3 vmap" in text
    assert f"delete chain ip {kp.NFT_TABLE} {kp.nft_endpoint_chain(old, old.endpoints[3])}" in text
    back = kp.nft_endpoint_change(new, old)
    assert f"add chain ip {kp.NFT_TABLE} {kp.nft_endpoint_chain(old, old.endpoints[3])}" in back
    assert "numgen random mod 4 vmap" in back


def test_manifests_parse_to_the_same_frontends():
    from ebpflb.manifests import parse_documents
    from ebpflb.model import desired_state

    svcs = services(5)
    m = parse_documents(kp.manifests(svcs), "bench.json")
    desired = desired_state(m.services, m.slices)
    got = {(fe.vip, fe.port): sorted((b.ip, b.port) for b in bes)
           for fe, bes in desired.frontends.items()}
    assert got == {(s.vip, 80): sorted(s.endpoints) for s in svcs}
