"""The manifest source's parser: Kubernetes YAML/JSON on disk -> validated model objects.

Pipeline: **sources** (this one reads files) -> model -> plan -> apply. It accepts what
`kubectl get svc,endpointslices -A -o yaml` prints and hand-written multi-document YAML, and checks
everything the API server would have checked for the fields ebpflb uses, because here no API server
stands between a typo and the data plane. A load is all or nothing: every problem in every file is
collected and raised together as ManifestErrors, so a caller keeps its last good state.
"""
from __future__ import annotations

import inspect
import ipaddress
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from .backend_rules import (DEFAULT_SERVICE_CIDRS, backend_message, forbidden_backend,
                            in_service_range, parse_service_cidrs)
from .model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from .policy import parse_policy

log = logging.getLogger(__name__)

FieldPath = Tuple[Union[str, int], ...]

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# The kinds ebpflb reads, with the one API version of each it understands.
USED_KINDS = {"Service": "v1", "EndpointSlice": "discovery.k8s.io/v1"}
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Kinds without a namespace, so an ignored one is not displayed as "default/<name>".
CLUSTER_SCOPED_KINDS = frozenset({
    "Namespace", "Node", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
    "CustomResourceDefinition", "PriorityClass", "IngressClass", "APIService",
})

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An address and a decimal prefix length: no netmask form, no IPv6 zone, no bare address.
_CIDR = re.compile(r"([0-9A-Fa-f:.]+)/([0-9]{1,3})")
# The YAML loader: the C one when PyYAML was built with libyaml (kubectl dumps can be large).
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Hostile YAML bounds. libyaml's composer recurses once per nesting level in C (a few tens of
# thousands of levels overflow the stack and kill the process); aliases expand exponentially
# ("billion laughs"). No Kubernetes object nests beyond a few dozen levels or needs more aliases.
MAX_NESTING = 1000
MAX_ALIAS_EXPANSION = 10  # expanded nodes per written node, beyond ALIAS_EXPANSION_FLOOR
ALIAS_EXPANSION_FLOOR = 100_000
_NESTING_SCAN_FROM = MAX_NESTING // 4  # cheap depth bound above which the exact scan runs
_CONSTRUCT_ERRORS = (ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError)


class _YamlLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """The safe loader, with the built-in exceptions its scalar constructors raise on ill-formed
    tagged or implicit values (`2001-13-45`, `!!int abc`, a 5000-digit integer) turned into
    YAML errors that carry the value's line."""


def _guarded(construct: Any) -> Any:
    def guarded(loader: Any, node: yaml.Node) -> Any:
        try:
            return construct(loader, node)
        except _CONSTRUCT_ERRORS as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_show(node.value)} as {str(node.tag).rpartition(':')[2]}: "
                f"{_show(str(exc))}", node.start_mark) from None
    return guarded


# Collections are generator constructors (filled later, never raising these); scalars are not.
for _tag, _construct in list(_BaseLoader.yaml_constructors.items()):
    if not inspect.isgeneratorfunction(_construct):
        _YamlLoader.add_constructor(_tag, _guarded(_construct))


class ManifestError(ValueError):
    """One problem: where (file, line), which object, which field, what is wrong."""

    def __init__(self, source: str, obj: Optional[str], field: Optional[str], message: str,
                 line: Optional[int] = None) -> None:
        super().__init__(source, obj, field, message, line)
        self.source = source
        self.obj = obj
        self.field = field
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return ": ".join(p for p in (where, self.obj, self.field, self.message) if p)


class ManifestErrors(ValueError):
    """Every problem of one load; str() gives one per line."""

    def __init__(self, errors: List[ManifestError]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


@dataclass(frozen=True)
class Manifests:
    services: Tuple[Service, ...]
    slices: Tuple[EndpointSlice, ...]
    ignored: Tuple[str, ...]  # e.g. "ConfigMap default/x (kind not used by ebpflb)"


def load_manifests(path: Union[str, Path],
                   service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> Manifests:
    """Parse a file, or every *.yaml/*.yml/*.json directly in a directory (sorted by name).
    Endpoint addresses that must not be backends (ebpflb.backend_rules, with `service_cidrs` as
    the Service range) are errors; a bad `service_cidrs` entry is a ValueError."""
    p = Path(path)
    acc = _Accumulator(service_cidrs)
    if p.is_dir():
        # Dotfiles are editor and ConfigMap-volume bookkeeping, never manifests.
        files = sorted(f for f in p.iterdir()
                       if f.suffix in MANIFEST_SUFFIXES and not f.name.startswith(".") and f.is_file())
        if not files:
            acc.errors.append(ManifestError(str(p), None, None,
                                            "directory holds no *.yaml, *.yml or *.json file"))
    elif p.exists():
        files = [p]
    else:
        files = []
        acc.errors.append(ManifestError(str(p), None, None, "no such file or directory"))
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            acc.errors.append(ManifestError(str(f), None, None, f"cannot read: {e}"))
            continue
        acc.add_text(text, str(f))
    return acc.result()


def parse_documents(text: str, source: str,
                    service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> Manifests:
    """Parse YAML (or JSON) text holding one or more documents; source names it in errors.
    `service_cidrs` as for load_manifests."""
    acc = _Accumulator(service_cidrs)
    acc.add_text(text, source)
    return acc.result()


def _fmt_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part}]"
    return out


def _show(value: Any) -> str:
    """A value as the user wrote it (JSON spelling: true, null, "80"), at most 60 characters.
    Bounded for any value YAML can build: huge, deeply nested or self-referencing."""
    text = _render(value, 64, 0)
    return text if len(text) <= 60 else text[:57] + "..."


def _render(value: Any, budget: int, depth: int) -> str:
    """JSON-like text of value, cut once it exceeds budget characters."""
    if isinstance(value, (bool, type(None), float)):
        return json.dumps(value)
    if isinstance(value, int):
        # str() of an integer past 4300 digits raises; hex has no such limit
        return str(value) if value.bit_length() < 1000 else f"{value:#x}"[:budget] + "..."
    if isinstance(value, str):
        return json.dumps(value[:budget]) + ("..." if len(value) > budget else "")
    if isinstance(value, (list, tuple, dict)):
        if depth >= 8:
            return "..."
        pairs = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        parts: List[str] = []
        used = 0
        for k, v in pairs:
            if used > budget:
                parts.append("...")
                break
            item = _render(v, budget - used, depth + 1)
            if isinstance(value, dict):
                item = f"{json.dumps(_key_text(k)[:budget])}: {item}"
            parts.append(item)
            used += len(item) + 2
        ends = "{}" if isinstance(value, dict) else "[]"
        return ends[0] + ", ".join(parts) + ends[1]
    return json.dumps(str(value)[:budget])  # dates, timestamps, bytes, sets


def _key_text(key: Any) -> str:
    """A mapping key as a string (what YAML-to-JSON conversion makes of 1, true or null)."""
    if isinstance(key, str):
        return key
    return _render(key, 253, 7) if isinstance(key, (bool, int, float, type(None))) else str(key)[:253]


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _a(value: Any) -> str:
    """The JSON type of a value with its article, for "must be X, not Y" messages."""
    for t, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                    (list, "a list"), (dict, "a mapping"), (type(None), "null")):
        if isinstance(value, t):
            return name
    return f"a {type(value).__name__}"


def _line_index(node: yaml.Node, path: FieldPath, line: int, out: Dict[FieldPath, int]) -> None:
    """Record the line of every field path under node (for a mapping entry, its key's line)."""
    out.setdefault(path, line)
    if len(path) > 64:  # recursive YAML aliases would otherwise never end
        return
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                _line_index(v, path + (k.value,), k.start_mark.line + 1, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), item.start_mark.line + 1, out)


def _too_deep(text: str) -> Optional[int]:
    """The line where the text nests past MAX_NESTING, or None; checked before libyaml composes.
    Exact (an event scan) only when a cheap upper bound allows that depth: block collections
    nest by indentation or compact indicators ("- - x") at a line's start, two levels per column
    at most, and a flow collection needs a bracket ("[]" and "{}" hold nothing)."""
    flow = text.count("[") + text.count("{") - text.count("[]") - text.count("{}")
    run = MAX_NESTING // 4
    if flow < run and not re.search(rf"^[ \t?:-]{{{run},}}", text, re.M):
        return None  # depth <= 2 * flow + 2 * run + 3 < MAX_NESTING
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_BaseLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    return event.start_mark.line + 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except (yaml.YAMLError, UnicodeError):
        pass  # the real parse reports it, at no greater depth than reached here
    return None


def _check_aliases(root: yaml.Node) -> None:
    """Refuses a document whose aliases loop or expand far beyond what is written (YAML errors
    with the line). One pass over the written nodes, never over the expansion."""
    size: Dict[int, int] = {}  # id(node) -> nodes it expands to
    path: set = set()  # nodes being expanded: the ancestors of the current one
    stack: List[Tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if done:
            path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
        elif id(node) in path:
            raise yaml.composer.ComposerError(None, None, "recursive alias (a node that contains "
                                              "itself)", node.start_mark)
        elif id(node) not in size:
            path.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
    limit = max(MAX_ALIAS_EXPANSION * len(size), ALIAS_EXPANSION_FLOOR)
    if size[id(root)] > limit:
        raise yaml.composer.ComposerError(
            None, None, f"aliases expand {len(size)} written nodes to {_show(size[id(root)])} "
            f"(at most {limit})", root.start_mark)


class _Object:
    """The problems of one object, reported with paths relative to it and lines from its file."""

    def __init__(self, acc: "_Accumulator", source: str, lines: Dict[FieldPath, int],
                 base: FieldPath, label: str) -> None:
        self.acc, self.source, self.lines, self.base, self.label = acc, source, lines, base, label
        self.errors = 0

    def line(self, path: FieldPath = ()) -> Optional[int]:
        full = self.base + path
        # A missing field is reported at its nearest parent that exists.
        for n in range(len(full), -1, -1):
            if full[:n] in self.lines:
                return self.lines[full[:n]]
        return None

    def error(self, path: FieldPath, message: str) -> None:
        self.errors += 1
        self.acc.errors.append(ManifestError(self.source, self.label, _fmt_path(path) or None,
                                             message, self.line(path)))

    def mapping(self, value: Any, path: FieldPath, required: bool = False) -> Optional[Dict[str, Any]]:
        if value is None:
            if required:
                self.error(path, "missing")
            return None
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {_a(value)}")
            return None
        return value

    def list(self, value: Any, path: FieldPath) -> List[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list, not {_a(value)}")
            return []
        return value

    def string(self, value: Any, path: FieldPath, default: str = "") -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(path, f"{_show(value)} must be a string, not {_a(value)}")
            return default
        return value

    def name(self, value: str, path: FieldPath, rule: "re.Pattern[str]", max_len: int, what: str) -> None:
        if len(value) > max_len or not rule.fullmatch(value):
            self.error(path, f"{_show(value)} is not a valid {what}")

    def port(self, value: Any, path: FieldPath) -> Optional[int]:
        if value is None:
            self.error(path, "missing")
            return None
        # bool is an int in Python; `port: true` must not become port 1.
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"{_show(value)} is not a valid port (an integer 1-65535, not {_a(value)})")
            return None
        if not 1 <= value <= 65535:
            self.error(path, f"{_show(value)} is not a valid port (1-65535)")
            return None
        return value

    def protocol(self, value: Any, path: FieldPath) -> Optional[str]:
        if value is None:
            return "TCP"
        if value not in PROTOCOLS:
            self.error(path, f"{_show(value)} is not a valid protocol (TCP, UDP or SCTP)")
            return None
        return value

    def boolean(self, value: Any, path: FieldPath) -> Optional[bool]:
        if value is not None and not isinstance(value, bool):
            self.error(path, f"{_show(value)} is not a boolean")
            return None
        return value

    def ip(self, value: Any, path: FieldPath, version: Optional[int] = None) -> Optional[str]:
        if not isinstance(value, str):
            self.error(path, f"{_show(value)} is not a valid IP address (not a string)")
            return None
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            addr = None
        if addr is None or (version is not None and addr.version != version):
            what = f"IPv{version} address" if version else "IP address"
            self.error(path, f"{_show(value)} is not a valid {what}")
            return None
        return value

    def cidr(self, value: Any, path: FieldPath) -> Optional[str]:
        """A CIDR as Kubernetes accepts it for loadBalancerSourceRanges (surrounding spaces,
        host bits, IPv4 octets with leading zeros), normalized: "10.0.0.1/8" -> "10.0.0.0/8"."""
        if not isinstance(value, str):
            self.error(path, f"{_show(value)} is not a valid CIDR (not a string)")
            return None
        match = _CIDR.fullmatch(value.strip())
        net = None
        if match:
            addr, prefix = match.groups()
            if "." in addr and ":" not in addr:
                # Go's sloppy parser reads "010.1.1.0" as decimal; Python refuses leading zeros.
                addr = ".".join(str(int(octet)) if octet else octet for octet in addr.split("."))
            try:
                net = ipaddress.ip_network(f"{addr}/{int(prefix)}", strict=False)
            except ValueError:
                net = None
        if net is None:
            self.error(path, f"{_show(value)} is not a valid CIDR (e.g. 10.240.0.0/24)")
            return None
        return str(net)


class _Accumulator:
    """Objects and problems across every document and file of one load, plus the cross-object
    checks (duplicates, frontend clashes) that need all of them."""

    def __init__(self, service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> None:
        self.service_cidrs = tuple(service_cidrs)
        parse_service_cidrs(self.service_cidrs)  # a bad range fails here, before any file is read
        self.errors: List[ManifestError] = []
        self.services: List[Service] = []
        self.slices: List[EndpointSlice] = []
        self.ignored: List[str] = []
        self._defined: Dict[Tuple[str, str, str], str] = {}  # (kind, ns, name) -> "file:line"
        # (ip, port, proto) -> "Service ns/name (file:line)" of the first service claiming it
        self._frontends: Dict[Tuple[str, int, str], str] = {}

    def result(self) -> Manifests:
        if self.errors:
            raise ManifestErrors(self.errors)
        return Manifests(tuple(self.services), tuple(self.slices), tuple(self.ignored))

    def add_text(self, text: str, source: str) -> None:
        first_error = len(self.errors)
        too_deep = _too_deep(text)
        if too_deep is not None:
            self.errors.append(ManifestError(source, None, None, f"invalid YAML: nested deeper than "
                                             f"{MAX_NESTING} levels", too_deep))
            return
        try:
            loader = _YamlLoader(text)
        except UnicodeError as e:  # a str holding lone surrogates (never read from a file)
            self.errors.append(ManifestError(source, None, None, f"invalid text: {e}"))
            return
        docno = 0
        try:
            while loader.check_node():
                node = loader.get_node()
                docno += 1
                if "*" in text:  # aliases need a "*": only then can a document expand
                    _check_aliases(node)
                try:
                    data = loader.construct_document(node)
                except _CONSTRUCT_ERRORS as e:  # not a scalar (the guarded constructors name those)
                    raise yaml.constructor.ConstructorError(None, None, f"cannot read document: {e}",
                                                            node.start_mark) from None
                lines: Dict[FieldPath, int] = {}
                _line_index(node, (), node.start_mark.line + 1, lines)
                self._document(data, source, lines, docno)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            detail = f"{e.problem} ({e.context})" if e.context else str(e.problem)
            self.errors.append(ManifestError(source, None, None, f"invalid YAML: {detail}",
                                             mark.line + 1 if mark else None))
        except yaml.reader.ReaderError as e:  # a character YAML forbids (NUL, most controls)
            # libyaml counts bytes of the UTF-8 text, the pure-Python reader characters
            before = text.encode()[:e.position] if _BaseLoader is not yaml.SafeLoader else text[:e.position]
            char = f"#x{e.character:04x}" if isinstance(e.character, int) else _show(e.character)
            self.errors.append(ManifestError(source, None, None, f"invalid YAML: character {char}: "
                                             f"{e.reason}", before.count("\n" if isinstance(before, str)
                                                                        else b"\n") + 1))
        except yaml.YAMLError as e:
            self.errors.append(ManifestError(source, None, None, f"invalid YAML: {e}"))
        finally:
            loader.dispose()
        # Fields are checked in a fixed order, not file order; report them as an editor shows them.
        self.errors[first_error:] = sorted(self.errors[first_error:],
                                           key=lambda e: e.line if e.line is not None else 0)

    def _document(self, data: Any, source: str, lines: Dict[FieldPath, int], docno: int) -> None:
        if data is None:  # empty documents ("---" twice) are normal in hand-written files
            return
        if not isinstance(data, dict):
            self.errors.append(ManifestError(source, f"document {docno}", None,
                                             f"not a mapping ({_a(data)})", lines.get(())))
            return
        kind = data.get("kind")
        if not (isinstance(kind, str) and kind.endswith("List")):
            self._object(data, source, lines, (), f"document {docno}", None, None)
            return
        # kubectl prints `kind: List`; the API itself returns ServiceList etc. whose items
        # carry neither kind nor apiVersion.
        ck = _Object(self, source, lines, (), f"{kind} (document {docno})")
        item_kind = kind[:-len("List")] or None
        item_api = data.get("apiVersion") if item_kind else None
        for i, item in enumerate(ck.list(data.get("items"), ("items",))):
            self._object(item, source, lines, ("items", i), f"items[{i}] (document {docno})",
                         item_kind, item_api)

    def _object(self, doc: Any, source: str, lines: Dict[FieldPath, int], base: FieldPath,
                where: str, default_kind: Optional[str], default_api: Optional[str]) -> None:
        ck = _Object(self, source, lines, base, where)
        if not isinstance(doc, dict):
            ck.error((), f"not a mapping ({_a(doc)})")
            return
        kind = doc.get("kind", default_kind)
        api = doc.get("apiVersion", default_api)
        raw_meta = doc.get("metadata")
        meta = ck.mapping(raw_meta, ("metadata",)) or {}
        name = meta.get("name")
        namespace = meta.get("namespace") or "default"
        if isinstance(kind, str) and isinstance(name, str) and name and isinstance(namespace, str):
            scoped = kind not in CLUSTER_SCOPED_KINDS
            ck.label = f"{kind} {namespace}/{name}" if scoped else f"{kind} {name}"
        elif isinstance(kind, str) and kind:
            ck.label = f"{kind} ({where})"
        if not isinstance(kind, str) or not kind:
            ck.error(("kind",), "missing" if kind is None else f"{_show(kind)} is not a valid kind")
        if isinstance(raw_meta, (dict, type(None))) and (not isinstance(name, str) or not name):
            ck.error(("metadata", "name"), "missing" if name is None else f"{_show(name)} is not a valid name")
        if not isinstance(namespace, str):
            ck.error(("metadata", "namespace"), f"{_show(namespace)} must be a string")
        if ck.errors:
            return

        want = USED_KINDS.get(kind)
        if want is not None and api == want:
            parse = self._service if kind == "Service" else self._slice
            parse(ck, doc, meta, namespace, name)
        elif want is not None and (not isinstance(api, str) or _group(api) == _group(want)):
            # Another version of the same API group is a mistake (e.g. discovery.k8s.io/v1beta1,
            # removed in Kubernetes 1.25); another group is someone else's kind (Knative Service).
            ck.error(("apiVersion",), "missing" if api is None else f"{_show(api)} is not supported (use {want})")
        else:
            reason = "kind" if want is None else f"apiVersion {api}"
            log.debug("%s: %s ignored (%s not used by ebpflb)", source, ck.label, reason)
            self.ignored.append(f"{ck.label} ({reason} not used by ebpflb)")

    def _metadata(self, ck: _Object, meta: Dict[str, Any], namespace: str, name: str,
                  name_rule: "re.Pattern[str]", max_len: int, name_what: str
                  ) -> Tuple[Optional[Dict[str, str]], Dict[str, str]]:
        ck.name(name, ("metadata", "name"), name_rule, max_len, name_what)
        ck.name(namespace, ("metadata", "namespace"), _DNS1123_LABEL, 63, "namespace (DNS-1123 label)")
        return self._string_map(ck, meta, "labels"), self._string_map(ck, meta, "annotations") or {}

    def _string_map(self, ck: _Object, meta: Dict[str, Any], key: str) -> Optional[Dict[str, str]]:
        if meta.get(key) is None:
            return {}
        values = ck.mapping(meta.get(key), ("metadata", key))
        if values is None:
            return None
        for k, v in values.items():
            if not isinstance(v, str):
                ck.error(("metadata", key, _key_text(k)), f"{_show(v)} must be a string, not {_a(v)}")
        return {_key_text(k): v for k, v in values.items() if isinstance(v, str)}

    def _claim_object(self, ck: _Object, kind: str, namespace: str, name: str) -> bool:
        key = (kind, namespace, name)
        here = f"{ck.source}:{ck.line()}"
        if key in self._defined:
            ck.error((), f"duplicate object: already defined at {self._defined[key]}")
            return False
        self._defined[key] = here
        return True

    def _service(self, ck: _Object, doc: Dict[str, Any], meta: Dict[str, Any], namespace: str,
                 name: str) -> None:
        labels, annotations = self._metadata(ck, meta, namespace, name, _DNS1035_LABEL, 63,
                                             "service name (DNS-1035 label)")
        first = self._claim_object(ck, "Service", namespace, name)
        spec = ck.mapping(doc.get("spec"), ("spec",), required=True)
        if spec is None:
            return
        svc_type = spec.get("type") or "ClusterIP"
        if svc_type not in SERVICE_TYPES:
            ck.error(("spec", "type"), f"{_show(svc_type)} is not one of {', '.join(SERVICE_TYPES)}")
        cluster_ips = self._cluster_ips(ck, spec)
        # The API server lets headless and ExternalName services have no ports.
        needs_ports = svc_type != "ExternalName" and cluster_ips[:1] != ("None",)
        ports = self._service_ports(ck, spec.get("ports"), needs_ports)
        for key, message in parse_policy(annotations)[1]:
            ck.error(("metadata", "annotations", key), message)
        traffic = self._service_traffic(ck, spec)
        # Only a LoadBalancer Service's ingress IPs are frontends; for other types the status is
        # noise that must not make a change (the API source relies on that).
        ingress = self._lb_ingress(ck, doc)
        traffic["lb_ingress_ips"] = ingress if svc_type == "LoadBalancer" else ()
        traffic.update(self._load_balancer_fields(ck, spec, svc_type,
                                                  traffic["external_traffic_policy"]))
        if ck.errors:
            return
        svc = Service(namespace, name, svc_type, cluster_ips, ports,
                      tuple(sorted((labels or {}).items())), tuple(sorted(annotations.items())),
                      **traffic)
        if first:
            self._claim_frontends(ck, svc)
        self.services.append(svc)

    def _service_traffic(self, ck: _Object, spec: Dict[str, Any]) -> Dict[str, Any]:
        """publishNotReadyAddresses, internalTrafficPolicy and session affinity, with the API's
        defaults (affinity timeout 10800 s, limits 1-86400)."""
        out: Dict[str, Any] = {}
        publish = ck.boolean(spec.get("publishNotReadyAddresses"), ("spec", "publishNotReadyAddresses"))
        out["publish_not_ready"] = bool(publish)
        itp = spec.get("internalTrafficPolicy") or "Cluster"
        if itp not in ("Cluster", "Local"):
            ck.error(("spec", "internalTrafficPolicy"), f"{_show(itp)} is not Cluster or Local")
        out["internal_traffic_policy"] = itp
        affinity = spec.get("sessionAffinity") or "None"
        if affinity not in ("None", "ClientIP"):
            ck.error(("spec", "sessionAffinity"), f"{_show(affinity)} is not None or ClientIP")
        out["session_affinity"] = affinity
        path: FieldPath = ("spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds")
        # Each level may be anything in a hostile manifest: `clientIP: x` must be an error, not a crash.
        config = ck.mapping(spec.get("sessionAffinityConfig"), path[:2]) or {}
        timeout = (ck.mapping(config.get("clientIP"), path[:3]) or {}).get("timeoutSeconds")
        if timeout is None:
            timeout = 10800
        elif isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 86400:
            ck.error(path, f"{_show(timeout)} is not a number of seconds from 1 to 86400")
            timeout = 10800
        out["affinity_timeout"] = timeout
        etp = spec.get("externalTrafficPolicy") or "Cluster"
        if etp not in ("Cluster", "Local"):
            ck.error(("spec", "externalTrafficPolicy"), f"{_show(etp)} is not Cluster or Local")
        out["external_traffic_policy"] = etp
        raw = ck.list(spec.get("externalIPs"), ("spec", "externalIPs"))
        out["external_ips"] = tuple(ip for i, ip in enumerate(raw)
                                    if ck.ip(ip, ("spec", "externalIPs", i)) is not None)
        return out

    def _load_balancer_fields(self, ck: _Object, spec: Dict[str, Any], svc_type: str,
                              etp: str) -> Dict[str, Any]:
        """loadBalancerSourceRanges and healthCheckNodePort, with the API server's rules: both
        only on a LoadBalancer (the health check port only with externalTrafficPolicy Local),
        ranges as CIDRs that may be space-padded or have host bits set (kube-proxy masks them)."""
        out: Dict[str, Any] = {}
        path: FieldPath = ("spec", "loadBalancerSourceRanges")
        raw = ck.list(spec.get("loadBalancerSourceRanges"), path)
        if raw and svc_type != "LoadBalancer":
            ck.error(path, "may only be used when type is LoadBalancer")
        ranges = (ck.cidr(value, path + (i,)) for i, value in enumerate(raw))
        out["lb_source_ranges"] = tuple(dict.fromkeys(r for r in ranges if r is not None))
        hc_path: FieldPath = ("spec", "healthCheckNodePort")
        hc = spec.get("healthCheckNodePort")
        if hc is not None:
            hc = ck.port(hc, hc_path)
            if hc is not None and (svc_type != "LoadBalancer" or etp != "Local"):
                ck.error(hc_path, "may only be set when type is LoadBalancer and "
                                  "externalTrafficPolicy is Local")
        out["health_check_node_port"] = hc
        return out

    def _lb_ingress(self, ck: _Object, doc: Dict[str, Any]) -> Tuple[str, ...]:
        """status.loadBalancer.ingress[].ip (hostname-only entries have no address for us)."""
        status = ck.mapping(doc.get("status"), ("status",))
        lb = ck.mapping(status.get("loadBalancer"), ("status", "loadBalancer")) if status else None
        raw = ck.list(lb.get("ingress"), ("status", "loadBalancer", "ingress")) if lb else []
        out = []
        for i, entry in enumerate(raw):
            path: FieldPath = ("status", "loadBalancer", "ingress", i)
            item = ck.mapping(entry, path)
            if item is not None and item.get("ip") is not None:
                ip = ck.ip(item["ip"], path + ("ip",))
                if ip is not None:
                    out.append(ip)
        return tuple(out)

    def _cluster_ips(self, ck: _Object, spec: Dict[str, Any]) -> Tuple[str, ...]:
        # "" is an unallocated clusterIP (a hand-written manifest); "None" asks for headless.
        single = spec.get("clusterIP")
        if single is None or single in ("None", ""):
            single = single or ""
        elif ck.ip(single, ("spec", "clusterIP")) is None:
            return ()
        raw = ck.list(spec.get("clusterIPs"), ("spec", "clusterIPs"))
        many = [v for i, v in enumerate(raw) if v == "None" or ck.ip(v, ("spec", "clusterIPs", i))]
        if len(many) != len(raw):
            return ()
        if len(many) > 2:
            ck.error(("spec", "clusterIPs"), f"{len(many)} addresses: at most one per IP family")
        elif len(many) == 2 and "None" in many:
            ck.error(("spec", "clusterIPs"), '"None" must be the only entry')
        elif len(many) == 2 and ipaddress.ip_address(many[0]).version == ipaddress.ip_address(many[1]).version:
            ck.error(("spec", "clusterIPs", 1), f"{_show(many[1])} is the same IP family as clusterIPs[0]")
        if single and many and many[0] != single:
            ck.error(("spec", "clusterIPs", 0), f"{_show(many[0])} disagrees with spec.clusterIP {_show(single)}")
        ips = tuple(many) if many else ((single,) if single else ())
        # A cluster IP outside the Service range could be a pod's or a node's address: programming
        # it would hijack that address's traffic from this node's pods (CVE-2020-8554's pattern).
        for i, ip in enumerate(ips):
            if ip != "None" and not in_service_range(ip, self.service_cidrs):
                path = ("spec", "clusterIPs", i) if many else ("spec", "clusterIP")
                ck.error(path, f"{ip} is outside the Service range "
                               f"({', '.join(self.service_cidrs)}): see --service-cidr")
        return ips

    def _service_ports(self, ck: _Object, value: Any, required: bool) -> Tuple[ServicePort, ...]:
        raw = ck.list(value, ("spec", "ports"))
        if not raw:
            if required and isinstance(value, (list, type(None))):
                ck.error(("spec", "ports"), "missing or empty (a service with a cluster IP needs a port)")
            return ()
        out: List[ServicePort] = []
        names: Dict[str, int] = {}
        seen: Dict[Tuple[int, str], int] = {}
        for i, p in enumerate(raw):
            path: FieldPath = ("spec", "ports", i)
            item = ck.mapping(p, path, required=True)
            if item is None:
                continue
            before = ck.errors
            name = ck.string(item.get("name"), path + ("name",))
            if not name and len(raw) > 1:
                ck.error(path + ("name",), "required when a service has more than one port")
            elif name and name in names:
                ck.error(path + ("name",), f"duplicate port name {_show(name)} (also spec.ports[{names[name]}])")
            elif name:
                ck.name(name, path + ("name",), _DNS1123_LABEL, 63, "port name (DNS-1123 label)")
                names[name] = i
            port = ck.port(item.get("port"), path + ("port",))
            node_port = (ck.port(item["nodePort"], path + ("nodePort",))
                         if item.get("nodePort") is not None else None)
            protocol = ck.protocol(item.get("protocol"), path + ("protocol",))
            target = self._target_port(ck, item.get("targetPort"), path + ("targetPort",), port)
            if port is not None and protocol is not None:
                if (port, protocol) in seen:
                    ck.error(path, f"duplicate port {port}/{protocol} (also spec.ports[{seen[port, protocol]}])")
                seen.setdefault((port, protocol), i)
            if ck.errors == before and port is not None and protocol is not None and target is not None:
                out.append(ServicePort(name, protocol, port, target, node_port))
        return tuple(out)

    def _target_port(self, ck: _Object, value: Any, path: FieldPath,
                     port: Optional[int]) -> Union[int, str, None]:
        if value is None:
            return port  # the API server defaults targetPort to port
        if isinstance(value, str):
            # IANA_SVC_NAME: what a container port may be named, so what a targetPort may name.
            if (len(value) > 15 or not _DNS1123_LABEL.fullmatch(value) or "--" in value
                    or not re.search(r"[a-z]", value)):
                ck.error(path, f"{_show(value)} is not a valid port name (IANA_SVC_NAME: 1-15 lowercase "
                               "letters, digits and '-', at least one letter, no '-' at either end or twice in a row)")
                return None
            return value
        return ck.port(value, path)

    def _claim_frontends(self, ck: _Object, svc: Service) -> None:
        for ip in svc.cluster_ips:
            if ip in ("None", ""):
                continue
            norm = str(ipaddress.ip_address(ip))
            for i, sp in enumerate(svc.ports):
                key = (norm, sp.port, sp.protocol)
                if key in self._frontends:
                    ck.error(("spec", "ports", i), f"frontend {ip}:{sp.port}/{sp.protocol} is also "
                                                   f"claimed by {self._frontends[key]}")
                else:
                    self._frontends[key] = f"{ck.label} ({ck.source}:{ck.line()})"

    def _slice(self, ck: _Object, doc: Dict[str, Any], meta: Dict[str, Any], namespace: str,
               name: str) -> None:
        labels, _ = self._metadata(ck, meta, namespace, name, _DNS1123_SUBDOMAIN, 253,
                                   "endpointslice name (DNS-1123 subdomain)")
        self._claim_object(ck, "EndpointSlice", namespace, name)
        service_name = ""
        label_path: FieldPath = ("metadata", "labels", SERVICE_NAME_LABEL)
        if labels is not None and SERVICE_NAME_LABEL not in labels:
            ck.error(label_path, "missing (without it the slice cannot be linked to its Service)")
        elif labels is not None:
            service_name = labels[SERVICE_NAME_LABEL]
            ck.name(service_name, label_path, _DNS1035_LABEL, 63, "service name (DNS-1035 label)")
        address_type = doc.get("addressType")
        if address_type is None:
            ck.error(("addressType",), "missing (IPv4, IPv6 or FQDN)")
        elif address_type not in ADDRESS_TYPES:
            ck.error(("addressType",), f"{_show(address_type)} is not one of {', '.join(ADDRESS_TYPES)}")
            address_type = None
        ports = self._slice_ports(ck, doc.get("ports"))
        endpoints = tuple(self._endpoint(ck, e, ("endpoints", i), address_type)
                          for i, e in enumerate(ck.list(doc.get("endpoints"), ("endpoints",))))
        if ck.errors:
            return
        self.slices.append(EndpointSlice(namespace, name, service_name, address_type, ports,
                                         tuple(e for e in endpoints if e is not None)))

    def _slice_ports(self, ck: _Object, value: Any) -> Tuple[EndpointPort, ...]:
        out: List[EndpointPort] = []
        names: Dict[str, int] = {}
        for j, p in enumerate(ck.list(value, ("ports",))):
            path: FieldPath = ("ports", j)
            item = ck.mapping(p, path, required=True)
            if item is None:
                continue
            name = ck.string(item.get("name"), path + ("name",))
            if name in names:
                ck.error(path + ("name",), f"duplicate port name {_show(name)} (also ports[{names[name]}])")
            elif name:
                ck.name(name, path + ("name",), _DNS1123_LABEL, 63, "port name (DNS-1123 label)")
            names.setdefault(name, j)
            port = ck.port(item.get("port"), path + ("port",))
            node_port = (ck.port(item["nodePort"], path + ("nodePort",))
                         if item.get("nodePort") is not None else None)
            protocol = ck.protocol(item.get("protocol"), path + ("protocol",))
            if port is not None and protocol is not None:
                out.append(EndpointPort(name, port, protocol))
        return tuple(out)

    def _endpoint(self, ck: _Object, value: Any, path: FieldPath,
                  address_type: Optional[str]) -> Optional[Endpoint]:
        item = ck.mapping(value, path, required=True)
        if item is None:
            return None
        raw = ck.list(item.get("addresses"), path + ("addresses",))
        if not raw:
            if isinstance(item.get("addresses"), (list, type(None))):
                ck.error(path + ("addresses",), "missing or empty (an endpoint needs an address)")
            return None
        addresses: List[str] = []
        for k, a in enumerate(raw):
            apath = path + ("addresses", k)
            if address_type == "FQDN":
                if isinstance(a, str) and len(a) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(a):
                    addresses.append(a)
                else:
                    ck.error(apath, f"{_show(a)} is not a valid FQDN")
            elif ck.ip(a, apath, {"IPv4": 4, "IPv6": 6}.get(address_type or "")) is not None:
                # Only IPv4 slices are programmed; the address of an IPv6 one never becomes a backend.
                reason = forbidden_backend(a, self.service_cidrs) if address_type == "IPv4" else None
                if reason:
                    ck.error(apath, backend_message(reason))
                else:
                    addresses.append(a)
        cond = ck.mapping(item.get("conditions"), path + ("conditions",)) or {}
        ready = ck.boolean(cond.get("ready"), path + ("conditions", "ready"))
        serving = ck.boolean(cond.get("serving"), path + ("conditions", "serving"))
        terminating = ck.boolean(cond.get("terminating"), path + ("conditions", "terminating"))
        node_name = ck.string(item.get("nodeName"), path + ("nodeName",)) or None
        ref = ck.mapping(item.get("targetRef"), path + ("targetRef",)) or {}
        ref_kind = ck.string(ref.get("kind"), path + ("targetRef", "kind"))
        ref_name = ck.string(ref.get("name"), path + ("targetRef", "name"))
        ready = ready is not False  # discovery/v1: nil ready means ready
        return Endpoint(
            addresses=tuple(addresses),
            ready=ready,
            serving=ready if serving is None else serving,  # nil serving defers to ready
            terminating=terminating is True,  # nil terminating means not terminating
            node_name=node_name,
            target=f"{ref_kind}/{ref_name}" if ref_kind and ref_name else None,
        )
