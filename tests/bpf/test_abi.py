"""The struct layouts in ebpflb/abi.py are the ones the compiler gives bpf/lb_structs.h: every
map's key and value, each field's offset and size, read from the types bcc builds (the maps are
created in a scratch pin directory and removed)."""
import pytest

from ebpflb.dataplane import abi_gen

pytestmark = pytest.mark.bpf


def test_struct_layouts_are_the_compiled_ones(require_root):
    compiled = abi_gen.structs()
    recorded = abi_gen.current_structs()
    assert compiled == recorded, (
        "ebpflb/abi.py STRUCTS differ from the compiled layouts: run "
        "`.venv/bin/python -m ebpflb.dataplane.abi_gen`")
    assert abi_gen.render(compiled) == abi_gen.TARGET.read_text()
