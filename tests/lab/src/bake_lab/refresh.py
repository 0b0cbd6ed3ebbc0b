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
from moto.cloudwatch.models import cloudwatch_backends
from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult

from .asg import Groups, iso
from .patching import ACCOUNT

# StandbyInstances and ScaleInProtectedInstances "Wait": "waits one hour for you to return the instances to
# service" / "to remove scale-in protection. Otherwise, the instance refresh will fail." (`/_lab/latency`
# key `refresh_wait_timeout`)
WAIT_TIMEOUT = 3600.0
MAX_ALARMS = 10  # "You can specify up to 10 alarms" (AlarmSpecification)
ACTIVE = ("Pending", "InProgress", "Baking", "Cancelling", "RollbackInProgress")


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
    max_healthy: int | None  # None: not given (100, terminate before launching)
    warmup: float
    auto_rollback: bool
    skip_matching: bool
    preferences: dict  # as given, with the defaults AWS fills in
    status: str = "Pending"
    reason: str = ""
    start: float = field(default_factory=time.time)
    end: float | None = None
    total: int = 0
    rolling_back: bool = False
    # the instances of the group when this phase (refresh or rollback) began, and those of them to replace
    members: set = field(default_factory=set)
    to_replace: set = field(default_factory=set)
    # instance id -> when the refresh launched it (for the lab's per-instance timeout)
    launched: dict = field(default_factory=dict)
    done: int = 0  # new instances healthy and warm, as of the last tick
    updated: set = field(default_factory=set)  # new instances once counted healthy and warm (they stay counted)
    rollback: dict | None = None  # RollbackDetails
    checkpoints: list = field(default_factory=list)  # CheckpointPercentages, ascending
    checkpoint_delay: float = 3600.0
    bake_time: float = 0.0
    next_checkpoint: int = 0  # index into checkpoints of the next one to reach
    paused_until: float | None = None  # at a checkpoint until then
    bake_until: float | None = None  # Baking until then
    alarms: list = field(default_factory=list)  # AlarmSpecification.Alarms, watched until the refresh ends
    waiting_since: float | None = None  # since when only Standby or scale-in protected instances are left (Wait)

    def target(self) -> str:
        return self.previous if self.rolling_back else self.desired

    def describe(self) -> dict:
        done = min(self.done, self.total)
        percent = 100 if self.status in ("Successful", "Baking") else (
            int(100 * done / self.total) if self.total else 0)
        left = 0 if self.status in ("Successful", "Baking") else max(self.total - done, 0)
        d = {
            "InstanceRefreshId": self.id, "AutoScalingGroupName": self.group, "Status": self.status,
            "StatusReason": self.reason, "StartTime": iso(self.start),
            "PercentageComplete": percent, "InstancesToUpdate": left,
            "ProgressDetails": {"LivePoolProgress": {"PercentageComplete": percent, "InstancesToUpdate": left}},
            "Preferences": self.preferences,
            "DesiredConfiguration": {"LaunchTemplate": {"Version": self.desired}},
        }
        if self.rollback:
            d["RollbackDetails"] = self.rollback
        if self.end:
            d["EndTime"] = iso(self.end)
        return d


def _preferences(prefs: dict, group) -> tuple[dict, int, int | None, float]:  # noqa: C901 - one check a rule
    """RefreshPreferences checked as StartInstanceRefresh checks them, with the defaults AWS fills in
    ("Understand the default values for an instance refresh")."""
    def number(name: str, low: int, high: int) -> int | None:
        value = prefs.get(name)
        if value is None:
            return None
        value = int(value)
        if not low <= value <= high:
            raise ValidationError(f"1 validation error detected: Value '{value}' at 'preferences.{name[0].lower()}"
                                  f"{name[1:]}' failed to satisfy constraint: Member must have value "
                                  f"{'greater' if value < low else 'less'} than or equal to "
                                  f"{low if value < low else high}")
        return value

    given_min = number("MinHealthyPercentage", 0, 100)
    max_healthy = number("MaxHealthyPercentage", 100, 200)
    min_healthy = 90 if given_min is None else given_min
    if max_healthy is not None:
        if given_min is None:
            raise ValidationError("The request isn't valid. If you specify MaxHealthyPercentage, you must also "
                                  "specify MinHealthyPercentage.")
        if max_healthy - min_healthy > 100:
            raise ValidationError("The request isn't valid. The difference between MaxHealthyPercentage and "
                                  "MinHealthyPercentage cannot be greater than 100.")
    number("InstanceWarmup", 0, 2**31 - 1)
    number("BakeTime", 0, 172800)
    delay = number("CheckpointDelay", 0, 172800)
    checkpoints = [int(p) for p in prefs.get("CheckpointPercentages") or []]
    if delay is not None and not checkpoints:
        raise ValidationError("The request isn't valid. If you specify CheckpointDelay, you must also specify "
                              "CheckpointPercentages.")
    if any(not 1 <= p <= 100 for p in checkpoints):
        raise ValidationError("The request isn't valid. CheckpointPercentages values must be between 1 and 100.")
    if any(a >= b for a, b in zip(checkpoints, checkpoints[1:], strict=False)):
        raise ValidationError("The request isn't valid. CheckpointPercentages values must be unique and in "
                              "ascending order.")
    warmup = float(prefs["InstanceWarmup"] if prefs.get("InstanceWarmup") is not None
                   else getattr(group, "default_instance_warmup", None) or group.health_check_grace_period or 0)
    shown = dict(prefs)
    shown["MinHealthyPercentage"] = min_healthy
    shown["InstanceWarmup"] = int(warmup)
    shown.setdefault("SkipMatching", False)
    shown.setdefault("AutoRollback", False)
    shown.setdefault("ScaleInProtectedInstances", "Wait")
    shown.setdefault("StandbyInstances", "Wait")
    if checkpoints:
        shown["CheckpointDelay"] = 3600 if delay is None else delay
    for key, allowed in (("StandbyInstances", ("Terminate", "Ignore", "Wait")),
                         ("ScaleInProtectedInstances", ("Refresh", "Ignore", "Wait"))):
        if shown[key] not in allowed:
            raise ValidationError(f"1 validation error detected: Value '{shown[key]}' at 'preferences."
                                  f"{key[0].lower()}{key[1:]}' failed to satisfy constraint: Member must satisfy "
                                  f"enum value set: [{', '.join(allowed)}]")
    alarms = (prefs.get("AlarmSpecification") or {}).get("Alarms") or []
    if len(alarms) > MAX_ALARMS:
        raise ValidationError(f"The request isn't valid. You can specify up to {MAX_ALARMS} alarms in "
                              "AlarmSpecification.")
    for key in ("SkipMatching", "AutoRollback"):
        shown[key] = str(shown[key]).lower() == "true"
    return shown, min_healthy, max_healthy, warmup


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
            shown, min_healthy, max_healthy, warmup = _preferences(prefs, group)
            auto_rollback = shown["AutoRollback"]
            alarms = list((shown.get("AlarmSpecification") or {}).get("Alarms") or [])
            known = cloudwatch_backends[ACCOUNT][region].alarms
            missing = [a for a in alarms if a not in known]
            if missing:
                raise ValidationError(f"The request isn't valid. The following CloudWatch alarms do not exist: "
                                      f"{', '.join(missing)}. Specify existing alarms and try again.")
            if auto_rollback:
                _check_rollback_allowed(group, desired)
            current = _version_number(group, group.launch_template_version)
            target = current
            if desired and desired.get("LaunchTemplate"):
                target = _version_number(group, desired["LaunchTemplate"].get("Version") or "$Default")
            refresh = Refresh(
                id=str(uuid.uuid4()), group=group.name, region=region, desired=target, previous=current,
                min_healthy=min_healthy, max_healthy=max_healthy, warmup=warmup, auto_rollback=auto_rollback,
                skip_matching=shown["SkipMatching"], preferences=shown,
                checkpoints=list(shown.get("CheckpointPercentages") or []),
                checkpoint_delay=float(shown.get("CheckpointDelay", 3600)),
                bake_time=float(shown.get("BakeTime") or 0), alarms=alarms)
            self.refreshes.setdefault(key, []).append(refresh)
            self.lab.event("refresh_started", group=group.name, refresh=refresh.id, version=target)
            return refresh.id

    def rollback(self, region: str, group_name: str) -> str:
        with self._lock:
            active = [r for r in self.refreshes.get((region, group_name), [])
                      if r.status in ("Pending", "InProgress", "Baking")]
            if not active:
                raise ActiveRefreshNotFound("No in-progress instance refresh found to roll back.")
            r = active[-1]
            self._roll_back(region, r, "Rollback requested")
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
            return [r.describe() for r in reversed(self.refreshes.get((region, group_name), []))
                    if not ids or r.id in ids]

    def advance_all(self) -> None:
        for (region, name), refreshes in self.refreshes.items():
            backend = autoscaling_backends[ACCOUNT][region]
            group = backend.autoscaling_groups.get(name)
            for r in refreshes:
                if r.status in ("Pending", "InProgress", "Baking", "RollbackInProgress"):
                    if group is None:
                        r.status, r.end, r.reason = "Cancelled", time.time(), "the group was deleted"
                    else:
                        self._advance(region, group, r)

    def _begin_phase(self, group, r: Refresh) -> None:
        """The instances this phase replaces: with SkipMatching those not on the target version, else all."""
        target = r.target()
        states = list(group.instance_states)
        r.members = {s.instance.id for s in states}
        r.to_replace = {s.instance.id for s in states
                        if (not (r.skip_matching or r.rolling_back) or _version_of(s) != target)
                        and not (s.lifecycle_state == "Standby" and r.preferences["StandbyInstances"] != "Wait")
                        and not s.lifecycle_state.startswith("Terminating")
                        and not (s.protected_from_scale_in
                                 and r.preferences["ScaleInProtectedInstances"] == "Ignore")}
        r.total = len(r.to_replace)
        r.launched.clear()
        r.updated = set()
        r.done = 0
        r.waiting_since = None
        if r.preferences["StandbyInstances"] == "Terminate" and not r.rolling_back:
            # "Amazon EC2 Auto Scaling terminates instances that are in Standby" (not counted in the desired
            # capacity, so nothing replaces them).
            ids = {s.instance.id for s in states if s.lifecycle_state == "Standby"}
            if ids:
                group.instance_states = [s for s in group.instance_states if s.instance.id not in ids]
                self.groups.terminate(r.region, group, sorted(ids), replace=False)

    def _advance(self, region: str, group, r: Refresh) -> None:
        if r.status == "Pending":
            r.status = "InProgress"
            self._begin_phase(group, r)
        now = time.time()
        if not r.rolling_back and (alarm := self._alarm(region, r)):
            return self._fail(region, group, r, f"The instance refresh failed because the CloudWatch alarm "
                                                f"{alarm} is in the ALARM state.")
        if r.status == "Baking":
            if now >= r.bake_until:
                self._finish(group, r, now)
            return
        if r.paused_until is not None and now >= r.paused_until:
            r.paused_until, r.reason = None, ""
        target = r.target()
        _set_group_version(group, target)
        states = [s for s in group.instance_states if s.lifecycle_state == "InService"]
        new = [s for s in states if s.instance.id not in r.members and _version_of(s) == target]
        # Wait: instances in Standby, or protected from scale in, are replaced once back in service or
        # unprotected; the refresh fails when they are not within an hour.
        blocked = [s for s in group.instance_states if s.instance.id in r.to_replace and (
            s.lifecycle_state == "Standby" or (s.protected_from_scale_in and not r.rolling_back
                                               and r.preferences["ScaleInProtectedInstances"] == "Wait"))]
        old = [s for s in states if s.instance.id in r.to_replace and s not in blocked]
        timeout = float(self.lab.latency.get("refresh_instance_timeout", 60.0))
        ready = 0
        for s in new:
            iid = s.instance.id
            launched = r.launched.setdefault(iid, now)
            if self.groups.instance_healthy(region, group, iid):
                healthy_since = getattr(s.instance, "lab_healthy_since", None) or now
                s.instance.lab_healthy_since = healthy_since
                if now - healthy_since >= r.warmup:
                    r.updated.add(iid)
            if iid in r.updated:
                # "When the instance's health status changes to healthy and the specified warm-up time passes,
                # the instance is considered updated and added to the percentage complete."
                ready += 1
            elif now - launched > timeout and not r.rolling_back and not self.groups.instance_healthy(
                    region, group, iid):
                return self._fail(region, group, r, f"instance {iid} did not become healthy within {int(timeout)} s")
        r.done = ready
        # Checkpoints pace the replacements: never more started than the next checkpoint needs, none while
        # paused at one (old instances whose replacements are ready still go).
        cap = len(old)
        if not r.rolling_back and r.checkpoints:
            if r.paused_until is None and self._checkpoint(group, r, ready, len(new), now):
                if r.status != "InProgress":
                    return
            cap = 0 if r.paused_until is not None else (
                math.ceil(r.checkpoints[r.next_checkpoint] * r.total / 100) - len(new))
        if not old and ready >= len(new) and blocked:
            r.waiting_since = r.waiting_since or now
            what = "in Standby" if blocked[0].lifecycle_state == "Standby" else "protected from scale in"
            if now - r.waiting_since > float(self.lab.latency.get("refresh_wait_timeout", WAIT_TIMEOUT)):
                return self._fail(region, group, r, f"Instance refresh failed: instances {what} were not ready to "
                                                    f"be replaced within {int(now - r.waiting_since)} seconds.")
            r.reason = f"Waiting for instances {what} to be ready for replacement: {blocked[0].instance.id}."
            return
        if r.waiting_since is not None and not blocked:
            r.waiting_since, r.reason = None, ""
        if not old and ready >= len(new):
            return self._complete(group, r, now)
        if not old:
            return
        desired = group.desired_capacity or 0
        floor = math.ceil(desired * r.min_healthy / 100)
        healthy_old = [s for s in old if self.groups.instance_healthy(region, group, s.instance.id)]
        # Unhealthy instances go first: replacing them costs no capacity.
        old.sort(key=lambda s: s in healthy_old)
        others_ready = sum(1 for s in states if s not in old and s not in new
                           and self.groups.instance_healthy(region, group, s.instance.id))
        in_flight = len(new) - ready
        if r.max_healthy is not None and r.max_healthy > 100:
            self._launch_then_terminate(region, group, r, old, healthy_old, ready + others_ready,
                                        len(states), desired, floor, cap)
            return
        room = healthy_old and (len(healthy_old) + ready + others_ready) - floor - in_flight
        batch = old if not healthy_old else old[:max(room, 1 if in_flight == 0 else 0)]
        batch = batch[:max(cap, 0)]
        if batch:
            # Drained, terminated, and replaced by the group.
            self.groups.terminate(region, group, [s.instance.id for s in batch], replace=True)

    def _launch_then_terminate(self, region: str, group, r: Refresh, old: list, healthy_old: list,
                               ready_others: int, running: int, desired: int, floor: int, cap: int) -> None:
        """MaxHealthyPercentage above 100: replacements launch first, up to that share of the desired capacity
        (in service or pending); an old instance goes once the group is above its desired capacity and its
        going keeps MinHealthyPercentage of it healthy and warm."""
        ready = len(healthy_old) + ready_others
        surplus = running - desired
        gone = []
        for s in old:
            if surplus <= 0:
                break
            if s in healthy_old:
                if ready - 1 < floor:
                    continue
                ready -= 1
            gone.append(s)
            surplus -= 1
        if gone:
            ids = {s.instance.id for s in gone}
            # Removed from the group first: the refresh launched their replacements already.
            group.instance_states = [s for s in group.instance_states if s.instance.id not in ids]
            self.groups.terminate(region, group, sorted(ids), replace=False)
            running -= len(gone)
        upper = max(desired + 1, math.floor(desired * r.max_healthy / 100))
        uncovered = (len(old) - len(gone)) - max(running - desired, 0)
        count = min(upper - running, uncovered, cap)
        if count > 0:
            group.replace_autoscaling_group_instances(count, group.get_propagated_tags())

    def _alarm(self, region: str, r: Refresh) -> str | None:
        """The first of the refresh's alarms in ALARM, read from CloudWatch (moto's alarms, their state set by
        SetAlarmState or by the lab's metric evaluation)."""
        known = cloudwatch_backends[ACCOUNT][region].alarms
        for name in r.alarms:
            alarm = known.get(name)
            if alarm is not None and alarm.state_value == "ALARM":
                return name
        return None

    def _checkpoint(self, group, r: Refresh, ready: int, launched: int, now: float) -> bool:
        """At a checkpoint ("Add checkpoints to an instance refresh"): the share of new, healthy and warm
        instances reached it (checkpoints it passed on the way are skipped). The last one ends the refresh
        (a partial refresh when below 100); the others pause it for CheckpointDelay. True when it stops here."""
        percent = 100 * ready / r.total if r.total else 100
        reached = None
        while r.next_checkpoint < len(r.checkpoints) and percent >= r.checkpoints[r.next_checkpoint]:
            reached = r.checkpoints[r.next_checkpoint]
            r.next_checkpoint += 1
        if r.next_checkpoint >= len(r.checkpoints):
            r.next_checkpoint = len(r.checkpoints) - 1
            if launched <= ready:
                self._complete(group, r, now)
            return launched <= ready
        if reached is None:
            return False
        r.paused_until = now + r.checkpoint_delay
        r.reason = (f"Checkpoint {r.next_checkpoint} of {len(r.checkpoints)} reached at {reached}% complete: "
                    f"waiting {int(r.checkpoint_delay)} seconds (CheckpointDelay) before continuing.")
        self.lab.event("refresh_checkpoint", group=group.name, refresh=r.id, percentage=reached)
        return True

    def _complete(self, group, r: Refresh, now: float) -> None:
        """Every instance replaced: Baking for BakeTime first when one is set."""
        if not r.rolling_back and r.bake_time > 0 and r.total > 0:
            r.status, r.bake_until = "Baking", now + r.bake_time
            self.lab.event("refresh_baking", group=group.name, refresh=r.id)
            return
        self._finish(group, r, now)

    def _finish(self, group, r: Refresh, now: float) -> None:
        r.status, r.end = ("RollbackSuccessful" if r.rolling_back else "Successful"), now
        if not r.rolling_back:
            r.reason = ""
        self.lab.event("refresh_" + r.status.lower(), group=group.name, refresh=r.id)

    def _roll_back(self, region: str, r: Refresh, reason: str) -> None:
        """RollbackInProgress: the instances deployed so far are replaced by the previous configuration."""
        r.rollback = {"RollbackReason": reason, "RollbackStartTime": iso(time.time()),
                      "PercentageCompleteOnRollback": int(100 * min(r.done, r.total) / r.total) if r.total else 0,
                      "InstancesToUpdateOnRollback": max(r.total - r.done, 0)}
        r.status, r.rolling_back, r.reason = "RollbackInProgress", True, reason
        group = autoscaling_backends[ACCOUNT][region].autoscaling_groups.get(r.group)
        if group is not None:
            self._begin_phase(group, r)
        self.lab.event("refresh_rollback", group=r.group, refresh=r.id, reason=reason)

    def _fail(self, region: str, group, r: Refresh, reason: str) -> None:
        if r.auto_rollback:
            self._roll_back(region, r, reason)
        else:
            r.reason = reason
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


def _version_of(state) -> str | None:
    return getattr(state.instance, "lab_lt_version", None)


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
