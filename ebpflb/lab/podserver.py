"""The workload of a lab pod: a tiny HTTP server and a UDP echo, stdlib only.

Where it sits: ebpflb/lab/lab.py starts one of these inside every pod namespace but the client's
(`python -m ebpflb.lab.podserver --name web-1`). Its answers name the pod that served a request
and the source address it saw, which is what the load-balancer tests check:

  GET /        -> "<pod name>\\n"
  GET /client  -> "<client ip>:<client port>\\n"   (as this pod sees the peer)
  GET /healthz -> "ok\\n"
  GET /download?bytes=N&seconds=S -> N bytes of download_pattern(), paced over S seconds
  UDP payload  -> "<pod name> <payload>"          (sent back to the sender)

HTTP/1.1 keep-alive is supported. The process writes "ready <pid>" to --ready-fd once both
sockets listen, so the lab can wait for readiness without sending any traffic. With --detach it
first forks away from its launcher (new session, reparented to init), so the lab process that
started it never holds a child to reap. It must import nothing beyond the standard library: it
starts once per pod and should start fast.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional, Tuple

log = logging.getLogger("ebpflb.lab.podserver")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Load tests open many connections at once; the default backlog of 5 drops SYNs.
    request_queue_size = 1024

    def __init__(self, addr: Tuple[str, int], pod: str, access_log: bool) -> None:
        if ":" in addr[0]:
            # A dual-stack lab: one socket for both families (IPv4 clients as ::ffff:a.b.c.d).
            self.address_family = socket.AF_INET6
        self.pod = pod
        self.access_log = access_log
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ebpflb-podserver"
    # Idle keep-alive connections must not hold a thread forever.
    timeout = 60
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._reply(200, f"{self.server.pod}\n")
        elif path == "/client":
            host, port = self.client_address[:2]
            if host.startswith("::ffff:") and "." in host:
                host = host[len("::ffff:"):]  # an IPv4 client of a dual-stack socket
            elif ":" in host:
                host = f"[{host}]"  # an IPv6 one, as HOST:PORT is written
            self._reply(200, f"{host}:{port}\n")
        elif path == "/healthz":
            self._reply(200, "ok\n")
        elif path == "/download":
            self._download()
        else:
            self._reply(404, "not found\n")

    def _download(self) -> None:
        """A long transfer whose every byte the client can check (a takeover must not cut or
        corrupt it): `bytes` bytes of download_pattern(), in chunks spread over `seconds`."""
        from urllib.parse import parse_qs

        query = parse_qs(self.path.partition("?")[2])
        try:
            total = min(int(query.get("bytes", ["1048576"])[0]), 1 << 30)
            seconds = min(float(query.get("seconds", ["0"])[0]), 300.0)
        except ValueError:
            self._reply(400, "bytes and seconds are numbers\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(total))
        self.end_headers()
        chunk = 16384
        chunks = max(1, -(-total // chunk))
        start = time.monotonic()
        for i in range(chunks):
            self.wfile.write(download_pattern(i * chunk, min(chunk, total - i * chunk)))
            delay = start + seconds * (i + 1) / chunks - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _reply(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
        if self.server.access_log:
            log.info("pod %s: %s %s", self.server.pod, self.address_string(), format % args)


_CYCLE = bytes(range(251))


def download_pattern(offset: int, length: int) -> bytes:
    """Bytes offset..offset+length of /download's body: byte i is i mod 251 (a prime, so a
    chunk lost, repeated or moved by a multiple of the chunk size shows)."""
    start = offset % 251
    return (_CYCLE * ((start + length) // 251 + 1))[start:start + length]


def _udp_echo(sock: socket.socket, pod: str) -> None:
    prefix = f"{pod} ".encode()
    while True:
        try:
            data, peer = sock.recvfrom(65535)
            sock.sendto(prefix + data, peer)
        except OSError as exc:
            # One bad datagram (e.g. an ICMP error surfacing as ECONNREFUSED) must not stop the echo.
            log.warning("pod %s: udp echo: %s", pod, exc)


def serve(pod: str, bind: str, http_port: int, udp_port: int,
          ready_fd: Optional[int] = None, access_log: bool = False) -> None:
    httpd = _Server((bind, http_port), pod, access_log)
    udp = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((bind, udp_port))
    threading.Thread(target=_udp_echo, args=(udp, pod), name="udp-echo", daemon=True).start()
    log.info("pod %s: serving http on %s:%d and udp echo on %s:%d (pid %d)",
             pod, bind, http_port, bind, udp_port, os.getpid())
    if ready_fd is not None:
        os.write(ready_fd, f"ready {os.getpid()}\n".encode())
        os.close(ready_fd)
    try:
        httpd.serve_forever(poll_interval=0.5)
    finally:
        httpd.server_close()
        udp.close()
        log.info("pod %s: stopped", pod)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ebpflb.lab.podserver", description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True, help="pod name, returned by GET / and the UDP echo")
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--http-port", type=int, default=8080)
    ap.add_argument("--udp-port", type=int, default=9053)
    ap.add_argument("--ready-fd", type=int, default=None, help="write one line here once listening")
    ap.add_argument("--access-log", action="store_true", help="log every HTTP request")
    ap.add_argument("--detach", action="store_true", help="fork into a new session; the launcher exits")
    args = ap.parse_args(argv)
    if args.detach:
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    serve(args.name, args.bind, args.http_port, args.udp_port, args.ready_fd, args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
