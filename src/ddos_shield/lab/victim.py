"""The lab's victim: a small dual-stack HTTP server, run inside dsl-vic by :class:`~ddos_shield.lab.topology.Lab`.

::

    ip netns exec dsl-vic python -m ddos_shield.lab.victim --port 80 --pid-file /run/ddos-shield-lab/victim.pid

One socket bound to ``[::]`` with ``IPV6_V6ONLY`` off serves both families.  Every
response closes its connection (HTTP/1.0), so each client request costs a fresh TCP
handshake, which is what a SYN or bandwidth flood starves first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from ddos_shield.lab import VICTIM_HTTP_PORT

PAGE = (
    b"<!doctype html><html><head><title>DDoS Shield lab victim</title></head>"
    b"<body><h1>victim</h1><p>If you can read this, the service is up.</p></body></html>\n"
)


class _Handler(BaseHTTPRequestHandler):
    server_version = "dsl-victim/1"
    # A stalled peer must not hold a thread for ever.
    timeout = 5.0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        # The client records every request; a per-request log line would only cost CPU under load.
        return


class DualStackServer(ThreadingHTTPServer):
    """ThreadingHTTPServer on ``[::]`` accepting IPv4 too (v4-mapped)."""

    address_family = socket.AF_INET6
    daemon_threads = True
    # socketserver's default backlog of 5 would drop legitimate handshakes long before a flood does.
    request_queue_size = 1024

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(port: int = VICTIM_HTTP_PORT, pid_file: str | None = None, log_file: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; write ``pid_file`` once listening and remove it on exit.

    With ``log_file``, detach first (the socket is bound before, so a busy port is an
    error of the calling process): the caller returns at once, the server lives on with
    its output in ``log_file``.
    """

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    server = DualStackServer(("::", port), _Handler)
    if log_file is not None:
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
    signal.signal(signal.SIGTERM, _stop)
    pid_path = Path(pid_file) if pid_file else None
    try:
        if pid_path is not None:
            tmp = pid_path.with_suffix(".tmp")
            tmp.write_text(f"{os.getpid()}\n")
            tmp.replace(pid_path)
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        if pid_path is not None and pid_path.exists() and pid_path.read_text().strip() == str(os.getpid()):
            pid_path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddos_shield.lab.victim", description="The lab victim's HTTP server.")
    p.add_argument("--port", type=int, default=VICTIM_HTTP_PORT)
    p.add_argument("--pid-file", default=None, help="written once the socket listens")
    p.add_argument("--daemon-log", default=None, metavar="FILE", help="detach, with output to FILE")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.port, args.pid_file, args.daemon_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
