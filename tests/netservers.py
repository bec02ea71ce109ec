"""Servers the network tests start on the host's loopback (never elsewhere).

``LoopbackHTTPServer`` answers every GET with ``hello <path>`` and counts the
requests it served; ``SimpleIndex`` serves a PEP 503 package index holding
one small wheel made here, for ``pip download``. ``TCPWitness`` accepts TCP
connections and counts them: a test that must not reach the host asserts
that the count stays zero. ``TCPHolder`` accepts connections and keeps them
open, for tests of how many tunnels the proxy holds.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

WHEEL_NAME = "stockadedemo"
WHEEL_VERSION = "1.0"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: LoopbackHTTPServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.paths.append(self.path)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass  # trailers
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class LoopbackHTTPServer(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (or ::1) in a thread of the test process."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", handler: type = _Handler) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, 0), handler)
        self.paths: list[str] = []
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def make_wheel(directory: Path) -> Path:
    """A minimal valid wheel of package ``stockadedemo`` 1.0."""
    name = f"{WHEEL_NAME}-{WHEEL_VERSION}-py3-none-any.whl"
    info = f"{WHEEL_NAME}-{WHEEL_VERSION}.dist-info"
    files = {
        f"{WHEEL_NAME}/__init__.py": b"VALUE = 42\n",
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {WHEEL_NAME}\nVersion: {WHEEL_VERSION}\n"
        ).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: stockade-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = io.StringIO()
    for path, data in files.items():
        digest = (
            base64.urlsafe_b64encode(hashlib.sha256(data).digest())
            .rstrip(b"=")
            .decode()
        )
        record.write(f"{path},sha256={digest},{len(data)}\n")
    record.write(f"{info}/RECORD,,\n")
    files[f"{info}/RECORD"] = record.getvalue().encode()
    target = directory / name
    with zipfile.ZipFile(target, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return target


class SimpleIndex(LoopbackHTTPServer):
    """A PEP 503 index: /simple/stockadedemo/ links to /files/<wheel>."""

    def __init__(self, root: Path) -> None:
        wheel = make_wheel(root)
        self.wheel_name = wheel.name
        pages = {
            "/simple/": f'<a href="{WHEEL_NAME}/">{WHEEL_NAME}</a>'.encode(),
            f"/simple/{WHEEL_NAME}/": f'<a href="/files/{wheel.name}">{wheel.name}</a>'.encode(),
            f"/files/{wheel.name}": wheel.read_bytes(),
        }

        class Handler(_Handler):
            def do_GET(self) -> None:
                self.server.paths.append(self.path)
                body = pages.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                kind = (
                    "application/octet-stream"
                    if self.path.endswith(".whl")
                    else "text/html"
                )
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__("127.0.0.1", Handler)


class TCPWitness:
    """Counts TCP connections to a host loopback port (127.0.0.1 or ::1)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def stop(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class TCPHolder:
    """Accepts TCP connections on 127.0.0.1 and keeps them open until stop()."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.held:
            conn.close()


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False
