"""Elastic Load Balancing where moto has none: each application load balancer's address (its DNS name), its
HTTP listeners as reverse proxies, target health from real HTTP probes; and ELB's moto patches (health and DNS
names from the lab, name and tag rules, a deleted load balancer's parts still in use for a while)."""
import http.client
import itertools
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.ec2.models import ec2_backends
from moto.elbv2 import models as elb_models
from moto.elbv2.exceptions import ResourceInUseError
from moto.elbv2.models import ELBv2Backend, elbv2_backends
from moto.elbv2.responses import ELBV2Response

from .consistency import Consistency, serving_one_of
from .ec2 import secgroups
from .host import sh
from .host.net import socket_in_netns
from .limits import LimitError, query_tags, tags
from .patching import ACCOUNT, backends, before, replace

PROBE_TIMEOUT = 2.0  # a lab target that does not answer in 2 s is down
# The data path waits this long for the scaling loop's lock (held while it probes targets and launches
# instances, seconds at a time) before it routes on the health it last read.
ROUTE_WAIT = 0.05
# A draining target's in-flight requests are checked this often (they are lab HTTP requests: milliseconds).
DRAIN_POLL = 0.01
# Elastic Load Balancing CreateLoadBalancer / CreateTargetGroup: up to 32 alphanumerics or hyphens, not starting
# or ending with a hyphen; a load balancer's name also may not start with "internal-".
ELB_NAME_MAX = 32
ELB_NAME = re.compile(r"^[A-Za-z0-9-]+$")


class Proxy:
    """One load balancer listener: an HTTP reverse proxy in the router namespace."""

    def __init__(self, balancers: "Balancers", router_ns: str, address: str, port: int, lb_arn: str,
                 region: str):
        self.balancers, self.address, self.lb_arn, self.region = balancers, address, lb_arn, region
        sock = socket_in_netns(router_ns, socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
        self.server = ThreadingHTTPServer((address, port), self._handler(), bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.server.daemon_threads = True
        self.rr = itertools.count()
        threading.Thread(target=self.server.serve_forever, name=f"alb {address}:{port}", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _forward(self):
                region, lb = proxy.region, proxy.lb_arn
                chosen = proxy.balancers.pick(region, lb, self.server.server_address[1], next(proxy.rr))
                if chosen is None:
                    # No target chosen: an ELB 503, not in RequestCount (as ELB counts it).
                    proxy.balancers.traffic.elb_error(region, lb, 503)
                    return self._answer(503, "503 Service Temporarily Unavailable\n")
                try:
                    self._send(chosen)
                finally:
                    proxy.balancers.done(chosen)

            def _send(self, chosen: tuple[str, int, str, str]):
                region, lb = proxy.region, proxy.lb_arn
                ip, port, tg, _iid = chosen
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                headers["X-Forwarded-For"] = self.client_address[0]
                sock = None
                try:
                    sock = socket_in_netns(proxy.balancers.lab.net.router_ns, socket.AF_INET, socket.SOCK_STREAM)
                    # Counted against the target's drain: closed when its deregistration delay ends.
                    proxy.balancers.attach(chosen, sock)
                    sock.bind((proxy.address, 0))  # from the balancer, as its security group names it
                    sock.settimeout(10)
                    sock.connect((ip, port))
                    sent = time.monotonic()
                    upstream = http.client.HTTPConnection(ip, port, timeout=10)
                    upstream.sock = sock
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    # TargetResponseTime: from the request sent to the target until its answer's headers.
                    elapsed = time.monotonic() - sent
                    data = answer.read()
                    upstream.close()
                except (OSError, http.client.HTTPException):
                    proxy.balancers.traffic.request(region, lb, tg, None, None)
                    return self._answer(502, "502 Bad Gateway\n")
                finally:
                    if sock is not None:
                        proxy.balancers.detach(chosen, sock)
                proxy.balancers.traffic.request(region, lb, tg, answer.status, elapsed)
                self.send_response(answer.status, answer.reason)
                for k, v in answer.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, status: int, text: str):
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        return Handler



class Traffic:
    """What the listeners served since the last CloudWatch period: per (region, load balancer, target group or
    None), the counts and target response times that AWS/ApplicationELB metrics are made of."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str | None], dict] = {}

    def _entry(self, region: str, lb: str, tg: str | None) -> dict:
        return self._counts.setdefault((region, lb, tg), {"requests": 0, "codes": {}, "elb": {}, "times": []})

    def request(self, region: str, lb: str, tg: str, status: int | None, elapsed: float | None) -> None:
        """A request sent to a target of tg: its status (None: the target failed, an ELB 502) and response time."""
        with self._lock:
            for key in (None, tg):
                e = self._entry(region, lb, key)
                e["requests"] += 1
                if status is None:
                    if key is None:
                        e["elb"][502] = e["elb"].get(502, 0) + 1
                    continue
                e["codes"][status // 100] = e["codes"].get(status // 100, 0) + 1
                e["times"].append(elapsed)

    def elb_error(self, region: str, lb: str, status: int) -> None:
        """An answer of the load balancer itself (no target chosen)."""
        with self._lock:
            e = self._entry(region, lb, None)
            e["elb"][status] = e["elb"].get(status, 0) + 1

    def drain(self) -> dict:
        """The counts since the last drain, and start again."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts


class Balancers:
    """The lab's load balancers: their addresses, listeners and the health of their targets."""

    def __init__(self, lab, lock: threading.RLock):
        self.lab = lab
        self._lock = lock  # the scaling loop's (scaling.py)
        self.proxies: dict[tuple[str, int], Proxy] = {}  # (lb arn, port) -> proxy
        self.addresses: dict[str, str] = {}  # lb arn -> address
        self.probes: dict[tuple[str, str], dict] = {}  # (tg arn, target id) -> probe state
        self.traffic = Traffic()  # what the listeners served, for CloudWatch (cloudwatch/metrics.py)
        self._filtered: tuple = ()  # the listeners and security groups the filter was last built from
        self._routes: dict[tuple[str, str, int], list] = {}  # (region, lb arn, port) -> last healthy targets
        self._flight = threading.Lock()  # the data path's choice of a target and its count, against `drain`
        self._in_flight: dict[tuple[str, str], int] = {}  # (tg arn, target id) -> requests awaiting an answer
        # (tg arn, target id) -> the sockets of its requests in flight, closed when its deregistration delay ends
        self._upstreams: dict[tuple[str, str], set] = {}
        # (tg arn, target id) -> (the target, when its deregistration delay ends): `drain`'s, shown as draining
        self.draining: dict[tuple[str, str], tuple[dict, float]] = {}

    def clear(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
        self.proxies.clear()
        for address in self.addresses.values():
            self._release(address)
        self.addresses.clear()
        self.probes.clear()
        self.draining.clear()
        self.traffic.drain()
        self._filtered = ()

    # ---- load balancers ------------------------------------------------------------------------
    def _address(self, arn: str) -> str:
        if arn not in self.addresses:
            net = self.lab.net
            with net._lock:
                for host in reversed(list(net.public_net.hosts())[9:]):
                    if str(host) not in net._public_in_use:
                        net._public_in_use.add(str(host))
                        break
                else:
                    raise RuntimeError("lab public range exhausted")
            sh.run("ip", "-n", net.router_ns, "addr", "add", f"{host}/32", "dev", "lo")
            self.addresses[arn] = str(host)
        return self.addresses[arn]

    def _release(self, address: str) -> None:
        sh.run("ip", "-n", self.lab.net.router_ns, "addr", "del", f"{address}/32", "dev", "lo", check=False)
        self.lab.net.release_public_ip(address)

    def assign_dns(self, lb) -> None:
        """An ALB's DNS name is its lab address, so any HTTP client reaches it without DNS."""
        with self._lock:
            lb.dns_name = self._address(lb.arn)

    def sync(self) -> None:
        """Addresses, DNS names and proxies follow the load balancers and listeners moto has."""
        wanted, listened = {}, {}
        for region, backend in backends(elbv2_backends):
            for lb in list(backend.load_balancers.values()):
                if lb.type != "application":
                    continue
                address = self._address(lb.arn)
                lb.dns_name = address
                lb.state = "active"
                for listener in list(lb.listeners.values()):
                    if str(listener.protocol).upper() == "HTTP":
                        wanted[(lb.arn, int(listener.port))] = (address, region)
                        listened[(lb.arn, int(listener.port))] = lb
        for key in list(self.proxies):
            if key not in wanted:
                self.proxies.pop(key).close()
        for key, (address, region) in wanted.items():
            if key not in self.proxies:
                self.proxies[key] = Proxy(self, self.lab.net.router_ns, address, key[1], key[0], region)
        live = {arn for arn, _ in wanted} | {lb.arn for _, b in backends(elbv2_backends)
                                             for lb in b.load_balancers.values()}
        for arn in list(self.addresses):
            if arn not in live:
                self._release(self.addresses.pop(arn))
        seen = tuple(sorted((key, tuple(lb.security_groups or ())) for key, lb in listened.items()))
        if seen != self._filtered:
            self._filtered = seen
            self.lab.sync_security_groups()

    def filtered_balancers(self) -> list[secgroups.Balancer]:
        """The load balancers with an HTTP listener, for the security-group filter (takes no lock:
        the filter is rebuilt from other threads)."""
        addresses, found = dict(self.addresses), {}
        for (arn, port), proxy in list(self.proxies.items()):
            found.setdefault(arn, (proxy.region, []))[1].append(port)
        balancers = []
        for arn, (region, ports) in found.items():
            lb = elbv2_backends[ACCOUNT][region].load_balancers.get(arn)
            if lb is None or arn not in addresses:
                continue
            ec2 = ec2_backends[ACCOUNT][region]
            groups = [g for g in map(ec2.get_security_group_from_id, lb.security_groups or ()) if g]
            balancers.append(secgroups.Balancer(addresses[arn], ports, groups))
        return balancers

    def pick(self, region: str, lb_arn: str, port: int, turn: int) -> tuple[str, int, str, str] | None:
        """The target (address, port, target group, id) a request to the listener on `port` goes to, round
        robin over the healthy ones, counted in flight until `done`. A request does not wait for the scaling
        loop (an ALB's nodes route on the target health they last heard of): while the loop holds the lock,
        the targets read last are used. Either way a target deregistered since (draining, see `drain`) or no
        longer running gets no new requests: that check and the count are taken together under `_flight`."""
        key = (region, lb_arn, port)
        if self._lock.acquire(timeout=ROUTE_WAIT):
            try:
                self._routes[key] = self._healthy_targets(region, lb_arn, port)
            finally:
                self._lock.release()
        with self._flight:
            targets = [t for t in self._routes.get(key, []) if self._routable(region, t[2], t[3])]
            if not targets:
                return None
            chosen = targets[turn % len(targets)]
            self._in_flight[(chosen[2], chosen[3])] = self._in_flight.get((chosen[2], chosen[3]), 0) + 1
            return chosen

    def done(self, chosen: tuple[str, int, str, str]) -> None:
        """A request `pick` sent to `chosen` has its answer (or failed)."""
        with self._flight:
            key = (chosen[2], chosen[3])
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]

    def attach(self, chosen: tuple[str, int, str, str], sock: socket.socket) -> None:
        """The socket of a request `pick` sent to `chosen`; refused (OSError) when the target's deregistration
        delay has already ended."""
        key = (chosen[2], chosen[3])
        with self._flight:
            drained = self.draining.get(key)
            if drained is not None and time.time() >= drained[1]:
                raise ConnectionAbortedError(f"{key[1]} has completed deregistration")
            self._upstreams.setdefault(key, set()).add(sock)

    def detach(self, chosen: tuple[str, int, str, str], sock: socket.socket) -> None:
        key = (chosen[2], chosen[3])
        with self._flight:
            socks = self._upstreams.get(key)
            if socks is not None:
                socks.discard(sock)
                if not socks:
                    del self._upstreams[key]
        sock.close()

    def deregister(self, region: str, target_groups: list[str], instance_ids: list[str]) -> list:
        """Deregisters the instances from the target groups as Auto Scaling does before they leave the group:
        each gets no new request from now on and is shown draining for its group's deregistration delay.
        Returns what `wait_drained` waits for."""
        backend = elbv2_backends[ACCOUNT][region]
        found = []
        with self._flight:
            for tg in filter(None, map(backend.target_groups.get, target_groups)):
                for iid in instance_ids:
                    target = tg.targets.pop(iid, None)
                    if target is not None:
                        found.append(self._begin_drain(tg, target))
        return found

    def _begin_drain(self, tg, target: dict) -> tuple[tuple[str, str], float]:
        """`target`, just removed from `tg`'s targets, drains until the group's deregistration delay ends
        (AWS's default 300 s). Called with `_flight` held."""
        self.lab.event("target_deregistered", target_group=tg.arn, target=target["Id"])
        delay = float(tg.attributes.get("deregistration_delay.timeout_seconds", 300))
        self.draining[(tg.arn, target["Id"])] = (target, time.time() + delay)
        return (tg.arn, target["Id"]), time.monotonic() + delay

    def deregistered(self, tg, targets: list[dict]) -> None:
        """DeregisterTargets (or DetachLoadBalancerTargetGroups) removed `targets` from `tg`: they drain as
        any deregistered target does, their in-flight requests cut when the delay ends, without the
        caller waiting ("the load balancer stops sending requests to targets that are deregistering, but
        uses connection draining to ensure that in-flight traffic completes", DeregisterTargets)."""
        with self._flight:
            waits = [self._begin_drain(tg, t) for t in targets]
        if waits:
            self.lab.background(f"drain {tg.arn}", self.wait_drained, waits)

    def reregistered(self, tg, target_ids: list[str]) -> None:
        """RegisterTargets of a draining target registers it anew: it is no longer draining (its requests in
        flight are not cut), and its health checks start over (`initial`)."""
        with self._flight:
            for iid in target_ids:
                if self.draining.pop((tg.arn, iid), None) is not None:
                    self.probes.pop((tg.arn, iid), None)

    def wait_drained(self, waits: list) -> None:
        """Returns once each deregistered target of `waits` has no request in flight or its deregistration
        delay has ended; at that end its requests still in flight are cut (their clients get a 502), as the
        load balancer closes the connections of a target that completed deregistration. A target registered
        again meanwhile is no longer waited for. Bounded by the longest delay (at most 3600 s)."""
        while waits:
            cut = []
            with self._flight:
                now = time.monotonic()
                still = []
                for key, until in waits:
                    if key not in self.draining or not self._in_flight.get(key):
                        continue
                    if now >= until:
                        cut += list(self._upstreams.get(key, ()))
                    else:
                        still.append((key, until))
                waits = still
            for sock in cut:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by its request
            if waits:
                time.sleep(DRAIN_POLL)

    def drain(self, region: str, target_groups: list[str], instance_ids: list[str]) -> None:
        """Deregisters the instances from the target groups and returns once their in-flight
        requests have answered or the group's deregistration delay has passed, as Auto Scaling does before it
        terminates a group's instance ("Deregistration delay", Application Load Balancers User Guide: ELB
        stops sending requests to a deregistering target; one with no in-flight requests completes
        deregistration at once; then the Auto Scaling group's instance can be terminated). Without it, a
        request already sent to an instance the group terminates would fail with a 502. Called with the
        scaling loop's lock held: the wait is that of requests already in flight, bounded by the delay."""
        self.wait_drained(self.deregister(region, target_groups, instance_ids))

    def _routable(self, region: str, tg_arn: str, target_id: str) -> bool:
        """Still registered in its target group and running (single dict reads: safe without the lock)."""
        tg = elbv2_backends[ACCOUNT][region].target_groups.get(tg_arn)
        inst = self.lab.instances.get(target_id)
        return tg is not None and target_id in tg.targets and inst is not None and inst.state == "running"

    def _healthy_targets(self, region: str, lb_arn: str, port: int) -> list[tuple[str, int, str, str]]:
        backend = elbv2_backends[ACCOUNT][region]
        lb = backend.load_balancers.get(lb_arn)
        if lb is None:
            return []
        found = []
        for listener in lb.listeners.values():
            if int(listener.port) != port:
                continue
            for action in listener.default_actions:
                arn = action.data.get("TargetGroupArn") if hasattr(action, "data") else None
                tg = backend.target_groups.get(arn) if arn else None
                if tg is None:
                    continue
                for t in tg.targets.values():
                    state = self.probes.get((tg.arn, t["Id"]), {})
                    inst = self.lab.instances.get(t["Id"])
                    if state.get("state") == "healthy" and inst:
                        found.append((inst.private_ip, int(t["Port"]), tg.arn, t["Id"]))
        return found

    # ---- target health -------------------------------------------------------------------------
    def probe_all(self) -> None:
        live = set()
        for _region, backend in backends(elbv2_backends):
            # target group -> the address of a load balancer forwarding to it, where its checks start
            attached = {arn: self.addresses.get(lb.arn) for lb in backend.load_balancers.values()
                        for listener in lb.listeners.values() for a in listener.default_actions
                        for arn in [getattr(a, "data", {}).get("TargetGroupArn")] if arn}
            # target group -> the zones its load balancers have a subnet in (a target elsewhere gets no traffic)
            zones: dict[str, set] = {}
            for lb in backend.load_balancers.values():
                lb_zones = {s.availability_zone for s in lb.subnets or ()}
                for listener in lb.listeners.values():
                    for a in listener.default_actions:
                        arn = getattr(a, "data", {}).get("TargetGroupArn")
                        if arn:
                            zones.setdefault(arn, set()).update(lb_zones)
            for tg in list(backend.target_groups.values()):
                for t in list(tg.targets.values()):
                    key = (tg.arn, t["Id"])
                    live.add(key)
                    state = self.probes.setdefault(key, {"state": "initial", "reason": "Elb.InitialHealthChecking",
                                                         "description": "Initial health checks in progress",
                                                         "ok": 0, "fail": 0})
                    if tg.arn not in attached:
                        state.update(state="unused", reason="Target.NotInUse",
                                     description="Target group is not configured to receive traffic from the "
                                                 "load balancer")
                        continue
                    inst = self.lab.instances.get(t["Id"])
                    zone = inst.model.availability_zone if inst is not None else None
                    if zone and zones.get(tg.arn) and zone not in zones[tg.arn]:
                        state.update(state="unused", reason="Target.NotInUse",
                                     description="Target is in an Availability Zone that is not enabled for the "
                                                 "load balancer")
                        continue
                    self._probe(tg, t, state, attached[tg.arn])
        for key in list(self.probes):
            if key not in live:
                del self.probes[key]

    def _probe(self, tg, target: dict, state: dict, source: str | None) -> None:
        inst = self.lab.instances.get(target["Id"])
        port = int(target["Port"]) if tg.health_check_port in (None, "traffic-port") else int(tg.health_check_port)
        ok, why = False, "Target.Timeout"
        desc = "Request timed out"
        if inst is not None and inst.state == "running":
            try:
                sock = socket_in_netns(self.lab.net.router_ns, socket.AF_INET, socket.SOCK_STREAM)
                if source:
                    sock.bind((source, 0))
                sock.settimeout(PROBE_TIMEOUT)
                sock.connect((inst.private_ip, port))
                conn = http.client.HTTPConnection(inst.private_ip, port, timeout=PROBE_TIMEOUT)
                conn.sock = sock
                conn.request("GET", tg.health_check_path or "/")
                status = conn.getresponse().status
                conn.close()
                ok = _matches(str(tg.matcher.get("HttpCode", "200")), status)
                if not ok:
                    why, desc = "Target.ResponseCodeMismatch", f"Health checks failed with these codes: [{status}]"
            except ConnectionRefusedError:
                why, desc = "Target.FailedHealthChecks", "Health checks failed"
            except OSError:
                pass
        if ok:
            state["ok"], state["fail"] = state["ok"] + 1, 0
            if state["state"] != "healthy" and state["ok"] >= int(tg.healthy_threshold_count):
                state.update(state="healthy", reason=None, description=None)
                self.lab.event("target_healthy", target_group=tg.arn, target=target["Id"])
        else:
            state["fail"], state["ok"] = state["fail"] + 1, 0
            if state["state"] != "unhealthy" and state["fail"] >= int(tg.unhealthy_threshold_count):
                state.update(state="unhealthy", reason=why, description=desc)
                self.lab.event("target_unhealthy", target_group=tg.arn, target=target["Id"], reason=why)

    def health_for(self, tg, target_id: str):
        state = self.probes.get((tg.arn, target_id))
        return state

    def healthy(self, target_group_arn: str, target_id: str) -> bool:
        return self.probes.get((target_group_arn, target_id), {}).get("state") == "healthy"


def _matches(codes: str, status: int) -> bool:
    for part in codes.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            if int(lo) <= status <= int(hi):
                return True
        elif part.strip() and int(part) == status:
            return True
    return False



def install(balancers: Balancers) -> None:
    """Target health from the probes, and an ALB's DNS name its lab address from the start."""
    original_health_for = elb_models.FakeTargetGroup.health_for

    def health_for(tg, target, ec2_backend):
        drained = balancers.draining.get((tg.arn, target["Id"]))
        if drained is not None and target["Id"] not in tg.targets:
            # "the status of the target is displayed as draining until the deregistration delay timeout
            # expires. After the timeout expires, the target transitions to an unused state."
            if time.time() < drained[1]:
                return elb_models.FakeHealthStatus(target["Id"], drained[0]["Port"], tg.health_check_port,
                                                   "draining", "Target.DeregistrationInProgress",
                                                   "Target deregistration is in progress")
            return elb_models.FakeHealthStatus(target["Id"], drained[0]["Port"], tg.health_check_port, "unused",
                                               "Target.NotRegistered", "Target is not registered to the target group")
        status = original_health_for(tg, target, ec2_backend)
        if status.status == "healthy":
            state = balancers.health_for(tg, target["Id"]) or {
                "state": "initial", "reason": "Elb.InitialHealthChecking",
                "description": "Initial health checks in progress"}
            status.status, status.reason, status.description = state["state"], state["reason"], state["description"]
        return status

    elb_models.FakeTargetGroup.health_for = health_for

    original_register = elb_models.FakeTargetGroup.register
    original_deregister = elb_models.FakeTargetGroup.deregister

    def register(tg, targets):
        original_register(tg, targets)
        balancers.reregistered(tg, [t["Id"] for t in targets])

    def deregister(tg, targets):
        """The target leaves `targets` (no new requests) at once and drains (elb.py `Balancers.deregistered`)."""
        before = dict(tg.targets)
        try:
            original_deregister(tg, targets)
        finally:  # moto stops at an unknown target, the ones before it deregistered
            balancers.deregistered(tg, [before[iid] for iid in before if iid not in tg.targets])

    elb_models.FakeTargetGroup.register = register
    elb_models.FakeTargetGroup.deregister = deregister

    original_describe_target_health = elb_models.ELBv2Backend.describe_target_health

    def describe_target_health(backend, target_group_arn, targets):
        """Unasked for particular targets, the answer lists the registered ones and those still draining."""
        found = original_describe_target_health(backend, target_group_arn, targets)
        if not targets:
            tg = backend.target_groups[target_group_arn]
            now = time.time()
            found += [tg.health_for(target, backend.ec2_backend)
                      for (arn, iid), (target, until) in list(balancers.draining.items())
                      if arn == target_group_arn and now < until and iid not in tg.targets]
        return found

    elb_models.ELBv2Backend.describe_target_health = describe_target_health

    original_create_lb = elb_models.ELBv2Backend.create_load_balancer

    def create_load_balancer(backend, *args, **kwargs):
        lb = original_create_lb(backend, *args, **kwargs)
        if lb.type == "application":
            balancers.assign_dns(lb)
        return lb

    elb_models.ELBv2Backend.create_load_balancer = create_load_balancer


def install_limits() -> None:
    """Load balancer and target group names and ELB's tags, checked before moto acts."""
    def elb_tags(response):
        for group in query_tags({k: v for k, v in response.querystring.items() if k.startswith("Tags.")}):
            tags(group, "ValidationError")

    def load_balancer(response):
        elb_name(response._get_param("Name"), "load balancer")
        elb_tags(response)

    def target_group(response):
        elb_name(response._get_param("Name"), "target group")
        elb_tags(response)

    before(ELBV2Response, "create_load_balancer", load_balancer)
    before(ELBV2Response, "create_target_group", target_group)
    before(ELBV2Response, "add_tags", elb_tags)


def elb_name(name: str | None, kind: str) -> None:
    if name is None:
        return
    what = "Load balancer" if kind == "load balancer" else "Target group"
    if len(name) > ELB_NAME_MAX:
        raise LimitError("ValidationError", f"{what} name '{name}' cannot be longer than '{ELB_NAME_MAX}' characters")
    if not ELB_NAME.match(name):
        raise LimitError("ValidationError", f"{what} name '{name}' can only contain characters that are "
                                            "alphanumeric characters or hyphens(-)")
    if name.startswith("-") or name.endswith("-"):
        raise LimitError("ValidationError", f"{what} name '{name}' cannot begin or end with '-'")
    if kind == "load balancer" and name.startswith("internal-"):
        raise LimitError("ValidationError", f"Load balancer name '{name}' cannot begin with 'internal-'")


def install_consistency(c: Consistency) -> None:
    """A deleted load balancer's target groups and security groups stay in use for its release window."""
    def delete_load_balancer(original):
        def patched(backend, arn, *args, **kwargs):
            lb = backend.load_balancers.get(arn)
            result = original(backend, arn, *args, **kwargs)
            if lb is not None and serving_one_of("DeleteLoadBalancer"):
                now = time.time()
                with c.lock:
                    for tg in backend.target_groups.values():
                        if arn in tg.load_balancer_arns:
                            c.balancer_parts[tg.arn] = (now, arn)
                    for g in lb.security_groups or []:
                        c.balancer_parts[g] = (now, arn)
            return result
        return patched

    def delete_target_group(original):
        def patched(backend, target_group_arn, *args, **kwargs):
            if serving_one_of("DeleteTargetGroup") and target_group_arn in backend.target_groups:
                lb = c.balancer_holds(target_group_arn)
                if lb:
                    raise ResourceInUseError(f"Target group '{target_group_arn}' is currently in use by a "
                                             f"listener or a rule of load balancer '{lb}'")
            return original(backend, target_group_arn, *args, **kwargs)
        return patched

    replace(ELBv2Backend, "delete_load_balancer", delete_load_balancer)
    replace(ELBv2Backend, "delete_target_group", delete_target_group)
