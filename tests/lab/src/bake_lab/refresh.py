"""Instance refresh where moto has none: StartInstanceRefresh replaces a group's instances in batches that keep
MinHealthyPercentage healthy, counts a new one once healthy and warm, fails or rolls back when one is not, and
refuses AutoRollback where AWS supports no rollback; and its moto patches (Start, Describe, Rollback, Cancel)."""
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

from moto.autoscaling.models import autoscaling_backends
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.elbv2.models import elbv2_backends

from .asg import Groups, iso
from .patching import ACCOUNT

ACTIVE = ("Pending", "InProgress", "Cancelling", "RollbackInProgress")


class RefreshInProgress(ServiceException):
    code = "InstanceRefreshInProgress"


class ActiveRefreshNotFound(ServiceException):
    code = "ActiveInstanceRefreshNotFound"


class ValidationError(ServiceException):
    code = "ValidationError"


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
            "StatusReason": self.reason, "StartTime": iso(self.start),
            "PercentageComplete": 100 if self.status == "Successful" else (
                int(100 * done / self.total) if self.total else 0),
            "InstancesToUpdate": max(self.total - done, 0),
            "Preferences": {"MinHealthyPercentage": self.min_healthy, "InstanceWarmup": int(self.warmup),
                            "AutoRollback": self.auto_rollback, "SkipMatching": True},
        }
        if self.end:
            d["EndTime"] = iso(self.end)
        return d




class Refreshes:
    """Every group's instance refreshes, newest last, advanced by the scaling loop."""

    def __init__(self, lab, lock: threading.RLock, groups: Groups):
        self.lab = lab
        self._lock = lock  # the scaling loop's (scaling.py)
        self.groups = groups
        self.refreshes: dict[tuple[str, str], list[Refresh]] = {}  # (region, group) -> newest last

    def clear(self) -> None:
        self.refreshes.clear()

    def start(self, region: str, group, prefs: dict, desired: dict | None) -> str:
        with self._lock:
            key = (region, group.name)
            if any(r.status in ACTIVE for r in self.refreshes.get(key, [])):
                raise RefreshInProgress("An Instance Refresh is already in progress and blocks the execution of this "
                                        "Instance Refresh.")
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

    def rollback(self, region: str, group_name: str) -> str:
        with self._lock:
            active = [r for r in self.refreshes.get((region, group_name), []) if r.status in ("Pending", "InProgress")]
            if not active:
                raise ActiveRefreshNotFound("No in-progress instance refresh found to roll back.")
            r = active[-1]
            r.status, r.rolling_back, r.reason = "RollbackInProgress", True, "Rollback requested"
            r.launched.clear()
            self.lab.event("refresh_rollback", group=group_name, refresh=r.id)
            return r.id

    def cancel(self, region: str, group_name: str) -> str:
        with self._lock:
            active = [r for r in self.refreshes.get((region, group_name), []) if r.status in ACTIVE]
            if not active:
                raise ActiveRefreshNotFound("No in-progress or pending Instance Refresh found.")
            r = active[-1]
            r.status, r.end = "Cancelled", time.time()
            return r.id

    def describe(self, region: str, group_name: str, ids: list[str]) -> list[dict]:
        with self._lock:
            backend = autoscaling_backends[ACCOUNT][region]
            group = backend.autoscaling_groups.get(group_name)
            out = []
            for r in reversed(self.refreshes.get((region, group_name), [])):
                if ids and r.id not in ids:
                    continue
                done = 0
                if group is not None:
                    done = sum(1 for s in group.instance_states
                               if getattr(s.instance, "lab_lt_version", None) == r.target()
                               and self.groups.instance_healthy(region, group, s.instance.id))
                out.append(r.describe(min(done, r.total)))
            return out

    def advance_all(self) -> None:
        for (region, name), refreshes in self.refreshes.items():
            backend = autoscaling_backends[ACCOUNT][region]
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
            if self.groups.instance_healthy(region, group, iid):
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
        healthy_old = [s for s in old if self.groups.instance_healthy(region, group, s.instance.id)]
        # Unhealthy instances go first: replacing them costs no capacity.
        old.sort(key=lambda s: s in healthy_old)
        floor = math.ceil(desired * r.min_healthy / 100)
        in_flight = len(new) - ready
        room = healthy_old and (len(healthy_old) + ready) - floor - in_flight
        batch = old if not healthy_old else old[:max(room, 1 if in_flight == 0 else 0)]
        if batch:
            ids = [s.instance.id for s in batch]
            backend = autoscaling_backends[ACCOUNT][region]
            backend.ec2_backend.terminate_instances(ids)
            # As the EC2 API does after TerminateInstances: the group replaces them, ELB drains them.
            elbv2_backends[ACCOUNT][region].notify_terminate_instances(ids)
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



def _version_number(group, spec: str) -> str:
    return str(group.ec2_launch_template.get_version(spec).number)


def _set_group_version(group, version: str) -> None:
    group.launch_template_version = version
    group.provided_launch_template_version = version



def install(refreshes: Refreshes) -> None:
    """StartInstanceRefresh, DescribeInstanceRefreshes, RollbackInstanceRefresh and CancelInstanceRefresh."""
    def start_instance_refresh(self):
        group_name = self._get_param("AutoScalingGroupName")
        group = self.autoscaling_backend.describe_auto_scaling_groups([group_name])[0]
        refresh_id = refreshes.start(self.region, group, self._get_param("Preferences") or {},
                                           self._get_param("DesiredConfiguration"))
        return ActionResult({"InstanceRefreshId": refresh_id})

    def describe_instance_refreshes(self):
        found = refreshes.describe(self.region, self._get_param("AutoScalingGroupName"),
                                           self._get_param("InstanceRefreshIds") or [])
        return ActionResult({"InstanceRefreshes": found})

    def rollback_instance_refresh(self):
        return ActionResult({"InstanceRefreshId": refreshes.rollback(
            self.region, self._get_param("AutoScalingGroupName"))})

    def cancel_instance_refresh(self):
        return ActionResult({"InstanceRefreshId": refreshes.cancel(
            self.region, self._get_param("AutoScalingGroupName"))})

    AutoScalingResponse.start_instance_refresh = start_instance_refresh
    AutoScalingResponse.describe_instance_refreshes = describe_instance_refreshes
    AutoScalingResponse.rollback_instance_refresh = rollback_instance_refresh
    AutoScalingResponse.cancel_instance_refresh = cancel_instance_refresh
