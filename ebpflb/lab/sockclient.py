"""A client process for the socket hooks: runs socket operations and prints what each saw as JSON.

Where it sits: the lab and the tests start it inside a pod or a node namespace, in the cgroup the
hooks are attached to (`run_in_pod`, `run_on_node`); it must be a process of its own, because the
hooks act on the sockets of processes in that cgroup. Standard library only, like podserver.

    python -m ebpflb.lab.sockclient '[{"op": "http", "addr": "10.96.0.10", "port": 80}, ...]'

Operations (each result also carries "errno", the error's name, or null):
  http  GET `path` (default "/") over TCP: "body", "peer" (getpeername), "local", "cookie"
        (the socket's SO_COOKIE, which the hooks hash)
  udp   one datagram `payload` and its answer: "reply", "source" (recvfrom's address),
        "peer" (getpeername, with "connect": true: a connected socket)
  udp-loop  a connected UDP socket asking `count` times, `interval` seconds apart (the answers
        or errors, timed, in order; `reconnect` opens a new socket after an error): how a DNS
        client with one socket sees its Service change
Timeouts are `timeout` seconds (default 2).
"""
from __future__ import annotations

import errno
import json
import socket
import sys
import time
from typing import Any, Dict, List, Optional


def _addr(pair: Any) -> str:
    return f"[{pair[0]}]:{pair[1]}" if ":" in pair[0] else f"{pair[0]}:{pair[1]}"


def _err(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "ETIMEDOUT"
    return errno.errorcode.get(exc.errno or 0, str(exc))


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


SO_COOKIE = 57  # asm-generic/socket.h: what `ebpflb explain --socket --cookie` takes


def http(addr: str, port: int, path: str = "/", timeout: float = 2.0) -> Dict[str, Any]:
    out: Dict[str, Any] = {"errno": None}
    with socket.socket(_family(addr), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        out["cookie"] = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), sys.byteorder)
        try:
            s.connect((addr, port))
            out["peer"] = _addr(s.getpeername())
            out["local"] = _addr(s.getsockname())
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            out["body"] = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
        except OSError as exc:
            out["errno"] = _err(exc)
    return out


def udp(addr: str, port: int, payload: str = "ping", connect: bool = False,
        timeout: float = 2.0) -> Dict[str, Any]:
    out: Dict[str, Any] = {"errno": None}
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            if connect:
                s.connect((addr, port))
                out["peer"] = _addr(s.getpeername())
                s.send(payload.encode())
            else:
                s.sendto(payload.encode(), (addr, port))
            data, source = s.recvfrom(65535)
            out["reply"] = data.decode(errors="replace")
            out["source"] = _addr(source)
        except OSError as exc:
            out["errno"] = _err(exc)
    return out


def udp_loop(addr: str, port: int, count: int = 10, interval: float = 0.1,
             timeout: float = 0.5, reconnect: bool = False) -> Dict[str, Any]:
    """A connected UDP socket asking `count` times, `interval` seconds apart, as a DNS client
    does. "answers" holds [seconds since "started" (wall clock), the answer or null on a
    timeout, or the error's name]. An error (ECONNABORTED: the socket was closed under it) ends the loop, or,
    with `reconnect`, makes it open a new socket, as a resolver would."""
    answers: List[List[Any]] = []
    out: Dict[str, Any] = {"errno": None, "answers": answers, "started": time.time()}
    start = time.monotonic()
    s = None
    try:
        for i in range(count):
            if i:
                time.sleep(interval)
            try:
                if s is None:
                    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
                    s.settimeout(timeout)
                    s.connect((addr, port))
                s.send(f"q{i}".encode())
                answer: Any = s.recv(65535).decode(errors="replace")
            except socket.timeout:
                answer = None
            except OSError as exc:
                answer = _err(exc)
                if s is not None:
                    s.close()
                s = None
                if not reconnect:
                    out["errno"] = answer
                    answers.append([round(time.monotonic() - start, 3), answer])
                    break
            answers.append([round(time.monotonic() - start, 3), answer])
    finally:
        if s is not None:
            s.close()
    return out


OPS = {"http": http, "udp": udp, "udp-loop": udp_loop}


def run(ops: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    results = []
    for op in ops:
        args = dict(op)
        fn = OPS[args.pop("op")]
        results.append(fn(**args))
    return results


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(run(json.loads(argv[0])), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
