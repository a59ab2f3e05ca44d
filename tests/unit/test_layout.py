"""Hand-mirrored values stay in step with bpf/lb_structs.h, the single source of truth: the counter
names (verdicts, hooks, drop reasons, events) and the service name length. (Map key/value layouts are not mirrored: Python uses
the types bcc generates from the header.)"""
import re

import pytest

from ebpflb.dataplane.bcc_maps import (DROP_REASONS, EVENTS, STAT_NAMES, VERDICT_HOOKS,
                                       VERDICT_NAMES)
from ebpflb.dataplane.loader import bpf_source_dir
from ebpflb.maps import SVC_NAME_LEN

pytestmark = pytest.mark.unit

HEADER = (bpf_source_dir() / "lb_structs.h").read_text()


def enum_names(name: str, prefix: str) -> list:
    body = re.search(rf"enum {name} \{{(.*?)\}};", HEADER, re.S).group(1)
    return re.findall(rf"^\s*({prefix}[A-Z_]+)", body, re.M)


def test_stat_names_follow_the_enum():
    names = enum_names("lb_stat", "STAT_")
    assert names[-1] == "STAT_MAX"
    split = names.index("STAT_DROP_REASONS")
    reasons, events = names[:split], names[split + 1:-1]
    # The Python names are the C names lowercased, except where they are spelled out for users.
    spelled = {"STAT_CT_INSERT_FAIL": "conntrack_insert_fail", "STAT_CT_INSERT": "conntrack_insert",
               "STAT_CT_COLLISION": "conntrack_collision", "STAT_CT_REBUILT": "conntrack_rebuilt"}
    def py(ns):
        return tuple(spelled.get(n, n[len("STAT_"):].lower()) for n in ns)
    assert DROP_REASONS == py(reasons)
    assert EVENTS == py(events)
    assert STAT_NAMES == DROP_REASONS + EVENTS
    assert "STAT_CT_INSERT = STAT_DROP_REASONS," in HEADER  # the events follow the reasons


def test_verdict_and_hook_names_follow_the_enums():
    verdicts = enum_names("lb_verdict", "VERDICT_")
    assert verdicts[-1] == "VERDICT_MAX"
    assert VERDICT_NAMES == tuple(n[len("VERDICT_"):].lower() for n in verdicts[:-1])
    hooks = enum_names("lb_at", "AT_")
    assert hooks[-1] == "AT_MAX"
    assert VERDICT_HOOKS == tuple(n[len("AT_"):].lower() for n in hooks[:-1])


def test_service_name_length():
    assert f"#define LB4_SVC_NAME_LEN {SVC_NAME_LEN}" in HEADER


def defines() -> dict:
    return {name: int(value, 0) for name, value in
            re.findall(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", HEADER, re.M)}


def test_conntrack_and_frontend_flags():
    from ebpflb import maps

    c = defines()
    for name in ("CT_F_ESTABLISHED", "CT_F_CLOSING", "CT_F_HAIRPIN", "CT_F_EXTERNAL", "CT_F_SNAT",
                 "CT_F_PORT_NAT"):
        assert getattr(maps, name) == c[name], name
    for name in ("SVC_F_MAGLEV", "SVC_F_ETP_LOCAL", "SVC_F_SRC_RANGES", "SVC_F_DRAINING",
                 "SVC_F_DROP_EMPTY", "SVC_F_TOPO_NODE", "SVC_F_TOPO_ZONE"):
        assert getattr(maps, name) == c["LB4_" + name], name
    assert maps.BE_F_NO_NEW == c["LB4_BE_F_NO_NEW"]


def test_socket_lb_modes():
    from ebpflb.dataplane.sock_attach import MODE_VALUES

    c = defines()
    assert MODE_VALUES == {"off": c["LB_SOCK_OFF"], "all": c["LB_SOCK_ALL"],
                           "host-only": c["LB_SOCK_HOST_ONLY"]}


def test_program_names_fit_the_kernel():
    """The kernel keeps 15 characters of a program's name; cleanup recognises ours by it."""
    from ebpflb.dataplane import loader

    names = {n: v for n, v in vars(loader).items() if n.startswith("PROG_")}
    assert names and all(len(v) <= 15 for v in names.values()), names


def test_every_counter_the_header_calls_a_drop_is_a_drop_reason():
    """ebpflb_drops_total{reason} lists every counter whose comment in the enum says it is a
    drop reason, and nothing else."""
    body = re.search(r"enum lb_stat \{(.*?)\};", HEADER, re.S).group(1)
    # Each entry with its comment, which may continue on the next lines.
    entries = re.findall(r"^\s*(STAT_[A-Z_]+)[^/\n]*(/\*.*?\*/)", body, re.M | re.S)
    named = dict(zip((n for n, _ in entries if n != "STAT_DROP_REASONS"), STAT_NAMES))
    drops = {named[n] for n, comment in entries if comment.startswith("/* drop:")}
    assert drops == set(DROP_REASONS)
