"""The Kubernetes API source against a FAKE API server (tests/kube/fake_apiserver.py: real HTTP on
127.0.0.1, list/watch as kube-apiserver speaks it), driven by the unmodified `kubernetes` client:
initial sync, per-object changes, coalescing, resume without relist, 410 relist without change,
the server going away and coming back, invalid objects refused alone, resync, prompt stop."""
import logging
import time

import pytest

from ebpflb.store import ObjectStore

from ebpflb.node_info import zone

from .fake_apiserver import endpointslice, node, service


class Follower:
    """What the agent does with the source: every batch take() hands over goes into an object
    store; the tests look at the store."""

    def __init__(self, src):
        self.src = src
        self.store = ObjectStore()
        self.batches = []

    def step(self):
        batch = self.src.take()
        if batch:
            self.store.apply(batch.changes)
            self.batches.append(batch)
        return batch

    def wait(self, timeout=5.0, until=lambda f: True):
        """Takes batches until `until(self)` holds. Each resource has its own watch stream, so a
        Service and its slice may arrive in two batches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.step() and until(self):
                return self
            self.src.wait_changed(0.1)
        raise AssertionError(f"no matching change from the source within {timeout}s; "
                             f"services {self.services()}, slices {sorted(self.store.slices)}")

    def quiet(self, seconds=0.5):
        """Takes for a while; returns every non-empty batch (expected: none)."""
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = self.step()
            if batch:
                out.append(batch)
            time.sleep(0.05)
        return out

    def services(self):
        return sorted(name for _, name in self.store.services)

    def backends(self, svc="web"):
        return sorted(a for s in self.store.slices.values() if s.service_name == svc
                      for e in s.endpoints for a in e.addresses)


@pytest.fixture
def seeded(fake):
    fake.put("services", service("web", "10.96.0.10"))
    fake.put("endpointslices", endpointslice("web", ["10.244.0.11", "10.244.0.12"]))
    fake.put("nodes", node("node-1", "192.168.200.1"))
    return fake


def test_nothing_before_the_initial_sync_then_the_whole_state(fake, make_source):
    fake.go_away()
    src = make_source()
    f = Follower(src)
    assert not f.step() and not src.synced  # never a half-known cluster
    fake.put("services", service("web", "10.96.0.10"))
    fake.put("endpointslices", endpointslice("web", ["10.244.0.11"]))
    fake.come_back()
    f.wait(10)  # one batch: nothing before every resource is listed
    assert len(f.batches) == 1
    assert f.services() == ["web"] and f.backends() == ["10.244.0.11"]
    since = f.batches[0].since
    assert since is not None and abs(time.time() - since) < 10


def test_initial_sync_lists_each_resource_once_then_watches(seeded, make_source):
    src = make_source(node_name="node-1")
    f = Follower(src).wait()
    assert f.store.services["default", "web"].cluster_ips == ("10.96.0.10",)
    assert f.backends() == ["10.244.0.11", "10.244.0.12"]
    assert src.nodes() == {"node-1": {"InternalIP": ["192.168.200.1"], "Hostname": ["node-1"]}}
    assert src.own_node()["metadata"]["name"] == "node-1"
    for r in ("services", "endpointslices", "nodes"):
        seeded.open_watches_wait(r, 1)
        assert seeded.counts[f"list {r}"] == 1
    assert not f.step()  # nothing new


def test_add_update_delete_and_a_burst_is_coalesced(seeded, make_source):
    src = make_source()
    f = Follower(src).wait()
    before = time.time()
    seeded.put("services", service("api", "10.96.0.20", port=443, target=8443))
    for i in range(20):  # a burst of slice updates
        seeded.put("endpointslices", endpointslice("api", [f"10.244.1.{j}" for j in range(i + 1)],
                                                   port=8443))
    time.sleep(0.5)
    first = len(f.batches)
    f.wait(until=lambda f: len(f.backends("api")) == 20 and len(f.services()) == 2)
    assert f.services() == ["api", "web"]
    burst = f.batches[first:]
    # One batch saw the end of the burst: the slice's 20 versions became one change.
    assert len(burst) == 1 and len(burst[0].changes) == 2, burst
    assert before <= burst[0].since <= time.time()  # the oldest untaken event
    assert not f.step()
    seeded.delete("services", "default", "web")
    seeded.delete("endpointslices", "default", "web-abcde")
    f.wait(until=lambda f: len(f.services()) == 1 and not f.backends("web"))
    assert f.services() == ["api"] and f.backends("web") == []
    assert all(c.obj is None for b in f.batches[first + 1:] for c in b.changes)


def test_dropped_watch_resumes_without_a_relist(seeded, make_source):
    src = make_source()
    f = Follower(src).wait()
    seeded.open_watches_wait("endpointslices", 1)
    seeded.drop_watches()
    seeded.put("endpointslices", endpointslice("web", ["10.244.0.13"]))
    f.wait()
    assert f.backends() == ["10.244.0.13"]
    seeded.open_watches_wait("endpointslices", 2)
    assert seeded.counts["list endpointslices"] == 1, dict(seeded.counts)
    assert seeded.counts["list services"] == 1, dict(seeded.counts)


def test_410_gone_relists_and_an_unchanged_relist_yields_nothing(seeded, make_source):
    src = make_source()
    f = Follower(src).wait()
    stats = src.stats()
    for r in ("services", "endpointslices", "nodes"):
        seeded.open_watches_wait(r, 1)
    # Drop before bookmarks can move the watchers past the compaction point.
    seeded.compact()
    seeded.put("nodes", node("node-2", "192.168.200.2"))  # something to compact past
    seeded.compact()
    seeded.drop_watches()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and seeded.counts["list nodes"] < 2:
        time.sleep(0.05)
    assert seeded.counts["list nodes"] == 2 and stats["Node"].relists_410 >= 1
    # Services and slices relisted too, or resumed past compaction thanks to bookmarks; either
    # way the objects are what was handed over already: no change, so no plan.
    assert f.quiet() == []
    assert sorted(src.nodes()) == ["node-1", "node-2"]


def test_410_as_an_error_status_on_a_stale_resource_version(seeded, make_source):
    """A watch answered with ERROR 410 straight away (the version was compacted while we were
    disconnected) leads to a relist that picks up what changed meanwhile."""
    src = make_source()
    f = Follower(src).wait()
    seeded.go_away()
    seeded.put("endpointslices", endpointslice("web", ["10.244.0.14"]))
    seeded.compact()
    seeded.come_back()
    f.wait(10)
    assert f.backends() == ["10.244.0.14"]
    assert seeded.counts["list endpointslices"] >= 2
    assert src.stats()["EndpointSlice"].relists_410 >= 1


def test_server_away_for_a_while_then_back_converges(seeded, make_source):
    src = make_source()
    f = Follower(src).wait()
    seeded.go_away()
    time.sleep(1.0)  # several refused reconnects, backing off
    seeded.put("services", service("late", "10.96.0.30"))
    seeded.put("endpointslices", endpointslice("late", ["10.244.0.30"]))
    seeded.delete("endpointslices", "default", "web-abcde")
    assert not f.step()  # nothing seen while away
    seeded.come_back()
    f.wait(10, until=lambda f: len(f.services()) == 2 and f.backends("late") and not f.backends())
    assert f.services() == ["late", "web"]
    # The relist found the deleted slice gone: a deletion, though no DELETED event was seen.
    assert f.backends("late") == ["10.244.0.30"] and f.backends() == []
    assert src.stats()["Service"].errors >= 1


def test_invalid_object_is_refused_alone_and_keeps_its_last_good_version(seeded, make_source,
                                                                        caplog):
    src = make_source()
    f = Follower(src).wait()
    bad = service("bad", "10.96.0.40")
    bad["spec"]["ports"][0]["port"] = 70000  # the API server would refuse it; we must survive it
    with caplog.at_level(logging.ERROR, logger="ebpflb.sources.kubernetes"):
        seeded.put("services", bad)
        seeded.put("endpointslices", endpointslice("web", ["10.244.0.15"]))
        f.wait(until=lambda f: f.backends() == ["10.244.0.15"])
        f.quiet(0.3)  # the Service stream may deliver the bad one a moment later
    assert f.services() == ["web"]
    assert f.backends() == ["10.244.0.15"]
    assert "Service default/bad refused, not programmed" in caplog.text
    assert "spec.ports[0].port: 70000 is not a valid port" in caplog.text
    # A good Service broken by an update keeps its last good version.
    broken = service("web", "10.96.0.10")
    broken["spec"]["ports"][0]["protocol"] = "QUIC"
    with caplog.at_level(logging.ERROR, logger="ebpflb.sources.kubernetes"):
        seeded.put("services", broken)
        deadline = time.monotonic() + 5
        while "Service default/web refused" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "Service default/web refused, its last good version stays" in caplog.text
    assert f.quiet(0.3) == [] and f.store.services["default", "web"].ports[0].protocol == "TCP"
    assert src.stats()["Service"].refused == 2
    assert [(p.obj, p.field) for p in src.problems()] == [
        ("Service default/bad", "spec.ports[0].port"), ("Service default/web", "spec.ports[0].protocol")]
    seeded.put("services", service("web", "10.96.0.10"))  # fixed: no longer a problem
    deadline = time.monotonic() + 5
    while len(src.problems()) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.obj for p in src.problems()] == ["Service default/bad"]


def test_status_only_change_yields_nothing(seeded, make_source):
    """A MODIFIED event that changes nothing ebpflb uses (a status, a new resourceVersion) changes
    no model object, so the source hands over nothing and the agent does not even plan."""
    src = make_source()
    f = Follower(src).wait()
    events = src.stats()["Service"].events
    svc = service("web", "10.96.0.10")
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    seeded.put("services", svc)
    deadline = time.monotonic() + 5
    while src.stats()["Service"].events == events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert src.stats()["Service"].events > events  # the event arrived and was converted
    assert f.quiet() == []


def test_periodic_resync_relists_without_change(seeded, make_source):
    src = make_source(resync_seconds=1.0)
    f = Follower(src).wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and seeded.counts["list services"] < 3:
        time.sleep(0.05)
    assert seeded.counts["list services"] >= 3
    assert f.quiet() == []


def test_stop_is_prompt_with_watches_open(seeded, make_source):
    src = make_source(watch_timeout=300)
    Follower(src).wait()
    for r in ("services", "endpointslices", "nodes"):
        seeded.open_watches_wait(r, 1)
    started = time.monotonic()
    src.stop()
    assert time.monotonic() - started < 2
    assert not any(r.thread.is_alive() for r in src.reflectors.values())


def test_backoff_is_capped_and_jittered():
    from ebpflb.sources.kubernetes import Backoff

    b = Backoff(base=0.5, cap=4.0)
    delays = [b.next() for _ in range(50)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 40  # jitter: not one fixed schedule
    b.reset()
    assert b.next() <= 0.5


def test_lists_are_paginated_and_a_relist_finds_deletions_across_pages(fake, make_source):
    """Pages of 2 (client-go pages by 500): the API server never sends the whole list at once,
    every object still arrives, and a relist that misses one across pages deletes it."""
    for i in range(7):
        fake.put("services", service(f"s{i}", f"10.96.0.{i + 1}"))
    fake.put("nodes", node("node-1", "192.168.200.1"))
    src = make_source(list_page=2, resync_seconds=1.0)
    f = Follower(src).wait(until=lambda f: len(f.services()) == 7)
    assert fake.counts["page services"] >= 3 and fake.counts["list services"] == 1
    fake.delete("services", "default", "s3")
    f.wait(until=lambda f: "s3" not in f.services())
    assert f.services() == [f"s{i}" for i in range(7) if i != 3]


def test_the_revision_covers_what_was_handed_over_per_kind(seeded, make_source):
    """After take(), each kind's revision is the newest resourceVersion of that kind whose
    change (if any) was handed over: a change the agent has programmed is at or below it, and
    an event that changes nothing (a status) still moves it, so the agent can say so."""
    src = make_source()
    f = Follower(src).wait()
    rv = seeded.put("endpointslices", endpointslice("web", ["10.244.0.16"]))
    f.wait(until=lambda f: f.backends() == ["10.244.0.16"])
    assert src.revision()["EndpointSlice"] >= rv
    svc = service("web", "10.96.0.10")
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}
    rv = seeded.put("services", svc)
    deadline = time.monotonic() + 5
    while src.revision().get("Service", 0) < rv and time.monotonic() < deadline:
        assert not f.step()  # nothing to hand over...
        time.sleep(0.05)
    assert src.revision()["Service"] >= rv  # ...and yet the revision moved


def test_only_its_own_node_is_watched_and_its_labels_followed(seeded, make_source):
    """With a node name, the Node list and watch carry fieldSelector metadata.name=<node>: the
    agent never holds the cluster's Nodes, only its own, whose zone label it follows."""
    seeded.put("nodes", node("node-2", "192.168.200.2"))
    src = make_source(node_name="node-1")
    Follower(src).wait()
    seeded.open_watches_wait("nodes", 1)
    assert seeded.selectors["nodes"] == "metadata.name=node-1"
    assert seeded.selectors["services"] is None
    assert sorted(src.nodes()) == ["node-1"]
    assert src.own_node()["metadata"]["labels"] == {"kubernetes.io/hostname": "node-1"}
    labelled = node("node-1", "192.168.200.1")
    labelled["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-a"
    seeded.put("nodes", labelled)
    other = node("node-2", "192.168.200.2")
    other["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-b"
    seeded.put("nodes", other)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and zone(src.own_node()) != "zone-a":
        time.sleep(0.02)
    assert zone(src.own_node()) == "zone-a"
    assert sorted(src.nodes()) == ["node-1"]  # node-2's change never reached us
