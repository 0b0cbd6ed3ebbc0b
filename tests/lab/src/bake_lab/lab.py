"""The lab's world beside moto: real instances, their images, SSM agents, latencies and the event log."""
import base64
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from moto.ec2.models.instances import StateReason

from . import dns, endpoint
from .ec2 import imds, paths, secgroups
from .host import aptproxy, rootfs, sh
from .host.container import Container
from .host.net import LabNet
from .ssm import agent

log = logging.getLogger("lab")

# The StateReason of a copy forced to fail (POST /_lab/copy-failures): EC2's code for an internal failure.
COPY_FAILED = ("Server.InternalError", "An internal error has occurred while copying the image")

# Default seconds per transition on top of the real work; small so tests are fast, settable per lab.
DEFAULT_LATENCY = {
    "instance_running": 0.0,  # the container's real boot (~1 s) is the latency
    "image_available": 1.0,   # an AMI is never available in the same second as CreateImage on EC2
    "ssm_online": 2.0,        # the SSM agent registers a moment after its unit starts on EC2
    "command": 0.0,           # pickup delay of a sent command (Pending -> InProgress)
    "health_check_interval": 1.0,      # target health probes (ELB's are 5-300 s apart; the lab is fast)
    "refresh_instance_timeout": 60.0,  # an instance refresh fails when a new instance is not healthy by then
    # NAT gateways and interface endpoints take minutes on AWS; a couple of seconds keeps tests fast while a
    # client that does not wait for them meets pending (and deleting) every time.
    "nat_gateway_available": 2.0,     # CreateNatGateway -> pending -> available
    "nat_gateway_deleted": 2.0,       # DeleteNatGateway -> deleting -> deleted
    "vpc_endpoint_available": 2.0,    # CreateVpcEndpoint (Interface) -> pending -> available
    "vpc_endpoint_deleted": 1.0,      # DeleteVpcEndpoints (Interface) -> deleting -> deleted (then gone)
    # Seconds one 60-s CloudWatch period lasts in the lab: metrics are published, alarms evaluated and scaling
    # cooldowns and warm-ups run on AWS's values scaled by metric_period / 60 (2 s: a 3-period alarm fires in 6 s).
    "metric_period": 2.0,
    # CopyImage -> pending -> available, per destination region: `image_copy` for every region, `image_copy.REGION`
    # for one (AWS: minutes to hours, longer across the world; a few seconds keep waiting code honest).
    "image_copy": 3.0,
    # A conditional PutObject/DeleteObject (If-None-Match, If-Match) on S3 takes tens of milliseconds; while one
    # runs, another on the same key is answered 409 ConditionalRequestConflict (s3.py).
    "s3_conditional_write": 0.05,
}


@dataclass
class Instance:
    """One instance the lab runs: the moto model plus its container and addresses."""
    model: object
    region: str
    layers: list[Path]
    private_ip: str
    cidr: str
    overlay: rootfs.Overlay
    container: Container
    resolver: str = dns.LINK_LOCAL  # the VPC resolver's address (VPC CIDR base + 2)
    public_ip: str | None = None
    running_at: float | None = None
    agent_since: float | None = None  # since when the agent's unit is active (ssm/agent.py watches it)
    offline_seen: float = 0.0  # the last time the watch found it not Online (bounds the ssm_online event)
    online_noted: bool = False  # the watch has recorded this Online spell's ssm_online event
    was_online: bool = False
    gone: bool = False  # set once its container, namespace and root are removed; late transitions then do nothing
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def state(self) -> str:
        return self.model._state.name


def set_state(model, name: str) -> None:
    codes = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
    model._state.name = name
    model._state.code = codes[name]


class Lab:
    """Everything the lab keeps beside moto's models; moto's patched backends call into it."""

    def __init__(self, net: LabNet, state_dir: Path, cache: Path, base_rootfs: Path):
        self.net = net
        self.state_dir = state_dir
        self.layers = rootfs.LayerStore(state_dir, base_rootfs)
        self.latency = dict(DEFAULT_LATENCY)
        self.instances: dict[str, Instance] = {}
        self.events: list[dict] = []
        self.copy_failures: dict[str, int | str] = {}  # region -> copies left to fail, or "all"
        self._lock = threading.Lock()
        self.imds = imds.MetadataService(net.router_ns, self._imds_view)
        self.apt = aptproxy.AptProxy(net.router_ns, cache / "apt-proxy")
        # AWS's public endpoints for instances: the lab's CA (trusted through a layer above the base image
        # of every instance), HTTPS on the service address, and the VPC resolver that points there.
        self.authority = endpoint.Authority()
        self.trust_layer = self.authority.trust_layer(base_rootfs, state_dir / "lab-trust")
        self.front = endpoint.AwsFront(net.router_ns, net.service_addr, self.authority, self._reaches)
        self.dns = dns.Resolver(net.router_ns, net.service_addr, self._private_ip_of, self._private_dns)
        self.dns.listen(dns.LINK_LOCAL)
        self.agent_deb = agent.package(cache)
        self.agents = agent.AgentWatch(self)
        self.enforce_security_groups = True  # as on AWS; the service applies the launcher's choice
        self._sg_lock = threading.Lock()
        self._online_lock = threading.Lock()
        self.scaling = None  # Auto Scaling and load balancing (scaling.py), set by the service
        self.endpoints = None  # interface VPC endpoints' addresses (ec2/endpoints.py), set by its install

    # ---- bookkeeping -------------------------------------------------------------------------
    def event(self, kind: str, at: float | None = None, **fields) -> None:
        """Record a transition; callers record it before the API can show it, so a client's lag is never negative."""
        with self._lock:
            self.events.append({"time": at or time.time(), "event": kind, **fields})

    def background(self, name: str, fn, *args) -> None:
        """Run fn in a thread; a failure is logged and recorded as an event, never lost."""
        def body():
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - reported, the lab keeps serving
                log.exception("%s failed", name)
                self.event("error", what=name, error=str(e))
        threading.Thread(target=body, name=name, daemon=True).start()

    def sleep_until(self, start: float, transition: str) -> None:
        """Sleep so that at least the configured latency of a transition has passed since start."""
        remaining = start + float(self.latency.get(transition, 0)) - time.time()
        if remaining > 0:
            time.sleep(remaining)

    # ---- instances ---------------------------------------------------------------------------
    def launch(self, model, region: str) -> None:
        """Give a moto instance its container; it is pending until the container has booted."""
        started = time.time()
        subnet = model.ec2_backend.get_subnet(model.subnet_id)
        cidr = subnet.cidr_block
        nic = model.nics[0]
        if ipaddress.ip_address(nic.private_ip_address) not in ipaddress.ip_network(cidr):
            nic.private_ip_address = subnet.get_available_subnet_ip(instance=model)
        layers = self.layers.layers_of(region, model.image_id)
        home = self.state_dir / "instances" / model.id
        home.mkdir(parents=True, exist_ok=True)
        overlay = rootfs.Overlay(home, layers[:1] + [self.trust_layer] + layers[1:])
        hostname = "ip-" + nic.private_ip_address.replace(".", "-")
        container = Container(model.id, overlay.merged, self.net.instance_ns(model.id), hostname, home / "console.log")
        inst = Instance(model, region, layers, nic.private_ip_address, cidr, overlay, container,
                        resolver=dns.resolver_address(model.ec2_backend.get_vpc(subnet.vpc_id).cidr_block))
        self.layers.hold(layers, model.id)
        with self._lock:
            self.instances[model.id] = inst
        set_state(model, "pending")
        self.background(f"launch {model.id}", self._boot, inst, started, True)

    def refuse_launch(self, model, region: str, code: str, message: str) -> None:
        """An instance EC2 accepts and then cannot start (its volume's KMS key may not be used): pending, then
        terminated with that StateReason; no container is made, its public address goes back to the range."""
        set_state(model, "pending")

        def end():
            self.sleep_until(time.time(), "instance_running")
            public = model.nics[0].public_ip if model.nics else None
            if public:
                self.net.release_public_ip(public)
            self.event("instance_terminated", instance_id=model.id, region=region, reason=f"{code}: {message}")
            model.state_reason = StateReason(f"{code}: {message}", code)
            set_state(model, "terminated")
        self.background(f"refuse {model.id}", end)

    def _boot(self, inst: Instance, started: float, first: bool) -> None:
        try:
            self._boot_container(inst, started, first)
        except Exception as e:
            # As EC2 does with an instance that cannot start: it ends terminated, with the reason.
            with inst.lock:
                if not inst.gone:
                    self._destroy(inst)
            self.event("instance_terminated", instance_id=inst.id, region=inst.region, reason=str(e))
            inst.model.state_reason = StateReason(f"Server.InternalError: {e}", "Server.InternalError")
            set_state(inst.model, "terminated")
            raise

    def _boot_container(self, inst: Instance, started: float, first: bool) -> None:
        with inst.lock:
            if inst.gone:
                return
            if first:
                self.net.attach(inst.id, inst.cidr, inst.private_ip)
            inst.overlay.mount()
            self._dhcp_dns(inst)
            self._map_public(inst)
            self.sync_security_groups()  # its groups apply from its first packet on
            inst.container.start()
            inst.container.wait_booted()
            self.sleep_until(started, "instance_running")
            if inst.state != "pending":
                return
            inst.running_at = time.time()
            self.event("instance_running", instance_id=inst.id, region=inst.region,
                       private_ip=inst.private_ip, public_ip=inst.public_ip)
            set_state(inst.model, "running")

    def _dhcp_dns(self, inst: Instance) -> None:
        """What EC2's DHCP options (AmazonProvidedDNS) give an instance: the VPC resolver and the search domain."""
        self.net.router_address(inst.resolver)
        self.dns.listen(inst.resolver)
        domain = "ec2.internal" if inst.region == "us-east-1" else f"{inst.region}.compute.internal"
        conf = inst.overlay.merged / "etc" / "resolv.conf"
        if conf.is_symlink():
            conf.unlink()
        conf.write_text(f"# AmazonProvidedDNS (the bake lab's VPC resolver)\nnameserver {inst.resolver}\n"
                        f"search {domain}\n")

    def _reaches(self, source_ip: str, host: str, local: str | None = None) -> bool:
        """Whether the instance at source_ip has a network path to AWS's endpoint `host` at the lab's address
        `local`: an interface endpoint's address serves its own service (the security groups decided who gets
        there); the service address needs an internet path or a gateway endpoint. Other callers (the runner, a
        load balancer) always do."""
        served = self.endpoints.serves(local, host) if self.endpoints is not None and local else None
        if served is not None:
            return served
        inst = next((i for i in list(self.instances.values()) if i.private_ip == source_ip), None)
        if inst is None:
            return True
        return agent.reaches(inst.model, inst.public_ip, inst.private_ip, host)

    def _private_dns(self, client_ip: str, name: str) -> list[str] | None:
        """Interface endpoints' private DNS, as the asking instance's VPC sees the name (None: no such endpoint)."""
        return self.endpoints.answer(client_ip, name) if self.endpoints is not None else None

    def _private_ip_of(self, hostname: str) -> str | None:
        inst = next((i for i in list(self.instances.values()) if i.container.hostname == hostname), None)
        return inst.private_ip if inst else None

    def _map_public(self, inst: Instance) -> None:
        public = inst.model.nics[0].public_ip
        if public and public != inst.public_ip:
            self.net.map_public(public, inst.private_ip)
            inst.public_ip = public

    def _unmap_public(self, inst: Instance) -> None:
        if inst.public_ip:
            self.net.unmap_public(inst.public_ip, inst.private_ip, release=not self._elastic(inst))
            inst.public_ip = None

    @staticmethod
    def _elastic(inst: Instance) -> bool:
        """Whether the instance's current public IP is an Elastic IP (which stays allocated when it moves)."""
        return any(a.public_ip == inst.public_ip for a in list(inst.model.ec2_backend.addresses))

    def refresh_public_ips(self) -> None:
        """Follow Elastic IP (dis)associations: a running instance's public address is what its primary
        interface has now; then its internet path is decided again."""
        for inst in list(self.instances.values()):
            if inst.gone or inst.running_at is None or inst.model.nics[0].public_ip == inst.public_ip:
                continue
            self._unmap_public(inst)
            self._map_public(inst)
        self.sync_security_groups()

    def has_internet_path(self, inst: Instance) -> bool:
        try:
            return paths.internet_path(inst.model, inst.public_ip) is not None
        except Exception:  # noqa: BLE001 - its subnet or VPC is gone: no path
            return False

    def has_profile(self, inst: Instance) -> bool:
        return inst.id in inst.model.ec2_backend.iam_instance_profile_associations

    def ssm_path(self, inst: Instance) -> str | None:
        """How the instance reaches SSM's endpoints (internet gateway, NAT gateway, VPC endpoints), if at all."""
        return agent.network_path(inst.model, inst.public_ip, inst.private_ip)

    def ssm_online(self, inst: Instance) -> bool:
        """Online as SSM reports it: the agent's unit runs (for ssm_online seconds: it registers), the
        instance has a profile and a network path to SSM. The first answer of an Online spell, whoever
        asks (the API or the agent watch), records its ssm_online event before anyone is told."""
        since = inst.agent_since
        online = (inst.state == "running" and inst.running_at is not None and since is not None
                  and time.time() >= since + float(self.latency["ssm_online"]) and self.has_profile(inst)
                  and self.ssm_path(inst) is not None)
        with self._online_lock:
            if not online:
                inst.offline_seen = time.time()
                inst.online_noted = False
            elif not inst.online_noted:
                inst.online_noted = inst.was_online = True
                # Online from agent_since + latency on, unless profile or path came later (after offline_seen).
                at = max(since + float(self.latency["ssm_online"]), inst.offline_seen)
                self.event("ssm_online", at=min(at, time.time()), instance_id=inst.id, region=inst.region,
                           path=self.ssm_path(inst))
        return online

    def stop(self, instance_id: str) -> None:
        inst = self.instances.get(instance_id)
        if inst is None:
            return
        set_state(inst.model, "stopping")
        self.background(f"stop {instance_id}", self._stop, inst)

    def _stop(self, inst: Instance) -> None:
        with inst.lock:
            if inst.gone:
                return
            inst.running_at = None
            inst.container.stop()
            self._unmap_public(inst)
            if inst.state == "stopping":
                self.event("instance_stopped", instance_id=inst.id, region=inst.region)
                set_state(inst.model, "stopped")

    def start(self, instance_id: str) -> None:
        inst = self.instances.get(instance_id)
        if inst is None:
            return
        set_state(inst.model, "pending")
        self.background(f"start {instance_id}", self._boot, inst, time.time(), False)

    def reboot(self, instance_id: str) -> None:
        inst = self.instances.get(instance_id)
        if inst is not None:
            self.background(f"reboot {instance_id}", self._restart, inst)

    def _restart(self, inst: Instance) -> None:
        with inst.lock:
            if inst.gone or not inst.container.alive:
                return
            inst.agent_since = None  # the agent goes down with the instance (and registers again after boot)
            inst.container.stop()
            inst.container.start()
            inst.container.wait_booted()

    def terminate(self, instance_id: str) -> None:
        inst = self.instances.get(instance_id)
        if inst is None:
            return
        set_state(inst.model, "shutting-down")
        self.background(f"terminate {instance_id}", self._terminate, inst)

    def _terminate(self, inst: Instance) -> None:
        """The instance ends terminated even when tearing down its container fails on the host (that failure
        is reported as the lab's error event): EC2 does not leave an instance shutting down for a host's
        trouble, and an instance stuck there would hold its security groups for ever."""
        with inst.lock:
            inst.running_at = None
            try:
                if not inst.gone:
                    self._destroy(inst)
            finally:
                self.event("instance_terminated", instance_id=inst.id, region=inst.region)
                set_state(inst.model, "terminated")

    def _destroy(self, inst: Instance) -> None:
        inst.gone = True
        inst.running_at = None
        inst.container.stop()
        self._unmap_public(inst)
        self.net.detach(inst.id)
        inst.overlay.remove()
        self.layers.release(inst.layers, inst.id)
        with self._lock:
            self.instances.pop(inst.id, None)
        self.sync_security_groups()

    def sync_security_groups(self) -> None:
        """Make the router's filters match the instances', load balancers' and interface endpoints' security
        groups (or remove that table when not enforced) and the instances' internet paths (ec2/paths.py)."""
        with self._sg_lock:
            wired = [i for i in list(self.instances.values()) if not i.gone]
            if self.enforce_security_groups:
                balancers = self.scaling.balancers.filtered_balancers() if self.scaling is not None else []
                balancers += self.endpoints.filtered() if self.endpoints is not None else []
                script = secgroups.ruleset(wired, balancers)
            else:
                script = secgroups.disabled()
            script += paths.ruleset(wired, self.has_internet_path, self.net.n["router_if"])
            sh.in_ns(self.net.router_ns, "nft", "-f", "-", input=script)

    def destroy_all(self) -> None:
        """Remove every container (reset and shutdown), each once its in-flight transition has finished."""
        if self.scaling is not None:
            self.scaling.clear()
        for inst in list(self.instances.values()):
            with inst.lock:
                if not inst.gone:
                    self._destroy(inst)

    # ---- images ------------------------------------------------------------------------------
    def create_image(self, ami, instance_id: str, region: str, no_reboot: bool) -> None:
        """Snapshot the instance's root as a new layer; the AMI is pending until that and its latency are done."""
        inst = self.instances[instance_id]
        ami.state = "pending"
        self.background(f"create image {ami.id}", self._bake, ami, inst, region, no_reboot, time.time())

    def _bake(self, ami, inst: Instance, region: str, no_reboot: bool, started: float) -> None:
        with inst.lock:
            reboot = not no_reboot and inst.container.alive and not inst.gone
            try:
                if inst.gone:
                    raise RuntimeError(f"instance {inst.id} was terminated before its image was taken")
                if reboot:
                    inst.container.stop()
                layer = self.layers.capture(inst.overlay.upper)
            except Exception:
                ami.state = "failed"
                raise
            finally:
                if reboot:
                    inst.container.start()
                    inst.container.wait_booted()
        layers = inst.layers + [layer]
        self.layers.register(region, ami.id, layers)
        self.layers.hold(layers, ami.ebs_snapshot.id)
        self._available(ami, region, started)

    def set_copy_failures(self, body: dict) -> dict:
        """{"region": R, "count": N} makes the next N copies into R fail ({"count": 0} clears it);
        {"region": R, "all": true} makes every copy into R fail until cleared."""
        region = str(body["region"])
        if body.get("all"):
            self.copy_failures[region] = "all"
        else:
            count = int(body.get("count", 1))
            if count < 0:
                raise ValueError("count must not be negative")
            if count:
                self.copy_failures[region] = count
            else:
                self.copy_failures.pop(region, None)
        return dict(self.copy_failures)

    def _forced_copy_failure(self, region: str) -> bool:
        with self._lock:
            left = self.copy_failures.get(region)
            if left is None:
                return False
            if left != "all":
                if left <= 1:
                    self.copy_failures.pop(region)
                else:
                    self.copy_failures[region] = left - 1
            return True

    def copy_latency(self, region: str) -> float:
        return float(self.latency.get(f"image_copy.{region}", self.latency.get("image_copy", 0.0)))

    def copy_image(self, src_region: str, src_id: str, dst_region: str, ami,
                   failure: tuple[str, str] | None = None) -> None:
        """The copy is pending for the destination region's copy latency, then available, or failed with
        `failure` (code, message) or a forced failure (POST /_lab/copy-failures)."""
        layers = self.layers.layers_of(src_region, src_id)
        self.layers.register(dst_region, ami.id, layers)
        self.layers.hold(layers, ami.ebs_snapshot.id)
        ami.state = "pending"
        if failure is None and self._forced_copy_failure(dst_region):
            failure = COPY_FAILED
        self.background(f"copy image {ami.id}", self._copied, ami, dst_region, time.time(), failure)

    def _copied(self, ami, region: str, started: float, failure: tuple[str, str] | None) -> None:
        remaining = started + self.copy_latency(region) - time.time()
        if remaining > 0:
            time.sleep(remaining)
        if ami.state != "pending":
            return
        if failure is None:
            self.event("image_available", image_id=ami.id, region=region)
            ami.state = "available"
            return
        code, message = failure
        self.event("image_failed", image_id=ami.id, region=region, reason=f"{code}: {message}")
        ami.state_reason = StateReason(message, code)
        ami.state = "failed"

    def _available(self, ami, region: str, started: float) -> None:
        """An AMI whose tree is stored becomes available once its latency has passed (unless deregistered)."""
        self.sleep_until(started, "image_available")
        if ami.state == "pending":
            self.event("image_available", image_id=ami.id, region=region)
            ami.state = "available"

    def snapshot_deleted(self, region: str, snapshot_id: str) -> None:
        """DeleteSnapshot frees the stored tree once no AMI snapshot or instance uses it."""
        self.layers.release(self.layers.held_layers(), snapshot_id)

    # ---- instance metadata ---------------------------------------------------------------------
    def _imds_view(self, source_ip: str) -> imds.InstanceView | None:
        inst = next((i for i in list(self.instances.values()) if i.private_ip == source_ip), None)
        if inst is None:
            return None
        m = inst.model
        user_data = base64.b64decode(m.user_data.as_bytes()) if m.user_data else b""
        assoc = m.ec2_backend.iam_instance_profile_associations.get(m.id)
        profile = assoc.iam_instance_profile if assoc else None
        return imds.InstanceView(
            instance_id=m.id, image_id=m.image_id, instance_type=m.instance_type, region=inst.region,
            zone=m.placement.zone, account_id=m.owner_id, private_ip=inst.private_ip,
            private_dns=m.private_dns_name, public_ip=inst.public_ip, public_dns=m.public_dns_name,
            mac=getattr(m.nics[0], "mac_address", ""), security_groups=[g.name for g in m.security_groups],
            user_data=user_data, http_tokens=m.metadata_options.http_tokens,
            http_endpoint=m.metadata_options.http_endpoint,
            profile_arn=profile.arn if profile else None, profile_id=profile.id if profile else None)

    def containers(self) -> list[dict]:
        return [{"instance_id": i.id, "region": i.region, "state": i.state, "container": i.container.alive,
                 "leader_pid": i.container.leader(), "private_ip": i.private_ip, "public_ip": i.public_ip,
                 "netns": i.container.netns, "image_id": i.model.image_id}
                for i in list(self.instances.values())]
