"""The manifest source on a real file system (a temporary directory; inotify is the kernel's, not
a fake): it wakes on the event, re-reads only changed files and re-parses only changed
documents, refuses a bad object alone with its file:line and field, keeps a file's last good
objects when the file does not parse or cannot be read, and turns every file-system oddity into
an error about that file (symlink loop, dangling link, a directory or a FIFO where a file was, a
file its reader may not read), never a crash."""
import json
import os
import select
import time
from pathlib import Path
from typing import Dict, List

import pytest

from ebpflb.sources.files import ManifestSource
from ebpflb.store import ObjectStore

pytestmark = pytest.mark.unit


def service(name: str, ip: str, port: int = 80) -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\n"
            f"spec:\n  clusterIP: {ip}\n  ports:\n  - port: {port}\n    targetPort: 8080\n")


def endpoints(name: str, *addresses: str) -> str:
    eps = "".join(f"- addresses: [{a}]\n" for a in addresses)
    return (f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x\n"
            f"  namespace: demo\n  labels:\n    kubernetes.io/service-name: {name}\n"
            f"addressType: IPv4\nports:\n- port: 8080\nendpoints:\n{eps}")


def docs(*texts: str) -> str:
    return "---\n".join(texts)


class Follow:
    """The agent's use of the source: an object store fed with every batch."""

    def __init__(self, src: ManifestSource):
        self.src = src
        self.store = ObjectStore()
        src.start()

    def take(self):
        batch = self.src.take()
        self.store.apply(batch.changes)
        return batch

    def woken(self, timeout: float = 2.0) -> bool:
        fd = self.src.fileno()
        assert fd is not None, "inotify not in use"
        return bool(select.select([fd], [], [], timeout)[0])

    def services(self) -> Dict[str, int]:
        return {name: s.ports[0].port for (_, name), s in sorted(self.store.services.items())}

    def backends(self, name: str) -> List[str]:
        return sorted(a for s in self.store.slices.values() if s.service_name == name
                      for e in s.endpoints for a in e.addresses)


def write(path: Path, text: str) -> None:
    """As an editor does it: a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    d = tmp_path / "manifests"
    d.mkdir()
    for i in range(5):
        write(d / f"f{i}.yaml", docs(*(docs(service(f"s{i}{j}", f"10.96.{i}.{j + 1}"),
                                             endpoints(f"s{i}{j}", f"10.244.{i}.{j + 1}"))
                                       for j in range(10))))
    return d


def test_wakes_on_the_event_and_reads_only_the_changed_document(mdir: Path) -> None:
    f = Follow(ManifestSource(str(mdir)))
    assert len(f.take().changes) == 100 and f.src.mode == "inotify"
    parsed = f.src.mset.parsed_bytes
    text = (mdir / "f3.yaml").read_text()
    write(mdir / "f3.yaml", text.replace("[10.244.3.5]", "[10.244.3.55]"))
    assert f.woken()
    batch = f.take()
    assert [(c.kind, c.key) for c in batch.changes] == [("EndpointSlice", ("demo", "s34-x"))]
    assert f.backends("s34") == ["10.244.3.55"]
    # One document of one file went through the parser; the other 99 objects were not read.
    assert 0 < f.src.mset.parsed_bytes - parsed < len(text) / 10
    assert not f.take().changes


def test_a_bad_object_is_refused_alone_with_file_line_and_field(mdir: Path, caplog) -> None:
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    text = (mdir / "f1.yaml").read_text()
    bad = text.replace("name: s13\n", "name: s13\n").replace(
        "clusterIP: 10.96.1.4\n  ports:\n  - port: 80", "clusterIP: 10.96.1.4\n  ports:\n  - port: 80000")
    bad = bad.replace("[10.244.1.7]", "[10.244.1.77]")  # and a good change in the same edit
    write(mdir / "f1.yaml", bad)
    assert f.woken()
    batch = f.take()
    assert [c.key for c in batch.changes] == [("demo", "s16-x")]
    assert f.backends("s16") == ["10.244.1.77"]
    assert f.services()["s13"] == 80  # the last good version stays
    [error] = [e for e in batch.errors]
    line = bad.splitlines().index("  - port: 80000") + 1
    assert (error.source, error.line, error.obj, error.field) == (
        str(mdir / "f1.yaml"), line, "Service demo/s13", "spec.ports[0].port")
    assert "refused, its last good version stays programmed" in caplog.text
    write(mdir / "f1.yaml", text.replace("port: 80\n    targetPort: 8080\n", "port: 81\n    targetPort: 8080\n", 4))
    f.woken()
    f.take()
    assert f.services()["s13"] == 81 and f.backends("s16") == ["10.244.1.7"]


def test_a_file_that_does_not_parse_keeps_its_objects(mdir: Path) -> None:
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    write(mdir / "f2.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n")
    assert f.woken()
    batch = f.take()
    assert batch.changes == [] and len(f.services()) == 50
    # Named where libyaml noticed: the end of the text, after the unclosed bracket.
    assert "invalid YAML" in batch.errors[0].message and batch.errors[0].line == 4
    (mdir / "f2.yaml").write_text("")  # emptied on purpose: its objects go
    f.woken()
    assert len(f.take().changes) == 20 and len(f.services()) == 40


def test_a_half_written_file_is_not_read_until_its_writer_closes_it(mdir: Path) -> None:
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    full = (mdir / "f4.yaml").read_text()
    cut = full.index("---", len(full) // 3)  # a document boundary: the first part parses fine
    with open(mdir / "f4.yaml", "w") as out:
        out.write(full[:cut])
        out.flush()
        assert not f.woken(0.3)  # no event while it is open for writing
        assert f.take().changes == [] and len(f.services()) == 50
        out.write(full[cut:])
    assert f.woken()
    assert f.take().changes == [] and len(f.services()) == 50


def test_a_removed_file_takes_its_objects_with_it(mdir: Path) -> None:
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    (mdir / "f0.yaml").unlink()
    assert f.woken()
    assert len(f.take().changes) == 20 and "s00" not in f.services()


@pytest.mark.parametrize("oddity", ["symlink loop", "dangling symlink", "directory", "fifo"])
def test_file_system_oddities_are_errors_about_that_file(mdir: Path, oddity: str) -> None:
    """Where a manifest file was, something unreadable appears: its objects stay, the error
    names the file, the agent goes on, and the others still apply."""
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    target = mdir / "f0.yaml"
    target.unlink()
    if oddity == "symlink loop":
        os.symlink("f0b.yaml", target)
        os.symlink("f0.yaml", mdir / "f0b.yaml")
        expected = "symlink loop"
    elif oddity == "dangling symlink":
        os.symlink("nowhere.yaml", target)
        expected = "dangling symlink"
    elif oddity == "directory":
        target.mkdir()
        expected = "is a directory"
    else:
        os.mkfifo(target)
        expected = "not a regular file"
    write(mdir / "f1.yaml", (mdir / "f1.yaml").read_text().replace("[10.244.1.1]", "[10.244.1.99]"))
    assert f.woken()
    time.sleep(0.1)
    batch = f.take()
    assert [c.key for c in batch.changes] == [("demo", "s10-x")]
    assert len(f.services()) == 50 and f.backends("s00") == ["10.244.0.1"]
    assert any(e.source == str(target) and expected in e.message for e in batch.errors), batch.errors
    assert any(expected in e.message for e in f.src.problems())
    f.src._next_scan = 0  # a safety rescan: the same error, logged once, and no change
    assert f.take().changes == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as another user")
def test_a_file_its_reader_may_not_read_keeps_its_objects() -> None:
    """As an unprivileged user (a forked child drops to nobody), a file that becomes unreadable
    is an error naming it; its objects stay."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="ebpflb-perm-"))  # pytest's tmp_path is root's alone
    try:
        _unreadable(d)
    finally:
        shutil.rmtree(d)


def _unreadable(d: Path) -> None:
    os.chmod(d, 0o777)
    (d / "a.yaml").write_text(docs(service("web", "10.96.0.10"), endpoints("web", "10.244.0.1")))
    (d / "b.yaml").write_text(service("api", "10.96.0.11"))
    os.chmod(d / "a.yaml", 0o644)
    os.chmod(d / "b.yaml", 0o644)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody
        result = {"crash": "before"}
        told = False
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            src = ManifestSource(str(d))
            src.start()
            first = len(src.take().changes)
            os.write(write_fd, b"1")  # the parent may now take a.yaml away from us
            told = True
            time.sleep(0.5)
            batch = src.take()
            src._next_scan = 0
            again = src.take()
            result = {"first": first, "changes": len(batch.changes) + len(again.changes),
                      "errors": [str(e) for e in batch.errors + again.errors]}
        except BaseException as exc:  # reported to the parent, which fails the test with it
            result = {"crash": repr(exc)}
        finally:
            try:
                if not told:
                    os.write(write_fd, b"1")
                os.write(write_fd, json.dumps(result).encode())
            finally:
                os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"1"
    os.chmod(d / "a.yaml", 0o600)
    os.utime(d / "a.yaml")
    os.waitpid(pid, 0)
    result = json.loads(os.read(read_fd, 65536))
    os.close(read_fd)
    assert "crash" not in result, result
    assert result["first"] == 3 and result["changes"] == 0
    assert any("a.yaml: cannot read: permission denied" in e for e in result["errors"]), result


def test_a_duplicate_in_another_file_is_refused_naming_the_first(mdir: Path) -> None:
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    write(mdir / "z.yaml", service("s00", "10.96.9.9", port=99))
    assert f.woken()
    batch = f.take()
    assert batch.changes == [] and f.services()["s00"] == 80
    [error] = batch.errors
    assert error.message == f"duplicate object: already defined at {mdir / 'f0.yaml'}:1"
    (mdir / "f0.yaml").unlink()  # the first definition goes: the second one counts now
    f.woken()
    f.take()
    assert f.services()["s00"] == 99


def test_configmap_volume_swap_is_followed(tmp_path: Path) -> None:
    """A ConfigMap volume: each file a link through `..data`, which the kubelet swaps to a new
    timestamped directory in one rename."""
    d = tmp_path / "cm"
    d.mkdir()
    v1 = d / "..2026_12_04_1"
    v1.mkdir()
    (v1 / "svc.yaml").write_text(docs(service("web", "10.96.0.10"), endpoints("web", "10.244.0.1")))
    os.symlink(v1.name, d / "..data")
    os.symlink("..data/svc.yaml", d / "svc.yaml")
    f = Follow(ManifestSource(str(d)))
    f.take()
    assert f.backends("web") == ["10.244.0.1"]
    v2 = d / "..2026_12_04_2"
    v2.mkdir()
    (v2 / "svc.yaml").write_text(docs(service("web", "10.96.0.10"), endpoints("web", "10.244.0.2")))
    os.symlink(v2.name, d / "..data_tmp")
    os.replace(d / "..data_tmp", d / "..data")
    assert f.woken()
    f.take()
    assert f.backends("web") == ["10.244.0.2"]


def test_a_vanished_directory_keeps_everything(mdir: Path) -> None:
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    moved = mdir.with_name("elsewhere")
    os.rename(mdir, moved)
    f.woken()
    batch = f.take()
    assert batch.changes == [] and len(f.services()) == 50
    os.rename(moved, mdir)
    f.src._next_scan = 0
    write(mdir / "f0.yaml", service("s00", "10.96.0.1", port=81))
    f.take()  # changed while nothing watched it: read once it has stopped changing
    assert f.services()["s00"] == 80
    f.src._next_scan = 0
    f.take()
    assert f.services()["s00"] == 81 and len(f.services()) == 41


def test_polling_reads_a_change_once_it_has_settled(mdir: Path) -> None:
    """Without inotify, a changed file is read at the poll after the one that saw it change
    (unchanged in between): a file being written is not read half-way."""
    src = ManifestSource(str(mdir), use_inotify=False, poll_interval=0.05)
    f = Follow(src)
    f.take()
    assert src.fileno() is None and src.mode == "poll"
    write(mdir / "f0.yaml", service("s00", "10.96.0.1", port=82))
    time.sleep(0.06)
    assert f.take().changes == []  # seen changing
    time.sleep(0.06)
    assert f.take().changes != [] and f.services()["s00"] == 82


def test_single_file_source_follows_rename_over_write(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    write(path, docs(service("web", "10.96.0.10"), endpoints("web", "10.244.0.1")))
    f = Follow(ManifestSource(str(path)))
    f.take()
    write(path, docs(service("web", "10.96.0.10"), endpoints("web", "10.244.0.2")))
    assert f.woken()
    f.take()
    assert f.backends("web") == ["10.244.0.2"]
    path.unlink()  # the one file gone: an unmounted volume, not a deleted cluster
    f.woken()
    batch = f.take()
    assert batch.changes == [] and f.backends("web") == ["10.244.0.2"]
    assert "no such file" in batch.errors[0].message


def test_json_manifests_are_read_by_the_json_parser(tmp_path: Path) -> None:
    d = tmp_path / "j"
    d.mkdir()
    items = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": "demo"},
              "spec": {"clusterIP": f"10.96.0.{i + 1}", "ports": [{"port": 80}]}} for i in range(3)]
    write(d / "list.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    f = Follow(ManifestSource(str(d)))
    assert len(f.take().changes) == 3
    items[1]["spec"]["ports"][0]["port"] = 70000
    write(d / "list.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=1))
    f.woken()
    batch = f.take()
    assert batch.changes == [] and f.services()["s1"] == 80
    [error] = batch.errors
    assert error.obj == "Service demo/s1" and error.field == "spec.ports[0].port"
    assert error.line is not None and '"port": 70000' in (d / "list.json").read_text().splitlines()[error.line - 1]


def test_a_new_file_is_read_once_its_writer_closes_it(mdir: Path) -> None:
    """Created and written in two halves (a `kubectl get -o yaml > new.yaml`): the creation
    wakes the agent, but nothing is read until the file is closed."""
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    text = docs(service("new1", "10.96.9.1"), service("new2", "10.96.9.2"))
    with open(mdir / "new.yaml", "w") as out:
        out.write(text[: text.index("---")])
        out.flush()
        assert f.woken()  # IN_CREATE
        assert f.take().changes == [] and "new1" not in f.services()
        out.write(text[text.index("---"):])
    assert f.woken()  # IN_CLOSE_WRITE
    assert {c.key[1] for c in f.take().changes} == {"new1", "new2"}


def test_a_rescan_does_not_read_a_file_caught_mid_write(mdir: Path) -> None:
    """The safety rescan finds a file changed without an event (here: written while the test
    holds it open, so no close event yet): it is read only once it has stopped changing."""
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    full = (mdir / "f1.yaml").read_text()
    with open(mdir / "f1.yaml", "w") as out:
        out.write(full[: full.index("---", len(full) // 2)])
        out.flush()
        f.src._next_scan = 0
        assert f.take().changes == []  # seen changing: not read
        out.write(full[full.index("---", len(full) // 2):])
    f.src._names.clear()  # as if the close event were lost too
    f.src._inotify.read(timeout=0)
    f.src._next_scan = 0
    f.take()
    f.src._next_scan = 0
    assert f.take().changes == [] and len(f.services()) == 50  # read whole: nothing changed
    assert f.src._fingerprints[str(mdir / "f1.yaml")][2] == len(full.encode())  # it was read


def test_a_missing_path_at_start_is_waited_for_not_read_as_empty(tmp_path: Path) -> None:
    """A restarted agent whose manifest directory is not mounted yet must not program an empty
    cluster over its predecessor's pins: the source is not synced until it has read the path."""
    d = tmp_path / "later"
    src = ManifestSource(str(d), poll_interval=0.05)
    f = Follow(src)
    batch = f.take()
    assert not src.synced and batch.changes == []
    d.mkdir()
    write(d / "a.yaml", service("web", "10.96.0.10"))
    time.sleep(0.06)
    f.take()
    assert src.synced and f.services() == {"web": 80}


def test_the_revision_says_every_file_written_before_it_was_read(mdir: Path) -> None:
    f = Follow(ManifestSource(str(mdir)))
    f.take()
    write(mdir / "f2.yaml", (mdir / "f2.yaml").read_text().replace("[10.244.2.3]", "[10.244.2.33]"))
    written = time.time_ns()
    assert f.src.revision() < written
    f.woken()
    f.take()
    assert f.src.revision() >= written and f.backends("s22") == ["10.244.2.33"]
    # Polling: a change is read one poll after it was seen, and the revision follows that.
    src = ManifestSource(str(mdir), use_inotify=False, poll_interval=0.01)
    p = Follow(src)
    p.take()
    write(mdir / "f2.yaml", (mdir / "f2.yaml").read_text().replace("[10.244.2.33]", "[10.244.2.4]"))
    written = time.time_ns()
    time.sleep(0.02)
    p.take()
    assert src.revision() < written and p.backends("s22") == ["10.244.2.33"]
    time.sleep(0.02)
    p.take()
    assert src.revision() >= written and p.backends("s22") == ["10.244.2.4"]
