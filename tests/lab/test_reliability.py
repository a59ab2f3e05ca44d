"""Reliability with real traffic: the agent killed and restarted under load, endpoint churn under
load, and a bounded SYN flood against a VIP. Bounded in time and count; everything is removed."""
import json
import random
import socket
import struct
import time

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab.topology import PodSpec

from .agent_harness import (DEFAULT_ENDPOINTS, WEB_VIP, RunningAgent, ebpflb, force_cleanup,
                            wait_until)
from .load import KeptConnections, NewConnections


def _in_service(events, pod, t) -> bool:
    """Whether `pod` was in the Service at `t`, by the last event for it at or before `t`."""
    state = False
    for ts, name, in_service in sorted(events):
        if name == pod and ts <= t:
            state = in_service
    return state


def test_agent_sigkill_and_restart_under_load(lab, tmp_path):
    """About 50 requests a second for 20 s while the agent is SIGKILLed and restarted: no request
    fails, long-lived connections survive, and the new agent adopts the pinned state with no map
    writes."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = RunningAgent(lab.name, tmp_path / "a", DEFAULT_ENDPOINTS, on_exit="keep")
    second = None
    client = f"{lab.name}-client"
    kept = KeptConnections(client, WEB_VIP, 80, count=4, interval=0.25, seconds=20)
    load = NewConnections(client, WEB_VIP, 80, rate=50, seconds=20)
    try:
        kept.start()
        load.start()
        time.sleep(5)
        first.proc.kill()  # SIGKILL: no cleanup of any kind
        first.proc.wait()
        killed = time.monotonic()
        second = RunningAgent(lab.name, tmp_path / "b", DEFAULT_ENDPOINTS, on_exit="remove")
        print(f"\nrestart: new agent serving {time.monotonic() - killed:.1f}s after the SIGKILL "
              "(the pinned maps and attached programs served meanwhile)")
        load.join(timeout=40)
        kept.join(timeout=40)
        assert not load.is_alive() and not kept.is_alive()
        assert len(load.result.outcomes) >= 900
        assert load.result.failures == []
        assert kept.result.failures == [] and len(kept.result.outcomes) >= 200
        assert set(load.result.pods) == {"web-1", "web-2", "web-3"}
        assert "2 frontends programmed, 0 map writes" in second.log()
        print(f"restart: {len(load.result.outcomes)} new connections, "
              f"{len(load.result.failures)} failed; {len(kept.result.outcomes)} requests on 4 "
              f"long-lived connections, {len(kept.result.failures)} failed")
    finally:
        kept.close()
        first.stop()
        if second:
            second.stop()
        force_cleanup(lab.name)


def test_endpoint_churn_under_load(lab, tmp_path):
    """30 s, one endpoint replaced every second (3 of 6 pods in the Service at any time) under
    20 new connections a second plus 6 long-lived ones: no established connection breaks, and no
    connection started after the agent reported a pod's removal applied reaches that pod."""
    for i in (5, 6):
        lablib.add_pod(lab.name, PodSpec(f"web-{i}", f"10.244.0.{10 + i}"))
    pods = [(f"web-{i}", f"10.244.0.{10 + i}", True) for i in range(1, 7)]
    current = pods[:3]
    agent = RunningAgent(lab.name, tmp_path, current)
    client = f"{lab.name}-client"
    kept = KeptConnections(client, WEB_VIP, 80, count=6, interval=0.2, seconds=30)
    load = NewConnections(client, WEB_VIP, 80, rate=20, seconds=30)
    events = [(0.0, name, True) for name, _, _ in current]  # (time, pod, in the Service)
    try:
        kept.start()
        load.start()
        start = time.monotonic()
        rng = random.Random(7)
        while time.monotonic() - start < 30:
            time.sleep(1)
            out = current.pop(rng.randrange(len(current)))
            incoming = rng.choice([p for p in pods if p not in current and p != out])
            current.append(incoming)
            written = time.monotonic()
            agent.write_manifest(current)
            # A pod may take traffic from the write on, and must not once the agent reports the
            # change in the maps (however long a busy machine took to get there).
            events += [(written, incoming[0], True), (agent.wait_applied(), out[0], False)]
        load.join(timeout=40)
        kept.join(timeout=40)
        violations = [o for o in load.result.outcomes if not _in_service(events, o.pod, o.started)]
        print(f"\nchurn: {len(events) // 2 - 1} endpoint replacements in 30 s; "
              f"{len(load.result.outcomes)} new connections ({len(load.result.failures)} failed, "
              f"{len(violations)} to a removed pod); {len(kept.result.outcomes)} requests on 6 "
              f"long-lived connections, {len(kept.result.failures)} failed")
        assert load.result.failures == []
        assert kept.result.failures == []
        assert violations == [], violations[:5]
        assert len(set(load.result.pods)) >= 4  # the churn really moved traffic around
        assert len(load.result.outcomes) >= 500
    finally:
        kept.close()
        agent.stop()
        force_cleanup(lab.name)


def _csum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _syns(src: str, dst: str, dport: int, count: int, rng: random.Random):
    """IPv4 SYNs with valid checksums from random source ports (the backend checks them)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    for _ in range(count):
        sport = rng.randrange(1024, 65536)
        tcp = struct.pack("!HHIIBBHHH", sport, dport, rng.getrandbits(32), 0, 5 << 4, 0x02, 1024, 0, 0)
        tcp = tcp[:16] + struct.pack("!H", _csum(s + d + struct.pack("!BBH", 0, 6, 20) + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, rng.getrandbits(16), 0, 64, 6, 0, s, d)
        yield ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:] + tcp


def test_syn_flood_keeps_established_flows(lab, tmp_path):
    """A bounded SYN flood (30,000 SYNs from random ports) against a VIP, with 4,096 conntrack
    entries for half-open flows: established connections keep working throughout (their entries
    are in the main table, which the flood never touches); the half-open table fills and evicts
    its oldest entries; the figures are printed for docs/reliability.md."""
    agent = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS,
                         extra_args=["--ct-syn-max", "4096", "--ct-gc-interval", "3600"])
    client = f"{lab.name}-client"
    kept = KeptConnections(client, WEB_VIP, 80, count=5, interval=0.1, seconds=8)
    try:
        kept.start()
        with nsops.in_netns(client):
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        sent = 0
        start = time.monotonic()
        with raw:
            for frame in _syns(lab.pods["client"].ip, WEB_VIP, 80, 30_000, random.Random(3)):
                raw.sendto(frame, (WEB_VIP, 0))
                sent += 1
                if time.monotonic() - start > 20:
                    break
        elapsed = time.monotonic() - start
        kept.join(timeout=30)
        stats = ebpflb("stats", "-o", "json", "--pin-dir", agent.pin_dir).stdout
        ct_flows = ebpflb("ct", "list", "-o", "json", "--pin-dir", agent.pin_dir).stdout
        web = next(s for s in json.loads(stats) if s["frontend"] == f"{WEB_VIP}:80/TCP")
        states = [f["state"] for f in json.loads(ct_flows)]
        half_open = sum(1 for s in states if s in ("half-open", "closing"))
        established = states.count("established")
        print(f"\nSYN flood: {sent} SYNs in {elapsed:.1f}s ({sent / elapsed:.0f}/s); half-open "
              f"table {half_open} flows ({2 * half_open} entries of 4096); established flows "
              f"{established}; frontend counted {web['conns']} new flows; kept connections: "
              f"{len(kept.result.outcomes)} requests, {len(kept.result.failures)} failures")
        assert sent >= 10_000
        assert kept.result.failures == [] and len(kept.result.outcomes) >= 50
        assert web["conns"] >= sent * 0.9  # the flood really reached the data plane
        assert 2 * half_open <= 4096  # the half-open table is bounded by its size...
        assert 2 * half_open >= 4096 * 0.5  # ...and the flood filled it
        assert established >= 5  # the kept connections, untouched
        # New connections still work after the flood.
        after = [lablib.run_in_pod(lab.name, "client", ["curl", "-sS", "--max-time", "3",
                                                         f"http://{WEB_VIP}/"]) for _ in range(10)]
        assert all(r.returncode == 0 for r in after)
    finally:
        kept.close()
        agent.stop()
        force_cleanup(lab.name)
