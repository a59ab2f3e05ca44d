"""Bounded load from a lab pod's namespace, run in threads of the test process: new HTTP
connections at a fixed rate, and long-lived keep-alive connections used periodically. Every
outcome is recorded with its time, so tests can assert on failures and on who answered when.
Everything stops by itself after its duration."""
import http.client
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional

from ebpflb.lab import nsops


@dataclass
class Outcome:
    started: float  # time.monotonic() when the connection or request started
    pod: Optional[str]  # who answered, or None
    error: Optional[str] = None


@dataclass
class LoadResult:
    outcomes: List[Outcome] = field(default_factory=list)

    @property
    def failures(self) -> List[Outcome]:
        return [o for o in self.outcomes if o.error]

    @property
    def pods(self) -> List[str]:
        return [o.pod for o in self.outcomes if o.pod]


def _get(conn: http.client.HTTPConnection) -> str:
    conn.request("GET", "/")
    return conn.getresponse().read().decode().strip()


class NewConnections(threading.Thread):
    """`rate` new connections a second (each: connect, GET /, close) for `seconds`."""

    def __init__(self, netns: str, host: str, port: int, rate: float, seconds: float):
        super().__init__(daemon=True)
        self.netns, self.host, self.port = netns, host, port
        self.rate, self.seconds = rate, seconds
        self.result = LoadResult()

    def run(self) -> None:
        with nsops.in_netns(self.netns):  # this thread only; its sockets live in the pod
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < self.seconds:
                t = time.monotonic()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=3)
                try:
                    self.result.outcomes.append(Outcome(t, _get(conn)))
                except OSError as exc:
                    self.result.outcomes.append(Outcome(t, None, repr(exc)))
                finally:
                    conn.close()
                n += 1
                delay = start + n / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)


class KeptConnections(threading.Thread):
    """`count` keep-alive connections opened at once, each asked every `interval` seconds for
    `seconds`; a connection that fails once is recorded and not used again."""

    def __init__(self, netns: str, host: str, port: int, count: int, interval: float,
                 seconds: float):
        super().__init__(daemon=True)
        self.interval, self.seconds = interval, seconds
        self.result = LoadResult()
        self.first: List[str] = []
        with nsops.in_netns(netns):
            self.conns = [http.client.HTTPConnection(host, port, timeout=3) for _ in range(count)]
            for c in self.conns:
                c.connect()
        self.first = [_get(c) for c in self.conns]

    def run(self) -> None:
        start = time.monotonic()
        alive = list(range(len(self.conns)))
        while time.monotonic() - start < self.seconds and alive:
            for i in list(alive):
                t = time.monotonic()
                try:
                    pod = _get(self.conns[i])
                    err = None if pod == self.first[i] else f"moved from {self.first[i]} to {pod}"
                    self.result.outcomes.append(Outcome(t, pod, err))
                except OSError as exc:
                    self.result.outcomes.append(Outcome(t, None, f"connection {i}: {exc!r}"))
                    alive.remove(i)
            time.sleep(self.interval)

    def close(self) -> None:
        for c in self.conns:
            c.close()


class Download(threading.Thread):
    """One long download (GET /download of a lab pod, ebpflb.lab.podserver): `size` bytes over
    `seconds`, every byte checked against the pattern the pod sends. `error` says what went
    wrong (a reset, a short or corrupt body), None when the body arrived whole."""

    def __init__(self, netns: str, host: str, port: int, size: int, seconds: float):
        super().__init__(daemon=True)
        self.netns, self.host, self.port, self.size, self.seconds = netns, host, port, size, seconds
        self.received = 0
        self.error: Optional[str] = None
        self.pod: Optional[str] = None

    def run(self) -> None:
        from ebpflb.lab.podserver import download_pattern

        with nsops.in_netns(self.netns):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            conn.connect()
        try:
            conn.request("GET", f"/download?bytes={self.size}&seconds={self.seconds}")
            resp = conn.getresponse()
            while True:
                chunk = resp.read(65536)
                if not chunk:
                    break
                if chunk != download_pattern(self.received, len(chunk)):
                    self.error = f"corrupt bytes after {self.received}"
                    return
                self.received += len(chunk)
            if self.received != self.size:
                self.error = f"{self.received} of {self.size} bytes"
        except (OSError, http.client.HTTPException) as exc:
            self.error = f"after {self.received} bytes: {exc!r}"
        finally:
            conn.close()
