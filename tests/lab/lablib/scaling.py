"""Auto Scaling and load balancing where moto has none: group instances launched as EC2 Auto Scaling
launches them, target health from real HTTP probes, each ALB as a reverse proxy, instance refresh."""
import http.client
import itertools
import json
import logging
import math
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.autoscaling import models as asg_models
from moto.autoscaling.models import autoscaling_backends
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ec2.responses.amis import AmisResponse
from moto.kms.models import kms_backends
from moto.ec2.utils import parse_user_data
from moto.elbv2 import models as elb_models
from moto.elbv2.models import elbv2_backends

from . import secgroups, sh
from .net import socket_in_netns

log = logging.getLogger("lab")

TICK = 0.25  # how often group membership, probes and refreshes are looked at
PROBE_TIMEOUT = 2.0  # a lab target that does not answer in 2 s is down
ACTIVE = ("Pending", "InProgress", "Cancelling", "RollbackInProgress")


class RefreshInProgress(ServiceException):
    code = "InstanceRefreshInProgress"


class ActiveRefreshNotFound(ServiceException):
    code = "ActiveInstanceRefreshNotFound"


class ValidationError(ServiceException):
    code = "ValidationError"


# EC2 Auto Scaling retries a failed launch with a backoff: the lab waits 10 s after the first failure
# (`/_lab/latency` key `launch_retry`), doubling to 5 minutes (AWS's retries come seconds, then
# minutes apart).
LAUNCH_RETRY_FIRST = 10.0
LAUNCH_RETRY_CAP = 300.0
# The messages EC2 gives RunInstances for these causes, as Auto Scaling quotes them in its activities.
UNSUPPORTED = ("Your requested instance type ({type}) is not supported in your requested Availability Zone "
               "({zone}). Please retry your request by not specifying an Availability Zone or choosing {others}.")
# EC2's answer when a volume's KMS key may not be used by the launching principal (for a group: the
# Auto Scaling service-linked role), as Auto Scaling reports it.
KMS_DENIED = "Client.InternalError: Client error on launch."
AUTOSCALING_ROLE = "AWSServiceRoleForAutoScaling"
INSUFFICIENT = ("We currently do not have sufficient {type} capacity in the Availability Zone you requested "
                "({zone}). Our system will be working on provisioning additional capacity. You can currently "
                "get {type} capacity by not specifying an Availability Zone in your request or choosing {others}.")


@dataclass
class Activity:
    """One scaling activity, as DescribeScalingActivities shows it."""
    group: str
    status: str  # Successful | Failed
    description: str
    cause: str
    message: str = ""
    details: dict = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    start: float = field(default_factory=time.time)

    def describe(self) -> dict:
        d = {"ActivityId": self.id, "AutoScalingGroupName": self.group, "Description": self.description,
             "Cause": self.cause, "StartTime": _iso(self.start), "EndTime": _iso(self.start),
             "StatusCode": self.status, "Progress": 100, "Details": json.dumps(self.details)}
        if self.message:
            d["StatusMessage"] = self.message
        return d


@dataclass
class Refresh:
    """One instance refresh of a group, as DescribeInstanceRefreshes shows it."""
    id: str
    group: str
    region: str
    desired: str  # launch template version number the group moves to
    previous: str  # the version it ran before (the rollback target)
    min_healthy: int
    warmup: float
    auto_rollback: bool
    status: str = "Pending"
    reason: str = ""
    start: float = field(default_factory=time.time)
    end: float | None = None
    total: int = 0
    rolling_back: bool = False
    # instance id -> when the refresh launched it (for the lab's per-instance timeout)
    launched: dict = field(default_factory=dict)

    def target(self) -> str:
        return self.previous if self.rolling_back else self.desired

    def describe(self, done: int) -> dict:
        d = {
            "InstanceRefreshId": self.id, "AutoScalingGroupName": self.group, "Status": self.status,
            "StatusReason": self.reason, "StartTime": _iso(self.start),
            "PercentageComplete": 100 if self.status == "Successful" else (
                int(100 * done / self.total) if self.total else 0),
            "InstancesToUpdate": max(self.total - done, 0),
            "Preferences": {"MinHealthyPercentage": self.min_healthy, "InstanceWarmup": int(self.warmup),
                            "AutoRollback": self.auto_rollback, "SkipMatching": True},
        }
        if self.end:
            d["EndTime"] = _iso(self.end)
        return d


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Proxy:
    """One load balancer listener: an HTTP reverse proxy in the router namespace."""

    def __init__(self, scaling: "Scaling", router_ns: str, address: str, port: int, lb_arn: str, region: str):
        self.scaling, self.address, self.lb_arn, self.region = scaling, address, lb_arn, region
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
                targets = proxy.scaling.healthy_targets(proxy.region, proxy.lb_arn, self.server.server_address[1])
                if not targets:
                    return self._answer(503, "503 Service Temporarily Unavailable\n")
                ip, port = targets[next(proxy.rr) % len(targets)]
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                headers["X-Forwarded-For"] = self.client_address[0]
                try:
                    sock = socket_in_netns(proxy.scaling.lab.net.router_ns, socket.AF_INET, socket.SOCK_STREAM)
                    sock.bind((proxy.address, 0))  # from the balancer, as its security group names it
                    sock.settimeout(10)
                    sock.connect((ip, port))
                    upstream = http.client.HTTPConnection(ip, port, timeout=10)
                    upstream.sock = sock
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    upstream.close()
                except OSError:
                    return self._answer(502, "502 Bad Gateway\n")
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


class Scaling:
    """The lab's Auto Scaling and load-balancing world, driven by one background loop."""

    def __init__(self, lab):
        self.lab = lab
        self.refreshes: dict[tuple[str, str], list[Refresh]] = {}  # (region, group) -> newest last
        self.proxies: dict[tuple[str, int], Proxy] = {}  # (lb arn, port) -> proxy
        self.addresses: dict[str, str] = {}  # lb arn -> address
        self.probes: dict[tuple[str, str], dict] = {}  # (tg arn, target id) -> probe state
        self.activities: dict[tuple[str, str], list[Activity]] = {}  # (region, group) -> oldest first
        # (region, group) -> (failures in a row, when to try launching again)
        self.retries: dict[tuple[str, str], tuple[int, float]] = {}
        # (instance type, zone) -> "unsupported" (not offered there) or "insufficient" (no capacity now)
        self.unavailable: dict[tuple[str, str], str] = {}
        self._filtered: tuple = ()  # the listeners and security groups the filter was last built from
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scaling", daemon=True)

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            for proxy in self.proxies.values():
                proxy.close()
            self.proxies.clear()
            for address in self.addresses.values():
                self._release(address)
            self.addresses.clear()
            self.refreshes.clear()
            self.probes.clear()
            self.activities.clear()
            self.retries.clear()
            self.unavailable.clear()
            self._filtered = ()

    def _loop(self) -> None:
        last_probe = 0.0
        while not self._stop.wait(TICK):
            try:
                with self._lock:
                    self._balancers()
                    self._groups()
                    self._retry_launches()
                    interval = float(self.lab.latency.get("health_check_interval", 1.0))
                    if time.time() - last_probe >= interval:
                        last_probe = time.time()
                        self._probe_all()
                    self._refresh_all()
            except Exception as e:  # noqa: BLE001 - reported, the loop goes on
                log.exception("scaling loop")
                self.lab.event("error", what="scaling", error=str(e))

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

    def _balancers(self) -> None:
        wanted, listened = {}, {}
        for region, backend in _backends(elbv2_backends):
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
        live = {arn for arn, _ in wanted} | {lb.arn for _, b in _backends(elbv2_backends)
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
            lb = elbv2_backends[_account()][region].load_balancers.get(arn)
            if lb is None or arn not in addresses:
                continue
            ec2 = ec2_backends[_account()][region]
            groups = [g for g in map(ec2.get_security_group_from_id, lb.security_groups or ()) if g]
            balancers.append(secgroups.Balancer(addresses[arn], ports, groups))
        return balancers

    def healthy_targets(self, region: str, lb_arn: str, port: int) -> list[tuple[str, int]]:
        """Addresses of the healthy targets the listener on `port` forwards to."""
        with self._lock:
            backend = elbv2_backends[_account()][region]
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
                            found.append((inst.private_ip, int(t["Port"])))
            return found

    # ---- target health -------------------------------------------------------------------------
    def _probe_all(self) -> None:
        live = set()
        for region, backend in _backends(elbv2_backends):
            # target group -> the address of a load balancer forwarding to it, where its checks start
            attached = {arn: self.addresses.get(lb.arn) for lb in backend.load_balancers.values()
                        for l in lb.listeners.values() for a in l.default_actions
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
                                     description="Target group is not configured to receive traffic from the load balancer")
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

    # ---- groups --------------------------------------------------------------------------------
    def _groups(self) -> None:
        """Registers running group instances in the group's target groups; removes the gone ones."""
        for region, backend in _backends(autoscaling_backends):
            elb = elbv2_backends[_account()][region]
            for group in list(backend.autoscaling_groups.values()):
                running = {s.instance.id for s in group.instance_states
                           if s.instance.id in self.lab.instances and self.lab.instances[s.instance.id].state == "running"}
                for arn in group.target_group_arns:
                    tg = elb.target_groups.get(arn)
                    if tg is None:
                        continue
                    for iid in running - set(tg.targets):
                        tg.targets[iid] = {"Id": iid, "Port": tg.port}
                        self.lab.event("target_registered", target_group=arn, target=iid)
                    members = {s.instance.id for s in group.instance_states}
                    for iid in set(tg.targets) - members:
                        if iid in _all_group_instances():
                            continue
                        inst = self.lab.instances.get(iid)
                        if inst is None or inst.state != "running":
                            tg.targets.pop(iid, None)
                            self.lab.event("target_removed", target_group=arn, target=iid)

    def instance_healthy(self, region: str, group, iid: str) -> bool:
        inst = self.lab.instances.get(iid)
        if inst is None or inst.state != "running":
            return False
        if group.health_check_type != "ELB":
            return True
        elb = elbv2_backends[_account()][region]
        for arn in group.target_group_arns:
            if arn in elb.target_groups and self.probes.get((arn, iid), {}).get("state") != "healthy":
                return False
        return True

    # ---- launches and scaling activities --------------------------------------------------------
    def set_capacity(self, body: dict) -> dict:
        """`POST /_lab/capacity`: `{"unavailable": [{"instance_type", "zone", "reason"}]}`, reason
        `insufficient` (InsufficientInstanceCapacity, the default) or `unsupported` (not offered there)."""
        found = {}
        for item in body.get("unavailable") or []:
            reason = item.get("reason", "insufficient")
            if reason not in ("insufficient", "unsupported"):
                raise ValueError("reason must be insufficient or unsupported")
            found[(str(item["instance_type"]), str(item["zone"]))] = reason
        with self._lock:
            self.unavailable = found
        return self.capacity()

    def capacity(self) -> dict:
        return {"unavailable": [{"instance_type": t, "zone": z, "reason": r}
                                for (t, z), r in sorted(self.unavailable.items())]}

    def launch_refusal(self, region: str, image_id: str, instance_type: str, zone: str | None,
                       zones: list[str]) -> str | None:
        """EC2's answer to a launch it refuses, as Auto Scaling quotes it; None when it launches."""
        if zone is not None and (instance_type, zone) in self.unavailable:
            others = ", ".join(sorted({z for z in zones if z != zone and (instance_type, z) not in self.unavailable}))
            template = UNSUPPORTED if self.unavailable[(instance_type, zone)] == "unsupported" else INSUFFICIENT
            return template.format(type=instance_type, zone=zone, others=others or "another zone")
        if _kms_denied(region, image_id):
            return KMS_DENIED
        return None

    def record(self, region: str, activity: Activity) -> None:
        with self._lock:
            self.activities.setdefault((region, activity.group), []).append(activity)
        if activity.status == "Failed":
            self.lab.event("launch_failed", group=activity.group, reason=activity.message)

    def launch_outcome(self, region: str, group: str, failed: bool) -> None:
        """After a failed launch the group tries again after a backoff; a launch resets it."""
        with self._lock:
            key = (region, group)
            if not failed:
                self.retries.pop(key, None)
                return
            failures = self.retries.get(key, (0, 0.0))[0] + 1
            first = float(self.lab.latency.get("launch_retry", LAUNCH_RETRY_FIRST))
            wait = min(first * 2 ** (failures - 1), LAUNCH_RETRY_CAP)
            self.retries[key] = (failures, time.time() + wait)

    def _retry_launches(self) -> None:
        for (region, name), (_, at) in list(self.retries.items()):
            group = autoscaling_backends[_account()][region].autoscaling_groups.get(name)
            if group is None:
                self.retries.pop((region, name), None)
                continue
            missing = (group.desired_capacity or 0) - len(group.active_instances())
            if missing <= 0:
                self.retries.pop((region, name), None)
            elif time.time() >= at:
                group.replace_autoscaling_group_instances(missing, group.get_propagated_tags())

    def describe_activities(self, region: str, group_name: str | None, limit: int | None) -> list[dict]:
        with self._lock:
            found = [a for (r, g), acts in self.activities.items() if r == region
                     and (group_name is None or g == group_name) for a in acts]
        found.sort(key=lambda a: a.start, reverse=True)
        return [a.describe() for a in found[:limit or 100]]

    # ---- instance refresh ----------------------------------------------------------------------
    def start_refresh(self, region: str, group, prefs: dict, desired: dict | None) -> str:
        with self._lock:
            key = (region, group.name)
            if any(r.status in ACTIVE for r in self.refreshes.get(key, [])):
                raise RefreshInProgress("An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.")
            auto_rollback = str(prefs.get("AutoRollback", "false")).lower() == "true"
            if auto_rollback:
                _check_rollback_allowed(group, desired)
            current = _version_number(group, group.launch_template_version)
            target = current
            if desired and desired.get("LaunchTemplate"):
                target = _version_number(group, desired["LaunchTemplate"].get("Version") or "$Default")
            refresh = Refresh(
                id=str(uuid.uuid4()), group=group.name, region=region, desired=target, previous=current,
                min_healthy=int(prefs.get("MinHealthyPercentage", 90)),
                warmup=float(prefs["InstanceWarmup"] if prefs.get("InstanceWarmup") is not None
                             else group.health_check_grace_period or 0),
                auto_rollback=auto_rollback)
            self.refreshes.setdefault(key, []).append(refresh)
            self.lab.event("refresh_started", group=group.name, refresh=refresh.id, version=target)
            return refresh.id

    def rollback_refresh(self, region: str, group_name: str) -> str:
        with self._lock:
            active = [r for r in self.refreshes.get((region, group_name), []) if r.status in ("Pending", "InProgress")]
            if not active:
                raise ActiveRefreshNotFound("No in-progress instance refresh found to roll back.")
            r = active[-1]
            r.status, r.rolling_back, r.reason = "RollbackInProgress", True, "Rollback requested"
            r.launched.clear()
            self.lab.event("refresh_rollback", group=group_name, refresh=r.id)
            return r.id

    def cancel_refresh(self, region: str, group_name: str) -> str:
        with self._lock:
            active = [r for r in self.refreshes.get((region, group_name), []) if r.status in ACTIVE]
            if not active:
                raise ActiveRefreshNotFound("No in-progress or pending Instance Refresh found.")
            r = active[-1]
            r.status, r.end = "Cancelled", time.time()
            return r.id

    def describe_refreshes(self, region: str, group_name: str, ids: list[str]) -> list[dict]:
        with self._lock:
            backend = autoscaling_backends[_account()][region]
            group = backend.autoscaling_groups.get(group_name)
            out = []
            for r in reversed(self.refreshes.get((region, group_name), [])):
                if ids and r.id not in ids:
                    continue
                done = 0
                if group is not None:
                    done = sum(1 for s in group.instance_states
                               if getattr(s.instance, "lab_lt_version", None) == r.target()
                               and self.instance_healthy(region, group, s.instance.id))
                out.append(r.describe(min(done, r.total)))
            return out

    def _refresh_all(self) -> None:
        for (region, name), refreshes in self.refreshes.items():
            backend = autoscaling_backends[_account()][region]
            group = backend.autoscaling_groups.get(name)
            for r in refreshes:
                if r.status in ("Pending", "InProgress", "RollbackInProgress"):
                    if group is None:
                        r.status, r.end, r.reason = "Cancelled", time.time(), "the group was deleted"
                    else:
                        self._advance(region, group, r)

    def _advance(self, region: str, group, r: Refresh) -> None:
        if r.status == "Pending":
            r.status = "InProgress"
            r.total = len(group.instance_states)
        target = r.target()
        _set_group_version(group, target)
        states = list(group.instance_states)
        desired = group.desired_capacity or len(states)
        new = [s for s in states if getattr(s.instance, "lab_lt_version", None) == target]
        old = [s for s in states if getattr(s.instance, "lab_lt_version", None) != target]
        now = time.time()
        timeout = float(self.lab.latency.get("refresh_instance_timeout", 60.0))
        ready = 0
        for s in new:
            iid = s.instance.id
            launched = r.launched.setdefault(iid, now)
            if self.instance_healthy(region, group, iid):
                healthy_since = getattr(s.instance, "lab_healthy_since", None) or now
                s.instance.lab_healthy_since = healthy_since
                if now - healthy_since >= r.warmup:
                    ready += 1
            elif now - launched > timeout and not r.rolling_back:
                return self._fail(region, group, r, f"instance {iid} did not become healthy within {int(timeout)} s")
        if not old and ready >= len(new):
            r.status, r.end = ("RollbackSuccessful" if r.rolling_back else "Successful"), now
            if not r.rolling_back:
                r.reason = ""
            self.lab.event("refresh_" + r.status.lower(), group=group.name, refresh=r.id)
            return
        if not old:
            return
        # Keep MinHealthyPercentage of the desired capacity healthy: replace only what is above it.
        healthy_old = [s for s in old if self.instance_healthy(region, group, s.instance.id)]
        # Unhealthy instances go first: replacing them costs no capacity.
        old.sort(key=lambda s: s in healthy_old)
        floor = math.ceil(desired * r.min_healthy / 100)
        in_flight = len(new) - ready
        room = healthy_old and (len(healthy_old) + ready) - floor - in_flight
        batch = old if not healthy_old else old[:max(room, 1 if in_flight == 0 else 0)]
        if batch:
            ids = [s.instance.id for s in batch]
            backend = autoscaling_backends[_account()][region]
            backend.ec2_backend.terminate_instances(ids)
            # As the EC2 API does after TerminateInstances: the group replaces them, ELB drains them.
            elbv2_backends[_account()][region].notify_terminate_instances(ids)
            backend.notify_terminate_instances(ids)

    def _fail(self, region: str, group, r: Refresh, reason: str) -> None:
        r.reason = reason
        if r.auto_rollback:
            r.status, r.rolling_back = "RollbackInProgress", True
            r.launched.clear()
            self.lab.event("refresh_rollback", group=group.name, refresh=r.id, reason=reason)
        else:
            r.status, r.end = "Failed", time.time()
            self.lab.event("refresh_failed", group=group.name, refresh=r.id, reason=reason)


def _account() -> str:
    return "123456789012"


def _backends(backend_dict):
    for account in list(dict.values(backend_dict)):
        for region, backend in list(dict.items(account)):
            yield region, backend


def _all_group_instances() -> set[str]:
    return {s.instance.id for _, b in _backends(autoscaling_backends)
            for g in b.autoscaling_groups.values() for s in g.instance_states}


def _matches(codes: str, status: int) -> bool:
    for part in codes.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            if int(lo) <= status <= int(hi):
                return True
        elif part.strip() and int(part) == status:
            return True
    return False


def _check_rollback_allowed(group, desired: dict | None) -> None:
    """StartInstanceRefresh refuses AutoRollback where a rollback is not supported ("Undo changes with
    a manual or auto rollback"): no desired configuration, a group or desired configuration on
    $Latest/$Default, or a launch template whose image is a Systems Manager parameter."""
    spec = (desired or {}).get("LaunchTemplate")
    if not spec:
        raise ValidationError("The request isn't valid. The AutoRollback parameter cannot be set to true when the "
                              "DesiredConfiguration parameter is empty. Set AutoRollback to false or specify a "
                              "desired configuration and try again.")
    group_version = group.provided_launch_template_version or "$Default"
    wanted = spec.get("Version") or "$Default"
    for what, version in (("Auto Scaling group", group_version), ("desired configuration", wanted)):
        if version in ("$Latest", "$Default"):
            raise ValidationError(f"The request isn't valid. The AutoRollback parameter cannot be set to true when "
                                  f"the {what} uses the {version} version of a launch template. Specify a launch "
                                  f"template version number or set AutoRollback to false and try again.")
    for version in (group_version, wanted):
        image = group.ec2_launch_template.get_version(version).image_id or ""
        if image.startswith("resolve:ssm:"):
            raise ValidationError("The request isn't valid. The AutoRollback parameter cannot be set to true when "
                                  "the launch template uses a Systems Manager parameter instead of an AMI ID for "
                                  "the ImageId property. Set AutoRollback to false and try again.")


def _kms_denied(region: str, image_id: str) -> bool:
    """True when a snapshot of the image is encrypted with a customer managed KMS key that has no grant
    for the Auto Scaling service-linked role ("Required AWS KMS key policy for use with encrypted
    volumes"): EC2 then fails the group's launch with Client.InternalError. AWS managed keys
    (aws/ebs) need no grant."""
    ec2 = ec2_backends[_account()][region]
    image = ec2.amis.get(image_id)
    snapshot = getattr(image, "ebs_snapshot", None)
    if snapshot is None or not snapshot.encrypted or not snapshot.kms_key_id:
        return False
    kms = kms_backends[_account()][region]
    ref = snapshot.kms_key_id
    key = kms.keys.get(ref.rsplit("/", 1)[-1]) or next((k for k in kms.keys.values() if k.arn == ref), None)
    if key is None or key.key_manager != "CUSTOMER":
        return False
    return not any(AUTOSCALING_ROLE in g.grantee_principal for g in key.grants.values())


def _version_number(group, spec: str) -> str:
    return str(group.ec2_launch_template.get_version(spec).number)


def _set_group_version(group, version: str) -> None:
    group.launch_template_version = version
    group.provided_launch_template_version = version


def _launch(group, ec2, version, instance_type: str, subnet: str | None, zone: str | None, tags: dict) -> None:
    data = version.data
    kwargs = {
        "instance_type": instance_type, "tags": {"instance": dict(tags)},
        "launch_template": {"LaunchTemplateId": group.ec2_launch_template.id, "Version": str(version.number)},
        "is_instance_type_default": False, "subnet_id": subnet,
        "security_group_ids": list(data.get("SecurityGroupIds") or []),
        "metadata_options": data.get("MetadataOptions") or {},
    }
    if zone:
        kwargs["placement"] = zone
    user_data = data.get("UserData")
    if isinstance(user_data, str):
        user_data = parse_user_data(user_data)
    reservation = ec2.run_instances(version.image_id, 1, user_data, [], **kwargs)
    for instance in reservation.instances:
        profile = (data.get("IamInstanceProfile") or {}).get("Name")
        if profile:
            ec2.associate_iam_instance_profile(instance_id=instance.id, iam_instance_profile_name=profile,
                                               iam_instance_profile_arn=None)
        instance.autoscaling_group = group
        instance.lab_lt_version = str(version.number)
        group.instance_states.append(asg_models.InstanceState(
            instance, protected_from_scale_in=group.new_instances_protected_from_scale_in))


def install(lab, scaling: Scaling) -> None:
    """Patch moto's Auto Scaling and ELBv2 to act through `scaling`."""
    group_cls = asg_models.FakeAutoScalingGroup

    def replace_instances(group, count_needed: int, propagated_tags: dict) -> None:
        """Launch as EC2 Auto Scaling does: the group's template version, spread over its subnets; a
        launch EC2 refuses is a failed scaling activity, tried in the group's other zones, then again
        after a backoff (the scaling loop retries)."""
        propagated_tags[asg_models.ASG_NAME_TAG] = group.name
        propagated_tags.update(group.instance_tags)
        ec2 = group.autoscaling_backend.ec2_backend
        region = group.region
        subnets = [s for s in (group.vpc_zone_identifier or "").split(",") if s]
        version = group.ec2_launch_template.get_version(group.launch_template_version)
        data = version.data
        instance_type = data.get("InstanceType") or "t3.micro"
        before = len(group.instance_states)
        cause = (f"At {_iso(time.time())} an instance was started in response to a difference between desired "
                 f"and actual capacity, increasing the capacity from {before} to {before + count_needed}.")
        failed = False
        for _ in range(count_needed):
            counts = {s: 0 for s in subnets}
            for st in group.instance_states:
                if st.instance.subnet_id in counts:
                    counts[st.instance.subnet_id] += 1
            launched = False
            for subnet in sorted(subnets, key=lambda s: counts[s]) or [None]:
                zone = ec2.get_subnet(subnet).availability_zone if subnet else None
                refusal = scaling.launch_refusal(region, version.image_id, instance_type, zone,
                                                 [ec2.get_subnet(s).availability_zone for s in subnets])
                if refusal:
                    scaling.record(region, Activity(
                        group=group.name, status="Failed", cause=cause,
                        description=f"Launching a new EC2 instance.  Status Reason: {refusal} "
                                    "Launching EC2 instance failed.",
                        message=f"{refusal} Launching EC2 instance failed.",
                        details={"Subnet ID": subnet, "Availability Zone": zone}))
                    continue
                _launch(group, ec2, version, instance_type, subnet, zone, propagated_tags)
                inst = group.instance_states[-1].instance
                scaling.record(region, Activity(
                    group=group.name, status="Successful", cause=cause,
                    description=f"Launching a new EC2 instance: {inst.id}",
                    details={"Subnet ID": subnet, "Availability Zone": zone}))
                launched = True
                break
            if not launched:
                failed = True
                break
        scaling.launch_outcome(region, group.name, failed)

    group_cls.replace_autoscaling_group_instances = replace_instances

    def launch_template(state):
        group = state.auto_scaling_group
        if group is None or group.ec2_launch_template is None:
            return None
        return {"LaunchTemplateId": group.ec2_launch_template.id, "LaunchTemplateName": group.ec2_launch_template.name,
                "Version": getattr(state.instance, "lab_lt_version", str(group.ec2_launch_template.default_version_number))}

    asg_models.InstanceState.launch_template = property(launch_template)

    def update_attached_target_groups(backend, group_name: str) -> None:
        """Targets are registered once their instance runs (the scaling loop does it), as on AWS."""

    asg_models.AutoScalingBackend.update_attached_target_groups = update_attached_target_groups

    original_health_for = elb_models.FakeTargetGroup.health_for

    def health_for(tg, target, ec2_backend):
        status = original_health_for(tg, target, ec2_backend)
        if status.status == "healthy":
            state = scaling.health_for(tg, target["Id"]) or {
                "state": "initial", "reason": "Elb.InitialHealthChecking",
                "description": "Initial health checks in progress"}
            status.status, status.reason, status.description = state["state"], state["reason"], state["description"]
        return status

    elb_models.FakeTargetGroup.health_for = health_for

    original_create_lb = elb_models.ELBv2Backend.create_load_balancer

    def create_load_balancer(backend, *args, **kwargs):
        lb = original_create_lb(backend, *args, **kwargs)
        if lb.type == "application":
            scaling.assign_dns(lb)
        return lb

    elb_models.ELBv2Backend.create_load_balancer = create_load_balancer

    def start_instance_refresh(self):
        group_name = self._get_param("AutoScalingGroupName")
        group = self.autoscaling_backend.describe_auto_scaling_groups([group_name])[0]
        refresh_id = scaling.start_refresh(self.region, group, self._get_param("Preferences") or {},
                                           self._get_param("DesiredConfiguration"))
        return ActionResult({"InstanceRefreshId": refresh_id})

    def describe_instance_refreshes(self):
        found = scaling.describe_refreshes(self.region, self._get_param("AutoScalingGroupName"),
                                           self._get_param("InstanceRefreshIds") or [])
        return ActionResult({"InstanceRefreshes": found})

    def rollback_instance_refresh(self):
        return ActionResult({"InstanceRefreshId": scaling.rollback_refresh(
            self.region, self._get_param("AutoScalingGroupName"))})

    def cancel_instance_refresh(self):
        return ActionResult({"InstanceRefreshId": scaling.cancel_refresh(
            self.region, self._get_param("AutoScalingGroupName"))})

    def describe_scaling_activities(self):
        limit = self._get_param("MaxRecords")
        return ActionResult({"Activities": scaling.describe_activities(
            self.region, self._get_param("AutoScalingGroupName"), int(limit) if limit else None)})

    AutoScalingResponse.describe_scaling_activities = describe_scaling_activities

    original_copy_image = AmisResponse.copy_image

    def copy_image(self):
        """CopyImage with Encrypted: the copy's snapshot is encrypted with KmsKeyId (moto drops both),
        so a launch can meet the key's grants."""
        result = original_copy_image(self)
        if str(self._get_param("Encrypted")).lower() == "true":
            ami = self.ec2_backend.amis.get(result.result["ImageId"])
            if ami is not None and getattr(ami, "ebs_snapshot", None) is not None:
                ami.ebs_snapshot.encrypted = True
                ami.ebs_snapshot.kms_key_id = self._get_param("KmsKeyId") or "alias/aws/ebs"
        return result

    AmisResponse.copy_image = copy_image
    AutoScalingResponse.start_instance_refresh = start_instance_refresh
    AutoScalingResponse.describe_instance_refreshes = describe_instance_refreshes
    AutoScalingResponse.rollback_instance_refresh = rollback_instance_refresh
    AutoScalingResponse.cancel_instance_refresh = cancel_instance_refresh
