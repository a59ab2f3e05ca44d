"""ebpflb/abi.py, the one Python copy of the C/Python contract, is what the generator makes of
bpf/ now: regenerated here and compared whole (the compiled struct layouts are compared by
tests/bpf/test_abi.py, which needs a kernel). Hand copies that remain are checked against it."""
import re
import shutil

import pytest

from ebpflb import abi
from ebpflb.dataplane import abi_gen

pytestmark = pytest.mark.unit


def test_abi_module_is_what_the_headers_make():
    assert abi_gen.render(abi_gen.current_structs()) == abi_gen.TARGET.read_text(), (
        "ebpflb/abi.py is out of date: run `.venv/bin/python -m ebpflb.dataplane.abi_gen`")


@pytest.mark.parametrize("header,old,new", [
    ("lb_structs.h", "#define CT_F_SNAT 0x10", "#define CT_F_SNAT 0x40"),
    ("lb_structs.h", "\tVERDICT_REPLY,", "\tVERDICT_REPLY_MOVED,"),
    ("lb_maps.h", "#define CT4_MAX_ENTRIES 262144", "#define CT4_MAX_ENTRIES 131072"),
    ("lb4_tc.c", "int lb4_node_out(struct __sk_buff *skb)", "int lb4_node_egress(struct __sk_buff *skb)"),
])
def test_a_header_change_without_the_module_is_caught(tmp_path, monkeypatch, header, old, new):
    copy = tmp_path / "bpf"
    shutil.copytree(abi_gen.BPF_DIR, copy)
    text = (copy / header).read_text()
    assert old in text
    (copy / header).write_text(text.replace(old, new))
    monkeypatch.setattr(abi_gen, "BPF_DIR", copy)
    assert abi_gen.render(abi_gen.current_structs()) != abi_gen.TARGET.read_text()


def test_enum_values_follow_c_rules():
    assert abi_gen.enums("enum e { A, B = 5, C, D = B + 10, E };", {}) == {
        "e": [("A", 0), ("B", 5), ("C", 6), ("D", 15), ("E", 16)]}
    assert abi.STAT_CT_INSERT == abi.STAT_DROP_REASONS  # the events start where reasons end


def test_python_names_come_from_the_abi():
    """What the rest of the package uses is the ABI's, by value."""
    from ebpflb import maps
    from ebpflb.dataplane import config, loader, sock_attach
    from ebpflb.dataplane.bcc_maps import DROP_REASONS, EVENTS, VERDICT_HOOKS, VERDICT_NAMES

    assert loader.MAP_NAMES == tuple(abi.MAPS)
    progs = {v for k, v in vars(loader).items() if k.startswith("PROG_")}
    assert progs == set(abi.PROGRAMS)
    assert all(len(name) <= 15 for name in progs)  # the kernel keeps 15 characters
    assert len(DROP_REASONS) == abi.STAT_DROP_REASONS
    assert len(DROP_REASONS) + len(EVENTS) == abi.STAT_MAX
    assert len(VERDICT_HOOKS) == abi.AT_MAX and len(VERDICT_NAMES) == abi.VERDICT_MAX
    assert sock_attach.MODE_VALUES == {"off": abi.LB_SOCK_OFF, "all": abi.LB_SOCK_ALL,
                                       "host-only": abi.LB_SOCK_HOST_ONLY}
    d = config.DataplaneConfig()
    assert (d.max_services, d.max_backends, d.max_slots, d.ct_max_entries,
            d.ct_syn_max_entries, d.max_src_ranges, d.snat_ports) == (
        abi.LB4_MAX_SERVICES, abi.LB4_MAX_BACKENDS, abi.LB4_MAX_SLOTS, abi.CT4_MAX_ENTRIES,
        abi.CT4_SYN_MAX_ENTRIES, abi.LB4_MAX_SRC_RANGES,
        (abi.LB4_SNAT_PORT_MIN, abi.LB4_SNAT_PORT_MAX))
    assert maps.HAIRPIN_ADDR == "169.254.42.1"


def test_hand_decoded_layouts_match_the_compiled_ones():
    """The per-CPU flow counters are decoded as consecutive u64s named as in stats.Counters, and
    the GC's conntrack formats are built from the compiled layout."""
    from ebpflb.dataplane import ct_gc
    from ebpflb.maps import FLOW_FIELDS

    size, fields = abi.STRUCTS["struct lb_flow_stats"]
    assert [(f, o, s) for f, o, s in fields] == [(f, 8 * i, 8) for i, f in enumerate(FLOW_FIELDS)]
    assert size == 8 * len(FLOW_FIELDS)
    assert ct_gc.KEY.size == abi.STRUCTS["struct ct4_key"][0]
    assert ct_gc.VALUE.size == abi.STRUCTS["struct ct4_entry"][0]


def test_a_reader_of_a_changed_struct_fails_loudly():
    from ebpflb.dataplane.layouts import LayoutError, packed

    with pytest.raises(LayoutError, match="struct ct4_key has fields"):
        packed("struct ct4_key", {"daddr": "4s", "saddr": "4s", "sport": "2s", "dport": "2s",
                                  "proto": "B", "dir": "B", "pad": "H"})
    with pytest.raises(LayoutError, match="struct ct4_key.saddr is 4 bytes"):
        packed("struct ct4_key", {"saddr": "8s", "daddr": "4s", "sport": "2s", "dport": "2s",
                                  "proto": "B", "dir": "B", "pad": "H"})


def test_every_counter_the_header_calls_a_drop_is_a_drop_reason():
    """ebpflb_drops_total{reason} lists every counter whose comment in the enum says it is a
    drop reason, and nothing else."""
    from ebpflb.dataplane.bcc_maps import DROP_REASONS, STAT_NAMES

    header = (abi_gen.BPF_DIR / "lb_structs.h").read_text()
    body = re.search(r"enum lb_stat \{(.*?)\};", header, re.S).group(1)
    # Each entry with its comment, which may continue on the next lines.
    entries = re.findall(r"^\s*(STAT_[A-Z_]+)[^/\n]*(/\*.*?\*/)", body, re.M | re.S)
    named = dict(zip((n for n, _ in entries if n != "STAT_DROP_REASONS"), STAT_NAMES))
    drops = {named[n] for n, comment in entries if comment.startswith("/* drop:")}
    assert drops == set(DROP_REASONS)


def test_every_map_and_program_named_in_the_package_exists():
    """A map or program named by a string anywhere in ebpflb/ (bpf[b"lb4_affinity"], the
    control-plane map ids) is one the programs declare: a rename in bpf/ cannot leave a stale
    name behind."""
    from pathlib import Path

    from ebpflb.dataplane.loader import CONTROL_MAP_NAMES
    from ebpflb.maps import MapId

    assert {m.value for m in MapId} <= set(abi.MAPS)
    assert set(CONTROL_MAP_NAMES) <= set(abi.MAPS)
    package = Path(abi.__file__).parent
    pattern = re.compile(r'b?"((?:lb4|lb6|ct4|ct6|frag4|frag6)_[a-z0-9_]+|ct4|ct6|frag4|frag6|'
                         r'lb_(?:stats|verdicts|sock_cfg))"')
    stale = {(m.group(1), str(f.relative_to(package))) for f in package.rglob("*.py")
             if f.name != "abi.py" for m in pattern.finditer(f.read_text())
             if m.group(1) not in abi.MAPS and m.group(1) not in abi.PROGRAMS}
    assert not stale, stale
