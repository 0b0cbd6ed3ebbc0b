"""AWS's public endpoints as instances reach them: *.amazonaws.com on one lab address, HTTPS with the lab's CA,
proxied to moto; the lab's CA in every instance's trust store.

An instance resolves any *.amazonaws.com name to the lab's service address (dns.py). There an
HTTPS (443) and HTTP (80) front, listening in the router namespace, forwards each request unchanged,
Host header included, to moto's server, which routes it by host (s3.REGION.amazonaws.com) or by
signature. Pre-signed S3 URLs made for the real endpoint therefore work from inside instances.
"""
import datetime
import http.client
import shutil
import socket
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .host.net import socket_in_netns

CA_NAME = "bake-lab-ca"
# An instance's request is forwarded to moto with this limit; the largest object a test moves (an app
# archive, the agent) is a few MB, answered in well under a second.
UPSTREAM_TIMEOUT = 60
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


def regions() -> list[str]:
    """Every region botocore knows (offline data), for the certificate's names."""
    return sorted(set(boto3.session.Session().get_available_regions("ec2")) | {"us-east-1"})


class Authority:
    """The lab's CA and the certificate of its AWS front (every *.amazonaws.com name instances use)."""

    def __init__(self):
        now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bake lab CA (not AWS)")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        names = ["amazonaws.com", "*.amazonaws.com", "*.s3.amazonaws.com"]
        for region in regions():
            names += [f"*.{region}.amazonaws.com", f"*.s3.{region}.amazonaws.com"]
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = (x509.CertificateBuilder()
                     .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "*.amazonaws.com")]))
                     .issuer_name(name).public_key(self.leaf_key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                     .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                     .sign(self.key, hashes.SHA256()))

    def ca_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as d:
            chain, key = Path(d) / "chain.pem", Path(d) / "key.pem"
            chain.write_bytes(self.leaf.public_bytes(serialization.Encoding.PEM) + self.ca_pem())
            key.write_bytes(self.leaf_key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
            ctx.load_cert_chain(chain, key)
        return ctx

    def trust_layer(self, base_rootfs: Path, layer: Path) -> Path:
        """A layer that adds the lab's CA to the base image's trust store, as update-ca-certificates would:
        the PEM under /usr/local/share/ca-certificates and appended to /etc/ssl/certs/ca-certificates.crt."""
        shutil.rmtree(layer, ignore_errors=True)
        local = layer / "usr/local/share/ca-certificates"
        certs = layer / "etc/ssl/certs"
        local.mkdir(parents=True)
        certs.mkdir(parents=True)
        pem = self.ca_pem()
        (local / f"{CA_NAME}.crt").write_bytes(pem)
        bundle = base_rootfs / "etc/ssl/certs/ca-certificates.crt"
        (certs / "ca-certificates.crt").write_bytes((bundle.read_bytes() if bundle.exists() else b"") + pem)
        (certs / f"{CA_NAME}.pem").symlink_to(f"/usr/local/share/ca-certificates/{CA_NAME}.crt")
        return layer


class AwsFront:
    """HTTPS and HTTP on the lab's service address in the router namespace, forwarded to moto."""

    def __init__(self, router_ns: str, address: str, authority: Authority, reaches):
        self.upstream = ("127.0.0.1", 0)
        self.router_ns = router_ns
        self.servers: dict[tuple[str, int], ThreadingHTTPServer] = {}
        self.started = False
        self.stats = {"requests": 0, "refused": 0}
        # callable (source ip, host name, local address) -> whether that caller has a path to it there
        self.reaches = reaches
        self._lock = threading.Lock()
        self.context = authority.server_context()
        self.context.sni_callback = self._sni
        for port in (443, 80):
            self.listen(address, port)

    def listen(self, address: str, port: int) -> None:
        """Serve address:port too (443 with TLS, as AWS's endpoints; 80 plain); idempotent. Interface endpoints'
        addresses are added and removed while the lab runs (ec2/endpoints.py)."""
        with self._lock:
            if (address, port) in self.servers:
                return
            sock = socket_in_netns(self.router_ns, socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(64)
            server = ThreadingHTTPServer((address, port), self._handler(), bind_and_activate=False)
            server.socket.close()
            server.socket = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False) \
                if port == 443 else sock
            server.daemon_threads = True
            self.servers[(address, port)] = server
            if self.started:
                self._run(server)

    def close(self, address: str, port: int) -> None:
        with self._lock:
            server = self.servers.pop((address, port), None)
        if server is not None:
            server.shutdown()
            server.server_close()

    @staticmethod
    def _run(server) -> None:
        host, port = server.server_address[:2]
        threading.Thread(target=server.serve_forever, name=f"aws-front-{host}:{port}", daemon=True).start()

    def _sni(self, sock: ssl.SSLSocket, server_name: str | None, _context) -> int | None:
        """No path to the endpoint (no internet route, no VPC endpoint): the TLS handshake fails."""
        try:
            source, local = sock.getpeername()[0], sock.getsockname()[0]
        except OSError:
            return None
        if server_name and not self.reaches(source, server_name, local):
            with self._lock:
                self.stats["refused"] += 1
            return ssl.ALERT_DESCRIPTION_ACCESS_DENIED
        return None

    def start(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        with self._lock:
            self.started = True
            for server in self.servers.values():
                self._run(server)

    def stop(self) -> None:
        for address, port in list(self.servers):
            self.close(address, port)

    def _handler(self):
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.settimeout(UPSTREAM_TIMEOUT)
                    try:
                        self.request.do_handshake()
                    except (ssl.SSLError, OSError):
                        self.request.close()
                        raise
                super().setup()

            def _forward(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                if not isinstance(self.request, ssl.SSLSocket) and host and \
                        not front.reaches(self.client_address[0], host, self.server.server_address[0]):
                    with front._lock:
                        front.stats["refused"] += 1
                    self.close_connection = True  # no path: nothing answers
                    return
                with front._lock:
                    front.stats["requests"] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                conn = http.client.HTTPConnection(*front.upstream, timeout=UPSTREAM_TIMEOUT)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError as e:
                    msg = f"lab endpoint: upstream failed: {e}\n".encode()
                    self.send_response(502)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_HEADERS and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
