"""The VPC resolver (Route 53 Resolver, "AmazonProvidedDNS"): at each VPC CIDR's base + 2 and 169.254.169.253.

It answers an AWS service's name with its interface endpoint's addresses inside a VPC that has one with
private DNS (ec2/endpoints.py), other *.amazonaws.com names with the lab's service address (where endpoint.py
serves AWS's public endpoints), the lab's instance names (ip-A-B-C-D.REGION.compute.internal) with their private
address, and forwards every other question to the host's resolver. UDP only: the lab's answers are
small, and a forwarded answer keeps its truncation bit, so a client can tell.
"""
import ipaddress
import logging
import socket
import struct
import threading
from pathlib import Path

from .host.net import socket_in_netns

log = logging.getLogger("lab")

LINK_LOCAL = "169.254.169.253"  # the resolver's documented link-local address (Nitro instances)
TTL = 60  # seconds; AWS's public endpoint records carry short TTLs too
FORWARD_TIMEOUT = 3  # one forwarded question; the host's resolver answers in milliseconds or not at all
A, AAAA = 1, 28


def host_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    servers = []
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1])
    return servers or ["127.0.0.1"]


def parse_question(packet: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, end offset of the question) of a standard query, None if it is not one."""
    if len(packet) < 12:
        return None
    flags, qdcount = struct.unpack("!H", packet[2:4])[0], struct.unpack("!H", packet[4:6])[0]
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, i = [], 12
    while i < len(packet):
        n = packet[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0:
            return None
        labels.append(packet[i + 1:i + 1 + n].decode("ascii", errors="replace"))
        i += 1 + n
    if i + 4 > len(packet):
        return None
    qtype = struct.unpack("!H", packet[i:i + 2])[0]
    return ".".join(labels).lower().rstrip("."), qtype, i + 4


def answer(packet: bytes, end: int, addresses: list[str], rcode: int = 0) -> bytes:
    """A response to the query in packet: its question, then one A record per address."""
    qid = packet[:2]
    rd = struct.unpack("!H", packet[2:4])[0] & 0x0100
    flags = 0x8000 | 0x0400 * (rcode == 0) | rd | 0x0080 | rcode  # QR, AA, RD copied, RA, rcode
    header = qid + struct.pack("!HHHHH", flags, 1, len(addresses), 0, 0)
    body = packet[12:end]
    for addr in addresses:
        body += struct.pack("!HHHIH", 0xC00C, A, 1, TTL, 4) + socket.inet_aton(addr)
    return header + body


class Resolver:
    """One UDP listener per resolver address in the router namespace, all answering alike."""

    def __init__(self, router_ns: str, service_address: str, names, private=None):
        self.router_ns = router_ns
        self.service_address = service_address
        self.names = names  # callable: host name -> private IP of a lab instance, or None
        # callable (client ip, name) -> the addresses a VPC's private DNS gives name there, or None
        self.private = private or (lambda client, name: None)
        self.upstream = host_nameservers()
        self.listening: dict[str, socket.socket] = {}
        self.stats = {"answered": 0, "forwarded": 0}
        self._lock = threading.Lock()

    def listen(self, address: str) -> None:
        """Serve on address (the router must hold it); idempotent."""
        with self._lock:
            if address in self.listening:
                return
            sock = socket_in_netns(self.router_ns, socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, 53))
            self.listening[address] = sock
        threading.Thread(target=self._serve, args=(sock,), name=f"dns {address}", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            for sock in self.listening.values():
                sock.close()
            self.listening.clear()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                packet, client = sock.recvfrom(4096)
            except OSError:
                return  # closed at shutdown
            threading.Thread(target=self._reply, args=(sock, packet, client), daemon=True).start()

    def resolve(self, name: str, client: str | None = None) -> list[str] | None:
        """The lab's own answer for name asked by client (possibly no address), or None to forward it."""
        if name == "amazonaws.com" or name.endswith(".amazonaws.com"):
            private = self.private(client, name) if client else None
            return private or [self.service_address]
        if name.endswith(".compute.internal") or name.endswith(".ec2.internal"):
            ip = self.names(name.split(".")[0])
            return [ip] if ip else []
        return None

    def _reply(self, sock: socket.socket, packet: bytes, client) -> None:
        try:
            q = parse_question(packet)
            if q is None:
                return
            name, qtype, end = q
            own = self.resolve(name, client[0])
            if own is not None:
                # A for the lab's names; AAAA and the rest: NOERROR with no records (no IPv6 in the lab).
                reply = answer(packet, end, own if qtype == A else [], rcode=0 if own or qtype != A else 3)
                self.stats["answered"] += 1
            else:
                reply = self._forward(packet)
                self.stats["forwarded"] += 1
            if reply:
                sock.sendto(reply, client)
        except OSError:
            log.debug("dns reply to %s failed", client, exc_info=True)

    def _forward(self, packet: bytes) -> bytes | None:
        for server in self.upstream:
            family = socket.AF_INET6 if ":" in server else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as up:  # a host-namespace socket
                up.settimeout(FORWARD_TIMEOUT)
                try:
                    up.sendto(packet, (server, 53))
                    reply, _ = up.recvfrom(65535)
                    return reply
                except OSError:
                    continue
        q = parse_question(packet)
        return answer(packet, q[2], [], rcode=2) if q else None  # SERVFAIL


def resolver_address(vpc_cidr: str) -> str:
    """The resolver's address in a VPC: the primary CIDR's network address plus two."""
    return str(ipaddress.ip_network(vpc_cidr).network_address + 2)
