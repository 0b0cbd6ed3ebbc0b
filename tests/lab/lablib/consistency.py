"""Eventual consistency and teardown lags: the windows in which AWS documents that a new or released resource
is not yet what the last call made it, applied to the API calls of clients (never to the lab's own)."""
import threading
import time

from moto.ec2 import exceptions as ec2_errors
from moto.ec2.models import EC2Backend
from moto.elbv2.exceptions import ResourceInUseError
from moto.elbv2.models import ELBv2Backend
from moto.ssm import models as ssm_models
from moto.ssm.exceptions import SSMException

# Seconds each window lasts by default. AWS documents "a few seconds" to minutes; the lab keeps them short so the
# tests that meet them stay fast, long enough that a client which does not ride them out fails every time.
DEFAULT_WINDOWS = {
    "instance": 3.0,          # a new instance id unknown to Describe/Terminate/CreateTags, absent from tag filters
    "security_group": 3.0,    # a new group unknown to Authorize*/RunInstances/DescribeSecurityGroups/CreateTags
    "image": 1.0,             # a new AMI unknown to DescribeImages (and pending at least a moment after)
    "invocation": 0.5,        # a new command's invocation answers InvocationDoesNotExist
    "snapshot_release": 3.0,  # a deregistered AMI's snapshots answer InvalidSnapshot.InUse
    "load_balancer_release": 10.0,  # a deleted ALB's target groups/security groups stay in use (ENIs linger)
    "instance_release": 3.0,  # a terminated instance's network interface holds its security groups
}

# On EC2 an AMI is pending for minutes, far longer than it is unknown: the lab keeps a new AMI pending at least
# this long after its window, so a client that waited for it to be known sees it pending first.
PENDING_AFTER_KNOWN = 4.0

_request = threading.local()  # the action of the client request this thread serves (None: the lab's own call)


def serving(action: str | None) -> None:
    """Called by the control layer for every request: which client action this thread now serves."""
    _request.action = action


def _serving(*actions: str) -> bool:
    return getattr(_request, "action", None) in actions


class Consistency:
    """The windows and what is inside them: new ids (id -> born, kind) and released ones (id -> until, owner)."""

    def __init__(self):
        self.enabled = True
        self.windows = dict(DEFAULT_WINDOWS)
        self.lock = threading.Lock()
        self.born: dict[str, tuple[float, str]] = {}
        self.snapshots: dict[str, tuple[float, str]] = {}      # snapshot -> (released at, the AMI it was in)
        self.balancer_parts: dict[str, tuple[float, str]] = {}  # target group arn / sg id -> (deleted at, LB arn)
        self.terminated: dict[str, tuple[float, list[str]]] = {}  # instance -> (terminated at, its group ids)

    def settings(self) -> dict:
        return {"enabled": self.enabled, "windows": dict(self.windows)}

    def set(self, body: dict) -> dict:
        """`{"enabled": bool, "windows": {name: seconds}}`, either part optional."""
        windows = body.get("windows") or {}
        for name, value in windows.items():
            if name not in DEFAULT_WINDOWS:
                raise ValueError(f"unknown consistency window {name!r}; known: {', '.join(DEFAULT_WINDOWS)}")
            if float(value) < 0:
                raise ValueError(f"consistency window {name} must not be negative")
        if "enabled" in body:
            self.enabled = bool(body["enabled"])
        for name, value in windows.items():
            self.windows[name] = float(value)
        return self.settings()

    def reset(self) -> None:
        with self.lock:
            self.enabled = True
            self.windows = dict(DEFAULT_WINDOWS)
            self.born.clear()
            self.snapshots.clear()
            self.balancer_parts.clear()
            self.terminated.clear()

    def created(self, kind: str, resource_id: str) -> None:
        if not self.enabled:
            return
        with self.lock:
            self.born[resource_id] = (time.time(), kind)

    def new(self, resource_id: str) -> bool:
        """Whether the id is still inside its creation window."""
        born = self.born.get(resource_id)
        return self.enabled and born is not None and time.time() < born[0] + self.windows[born[1]]

    def _within(self, table: dict, key: str, window: str) -> str | None:
        entry = table.get(key)
        if self.enabled and entry is not None and time.time() < entry[0] + self.windows[window]:
            return entry[1]
        return None

    def snapshot_held(self, snapshot_id: str) -> str | None:
        return self._within(self.snapshots, snapshot_id, "snapshot_release")

    def balancer_holds(self, resource_id: str) -> str | None:
        return self._within(self.balancer_parts, resource_id, "load_balancer_release")


def _ids_in(values) -> list[str]:
    return [v for v in (values or []) if isinstance(v, str)]


def install(lab) -> None:
    """Wrap moto's backends so client calls meet the windows; the lab's own calls pass through."""
    c = lab.consistency = Consistency()
    sleep_until = lab.sleep_until

    def image_pending_while_unknown(start: float, transition: str) -> None:
        sleep_until(start, transition)
        if transition == "image_available" and c.enabled:
            remaining = start + c.windows["image"] + PENDING_AFTER_KNOWN - time.time()
            if remaining > 0:
                time.sleep(remaining)

    lab.sleep_until = image_pending_while_unknown
    _ec2_instances(lab, c)
    _ec2_groups(lab, c)
    _ec2_images(c)
    _ssm(c)
    _elbv2(c)


def _replace(cls, name: str, make):
    original = getattr(cls, name)
    patched = make(original)
    patched.__wrapped__ = original
    setattr(cls, name, patched)


def _ec2_instances(lab, c: Consistency) -> None:
    tokens: dict[tuple[str, str], str] = {}  # (region, ClientToken) -> reservation id

    def run_instances(original):
        def patched(backend, *args, **kwargs):
            token = kwargs.get("client_token")
            if _serving("RunInstances") and token and token != "ABCDE":  # moto's stand-in for none
                # Idempotency: a repeated RunInstances with the same ClientToken answers the first one's
                # reservation and launches nothing.
                known = tokens.get((backend.region_name, token))
                if known in backend.reservations:
                    _request.replayed = True  # moto's response then associates the profile again: skip it
                    return backend.reservations[known]
            _request.replayed = False
            if _serving("RunInstances"):
                groups = _ids_in(kwargs.get("security_group_ids"))
                for nic in kwargs.get("nics") or []:
                    for key in ("SecurityGroupId", "SecurityGroupIds", "Groups"):
                        groups += _ids_in(nic.get(key))
                unknown = [g for g in groups if c.new(g)]
                if unknown:
                    raise ec2_errors.InvalidSecurityGroupNotFoundError(unknown[0])
            reservation = original(backend, *args, **kwargs)
            if _serving("RunInstances"):
                for instance in reservation.instances:
                    c.created("instance", instance.id)
                if token and token != "ABCDE":
                    tokens[(backend.region_name, token)] = reservation.id
            return reservation
        return patched

    def by_ids(original):
        def patched(backend, instance_ids, *args, **kwargs):
            if _serving("DescribeInstances", "TerminateInstances", "DescribeInstanceStatus"):
                unknown = [i for i in instance_ids if c.new(i)]
                if unknown:
                    raise ec2_errors.InvalidInstanceIdError(unknown)
            return original(backend, instance_ids, *args, **kwargs)
        return patched

    def terminate_instances(original):
        def patched(backend, instance_ids, *args, **kwargs):
            result = original(backend, instance_ids, *args, **kwargs)
            now = time.time()
            with c.lock:
                for instance, _previous in result:
                    if instance.id not in c.terminated:
                        groups = sorted({g.id for nic in instance.nics.values() for g in nic.group_set})
                        c.terminated[instance.id] = (now, groups)
            return result
        return patched

    def describe_instances(original):
        def patched(backend, filters=None, *args, **kwargs):
            reservations = original(backend, filters, *args, **kwargs)
            if not (_serving("DescribeInstances") and filters
                    and any(k.startswith("tag") for k in filters)):
                return reservations
            kept = []
            for reservation in reservations:
                instances = [i for i in reservation.instances if not c.new(i.id)]
                if instances:
                    reservation.instances = instances  # all_reservations hands out copies
                    kept.append(reservation)
            return kept
        return patched

    def create_tags(original):
        def patched(backend, resource_ids, *args, **kwargs):
            if _serving("CreateTags"):
                for rid in resource_ids:
                    if rid.startswith("i-") and c.new(rid):
                        raise ec2_errors.InvalidInstanceIdError(rid)
                    if rid.startswith("sg-") and c.new(rid):
                        raise ec2_errors.InvalidSecurityGroupNotFoundError(rid)
                    if rid.startswith("ami-") and c.new(rid):
                        raise ec2_errors.InvalidAMIIdError(rid)
            return original(backend, resource_ids, *args, **kwargs)
        return patched

    def associate_iam_instance_profile(original):
        def patched(backend, instance_id, *args, **kwargs):
            if _serving("RunInstances") and getattr(_request, "replayed", False):
                return backend.iam_instance_profile_associations[instance_id]
            return original(backend, instance_id, *args, **kwargs)
        return patched

    _replace(EC2Backend, "run_instances", run_instances)
    _replace(EC2Backend, "associate_iam_instance_profile", associate_iam_instance_profile)
    _replace(EC2Backend, "get_multi_instances_by_id", by_ids)
    _replace(EC2Backend, "get_reservations_by_instance_ids", by_ids)
    _replace(EC2Backend, "terminate_instances", terminate_instances)
    _replace(EC2Backend, "describe_instances", describe_instances)
    _replace(EC2Backend, "create_tags", create_tags)


def _attached_groups(lab, c: Consistency, backend) -> dict[str, str]:
    """Security group id -> what holds it: a network interface of a live (or not yet gone) instance, a load
    balancer (or the ENIs of one just deleted), a VPC endpoint."""
    holders: dict[str, str] = {}
    for reservation in backend.all_reservations():
        for instance in reservation.instances:
            if instance._state.name != "terminated":
                for nic in instance.nics.values():
                    for group in nic.group_set:
                        holders.setdefault(group.id, f"network interface {nic.id} of {instance.id}")
    now = time.time()
    for iid, (at, groups) in list(c.terminated.items()):
        if iid in lab.instances or (c.enabled and now < at + c.windows["instance_release"]):
            for g in groups:
                holders.setdefault(g, f"the network interface of terminated instance {iid} (not yet released)")
    for eni in list(getattr(backend, "enis", {}).values()):
        if getattr(eni, "instance", None) is not None:
            continue  # an instance's interface: held as long as the instance holds it (above)
        for group in eni.group_set:
            holders.setdefault(group.id, f"network interface {eni.id}")
    for endpoint in list(getattr(backend, "vpc_end_points", {}).values()):
        if getattr(endpoint, "state", "") == "deleted":
            continue  # moto keeps a deleted endpoint listed; its interfaces are gone
        for g in getattr(endpoint, "security_group_ids", None) or []:
            holders.setdefault(g, f"VPC endpoint {endpoint.id}")
    try:
        from moto.elbv2.models import elbv2_backends
        for lb in list(elbv2_backends[backend.account_id][backend.region_name].load_balancers.values()):
            for g in lb.security_groups or []:
                holders.setdefault(g, f"load balancer {lb.name}")
    except KeyError:
        pass
    for part in list(c.balancer_parts):
        lb_arn = c.balancer_holds(part)
        if part.startswith("sg-") and lb_arn:
            holders.setdefault(part, f"network interfaces of deleted load balancer {lb_arn} (not yet released)")
    return holders


def _ec2_groups(lab, c: Consistency) -> None:
    def create_security_group(original):
        def patched(backend, *args, **kwargs):
            group = original(backend, *args, **kwargs)
            if _serving("CreateSecurityGroup"):
                c.created("security_group", group.id)
            return group
        return patched

    def authorize(original):
        def patched(backend, group_name_or_id, *args, **kwargs):
            if _serving("AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress") and c.new(group_name_or_id):
                raise ec2_errors.InvalidSecurityGroupNotFoundError(group_name_or_id)
            return original(backend, group_name_or_id, *args, **kwargs)
        return patched

    def describe_security_groups(original):
        def patched(backend, group_ids=None, *args, **kwargs):
            if _serving("DescribeSecurityGroups"):
                unknown = [g for g in group_ids or [] if c.new(g)]
                if unknown:
                    raise ec2_errors.InvalidSecurityGroupNotFoundError(unknown[0])
                return [g for g in original(backend, group_ids, *args, **kwargs) if not c.new(g.id)]
            return original(backend, group_ids, *args, **kwargs)
        return patched

    def delete_security_group(original):
        def patched(backend, name=None, group_id=None):
            if _serving("DeleteSecurityGroup"):
                group = backend.get_security_group_by_name_or_id(group_id or name)
                if group is not None:
                    holder = _attached_groups(lab, c, backend).get(group.id)
                    if holder:
                        raise ec2_errors.DependencyViolationError(
                            f"resource {group.id} has a dependent object ({holder})")
            return original(backend, name, group_id)
        return patched

    _replace(EC2Backend, "create_security_group", create_security_group)
    _replace(EC2Backend, "authorize_security_group_ingress", authorize)
    if hasattr(EC2Backend, "authorize_security_group_egress"):
        _replace(EC2Backend, "authorize_security_group_egress", authorize)
    _replace(EC2Backend, "describe_security_groups", describe_security_groups)
    _replace(EC2Backend, "delete_security_group", delete_security_group)


def _ec2_images(c: Consistency) -> None:
    def created(original, action):
        def patched(backend, *args, **kwargs):
            ami = original(backend, *args, **kwargs)
            if _serving(action):
                c.created("image", ami.id)
            return ami
        return patched

    def describe_images(original):
        def patched(backend, ami_ids=None, *args, **kwargs):
            if _serving("DescribeImages"):
                unknown = [a for a in ami_ids or [] if c.new(a)]
                if unknown:
                    raise ec2_errors.InvalidAMIIdError(unknown)
                return [a for a in original(backend, ami_ids, *args, **kwargs) if not c.new(a.id)]
            return original(backend, ami_ids, *args, **kwargs)
        return patched

    def deregister_image(original):
        def patched(backend, ami_id, *args, **kwargs):
            snapshots = [s.id for s in backend.snapshots.values() if getattr(s, "from_ami", None) == ami_id]
            result = original(backend, ami_id, *args, **kwargs)
            if _serving("DeregisterImage"):
                now = time.time()
                with c.lock:
                    for s in snapshots:
                        c.snapshots[s] = (now, ami_id)
            return result
        return patched

    def delete_snapshot(original):
        def patched(backend, snapshot_id, *args, **kwargs):
            if _serving("DeleteSnapshot") and snapshot_id in backend.snapshots:
                ami = c.snapshot_held(snapshot_id)
                if ami:
                    raise ec2_errors.InvalidSnapshotInUse(snapshot_id, ami)
            return original(backend, snapshot_id, *args, **kwargs)
        return patched

    _replace(EC2Backend, "create_image", lambda o: created(o, "CreateImage"))
    _replace(EC2Backend, "copy_image", lambda o: created(o, "CopyImage"))
    _replace(EC2Backend, "describe_images", describe_images)
    _replace(EC2Backend, "deregister_image", deregister_image)
    _replace(EC2Backend, "delete_snapshot", delete_snapshot)


def _ssm(c: Consistency) -> None:
    backend_cls = ssm_models.SimpleSystemManagerBackend

    def send_command(original):
        def patched(backend, *args, **kwargs):
            command = original(backend, *args, **kwargs)
            if _serving("SendCommand"):
                c.created("invocation", command.command_id)
            return command
        return patched

    def get_command_invocation(original):
        def patched(backend, command_id, *args, **kwargs):
            if _serving("GetCommandInvocation") and c.new(command_id):
                raise SSMException("InvocationDoesNotExist",
                                   "An error occurred (InvocationDoesNotExist) when calling the "
                                   "GetCommandInvocation operation")
            return original(backend, command_id, *args, **kwargs)
        return patched

    _replace(backend_cls, "send_command", send_command)
    _replace(backend_cls, "get_command_invocation", get_command_invocation)


def _elbv2(c: Consistency) -> None:
    def delete_load_balancer(original):
        def patched(backend, arn, *args, **kwargs):
            lb = backend.load_balancers.get(arn)
            result = original(backend, arn, *args, **kwargs)
            if lb is not None and _serving("DeleteLoadBalancer"):
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
            if _serving("DeleteTargetGroup") and target_group_arn in backend.target_groups:
                lb = c.balancer_holds(target_group_arn)
                if lb:
                    raise ResourceInUseError(f"Target group '{target_group_arn}' is currently in use by a "
                                             f"listener or a rule of load balancer '{lb}'")
            return original(backend, target_group_arn, *args, **kwargs)
        return patched

    _replace(ELBv2Backend, "delete_load_balancer", delete_load_balancer)
    _replace(ELBv2Backend, "delete_target_group", delete_target_group)
