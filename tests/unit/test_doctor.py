"""`ebpflb doctor`'s verdicts from made-up facts: every rule's ok, warn and fail branches. The
command itself runs against this machine in tests/bpf/test_doctor.py."""
import pytest

from ebpflb import doctor
from ebpflb.doctor import FAIL, OK, WARN

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("release,status", [
    ("6.18.44-fc-v1252", OK), ("5.18.0", OK), ("5.15.0-91-generic", WARN), ("5.10.0-28-amd64", WARN),
    ("5.4.0-150-generic", FAIL), ("4.19.0", FAIL), ("weird", WARN)])
def test_kernel(release, status):
    check = doctor.kernel(release)
    assert check.status == status
    if status == WARN and release[0].isdigit():
        assert "--socket-lb off" in check.fix


def test_capabilities():
    assert doctor.capabilities([]).status == OK
    check = doctor.capabilities(["CAP_BPF (load programs and create maps)"])
    assert check.status == FAIL and "CAP_BPF" in check.detail and "root" in check.fix


def test_bpffs_from_mounts():
    mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n"
    assert doctor.bpffs(mounts).status == OK
    check = doctor.bpffs("sysfs /sys sysfs rw 0 0\ntmpfs /sys/fs/bpf tmpfs rw 0 0\n")
    assert check.status == WARN and "mount -t bpf bpf /sys/fs/bpf" in check.fix


def test_btf_cgroup2_and_probes():
    assert doctor.btf(True).status == OK and doctor.btf(False).status == WARN
    assert doctor.cgroup2("/sys/fs/cgroup").status == OK
    assert "--socket-lb off" in doctor.cgroup2(None).fix and doctor.cgroup2(None).status == FAIL
    assert doctor.probe("x", None, "fine", "do y").status == OK
    failed = doctor.probe("x", "it broke", "fine", "do y")
    assert (failed.status, failed.detail, failed.fix) == (FAIL, "it broke", "do y")
    assert doctor.probe("x", "it broke", "fine", "do y", WARN).status == WARN


def test_sysctls():
    assert doctor.ip_forward("1").status == OK
    assert doctor.ip_forward("0").status == FAIL and "ip_forward=1" in doctor.ip_forward("0").fix
    assert doctor.ip_forward(None).status == FAIL
    assert doctor.rp_filter({"all": "1", "default": "2"}).status == OK
    assert doctor.rp_filter({"all": None, "default": "0"}).status == WARN


def test_kube_proxy_rules():
    assert doctor.kube_proxy(None, None).status == OK
    legacy = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"
    check = doctor.kube_proxy(legacy, None)
    assert check.status == WARN and "iptables chain KUBE-SERVICES" in check.detail
    nft = "table inet filter\ntable ip kube-proxy\ntable ip6 kube-proxy\n"
    check = doctor.kube_proxy(None, nft)
    assert "nftables table ip kube-proxy" in check.detail and "ip6 kube-proxy" in check.detail
    assert doctor.kube_proxy(None, "table ip nat\n", nft_kube_services=True).status == WARN
    assert doctor.kube_proxy(":KUBE-SERVICES-X - [0:0]\n", "table ip nat\n").status == OK
    unchecked = doctor.kube_proxy(None, None, tools=False)
    assert unchecked.status == WARN and "not checked" in unchecked.detail


def test_verdict_and_render():
    checks = [doctor.kernel("6.1.0"), doctor.btf(False)]
    assert doctor.verdict(checks) == 0
    text = doctor.render(checks)
    assert text.splitlines()[-1] == "2 checks: 0 failed, 1 warnings"
    assert "-> not needed by ebpflb" in text
    checks.append(doctor.ip_forward("0"))
    assert doctor.verdict(checks) == 1
