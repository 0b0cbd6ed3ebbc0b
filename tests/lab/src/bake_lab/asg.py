"""EC2 Auto Scaling where moto has none: a group launches as Auto Scaling does (the template version it names,
spread over its subnets), a launch EC2 refuses is a failed scaling activity tried in other zones and again after
a backoff, running group instances are registered in the group's target groups, a group with ELB health checks
replaces the instances its target groups find unhealthy after the grace period, an instance leaving the group
(scale-in, termination, detaching) is drained from its target groups first, and group metrics are collected as
EnableMetricsCollection asks; and its moto patches."""
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from moto.autoscaling import models as asg_models
from moto.autoscaling.exceptions import ValidationError
from moto.autoscaling.models import autoscaling_backends
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.models import ec2_backends
from moto.ec2.utils import parse_user_data
from moto.elbv2.models import elbv2_backends

from . import kms
from .cloudwatch.metrics import GROUP_METRICS
from .consistency import serving_one_of
from .ec2 import sharing
from .elb import Balancers
from .limits import query_tags, tags
from .patching import ACCOUNT, backends, before

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
             "Cause": self.cause, "StartTime": iso(self.start), "EndTime": iso(self.start),
             "StatusCode": self.status, "Progress": 100, "Details": json.dumps(self.details)}
        if self.message:
            d["StatusMessage"] = self.message
        return d



def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))



class Groups:
    """The lab's Auto Scaling groups: their launches, scaling activities and target registrations."""

    def __init__(self, lab, lock: threading.RLock, balancers: Balancers):
        self.lab = lab
        self._lock = lock  # the scaling loop's (scaling.py)
        self.balancers = balancers
        self.activities: dict[tuple[str, str], list[Activity]] = {}  # (region, group) -> oldest first
        # The activities' own: a request recording or describing them never waits for the scaling loop's lock
        # (held through a drain, up to a deregistration delay).
        self._activities_lock = threading.Lock()
        # (region, group) -> (failures in a row, when to try launching again)
        self.retries: dict[tuple[str, str], tuple[int, float]] = {}
        # (instance type, zone) -> "unsupported" (not offered there) or "insufficient" (no capacity now)
        self.unavailable: dict[tuple[str, str], str] = {}
        # (target group arn, instance id): registered by its group once; one a client deregistered stays so
        self.registered: set[tuple[str, str]] = set()

    def clear(self) -> None:
        self.registered.clear()
        with self._activities_lock:
            self.activities.clear()
        self.retries.clear()
        self.unavailable.clear()

    # ---- groups --------------------------------------------------------------------------------
    def register_targets(self) -> None:
        """Registers running group instances in the group's target groups, each once (as Auto Scaling does when
        the instance enters service); removes the gone ones."""
        for region, backend in backends(autoscaling_backends):
            elb = elbv2_backends[ACCOUNT][region]
            for group in list(backend.autoscaling_groups.values()):
                running = {s.instance.id for s in group.instance_states
                           if s.instance.id in self.lab.instances and s.lifecycle_state != "Terminating"
                           and self.lab.instances[s.instance.id].state == "running"}
                # A target group detached from the group registers its instances again once attached again.
                self.registered -= {(arn, iid) for arn, iid in self.registered
                                    if iid in running and arn not in group.target_group_arns}
                for arn in group.target_group_arns:
                    tg = elb.target_groups.get(arn)
                    if tg is None:
                        continue
                    for iid in running - set(tg.targets):
                        if (arn, iid) in self.registered:
                            continue  # deregistered since (DeregisterTargets): AWS does not register it again
                        self.registered.add((arn, iid))
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
        elb = elbv2_backends[ACCOUNT][region]
        for arn in group.target_group_arns:
            if arn in elb.target_groups and not self.balancers.healthy(arn, iid):
                return False
        return True

    def replace_unhealthy(self) -> None:
        """A group whose health check type is ELB replaces an InService instance that one of its target groups
        finds unhealthy, once the health check grace period has passed since it entered service: it is marked
        Unhealthy, terminated and replaced ("Health checks for instances in an Auto Scaling group"). The grace
        period is wall time, as the client set it, like the target group's health checks it waits for (only
        CloudWatch's periods, and the scaling times that count in them, are scaled)."""
        now = time.time()
        for region, backend in backends(autoscaling_backends):
            for group in list(backend.autoscaling_groups.values()):
                if group.health_check_type != "ELB":
                    continue
                grace = float(group.health_check_grace_period or 0)
                found = []
                for state in group.instance_states:
                    inst = self.lab.instances.get(state.instance.id)
                    if (state.lifecycle_state != "InService" or inst is None or inst.running_at is None
                            or now - inst.running_at < grace):
                        continue
                    if any(self.balancers.probes.get((arn, inst.id), {}).get("state") == "unhealthy"
                           for arn in group.target_group_arns):
                        found.append(state)
                if not found:
                    continue
                ids = [s.instance.id for s in found]
                for state in found:
                    state.health_status = "Unhealthy"
                    self.lab.event("instance_unhealthy", group=group.name, instance_id=state.instance.id)
                    self.record(region, Activity(
                        group=group.name, status="Successful",
                        description=f"Terminating EC2 instance: {state.instance.id}",
                        cause=f"At {iso(now)} an instance was taken out of service in response to an ELB system "
                              f"health check failure.",
                        details={"Availability Zone": state.instance.availability_zone}))
                self.terminate(region, group, ids, replace=True)

    def terminate(self, region: str, group, ids: list[str], replace: bool) -> None:
        """Terminates instances of `group` as Auto Scaling does: drained from the group's target groups first
        (`Balancers.drain`), then terminated. `replace`: they are still among the group's instances, and the
        group launches their replacements. The scaling loop's way: it waits, holding its lock."""
        self.balancers.drain(region, list(group.target_group_arns), ids)
        self._terminated(region, ids, replace)

    def terminate_later(self, region: str, group, states: list) -> None:
        """Terminates instances of `group` for a request AWS answers at once (SetDesiredCapacity,
        UpdateAutoScalingGroup, TerminateInstanceInAutoScalingGroup): they are `Terminating` from now on (not
        counted in the group's capacity, "Amazon EC2 Auto Scaling instance lifecycle"), deregistered from its
        target groups now, and terminated in the background once drained, as `terminate` does."""
        ids = [s.instance.id for s in states]
        for s in states:
            s.lifecycle_state = "Terminating"
        waits = self.balancers.deregister(region, list(group.target_group_arns), ids)

        def finish():
            self.balancers.wait_drained(waits)
            group.instance_states = [s for s in group.instance_states if s.instance.id not in ids]
            self._terminated(region, ids, replace=False)

        if ids:
            self.lab.background(f"terminate {' '.join(ids)}", finish)

    def detach(self, region: str, group, ids: list[str]) -> None:
        """DetachInstances: "If there are target groups attached to the Auto Scaling group, the instances are
        deregistered from the target groups"; they drain as any deregistered target (the caller does not
        wait) and keep running."""
        waits = self.balancers.deregister(region, list(group.target_group_arns), ids)
        if waits:
            self.lab.background(f"drain {' '.join(ids)}", self.balancers.wait_drained, waits)

    def _terminated(self, region: str, ids: list[str], replace: bool) -> None:
        backend = autoscaling_backends[ACCOUNT][region]
        backend.ec2_backend.terminate_instances(ids)
        elbv2_backends[ACCOUNT][region].notify_terminate_instances(ids)
        if replace:
            backend.notify_terminate_instances(ids)

    def scale_in(self, region: str, group, count: int, cause: str, desired: int, want: int, wait: bool) -> None:
        """Terminate `count` instances as the default termination policy picks them: from the zone with the most
        instances, those on an older launch template version first, then the oldest; each a scaling activity
        whose cause is `cause` and the shrinking from `desired` to `want`. `wait`: drained and terminated before
        this returns (the scaling loop), else in the background (`terminate_later`, a request's)."""
        candidates = [s for s in group.instance_states
                      if s.lifecycle_state == "InService" and not s.protected_from_scale_in]
        victims = []
        current = str(group.launch_template_version)
        for _ in range(min(count, len(candidates))):
            zones: dict[str, int] = {}
            for s in candidates:
                zones[s.instance.availability_zone] = zones.get(s.instance.availability_zone, 0) + 1
            zone = max(zones, key=lambda z: (zones[z], z))
            pool = [s for s in candidates if s.instance.availability_zone == zone]
            pool.sort(key=lambda s: (getattr(s.instance, "lab_lt_version", current) == current,
                                     launched_at(self.lab, s)))
            victims.append(pool[0])
            candidates.remove(pool[0])
        now = time.time()
        for s in victims:
            self.record(region, Activity(
                group=group.name, status="Successful",
                description=f"Terminating EC2 instance: {s.instance.id}",
                cause=cause + f"At {iso(now)} an instance was taken out of service in response to a difference "
                              f"between desired and actual capacity, shrinking the capacity from {desired} to "
                              f"{want}.  At {iso(now)} instance {s.instance.id} was selected for termination.",
                details={"Availability Zone": s.instance.availability_zone}))
        if not victims:
            return
        if wait:
            group.instance_states = [s for s in group.instance_states if s not in victims]
            self.terminate(region, group, [s.instance.id for s in victims], replace=False)
        else:
            self.terminate_later(region, group, victims)

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
        with self._activities_lock:
            self.activities.setdefault((region, activity.group), []).append(activity)
        if activity.status == "Failed":
            self.lab.event("launch_failed", group=activity.group, reason=activity.message)

    def launch_outcome(self, region: str, group: str, failed: bool) -> None:
        """After a failed launch the group tries again after a backoff; a launch resets it. (Under the activities'
        lock, not the loop's: a request's launch must not wait for the loop's drains.)"""
        with self._activities_lock:
            key = (region, group)
            if not failed:
                self.retries.pop(key, None)
                return
            failures = self.retries.get(key, (0, 0.0))[0] + 1
            first = float(self.lab.latency.get("launch_retry", LAUNCH_RETRY_FIRST))
            wait = min(first * 2 ** (failures - 1), LAUNCH_RETRY_CAP)
            self.retries[key] = (failures, time.time() + wait)

    def retry_launches(self) -> None:
        for (region, name), (_, at) in list(self.retries.items()):
            group = autoscaling_backends[ACCOUNT][region].autoscaling_groups.get(name)
            if group is None:
                self.retries.pop((region, name), None)
                continue
            missing = (group.desired_capacity or 0) - len(group.active_instances())
            if missing <= 0:
                self.retries.pop((region, name), None)
            elif time.time() >= at:
                group.replace_autoscaling_group_instances(missing, group.get_propagated_tags())

    def describe_activities(self, region: str, group_name: str | None, limit: int | None) -> list[dict]:
        with self._activities_lock:
            found = [a for (r, g), acts in self.activities.items() if r == region
                     and (group_name is None or g == group_name) for a in acts]
        found.sort(key=lambda a: a.start, reverse=True)
        return [a.describe() for a in found[:limit or 100]]


def _request_cause(group, desired: int, want: int) -> str:
    """The start of a scale-in's cause when a client's request changed the desired capacity, as Auto Scaling
    words it."""
    now = iso(time.time())
    if serving_one_of("SetDesiredCapacity"):
        return (f"At {now} a user request explicitly set group desired capacity changing the desired capacity "
                f"from {desired} to {want}.  ")
    if serving_one_of("UpdateAutoScalingGroup"):
        return (f"At {now} a user request update of AutoScalingGroup constraints to min: {group.min_size}, max: "
                f"{group.max_size}, desired: {want} changing the desired capacity from {desired} to {want}.  ")
    return ""


def launched_at(lab, state) -> float:
    """When the instance entered service (its container running; not yet: now)."""
    inst = lab.instances.get(state.instance.id)
    return inst.running_at if inst is not None and inst.running_at else time.time()


def _all_group_instances() -> set[str]:
    return {s.instance.id for _, b in backends(autoscaling_backends)
            for g in b.autoscaling_groups.values() for s in g.instance_states}


def _kms_denied(region: str, image_id: str) -> bool:
    """True when a snapshot of the image is encrypted with a customer managed KMS key that lets the Auto
    Scaling service-linked role use it neither through a grant nor, for the group's own account's key,
    through its key policy ("Required AWS KMS key policy for use with encrypted volumes"), or with a key
    the group's account may not use at all (another account's key whose policy does not allow it,
    kms.py): EC2 then fails the group's launch with Client.InternalError. The account's own AWS managed
    key (aws/ebs) needs no grant."""
    ec2 = ec2_backends[ACCOUNT][region]
    image = ec2.amis.get(image_id) or sharing.find_image(region, image_id)
    snapshot = getattr(image, "ebs_snapshot", None)
    if snapshot is None or not snapshot.encrypted or not snapshot.kms_key_id:
        return False
    key = kms.snapshot_key(snapshot, region)
    if key is None or not kms.usable_by_account(key, ACCOUNT):
        return True
    if key.key_manager != "CUSTOMER":
        return False
    role = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/autoscaling.amazonaws.com/{AUTOSCALING_ROLE}"
    return not (kms.granted_to(key, AUTOSCALING_ROLE) or
                (key.account_id == ACCOUNT and kms.policy_allows_role(key, role)))


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



def install(groups: Groups) -> None:
    """Patch moto's Auto Scaling to launch, register and report through `groups`."""
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
        # A scaling policy that changed the desired capacity says so first (tracking.py sets lab_cause).
        cause = (getattr(group, "lab_cause", "") +
                 f"At {iso(time.time())} an instance was started in response to a difference between desired "
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
                refusal = groups.launch_refusal(region, version.image_id, instance_type, zone,
                                                 [ec2.get_subnet(s).availability_zone for s in subnets])
                if refusal:
                    groups.record(region, Activity(
                        group=group.name, status="Failed", cause=cause,
                        description=f"Launching a new EC2 instance.  Status Reason: {refusal} "
                                    "Launching EC2 instance failed.",
                        message=f"{refusal} Launching EC2 instance failed.",
                        details={"Subnet ID": subnet, "Availability Zone": zone}))
                    continue
                _launch(group, ec2, version, instance_type, subnet, zone, propagated_tags)
                inst = group.instance_states[-1].instance
                groups.record(region, Activity(
                    group=group.name, status="Successful", cause=cause,
                    description=f"Launching a new EC2 instance: {inst.id}",
                    details={"Subnet ID": subnet, "Availability Zone": zone}))
                launched = True
                break
            if not launched:
                failed = True
                break
        groups.launch_outcome(region, group.name, failed)

    group_cls.replace_autoscaling_group_instances = replace_instances

    original_set_desired_capacity = group_cls.set_desired_capacity

    def set_desired_capacity(group, new_capacity: int | None) -> None:
        """A desired capacity below the instances in service (SetDesiredCapacity, UpdateAutoScalingGroup, a
        lower MaxSize): the surplus is picked by the default termination policy, deregistered and drained from
        the group's target groups and then terminated, in the background: the request is answered at once
        (`Groups.scale_in`). Moto would terminate its first instances there and then."""
        want = int(group.min_size if new_capacity is None else new_capacity)
        desired = int(getattr(group, "desired_capacity", None) or 0)  # unset while moto creates the group
        surplus = len(group.active_instances()) - want
        if surplus > 0:
            group.desired_capacity = want
            groups.scale_in(group.region, group, surplus, _request_cause(group, desired, want), desired, want,
                            wait=False)
        original_set_desired_capacity(group, new_capacity)

    group_cls.set_desired_capacity = set_desired_capacity

    def terminate_instance(backend, instance_id: str, should_decrement: bool):
        """TerminateInstanceInAutoScalingGroup: the instance is Terminating, drained and then terminated in
        the background; unless the desired capacity is decremented, the group launches its replacement."""
        state = next((s for g in backend.autoscaling_groups.values() for s in g.instance_states
                      if s.instance.id == instance_id), None)
        if state is None:
            raise ValidationError(f"Instance Id not found - No managed instance found for instance ID: "
                                  f"{instance_id}")
        group = state.instance.autoscaling_group
        original_size = int(group.desired_capacity or 0)
        if not state.lifecycle_state.startswith("Terminating"):
            now = time.time()
            cause = f"At {iso(now)} instance {instance_id} was taken out of service in response to a user request"
            if should_decrement:
                group.desired_capacity = original_size - 1
                cause += f", shrinking the capacity from {original_size} to {original_size - 1}."
            groups.record(group.region, Activity(
                group=group.name, status="Successful", description=f"Terminating EC2 instance: {instance_id}",
                cause=cause + ("" if should_decrement else "."),
                details={"Availability Zone": state.instance.availability_zone}))
            groups.terminate_later(group.region, group, [state])
            group.set_desired_capacity(group.desired_capacity)
        return asg_models.TerminateInstanceActivity(state.instance, original_size)

    asg_models.AutoScalingBackend.terminate_instance = terminate_instance

    original_detach_instances = asg_models.AutoScalingBackend.detach_instances

    def detach_instances(backend, group_name: str, instance_ids: list[str], should_decrement: bool):
        group = backend.autoscaling_groups.get(group_name)
        if group is not None:
            members = [s.instance.id for s in group.instance_states if s.instance.id in instance_ids]
            groups.detach(group.region, group, members)
        return original_detach_instances(backend, group_name, instance_ids, should_decrement)

    asg_models.AutoScalingBackend.detach_instances = detach_instances

    def launch_template(state):
        group = state.auto_scaling_group
        if group is None or group.ec2_launch_template is None:
            return None
        return {"LaunchTemplateId": group.ec2_launch_template.id, "LaunchTemplateName": group.ec2_launch_template.name,
                "Version": getattr(state.instance, "lab_lt_version",
                                   str(group.ec2_launch_template.default_version_number))}

    asg_models.InstanceState.launch_template = property(launch_template)

    def update_attached_target_groups(backend, group_name: str) -> None:
        """Targets are registered once their instance runs (the scaling loop does it), as on AWS."""

    asg_models.AutoScalingBackend.update_attached_target_groups = update_attached_target_groups

    create_group = asg_models.AutoScalingBackend.create_auto_scaling_group

    def create_auto_scaling_group(backend, *args, **kwargs):
        """HealthCheckGracePeriod defaults to 0 through the API (300 s only in the console); moto makes
        every unset (or 0) one 300."""
        group = create_group(backend, *args, **kwargs)
        given = kwargs.get("health_check_period")
        group.health_check_grace_period = int(given) if given is not None else 0
        return group

    asg_models.AutoScalingBackend.create_auto_scaling_group = create_auto_scaling_group

    def describe_scaling_activities(self):
        limit = self._get_param("MaxRecords")
        return ActionResult({"Activities": groups.describe_activities(
            self.region, self._get_param("AutoScalingGroupName"), int(limit) if limit else None)})

    AutoScalingResponse.describe_scaling_activities = describe_scaling_activities

    def enable_metrics_collection(group, metrics: list[str]) -> None:
        """EnableMetricsCollection adds to what is collected; no metric named means all of them."""
        wanted = list(metrics or GROUP_METRICS)
        group.metrics = list(dict.fromkeys(list(getattr(group, "metrics", None) or []) + wanted))

    group_cls.enable_metrics_collection = enable_metrics_collection

    def disable_metrics_collection(self):
        """DisableMetricsCollection (moto has none): the named metrics, or all, are no longer collected."""
        group = self.autoscaling_backend.describe_auto_scaling_groups([self._get_param("AutoScalingGroupName")])[0]
        named = self._get_param("Metrics") or []
        group.metrics = [m for m in group.metrics if named and m not in named]
        return EmptyResult()

    AutoScalingResponse.disable_metrics_collection = disable_metrics_collection



def install_limits() -> None:
    """Auto Scaling's tags, checked before moto acts."""
    def asg_tags(response):
        for group in query_tags({k: v for k, v in response.querystring.items() if k.startswith("Tags.")}):
            tags(group, "ValidationError")

    for action in ("create_auto_scaling_group", "create_or_update_tags"):
        before(AutoScalingResponse, action, asg_tags)
