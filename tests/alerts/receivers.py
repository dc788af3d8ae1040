"""Real receivers on loopback for the alert tests: an HTTP webhook server, syslog
listeners (UDP and TCP), and a minimal SMTP server.

The SMTP server is a small conversation written here with socketserver: Python's
standard library has had no SMTP server since 3.12 and aiosmtpd is not a dependency.
It speaks the commands smtplib sends (EHLO, MAIL, RCPT, DATA, QUIT) and keeps each
message as received.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    """Records each POST (headers and raw body); answers ``fail_first`` requests with 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.seen = 0
        self.cv = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.cv:
                    outer.seen += 1
                    fail = outer.seen <= outer.fail_first
                    if not fail:
                        outer.requests.append((dict(self.headers), body))
                    outer.cv.notify_all()
                self.send_response(503 if fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._t = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._t.start()

    def wait(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        with self.cv:
            self.cv.wait_for(lambda: len(self.requests) >= n, timeout)
            return [json.loads(b) for _, b in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SyslogListener:
    """UDP: one message a datagram.  TCP: RFC 6587 octet-counted frames."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.messages: list[bytes] = []
        self.cv = threading.Condition()
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        if protocol == "tcp":
            self.sock.listen(4)
        self._t = threading.Thread(target=self._udp if protocol == "udp" else self._tcp, daemon=True)
        self._t.start()

    def _add(self, msg: bytes) -> None:
        with self.cv:
            self.messages.append(msg)
            self.cv.notify_all()

    def _udp(self) -> None:
        while True:
            try:
                self._add(self.sock.recv(65535))
            except OSError:
                return

    def _tcp(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b" " in buf:
                    n, _, rest = buf.partition(b" ")
                    if len(rest) < int(n):
                        break
                    self._add(rest[: int(n)])
                    buf = rest[int(n) :]

    def wait(self, n: int, timeout: float = 10) -> list[bytes]:
        with self.cv:
            self.cv.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.sock.close()


class SmtpServer:
    """A minimal SMTP server (see the module docstring)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.cv = threading.Condition()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                def say(line: str) -> None:
                    self.wfile.write(line.encode() + b"\r\n")

                say("220 test ESMTP")
                env: dict[str, Any] = {"rcpt": []}
                while True:
                    line = self.rfile.readline().decode().rstrip("\r\n")
                    if not line:
                        return
                    cmd = line.split(" ", 1)[0].upper()
                    if cmd in ("EHLO", "HELO"):
                        say("250-test")
                        say("250 8BITMIME")
                    elif cmd == "MAIL":
                        env["from"] = line.split(":", 1)[1].split()[0]
                        say("250 OK")
                    elif cmd == "RCPT":
                        env["rcpt"].append(line.split(":", 1)[1].strip())
                        say("250 OK")
                    elif cmd == "DATA":
                        say("354 go ahead")
                        lines = []
                        while (data := self.rfile.readline()) not in (b".\r\n", b""):
                            lines.append(data[1:] if data.startswith(b"..") else data)
                        env["data"] = b"".join(lines)
                        with outer.cv:
                            outer.messages.append(dict(env))
                            outer.cv.notify_all()
                        env = {"rcpt": []}
                        say("250 queued")
                    elif cmd == "QUIT":
                        say("221 bye")
                        return
                    elif cmd in ("RSET", "NOOP"):
                        say("250 OK")
                    else:
                        say("502 not implemented")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._t = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._t.start()

    def wait(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        with self.cv:
            self.cv.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
