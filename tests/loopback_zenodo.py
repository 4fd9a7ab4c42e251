"""A small Zenodo on 127.0.0.1 for download tests: a real HTTP server in a thread.

It serves ``/records/<record>/files/<name>`` (with byte ranges, written here, since
``http.server`` has none) and the record JSON at ``/api/records/<record>``, for a main record and
any other record that files are added to, and records every request. Switches make it misbehave
the way real servers do: cut a response off, ignore ``Range``, answer an error status, or stall.
An unknown record is a 404, as on Zenodo.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackZenodo:
    def __init__(self, record: str = "13888473"):
        self.record = record  # the main record
        self.records: dict[str, dict[str, bytes]] = {record: {}}
        self.published_md5: dict[tuple[str, str], str] = {}  # (record, name) -> md5
        self.requests: list[dict] = []  # {"path": ..., "range": header or None}
        self.cut_after: int | None = None  # next file response: send this many bytes, then hang up
        self.ignore_range = False
        self.statuses: list[int] = []  # next file requests are answered with these statuses
        self.stall: float = 0.0  # next file response waits this long before sending anything
        self._server: _Server | None = None

    @property
    def files(self) -> dict[str, bytes]:
        """The main record's files."""
        return self.records[self.record]

    def add(self, name: str, data: bytes, md5: str | None = None, record: str | None = None) -> None:
        """Serve ``data`` as ``name`` in ``record`` (the main one by default); ``md5`` overrides the
        checksum the record publishes."""
        record = record or self.record
        self.records.setdefault(record, {})[name] = data
        self.published_md5[(record, name)] = md5 or hashlib.md5(data).hexdigest()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def record_json(self, record: str | None = None) -> dict:
        record = record or self.record
        return {
            "id": int(record),
            "metadata": {"title": "ProtRNA weights (loopback copy)"},
            "files": [
                {
                    "id": hashlib.md5(name.encode()).hexdigest(),
                    "key": name,
                    "size": len(data),
                    "checksum": f"md5:{self.published_md5[(record, name)]}",
                    "links": {"self": f"{self.url}/api/records/{record}/files/{name}/content"},
                }
                for name, data in self.records[record].items()
            ],
        }

    def file_requests(self) -> list[dict]:
        return [r for r in self.requests if "/files/" in r["path"]]

    def start(self) -> "LoopbackZenodo":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.zenodo = self
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and left is part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        zenodo: LoopbackZenodo = self.server.zenodo
        path = self.path.split("?", 1)[0]
        zenodo.requests.append({"path": path, "range": self.headers.get("Range")})
        api = re.fullmatch(r"/api/records/(\d+)", path)
        if api and api.group(1) in zenodo.records:
            return self._send(200, json.dumps(zenodo.record_json(api.group(1))).encode(), "application/json")
        match = re.fullmatch(r"/records/(\d+)/files/([^/]+)", path)
        files = zenodo.records.get(match.group(1), {}) if match else {}
        if not match or match.group(2) not in files:
            return self._send(404, b"not found", "text/plain")
        if zenodo.statuses:
            return self._send(zenodo.statuses.pop(0), b"no", "text/plain")
        if zenodo.stall:
            delay, zenodo.stall = zenodo.stall, 0.0
            time.sleep(delay)
        data = files[match.group(2)]
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if ranged and not zenodo.ignore_range:
            first = int(ranged.group(1))
            last = min(int(ranged.group(2) or len(data) - 1), len(data) - 1)
            if first >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send(206, data[first : last + 1], "application/octet-stream",
                       {"Content-Range": f"bytes {first}-{last}/{len(data)}"})  # fmt: skip
        else:
            self._send(200, data, "application/octet-stream", {"Accept-Ranges": "bytes"})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        zenodo: LoopbackZenodo = self.server.zenodo
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if status in (200, 206) and zenodo.cut_after is not None and content_type != "application/json":
            body, zenodo.cut_after = body[: zenodo.cut_after], None
            self.close_connection = True  # hang up with the Content-Length unfulfilled
        self.wfile.write(body)
        self.wfile.flush()
