"""The document reader (pure): reading a YAML stream document by document, and kubectl's List item
by item, gives exactly what reading it whole gives; an edit re-parses only what it touched; JSON
goes through `json`; problems carry the line a whole read would give."""
import json
from typing import Any, List

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpflb.convert import convert_document
from ebpflb.documents import LineFinder, _split_list, _yaml_documents, read_text, split_chunks

pytestmark = pytest.mark.unit

SETTINGS = dict(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.text(alphabet="ab -:#&*\n'\"|>", max_size=12), st.integers(-5, 70000),
                    st.booleans(), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text("abcxyz-", min_size=1, max_size=5), inner,
                                                 max_size=3)), max_leaves=8)


@st.composite
def service(draw, i: int) -> dict:
    """A Service, valid or not, with arbitrary extra data that YAML must carry through."""
    doc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": f"s{i}", "namespace": "demo",
                        "annotations": {"note": draw(st.text("ab -:#\n|>", max_size=20))}},
           "spec": {"clusterIP": f"10.96.0.{i + 1}",
                    "ports": [{"port": draw(st.sampled_from([80, 443, 70000])), "name": "p"}]}}
    if draw(st.booleans()):
        doc["extra"] = draw(values)
    return doc


def whole(text: str) -> List[Any]:
    """The model objects (or problems) a whole, one-piece read gives."""
    out = []
    for doc in _yaml_documents(text):
        if doc is None:
            continue
        items = doc["items"] if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        for obj in items:
            c = convert_document(obj, "x")
            out.append(c.obj if c.obj is not None else c.problems)
    return out


def assert_lines_are_the_composers(text: str, result) -> None:
    """Start lines recorded at read time (for "already defined at FILE:LINE") are the lines the
    composer gives."""
    finder = LineFinder(text)
    for entry in result.entries:
        if entry.line is not None:
            assert entry.line == finder.line(entry.docno - 1, entry.base), entry


def read(text: str, cache=None):
    result = read_text(text, "t.yaml", cache=cache)
    assert not result.errors, result.errors
    objs = [e.converted.obj if e.converted.obj is not None else e.converted.problems
            for e in result.entries]
    return objs, result


@settings(**SETTINGS)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=6), st.data())
def test_a_stream_read_document_by_document_equals_a_whole_read(ids, data) -> None:
    docs = [data.draw(service(i)) for i in ids]
    parts = []
    for doc in docs:
        text = yaml.safe_dump(doc, default_flow_style=data.draw(st.sampled_from([False, None])))
        prefix = data.draw(st.sampled_from(["---\n", "--- \n", "---\n# a comment\n", "---\n\n"]))
        parts.append(prefix + text)
    if data.draw(st.booleans()):
        parts.insert(0, "# leading comment\n")
    if data.draw(st.booleans()):
        parts.append("---\n")  # an empty document at the end
    text = "".join(parts)
    objs, result = read(text)
    assert objs == whole(text)
    assert_lines_are_the_composers(text, result)


@settings(**SETTINGS)
@given(st.lists(st.integers(0, 30), min_size=2, max_size=6), st.data())
def test_a_kubectl_list_read_item_by_item_equals_a_whole_read(ids, data) -> None:
    items = [data.draw(service(i)) for i in ids]
    doc = {"apiVersion": "v1", "items": items, "kind": "List",
           "metadata": {"resourceVersion": ""}}
    text = yaml.safe_dump(doc)  # kubectl's layout: keys sorted, `- ` entries at column 0
    if "&" not in text and "*" not in text:  # either might be an anchor: then read whole
        assert _split_list(text) is not None
    objs, result = read(text)
    assert objs == whole(text)
    assert_lines_are_the_composers(text, result)


def test_an_edit_reparses_only_the_edited_item_or_document() -> None:
    items = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": "d"},
              "spec": {"clusterIP": f"10.96.0.{i + 1}", "ports": [{"port": 80}]}} for i in range(200)]
    for text_of in (lambda: yaml.safe_dump({"apiVersion": "v1", "items": items, "kind": "List"}),
                    lambda: yaml.safe_dump_all(items, explicit_start=True)):
        items[7]["spec"]["ports"][0]["port"] = 80
        first, r1 = read(text_of())
        items[7]["spec"]["ports"][0]["port"] = 81
        text = text_of()
        second, r2 = read(text, r1.cache)
        assert second == whole(text) and second[7].ports[0].port == 81
        assert r2.parsed_bytes < len(text) / 50, (r2.parsed_bytes, len(text))


def test_anchors_keep_a_list_whole() -> None:
    text = ("apiVersion: v1\nkind: List\nitems:\n"
            "- &svc\n  apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: d}\n"
            "  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n"
            "- apiVersion: v1\n  kind: Service\n  metadata: {name: b, namespace: d}\n"
            "  spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}\n")
    assert _split_list(text) is None
    objs, _ = read(text)
    assert objs == whole(text) and [o.name for o in objs] == ["a", "b"]


def test_a_problem_in_an_item_has_the_line_of_a_whole_read() -> None:
    text = ("apiVersion: v1\nitems:\n"
            "- apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: d}\n"
            "  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n"
            "# between items\n"
            "- apiVersion: v1\n  kind: Service\n  metadata: {name: b, namespace: d}\n"
            "  spec:\n    clusterIP: 10.96.0.2\n    ports:\n    - port: 99999\n"
            "kind: List\n")
    result = read_text(text, "t.yaml")
    [bad] = [e for e in result.entries if e.errors]
    [error] = bad.errors
    assert (error.obj, error.field, error.line) == ("Service d/b", "spec.ports[0].port", 14)
    assert text.splitlines()[error.line - 1] == "    - port: 99999"


def test_json_goes_through_json_and_a_bad_one_is_named_with_its_line() -> None:
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "d"},
           "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}
    objs, result = read(json.dumps(doc, indent=2))
    assert objs[0].name == "a" and result.parsed_bytes == len(json.dumps(doc, indent=2))
    broken = json.dumps(doc, indent=2)[:-2]  # cut short: neither JSON nor YAML
    bad = read_text(broken, "t.json")
    assert bad.errors and bad.errors[0].line >= broken.count("\n") + 1  # at the end, as libyaml sees it
    assert "invalid YAML" in bad.errors[0].message


def test_directives_keep_a_stream_whole() -> None:
    text = "%YAML 1.1\n---\na: 1\n---\nb: 2\n"
    assert split_chunks(text) == [(0, text)]
