"""The Kubernetes API source against a FAKE API server (tests/kube/fake_apiserver.py: real HTTP on
127.0.0.1, list/watch as kube-apiserver speaks it), driven by the unmodified `kubernetes` client:
initial sync, events, coalescing, resume without relist, 410 relist without change, the server
going away and coming back, invalid objects skipped, resync, prompt stop."""
import logging
import time

import pytest

from .fake_apiserver import endpointslice, node, service


def wait_poll(src, timeout=5.0, until=lambda m: True):
    """The first poll() result satisfying `until` within timeout. Each resource has its own watch
    stream, so a Service and its slice may arrive in two polls."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        m = src.poll()
        if m is not None:
            last = m
            if until(m):
                return m
        src.wait_changed(0.1)
    raise AssertionError(f"no matching change from the source within {timeout}s; last: {last}")


def quiet_poll(src, seconds=0.5):
    """Polls for a while; returns every non-None result (expected: none)."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = src.poll()
        if m is not None:
            out.append(m)
        time.sleep(0.05)
    return out


def backends(m, svc="web"):
    return sorted(a for s in m.slices if s.service_name == svc
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
    assert src.poll() is None and not src.synced  # never a half-known cluster
    fake.put("services", service("web", "10.96.0.10"))
    fake.put("endpointslices", endpointslice("web", ["10.244.0.11"]))
    fake.come_back()
    m = wait_poll(src, 10)  # one poll: nothing before every resource is listed
    assert [s.name for s in m.services] == ["web"] and backends(m) == ["10.244.0.11"]
    assert src.changed_at is not None and abs(time.time() - src.changed_at) < 10


def test_initial_sync_lists_each_resource_once_then_watches(seeded, make_source):
    src = make_source(node_name="node-1")
    m = wait_poll(src)
    assert m.services[0].cluster_ips == ("10.96.0.10",)
    assert backends(m) == ["10.244.0.11", "10.244.0.12"]
    assert src.nodes() == {"node-1": {"InternalIP": ["192.168.200.1"], "Hostname": ["node-1"]}}
    assert src.own_node()["metadata"]["name"] == "node-1"
    for r in ("services", "endpointslices", "nodes"):
        seeded.open_watches_wait(r, 1)
        assert seeded.counts[f"list {r}"] == 1
    assert src.poll() is None  # nothing new


def test_add_update_delete_and_a_burst_is_coalesced(seeded, make_source):
    src = make_source()
    wait_poll(src)
    before = time.time()
    seeded.put("services", service("api", "10.96.0.20", port=443, target=8443))
    for i in range(20):  # a burst of slice updates
        seeded.put("endpointslices", endpointslice("api", [f"10.244.1.{j}" for j in range(i + 1)],
                                                   port=8443))
    time.sleep(0.5)
    m = wait_poll(src, until=lambda m: len(backends(m, "api")) == 20 and len(m.services) == 2)
    assert sorted(s.name for s in m.services) == ["api", "web"]
    assert len(backends(m, "api")) == 20  # one poll saw the end of the burst
    assert before <= src.changed_at <= time.time()  # the oldest unpolled event
    assert src.poll() is None
    seeded.delete("services", "default", "web")
    seeded.delete("endpointslices", "default", "web-abcde")
    m = wait_poll(src, until=lambda m: len(m.services) == 1 and not backends(m, "web"))
    assert [s.name for s in m.services] == ["api"] and backends(m, "web") == []


def test_dropped_watch_resumes_without_a_relist(seeded, make_source):
    src = make_source()
    wait_poll(src)
    seeded.open_watches_wait("endpointslices", 1)
    seeded.drop_watches()
    seeded.put("endpointslices", endpointslice("web", ["10.244.0.13"]))
    m = wait_poll(src)
    assert backends(m) == ["10.244.0.13"]
    seeded.open_watches_wait("endpointslices", 2)
    assert seeded.counts["list endpointslices"] == 1, dict(seeded.counts)
    assert seeded.counts["list services"] == 1, dict(seeded.counts)


def test_410_gone_relists_and_an_unchanged_relist_yields_nothing(seeded, make_source):
    src = make_source()
    wait_poll(src)
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
    # way the desired state is what was programmed: no new Manifests, so no map writes.
    assert quiet_poll(src) == []
    assert sorted(src.nodes()) == ["node-1", "node-2"]


def test_410_as_an_error_status_on_a_stale_resource_version(seeded, make_source):
    """A watch answered with ERROR 410 straight away (the version was compacted while we were
    disconnected) leads to a relist that picks up what changed meanwhile."""
    src = make_source()
    wait_poll(src)
    seeded.go_away()
    seeded.put("endpointslices", endpointslice("web", ["10.244.0.14"]))
    seeded.compact()
    seeded.come_back()
    m = wait_poll(src, 10)
    assert backends(m) == ["10.244.0.14"]
    assert seeded.counts["list endpointslices"] >= 2
    assert src.stats()["EndpointSlice"].relists_410 >= 1


def test_server_away_for_a_while_then_back_converges(seeded, make_source):
    src = make_source()
    wait_poll(src)
    seeded.go_away()
    time.sleep(1.0)  # several refused reconnects, backing off
    seeded.put("services", service("late", "10.96.0.30"))
    seeded.put("endpointslices", endpointslice("late", ["10.244.0.30"]))
    seeded.delete("endpointslices", "default", "web-abcde")
    assert src.poll() is None  # nothing seen while away
    seeded.come_back()
    m = wait_poll(src, 10, until=lambda m: len(m.services) == 2 and backends(m, "late")
                  and not backends(m))
    assert sorted(s.name for s in m.services) == ["late", "web"]
    assert backends(m, "late") == ["10.244.0.30"] and backends(m) == []
    assert src.stats()["Service"].errors >= 1


def test_invalid_object_is_skipped_and_named_others_still_update(seeded, make_source, caplog):
    src = make_source()
    wait_poll(src)
    bad = service("bad", "10.96.0.40")
    bad["spec"]["ports"][0]["port"] = 70000  # the API server would refuse it; we must survive it
    with caplog.at_level(logging.ERROR, logger="ebpflb.sources.kubernetes"):
        seeded.put("services", bad)
        seeded.put("endpointslices", endpointslice("web", ["10.244.0.15"]))
        m = wait_poll(src, until=lambda m: backends(m) == ["10.244.0.15"])
        quiet_poll(src, 0.3)  # the Service stream may deliver the bad one a moment later
    assert [s.name for s in m.services] == ["web"]
    assert backends(m) == ["10.244.0.15"]
    assert "Service default/bad skipped" in caplog.text and "70000" in caplog.text


def test_status_only_change_yields_nothing(seeded, make_source):
    """A MODIFIED event that changes nothing ebpflb uses (a status, a new resourceVersion) makes no
    new Manifests, so the agent does not even plan."""
    src = make_source()
    wait_poll(src)
    svc = service("web", "10.96.0.10")
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    seeded.put("services", svc)
    assert src.wait_changed(5)
    assert quiet_poll(src) == []


def test_periodic_resync_relists_without_change(seeded, make_source):
    src = make_source(resync_seconds=1.0)
    wait_poll(src)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and seeded.counts["list services"] < 3:
        time.sleep(0.05)
    assert seeded.counts["list services"] >= 3
    assert quiet_poll(src) == []


def test_stop_is_prompt_with_watches_open(seeded, make_source):
    src = make_source(watch_timeout=300)
    wait_poll(src)
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
