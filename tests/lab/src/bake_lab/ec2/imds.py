"""Instance metadata service at 169.254.169.254:80 in the router namespace; callers are known by source IP."""
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..host.net import socket_in_netns

MAX_TOKEN_TTL = 21600  # IMDSv2's documented maximum token lifetime, in seconds


class InstanceView:
    """What the metadata service needs to know about an instance (filled in by the lab)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


class MetadataService:
    def __init__(self, router_ns: str, resolve: Callable[[str], InstanceView | None]):
        self.resolve = resolve
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (instance id, expiry)
        sock = socket_in_netns(router_ns, socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("169.254.169.254", 80))
        sock.listen(64)
        self.server = ThreadingHTTPServer(("169.254.169.254", 80), self._handler(), bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="imds", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes | str = b"", ctype: str = "text/plain", headers=None):
                body = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                inst = service.resolve(self.client_address[0])
                if inst is None or inst.http_endpoint != "enabled":
                    return self._send(403)
                if self.path != "/latest/api/token":
                    return self._send(404)
                try:
                    ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
                except ValueError:
                    return self._send(400)
                if not 1 <= ttl <= MAX_TOKEN_TTL:
                    return self._send(400)
                token = secrets.token_urlsafe(40)
                service.tokens[token] = (inst.instance_id, time.time() + ttl)
                self._send(200, token, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

            def do_GET(self):
                inst = service.resolve(self.client_address[0])
                if inst is None or inst.http_endpoint != "enabled":
                    return self._send(403)
                token = self.headers.get("X-aws-ec2-metadata-token")
                if token is not None:
                    iid, expiry = service.tokens.get(token, (None, 0))
                    if iid != inst.instance_id or expiry < time.time():
                        return self._send(401)
                elif inst.http_tokens == "required":
                    return self._send(401)
                status, body, ctype = service.answer(inst, self.path.split("?")[0])
                self._send(status, body, ctype)

        return Handler

    @staticmethod
    def answer(inst: InstanceView, path: str) -> tuple[int, bytes | str, str]:
        if path in ("/latest/user-data", "/latest/user-data/"):
            return (200, inst.user_data, "application/octet-stream") if inst.user_data else (404, "", "text/plain")
        if path == "/latest/dynamic/instance-identity/document":
            doc = {"accountId": inst.account_id, "architecture": "x86_64", "availabilityZone": inst.zone,
                   "imageId": inst.image_id, "instanceId": inst.instance_id, "instanceType": inst.instance_type,
                   "privateIp": inst.private_ip, "region": inst.region, "version": "2017-09-30"}
            return 200, json.dumps(doc, indent=2), "application/json"
        meta = {
            "ami-id": inst.image_id,
            "ami-launch-index": "0",
            "hostname": inst.private_dns,
            "instance-id": inst.instance_id,
            "instance-type": inst.instance_type,
            "local-hostname": inst.private_dns,
            "local-ipv4": inst.private_ip,
            "mac": inst.mac,
            "placement/availability-zone": inst.zone,
            "placement/region": inst.region,
            "security-groups": "\n".join(inst.security_groups),
        }
        if inst.public_ip:
            meta["public-ipv4"] = inst.public_ip
            meta["public-hostname"] = inst.public_dns or ""
        if inst.profile_arn:
            meta["iam/info"] = json.dumps({"Code": "Success", "InstanceProfileArn": inst.profile_arn,
                                           "InstanceProfileId": inst.profile_id})
        prefix = "/latest/meta-data/"
        if not path.startswith(prefix[:-1]):
            return 404, "", "text/plain"
        key = path[len(prefix):].rstrip("/")
        if key in meta:
            return 200, meta[key], "text/plain"
        children = sorted({k[len(key) + 1:].split("/")[0] + ("/" if "/" in k[len(key) + 1:] else "")
                           for k in meta if not key or k.startswith(key + "/")})
        if children:
            return 200, "\n".join(children), "text/plain"
        return 404, "", "text/plain"
