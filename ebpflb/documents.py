"""Manifest text -> the objects in it, each converted or refused (pure core; the manifest
source's reader).

sources -> **documents** -> convert -> model -> plan -> apply. A text is JSON (read by `json`) or a
YAML stream (read by libyaml's C loader). A YAML stream is cut at its `---` lines into one chunk
per document; with a `ReadCache` from the previous read of the same file, a chunk whose text is
unchanged is not parsed again and an object whose content is unchanged is not validated again,
so editing one Service in a file of a thousand costs one Service. Lines are worked out only to
report a problem: the chunk is composed again, with marks, for that.

A text that cannot be read at all (invalid YAML or JSON, nesting or aliases past the bounds below)
is refused whole: the caller keeps what it read from that text last time.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

from .backend_rules import DEFAULT_SERVICE_CIDRS
from .convert import Converted
from .gateway import convert_any_document
from .errors import FieldPath, ManifestError, format_path
from .fields import a_type, show
from .gcpause import paused_gc

# The YAML loader: the C one when PyYAML was built with libyaml (kubectl dumps can be large).
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Hostile YAML bounds. libyaml's composer recurses once per nesting level in C (a few tens of
# thousands of levels overflow the stack and kill the process); aliases expand exponentially
# ("billion laughs"). No Kubernetes object nests beyond a few dozen levels or needs more aliases.
MAX_NESTING = 1000
MAX_ALIAS_EXPANSION = 10  # expanded nodes per written node, beyond ALIAS_EXPANSION_FLOOR
ALIAS_EXPANSION_FLOOR = 100_000
_CONSTRUCT_ERRORS = (ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError)
# A line that starts a YAML document. Directives ("%YAML", "%TAG") apply to the document after
# them, so a text holding any is read as one chunk.
_DOC_START = re.compile(r"^---(?=[ \t\r\n]|$)", re.M)
_DIRECTIVE = re.compile(r"^%", re.M)
# Texts larger than this are parsed with the cyclic garbage collector paused (ebpflb.gcpause).
BIG_TEXT = 64 * 1024


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
                None, None, f"cannot read {show(node.value)} as {str(node.tag).rpartition(':')[2]}: "
                f"{show(str(exc))}", node.start_mark) from None
    return guarded


# Collections are generator constructors (filled later, never raising these); scalars are not.
for _tag, _construct in list(_BaseLoader.yaml_constructors.items()):
    if not inspect.isgeneratorfunction(_construct):
        _YamlLoader.add_constructor(_tag, _guarded(_construct))


class TextError(Exception):
    """The text (or one chunk of it) cannot be read; `line` is 1-based within the chunk."""

    def __init__(self, message: str, line: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    """One object of a text: its verdict, where it is, and its problems as reportable errors."""

    converted: Converted
    docno: int  # 1-based document number in the text
    base: FieldPath  # () for a document, ("items", i) for an item of a List
    digest: bytes  # of the object's content: equal digests, equal verdicts
    errors: Tuple[ManifestError, ...] = ()  # the converter's problems, with lines
    line: Optional[int] = None  # where the object starts, when known without composing


@dataclass(frozen=True, slots=True)
class CachedChunk:
    """The verdicts of one clean chunk: how many documents it held, and its objects as
    (document index in the chunk, base path, content digest, verdict)."""

    documents: int
    # (document index in the chunk, base path, digest, verdict, start line within the chunk)
    objects: Tuple[Tuple[int, FieldPath, bytes, Converted, Optional[int]], ...]


@dataclass
class ReadCache:
    """What one read of a text learnt, for the next read of the same file: verdicts per chunk
    text and per object content. Only clean verdicts are kept (a refused object is checked again,
    so its errors carry current lines); only what the last read saw is kept, so it never grows."""

    chunks: Dict[bytes, CachedChunk] = field(default_factory=dict)
    objects: Dict[bytes, Converted] = field(default_factory=dict)


@dataclass
class TextResult:
    entries: List[ObjectEntry]
    errors: List[ManifestError]  # the text cannot be read: nothing in it counts
    cache: ReadCache
    parsed_bytes: int = 0  # bytes that went through a parser (not served from the cache)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


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
            None, None, f"aliases expand {len(size)} written nodes to {show(size[id(root)])} "
            f"(at most {limit})", root.start_mark)


def _yaml_documents(text: str) -> List[Any]:
    """Every document of a YAML text (None for an empty one); TextError with the line."""
    too_deep = _too_deep(text)
    if too_deep is not None:
        raise TextError(f"invalid YAML: nested deeper than {MAX_NESTING} levels", too_deep)
    try:
        loader = _YamlLoader(text)
    except UnicodeError as e:  # a str holding lone surrogates (never read from a file)
        raise TextError(f"invalid text: {e}") from None
    docs: List[Any] = []
    try:
        if "*" not in text:  # aliases need a "*": without one no document can expand
            while loader.check_data():
                docs.append(loader.get_data())
            return docs
        while loader.check_node():
            node = loader.get_node()
            _check_aliases(node)
            try:
                docs.append(loader.construct_document(node))
            except _CONSTRUCT_ERRORS as e:  # not a scalar (the guarded constructors name those)
                raise yaml.constructor.ConstructorError(None, None, f"cannot read document: {e}",
                                                        node.start_mark) from None
        return docs
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        detail = f"{e.problem} ({e.context})" if e.context else str(e.problem)
        raise TextError(f"invalid YAML: {detail}", mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as e:  # a character YAML forbids (NUL, most controls)
        # libyaml counts bytes of the UTF-8 text, the pure-Python reader characters
        before = text.encode()[:e.position] if _BaseLoader is not yaml.SafeLoader else text[:e.position]
        char = f"#x{e.character:04x}" if isinstance(e.character, int) else show(e.character)
        raise TextError(f"invalid YAML: character {char}: {e.reason}",
                        before.count("\n" if isinstance(before, str) else b"\n") + 1) from None
    except yaml.YAMLError as e:
        raise TextError(f"invalid YAML: {e}") from None
    finally:
        loader.dispose()


def load_documents(text: str) -> List[Any]:
    """Every document of a manifest text, JSON or YAML, with the same guards as the manifest
    reader (nesting, aliases); a `kind: List` gives its items. TextError names the line."""
    docs = _json_document(text) if _is_json(text) else None
    if docs is None:
        docs = _yaml_documents(text)
    out: List[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"),
                                                                              list):
            out.extend(doc["items"])
        else:
            out.append(doc)
    return out


def _json_document(text: str) -> Optional[List[Any]]:
    """The one document of a JSON text, or None when it is not JSON (the YAML reader then reads
    it, and names the line of any problem)."""
    try:
        return [json.loads(text)]
    except (ValueError, RecursionError):
        return None


def split_chunks(text: str) -> List[Tuple[int, str]]:
    """(first line, 0-based; text) of each document chunk of a YAML stream, in order. Reading the
    chunks one by one gives the same documents as reading the stream: YAML documents share
    nothing but directives, and a text with directives stays whole."""
    if _DIRECTIVE.search(text):
        return [(0, text)]
    starts = [m.start() for m in _DOC_START.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    out = []
    line = 0
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        chunk = text[start:end]
        out.append((line, chunk))
        line += chunk.count("\n")
    return out


def _is_json(text: str) -> bool:
    stripped = text.lstrip(" \t\r\n\ufeff")
    return stripped[:1] in ("{", "[")


def _objects_of(doc: Any, docno: int, cidrs: Tuple[str, ...]
               ) -> Iterator[Tuple[Any, FieldPath, str, Optional[str], Optional[str]]]:
    """(object, base path, label, default kind, default apiVersion) of one document: itself, or
    the items of a List (kubectl prints `kind: List`; the API returns ServiceList etc. whose
    items carry neither kind nor apiVersion). A List whose items are not a list yields one
    refused verdict in place of an object."""
    if doc is None:  # empty documents ("---" twice) are normal in hand-written files
        return
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if not (isinstance(kind, str) and kind.endswith("List")):
        yield doc, (), f"document {docno}", None, None
        return
    item_kind = kind[:-len("List")] or None
    item_api = doc.get("apiVersion") if item_kind else None
    items = doc.get("items")
    if items is None:
        return
    if not isinstance(items, list):
        yield (Converted(None, None, f"{kind} (document {docno})",
                         problems=((("items",), f"must be a list, not {a_type(items)}"),)),
               (), "", None, None)
        return
    for i, item in enumerate(items):
        yield item, ("items", i), f"items[{i}] (document {docno})", item_kind, item_api


def _object_digest(obj: Any, default_kind: Optional[str], default_api: Optional[str]) -> bytes:
    """Equal for equal content: repr of parsed JSON/YAML data is deterministic (insertion order
    is the text's). b"" (never cached) for data repr cannot print: nesting past the recursion
    limit, integers past 4300 digits (hostile input, refused anyway)."""
    try:
        text = repr((default_kind, default_api, obj))
    except (RecursionError, ValueError):
        return b""
    return _digest(text.encode("utf-8", "surrogatepass"))


def read_text(text: str, source: str, service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS,
              cache: Optional[ReadCache] = None) -> TextResult:
    """Every object of a text with its verdict. `cache`: the previous read's (not modified)."""
    old = cache or ReadCache()
    new = ReadCache()
    entries: List[ObjectEntry] = []
    cidrs = tuple(service_cidrs)
    parsed = 0
    with paused_gc(len(text) > BIG_TEXT):
        json_docs = _json_document(text) if _is_json(text) else None
    units = [(0, text)] if json_docs is not None else split_chunks(text)
    docno = 0
    for first_line, chunk in units:
        chunk_digest = _digest(chunk.encode("utf-8", "surrogatepass"))
        cached = old.chunks.get(chunk_digest) if json_docs is None else None
        if cached is not None:
            entries.extend(ObjectEntry(converted, docno + i + 1, base, digest, (),
                                       None if line is None else first_line + line)
                           for i, base, digest, converted, line in cached.objects)
            docno += cached.documents
            new.chunks[chunk_digest] = cached
            continue
        split = _split_list(chunk) if json_docs is None else None
        listed = _read_list(split, old, new, source, cidrs, chunk, first_line, docno + 1) \
            if split is not None else None
        if listed is not None:
            found_items, item_entries, item_bytes = listed
            parsed += item_bytes
            entries.extend(item_entries)
            if all(not e.errors for e in item_entries):
                new.chunks[chunk_digest] = CachedChunk(1, tuple(found_items))
            docno += 1
            continue
        parsed += len(chunk)
        if json_docs is not None:
            docs = json_docs
        else:
            try:
                with paused_gc(len(chunk) > BIG_TEXT):
                    docs = _yaml_documents(chunk)
            except TextError as exc:
                line = exc.line + first_line if exc.line is not None else None
                return TextResult([], [ManifestError(source, None, None, exc.message, line)],
                                  old, parsed)
        clean = True
        found: List[Tuple[int, FieldPath, bytes, Converted, Optional[int]]] = []
        lines = LineFinder(chunk)  # composed only if a problem needs a line
        start = _start_line(chunk) if len(docs) == 1 and json_docs is None else None
        for i, doc in enumerate(docs):
            for obj, base, label, kind, api in _objects_of(doc, docno + i + 1, cidrs):
                if isinstance(obj, Converted):
                    converted, digest = obj, b""
                elif json_docs is None:
                    # A YAML chunk's text is its objects' content: its digest and the object's
                    # place in it identify the object, at no cost per object.
                    digest = _digest(chunk_digest + repr((i, base)).encode())
                    converted = convert_any_document(obj, label, kind, api, cidrs)
                else:
                    digest = _object_digest(obj, kind, api)
                    converted = (old.objects.get(digest) or new.objects.get(digest)) if digest else None
                    if converted is None:
                        converted = convert_any_document(obj, label, kind, api, cidrs)
                if converted.refused:
                    clean = False
                    errors = _located_errors(converted, source, lines, first_line, i, base)
                else:
                    if digest and json_docs is not None:
                        new.objects[digest] = converted
                    errors = ()
                line = start if base == () else None
                found.append((i, base, digest, converted, line))
                entries.append(ObjectEntry(converted, docno + i + 1, base, digest, errors,
                                           None if line is None else first_line + line))
        if clean and json_docs is None:
            new.chunks[chunk_digest] = CachedChunk(len(docs), tuple(found))
        docno += len(docs)
    return TextResult(entries, [], new, parsed)


# kubectl's List: `items:` at column 0, its entries `- ` at column 0, the rest of the document at
# column 0 after it. YAML anchors and aliases could tie items together: texts with any stay whole.
_ITEMS_LINE = re.compile(r"^items:[ \t]*(#.*)?$")
_ANCHOR_OR_ALIAS = re.compile(r"(?:^|[\s\[\]{},:-])[&*][^\s\]},]", re.M)


def _split_list(chunk: str) -> Optional[Tuple[str, List[Tuple[int, str]]]]:
    """(the document without its items, [(first line of an item, its text)]) for a document in
    kubectl's List shape, or None. Each item is then read alone, as a one-entry sequence: what
    it is inside the List (a block sequence entry owns every line up to the next entry)."""
    if "items:" not in chunk or _ANCHOR_OR_ALIAS.search(chunk):
        return None
    lines = chunk.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _ITEMS_LINE.match(line.rstrip("\r\n"))), None)
    if start is None:
        return None
    items: List[Tuple[int, List[str]]] = []
    end = len(lines)
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.startswith("- ") or line.rstrip("\r\n") == "-":
            items.append((i, [line]))
        elif line[:1] in (" ", "#", "\n", "\r", "") or not line.strip():
            if items:
                items[-1][1].append(line)
            elif line.strip() and not line.startswith("#"):
                return None  # indented content before the first entry: not kubectl's shape
        else:
            end = i  # the next key at column 0
            break
    if len(items) < 2:
        return None  # nothing to gain
    header = "".join(lines[:start]) + "items: []\n" + "".join(lines[end:])
    return header, [(i, "".join(text)) for i, text in items]


def _read_list(split: Tuple[str, List[Tuple[int, str]]], old: "ReadCache", new: "ReadCache",
               source: str, cidrs: Tuple[str, ...], chunk: str, first_line: int, docno: int
               ) -> Optional[Tuple[List[Tuple[int, FieldPath, bytes, Converted]], List[ObjectEntry], int]]:
    """The items of a List read one by one, each parsed only when its text changed; None when
    the split does not hold (the caller then parses the whole document)."""
    header, items = split
    try:
        docs = _yaml_documents(header)
    except TextError:
        return None
    if len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("items") != []:
        return None
    kind = docs[0].get("kind")
    if not (isinstance(kind, str) and kind.endswith("List")):
        return None
    item_kind = kind[:-len("List")] or None
    item_api = docs[0].get("apiVersion") if item_kind else None
    parsed = len(header)
    found: List[Tuple[int, FieldPath, bytes, Converted, Optional[int]]] = []
    entries: List[ObjectEntry] = []
    for i, (item_line, text) in enumerate(items):
        digest = _digest(f"{item_kind}\0{item_api}\0{text}".encode("utf-8", "surrogatepass"))
        converted = old.objects.get(digest) or new.objects.get(digest)
        if converted is None:
            try:
                item_docs = _yaml_documents(text)
            except TextError:
                return None
            if len(item_docs) != 1 or not isinstance(item_docs[0], list) or len(item_docs[0]) != 1:
                return None
            parsed += len(text)
            converted = convert_any_document(item_docs[0][0], f"items[{i}] (document {docno})",
                                             item_kind,
                                             item_api if isinstance(item_api, str) else None, cidrs)
        base: FieldPath = ("items", i)
        errors: Tuple[ManifestError, ...] = ()
        if converted.refused:
            # The item alone is a one-entry sequence: its fields are under entry 0.
            errors = _located_errors(converted, source, LineFinder(text), first_line + item_line,
                                     0, (0,))
        else:
            new.objects[digest] = converted
        found.append((0, base, digest, converted, item_line + 1))
        entries.append(ObjectEntry(converted, docno, base, digest, errors,
                                   first_line + item_line + 1))
    return found, entries, parsed


def _start_line(chunk: str) -> Optional[int]:
    """The 1-based line (within the chunk) where a chunk's one document's content starts: the
    first line that is not blank, a comment or a bare `---`. Where a line starts with `---` and
    content, that line."""
    for n, line in enumerate(chunk.splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#") or text == "---" or \
                (text.startswith("---") and text[3:].lstrip().startswith("#")):
            continue
        return n
    return None


def _located_errors(converted: Converted, source: str, lines: "LineFinder", first_line: int,
                    doc_index: int, base: FieldPath) -> Tuple[ManifestError, ...]:
    """The converter's problems as errors with file lines (`lines` composes its text once)."""
    out = []
    for path, message in converted.problems:
        line = lines.line(doc_index, base + path)
        out.append(ManifestError(source, converted.label, format_path(path) or None, message,
                                 line + first_line if line is not None else None))
    return tuple(sorted(out, key=lambda e: e.line if e.line is not None else 0))


class LineFinder:
    """Lines of field paths in a YAML (or JSON) text, composed on first use. A missing field is
    reported at its nearest parent that exists; a mapping entry at its key's line."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._roots: Optional[List[yaml.Node]] = None

    def _compose(self) -> List[yaml.Node]:
        if self._roots is None:
            try:
                self._roots = list(yaml.compose_all(self.text, Loader=_BaseLoader))
            except (yaml.YAMLError, UnicodeError, RecursionError):
                self._roots = []
        return self._roots

    def line(self, doc_index: int, path: FieldPath) -> Optional[int]:
        roots = self._compose()
        if doc_index >= len(roots) or roots[doc_index] is None:
            return None
        node = roots[doc_index]
        line = node.start_mark.line + 1
        for part in path[:64]:  # recursive aliases would otherwise never end
            child = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == part:
                        child, line = v, k.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if 0 <= part < len(node.value):
                    child = node.value[part]
                    line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line


def object_line(text: str, docno: int, base: FieldPath) -> Optional[int]:
    """The line an object starts at in a text (for "already defined at FILE:LINE")."""
    line_offset = 0
    index = docno - 1
    if not _is_json(text) or _json_document(text) is None:
        # Find the chunk holding the document, so only that chunk is composed.
        seen = 0
        for first_line, chunk in split_chunks(text):
            try:
                count = len([None for _ in yaml.compose_all(chunk, Loader=_BaseLoader)])
            except (yaml.YAMLError, UnicodeError, RecursionError):
                return None
            if index < seen + count:
                return _offset(LineFinder(chunk).line(index - seen, base), first_line)
            seen += count
        return None
    return _offset(LineFinder(text).line(index, base), line_offset)


def _offset(line: Optional[int], first_line: int) -> Optional[int]:
    return line + first_line if line is not None else None
