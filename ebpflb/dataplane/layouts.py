"""Struct formats for map records read or written as raw bytes (the conntrack GC's batches), built
from the layouts the compiler gave bpf/lb_structs.h, as ebpflb/abi.py records them: a field
renamed, moved or resized in the header fails here, at import, instead of being read wrongly."""
import struct
from typing import Mapping

from .. import abi


class LayoutError(RuntimeError):
    """The header's struct does not have the fields a reader decodes."""


def packed(type_name: str, codes: Mapping[str, str]) -> struct.Struct:
    """A native-order struct.Struct of `type_name` (as "struct ct4_key"): `codes` gives each field,
    in declaration order, its struct code; padding comes from the compiled offsets."""
    size, fields = abi.STRUCTS[type_name]
    names = [name for name, _, _ in fields]
    if names != list(codes):
        raise LayoutError(f"{type_name} has fields {names}, the reader decodes {list(codes)}")
    fmt, at = "=", 0
    for name, offset, field_size in fields:
        code = codes[name]
        if struct.calcsize("=" + code) != field_size:
            raise LayoutError(f"{type_name}.{name} is {field_size} bytes, the reader decodes "
                              f"{struct.calcsize('=' + code)} ({code})")
        fmt += "x" * (offset - at) + code
        at = offset + field_size
    return struct.Struct(fmt + "x" * (size - at))


def offset_of(type_name: str, field: str) -> int:
    for name, offset, _ in abi.STRUCTS[type_name][1]:
        if name == field:
            return offset
    raise LayoutError(f"{type_name} has no field {field}")
