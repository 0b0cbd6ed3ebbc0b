"""One lab's network: its router namespace, subnet bridges, instance namespaces, NAT and host routes.

Layout (k is the lab's index, unique among the labs on this machine):
  host  --bl<k>h 100.127.k.1/30 ==veth== bl<k>r 100.127.k.2/30--  router ns "bakelab<k>-r"
  host route 100.64.k.0/24 (the lab's public addresses) via the router
  router ns: one bridge per subnet holding the subnet's router address (.1), 169.254.169.254 (IMDS),
             169.254.169.253 and each VPC's base + 2 (the resolver), 100.64.k.2 (AWS's endpoints) on lo,
             DNAT public -> private, SNAT private -> public for instances with a public IP,
             masquerade for the rest (the NAT gateway); the host masquerades the lab out of its uplink.
  instance ns "bakelab<k>-<instance id>": eth0 with the private IP, default route via the subnet's .1
"""
import ctypes
import ipaddress
import os
import shutil
import socket
import threading
from pathlib import Path

from . import sh

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_setns_lock = threading.Lock()
RUN_DIR = Path("/run/bake-lab")


def names(index: int) -> dict[str, str]:
    """Every host-visible name a lab with this index uses (also what stale cleanup removes)."""
    return {
        "prefix": f"bakelab{index}-",
        "router_ns": f"bakelab{index}-r",
        "host_if": f"bl{index}h",
        "router_if": f"bl{index}r",
        "nft_table": f"bakelab{index}",
    }


def socket_in_netns(ns: str, family: int, kind: int) -> socket.socket:
    """A socket created inside the named network namespace (only this thread switches, briefly)."""
    with _setns_lock:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {ns}")
            try:
                return socket.socket(family, kind)
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(own)
            os.close(target)


def filter_bridged(ns: str) -> None:
    """Hand bridged IPv4 (two instances of one subnet) to the namespace's ip hooks and connection tracking,
    so security groups filter it as they filter routed traffic (br_netfilter; the sysctl is per namespace)."""
    if not _has_br_netfilter(ns):
        if shutil.which("modprobe"):
            sh.run("modprobe", "br_netfilter", check=False)
        if not _has_br_netfilter(ns):
            raise RuntimeError("the lab needs br_netfilter (CONFIG_BRIDGE_NETFILTER) to filter traffic between "
                               "instances of one subnet: modprobe br_netfilter failed")
    sh.in_ns(ns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")


def _has_br_netfilter(ns: str) -> bool:
    return sh.in_ns(ns, "sh", "-c", "test -e /proc/sys/net/bridge/bridge-nf-call-iptables && echo yes",
                    check=False).strip() == "yes"


class LabNet:
    """The network of one lab; every method is idempotent enough to be used from cleanup paths."""

    def __init__(self, index: int):
        self.index = index
        self.n = names(index)
        self.router_ns = self.n["router_ns"]
        self.public_net = ipaddress.ip_network(f"100.64.{index}.0/24")
        self.host_addr = f"100.127.{index}.1"
        # AWS's public endpoints as instances reach them (endpoint.py): the lowest public address.
        self.service_addr = f"100.64.{index}.2"
        self.router_addr = f"100.127.{index}.2"
        self._bridges: dict[str, str] = {}  # subnet CIDR -> bridge name
        self._veths = 0
        self._lock = threading.Lock()
        self._public_in_use: set[str] = set()
        self._router_addrs: set[str] = set()

    @staticmethod
    def index_is_free(index: int) -> bool:
        """No route on the host uses the addresses a lab with this index would take."""
        routes = sh.run("ip", "-4", "route", "show", "table", "all")
        return f"100.64.{index}." not in routes and f"100.127.{index}." not in routes

    def up(self) -> None:
        r, h, rt = self.router_ns, self.n["host_if"], self.n["router_if"]
        sh.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh.run("ip", "netns", "add", r)
        sh.run("ip", "-n", r, "link", "set", "lo", "up")
        sh.in_ns(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        filter_bridged(r)
        sh.run("ip", "link", "add", h, "type", "veth", "peer", "name", rt, "netns", r)
        sh.run("ip", "addr", "add", f"{self.host_addr}/30", "dev", h)
        sh.run("ip", "link", "set", h, "up")
        sh.run("ip", "-n", r, "addr", "add", f"{self.router_addr}/30", "dev", rt)
        sh.run("ip", "-n", r, "link", "set", rt, "up")
        sh.run("ip", "-n", r, "route", "add", "default", "via", self.host_addr)
        sh.run("ip", "-n", r, "addr", "add", "169.254.169.254/32", "dev", "lo")
        sh.run("ip", "-n", r, "addr", "add", "169.254.169.253/32", "dev", "lo")  # the VPC resolver's link-local
        sh.run("ip", "-n", r, "addr", "add", f"{self.service_addr}/32", "dev", "lo")
        sh.run("ip", "route", "add", str(self.public_net), "via", self.router_addr)
        t = self.n["nft_table"]
        sh.run("nft", "-f", "-", input=f"""
table ip {t} {{
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr {{ {self.public_net}, {self.host_addr}/30 }} oifname != "{h}" masquerade
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{h}" accept
    oifname "{h}" accept
  }}
}}""")
        sh.in_ns(r, "nft", "-f", "-", input=f"""
table ip lab {{
  map pub2priv {{ type ipv4_addr : ipv4_addr; }}
  map priv2pub {{ type ipv4_addr : ipv4_addr; }}
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    dnat to ip daddr map @pub2priv
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    dnat to ip daddr map @pub2priv
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    oifname "{rt}" snat to ip saddr map @priv2pub
    oifname "{rt}" masquerade
  }}
}}""")

    def _bridge(self, cidr: str) -> str:
        """The router-side bridge of a subnet, made on first use with the subnet's router address."""
        if cidr not in self._bridges:
            name = f"s{len(self._bridges)}"
            net = ipaddress.ip_network(cidr)
            # A fixed address: a bridge otherwise takes its ports' lowest MAC, which changes when that
            # port's instance goes, and every other instance of the subnet then holds a stale ARP entry
            # for its router (traffic through it stalls for seconds), where a VPC router's never changes.
            mac = f"02:00:00:00:{len(self._bridges) // 256:02x}:{len(self._bridges) % 256:02x}"
            sh.run("ip", "-n", self.router_ns, "link", "add", name, "address", mac, "type", "bridge")
            sh.run("ip", "-n", self.router_ns, "addr", "add", f"{net.network_address + 1}/{net.prefixlen}", "dev", name)
            sh.run("ip", "-n", self.router_ns, "link", "set", name, "up")
            self._bridges[cidr] = name
        return self._bridges[cidr]

    def router_address(self, address: str) -> None:
        """Give the router an address of its own (a VPC's resolver, base + 2); idempotent."""
        with self._lock:  # held while adding: a concurrent caller must not use the address before it exists
            if address in self._router_addrs:
                return
            sh.run("ip", "-n", self.router_ns, "addr", "replace", f"{address}/32", "dev", "lo")
            self._router_addrs.add(address)

    def instance_ns(self, instance_id: str) -> str:
        return f"{self.n['prefix']}{instance_id}"

    def allocate_public_ip(self) -> str:
        """Next free address of the lab's public range (.10 up: the low ones stay for lab services)."""
        with self._lock:
            for host in list(self.public_net.hosts())[9:]:
                if str(host) not in self._public_in_use:
                    self._public_in_use.add(str(host))
                    return str(host)
        raise RuntimeError(f"lab public range {self.public_net} exhausted")

    def release_public_ip(self, ip: str | None) -> None:
        with self._lock:
            self._public_in_use.discard(ip)

    def attach(self, instance_id: str, cidr: str, private_ip: str) -> str:
        """Make the instance's namespace with its private address; returns the namespace name."""
        ns = self.instance_ns(instance_id)
        net = ipaddress.ip_network(cidr)
        with self._lock:
            bridge = self._bridge(cidr)
            self._veths += 1
            veth = f"v{self._veths}"
        sh.run("ip", "netns", "add", ns)
        sh.run("ip", "-n", self.router_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh.run("ip", "-n", self.router_ns, "link", "set", veth, "master", bridge, "up")
        sh.run("ip", "-n", ns, "link", "set", "lo", "up")
        sh.run("ip", "-n", ns, "addr", "add", f"{private_ip}/{net.prefixlen}", "dev", "eth0")
        sh.run("ip", "-n", ns, "link", "set", "eth0", "up")
        sh.run("ip", "-n", ns, "route", "add", "default", "via", str(net.network_address + 1))
        return ns

    def map_public(self, public_ip: str, private_ip: str) -> None:
        sh.in_ns(self.router_ns, "nft", "-f", "-", input=(
            f"add element ip lab pub2priv {{ {public_ip} : {private_ip} }}\n"
            f"add element ip lab priv2pub {{ {private_ip} : {public_ip} }}\n"))

    def unmap_public(self, public_ip: str, private_ip: str, release: bool = True) -> None:
        """Stop routing public_ip to private_ip; release=False keeps the address taken (an Elastic IP)."""
        for table_map, key in (("pub2priv", public_ip), ("priv2pub", private_ip)):
            sh.in_ns(self.router_ns, "nft", "delete", "element", "ip", "lab", table_map, f"{{ {key} }}", check=False)
        if release:
            self.release_public_ip(public_ip)

    def detach(self, instance_id: str) -> None:
        """Remove the instance's namespace (its veth pair goes with it)."""
        sh.run("ip", "netns", "delete", self.instance_ns(instance_id), check=False)

    def down(self) -> None:
        teardown(self.index)


def lab_namespaces(index: int) -> list[str]:
    prefix = names(index)["prefix"]
    return [line.split()[0] for line in sh.run("ip", "netns", "list").splitlines()
            if line.split() and line.split()[0].startswith(prefix)]


def teardown(index: int) -> None:
    """Remove every network object of lab `index`: namespaces (killing what still runs in them), link, nft."""
    n = names(index)
    for ns in lab_namespaces(index):
        for pid in sh.run("ip", "netns", "pids", ns, check=False).split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        sh.run("ip", "netns", "delete", ns, check=False)
    sh.run("ip", "link", "delete", n["host_if"], check=False)
    sh.run("nft", "delete", "table", "ip", n["nft_table"], check=False)
