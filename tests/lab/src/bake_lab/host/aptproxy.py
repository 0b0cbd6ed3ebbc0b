"""The instances' apt proxy: packages and by-hash indexes come from the mirror once, then from the lab cache.

It listens on 169.254.169.254:3142 in the router namespace, next to the metadata service. The base
image points apt at it, so instances share the cache but never share apt's lock files.
"""
import io
import os
import shutil
import socket
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from .net import socket_in_netns

PORT = 3142
MIRRORS = ("deb.debian.org",)  # the only package mirror this machine reaches
UPSTREAM_TIMEOUT = 60  # seconds for one mirror request; the largest .deb a test installs takes a few
FORWARDED = ("If-Modified-Since", "If-None-Match", "Cache-Control")
RETURNED = ("Content-Type", "Last-Modified", "ETag")


def immutable(path: str) -> bool:
    """A .deb or a by-hash index never changes under its URL, so a cached copy is always right."""
    return path.endswith(".deb") or "/by-hash/" in path


class AptProxy:
    def __init__(self, router_ns: str, cache_dir: Path):
        self.cache_dir = cache_dir
        self.stats = {"hits": 0, "mirror_fetches": 0, "passed_through": 0}
        self._lock = threading.Lock()
        sock = socket_in_netns(router_ns, socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("169.254.169.254", PORT))
        sock.listen(64)
        self.server = ThreadingHTTPServer(("169.254.169.254", PORT), self._handler(), bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.server.daemon_threads = True

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="apt-proxy", daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def cached(self, host: str, path: str) -> Path:
        """The cached copy of an immutable file, fetched from the mirror first if missing."""
        target = self.cache_dir / host / path.lstrip("/")
        if target.exists():
            self.count("hits")
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        try:
            with urllib.request.urlopen(f"http://{host}{path}", timeout=UPSTREAM_TIMEOUT) as resp, \
                    open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out)
            os.replace(tmp, target)  # concurrent fetches of one file: the last complete copy wins
        finally:
            tmp.unlink(missing_ok=True)
        self.count("mirror_fetches")
        return target

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status: int, headers: dict, body) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command == "GET" and body is not None:
                    shutil.copyfileobj(body, self.wfile)

            def do_GET(self):
                url = urlsplit(self.path)
                if url.scheme != "http" or url.hostname not in MIRRORS or ".." in url.path.split("/"):
                    return self._reply(403, {"Content-Length": "0"}, None)
                try:
                    if immutable(url.path):
                        path = proxy.cached(url.hostname, url.path)
                        with open(path, "rb") as f:
                            return self._reply(200, {"Content-Length": str(path.stat().st_size),
                                                     "Content-Type": "application/octet-stream"}, f)
                    self._pass_through(url)
                except urllib.error.HTTPError as e:
                    self._reply(e.code, {"Content-Length": "0", **{k: e.headers[k] for k in RETURNED
                                                                   if e.headers.get(k)}}, None)
                except OSError:
                    self._reply(502, {"Content-Length": "0"}, None)

            do_HEAD = do_GET

            def _pass_through(self, url) -> None:
                """Index files that change (InRelease, non-by-hash lists) go to the mirror every time."""
                proxy.count("passed_through")
                headers = {k: self.headers[k] for k in FORWARDED if self.headers.get(k)}
                req = urllib.request.Request(f"http://{url.hostname}{url.path}", headers=headers,
                                             method=self.command)
                with urllib.request.urlopen(req, timeout=UPSTREAM_TIMEOUT) as resp:
                    body = resp.read()
                    out = {k: resp.headers[k] for k in RETURNED if resp.headers.get(k)}
                    self._reply(resp.status, {**out, "Content-Length": str(len(body))}, io.BytesIO(body))

        return Handler
