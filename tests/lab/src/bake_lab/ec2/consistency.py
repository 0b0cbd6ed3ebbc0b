"""EC2's eventual consistency and teardown lags (see consistency.py): new instances, security groups and AMIs
unknown for their window, a deregistered AMI's snapshots and a terminated instance's groups still in use, and
RunInstances' ClientToken idempotency."""
import threading
import time

from moto.ec2 import exceptions as ec2_errors
from moto.ec2.models import EC2Backend

from ..consistency import Consistency, serving_one_of
from ..patching import replace

_request = threading.local()  # whether this thread's RunInstances answers an earlier reservation (ClientToken)


def _ids_in(values) -> list[str]:
    return [v for v in (values or []) if isinstance(v, str)]


def _ec2_instances(lab, c: Consistency) -> None:
    tokens: dict[tuple[str, str], str] = {}  # (region, ClientToken) -> reservation id

    def run_instances(original):
        def patched(backend, *args, **kwargs):
            token = kwargs.get("client_token")
            if serving_one_of("RunInstances") and token and token != "ABCDE":  # moto's stand-in for none
                # Idempotency: a repeated RunInstances with the same ClientToken answers the first one's
                # reservation and launches nothing.
                known = tokens.get((backend.region_name, token))
                if known in backend.reservations:
                    _request.replayed = True  # moto's response then associates the profile again: skip it
                    return backend.reservations[known]
            _request.replayed = False
            if serving_one_of("RunInstances"):
                groups = _ids_in(kwargs.get("security_group_ids"))
                for nic in kwargs.get("nics") or []:
                    for key in ("SecurityGroupId", "SecurityGroupIds", "Groups"):
                        groups += _ids_in(nic.get(key))
                unknown = [g for g in groups if c.new(g)]
                if unknown:
                    raise ec2_errors.InvalidSecurityGroupNotFoundError(unknown[0])
            # The window runs from the launch, not from when this call returns: moto's run_instances (and the
            # lab's launch under it) may take seconds, in which the instance already shows in listings.
            launched = time.time()
            reservation = original(backend, *args, **kwargs)
            if serving_one_of("RunInstances"):
                for instance in reservation.instances:
                    c.created("instance", instance.id, at=launched)
                if token and token != "ABCDE":
                    tokens[(backend.region_name, token)] = reservation.id
            return reservation
        return patched

    def by_ids(original):
        def patched(backend, instance_ids, *args, **kwargs):
            if serving_one_of("DescribeInstances", "TerminateInstances", "DescribeInstanceStatus"):
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
            if not (serving_one_of("DescribeInstances") and filters
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
            if serving_one_of("CreateTags"):
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
            if serving_one_of("RunInstances") and getattr(_request, "replayed", False):
                return backend.iam_instance_profile_associations[instance_id]
            return original(backend, instance_id, *args, **kwargs)
        return patched

    replace(EC2Backend, "run_instances", run_instances)
    replace(EC2Backend, "associate_iam_instance_profile", associate_iam_instance_profile)
    replace(EC2Backend, "get_multi_instances_by_id", by_ids)
    replace(EC2Backend, "get_reservations_by_instance_ids", by_ids)
    replace(EC2Backend, "terminate_instances", terminate_instances)
    replace(EC2Backend, "describe_instances", describe_instances)
    replace(EC2Backend, "create_tags", create_tags)


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
            if serving_one_of("CreateSecurityGroup"):
                c.created("security_group", group.id)
            return group
        return patched

    def authorize(original):
        def patched(backend, group_name_or_id, *args, **kwargs):
            if (serving_one_of("AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress")
                    and c.new(group_name_or_id)):
                raise ec2_errors.InvalidSecurityGroupNotFoundError(group_name_or_id)
            return original(backend, group_name_or_id, *args, **kwargs)
        return patched

    def describe_security_groups(original):
        def patched(backend, group_ids=None, *args, **kwargs):
            if serving_one_of("DescribeSecurityGroups"):
                unknown = [g for g in group_ids or [] if c.new(g)]
                if unknown:
                    raise ec2_errors.InvalidSecurityGroupNotFoundError(unknown[0])
                return [g for g in original(backend, group_ids, *args, **kwargs) if not c.new(g.id)]
            return original(backend, group_ids, *args, **kwargs)
        return patched

    def delete_security_group(original):
        def patched(backend, name=None, group_id=None):
            if serving_one_of("DeleteSecurityGroup"):
                group = backend.get_security_group_by_name_or_id(group_id or name)
                if group is not None:
                    holder = _attached_groups(lab, c, backend).get(group.id)
                    if holder:
                        raise ec2_errors.DependencyViolationError(
                            f"resource {group.id} has a dependent object ({holder})")
            return original(backend, name, group_id)
        return patched

    replace(EC2Backend, "create_security_group", create_security_group)
    replace(EC2Backend, "authorize_security_group_ingress", authorize)
    if hasattr(EC2Backend, "authorize_security_group_egress"):
        replace(EC2Backend, "authorize_security_group_egress", authorize)
    replace(EC2Backend, "describe_security_groups", describe_security_groups)
    replace(EC2Backend, "delete_security_group", delete_security_group)


def _ec2_images(c: Consistency) -> None:
    def created(original, action):
        def patched(backend, *args, **kwargs):
            ami = original(backend, *args, **kwargs)
            if serving_one_of(action):
                c.created("image", ami.id)
            return ami
        return patched

    def describe_images(original):
        def patched(backend, ami_ids=None, *args, **kwargs):
            if serving_one_of("DescribeImages"):
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
            if serving_one_of("DeregisterImage"):
                now = time.time()
                with c.lock:
                    for s in snapshots:
                        c.snapshots[s] = (now, ami_id)
            return result
        return patched

    def delete_snapshot(original):
        def patched(backend, snapshot_id, *args, **kwargs):
            if serving_one_of("DeleteSnapshot") and snapshot_id in backend.snapshots:
                ami = c.snapshot_held(snapshot_id)
                if ami:
                    raise ec2_errors.InvalidSnapshotInUse(snapshot_id, ami)
            return original(backend, snapshot_id, *args, **kwargs)
        return patched

    replace(EC2Backend, "create_image", lambda o: created(o, "CreateImage"))
    replace(EC2Backend, "copy_image", lambda o: created(o, "CopyImage"))
    replace(EC2Backend, "describe_images", describe_images)
    replace(EC2Backend, "deregister_image", deregister_image)
    replace(EC2Backend, "delete_snapshot", delete_snapshot)


def install(lab, c: Consistency) -> None:
    _ec2_instances(lab, c)
    _ec2_groups(lab, c)
    _ec2_images(c)
