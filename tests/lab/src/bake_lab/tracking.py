"""Target tracking scaling for EC2 Auto Scaling where moto only stores the policy: PutScalingPolicy makes the two
CloudWatch alarms AWS makes (AlarmHigh, AlarmLow), DeletePolicy deletes them, and while one is in ALARM the group's
desired capacity follows the metric (proportional to metric / target, within min and max, scale-in more slowly,
instance warm-up), each change a scaling activity."""
import math
import time
import uuid

from moto.autoscaling import models as asg_models
from moto.autoscaling.models import autoscaling_backends
from moto.autoscaling.responses import AutoScalingResponse
from moto.cloudwatch.models import cloudwatch_backends
from moto.core.responses import ActionResult

from .asg import iso, launched_at
from .cloudwatch import scale
from .limits import LimitError
from .patching import ACCOUNT, before, replace

# The alarms a target tracking policy gets ("Target tracking scaling policies for Amazon EC2 Auto Scaling"; as
# DescribeAlarms shows them on AWS): scale out after 3 one-minute data points above the target, scale in after 15
# below 90 % of it.
HIGH_PERIODS = 3
LOW_PERIODS = 15
LOW_FRACTION = 0.9
PERIOD = 60
# Predefined metrics: (namespace, metric, statistic) of the group's aggregate.
PREDEFINED = {
    "ASGAverageCPUUtilization": ("AWS/EC2", "CPUUtilization", "Average"),
    "ASGAverageNetworkIn": ("AWS/EC2", "NetworkIn", "Average"),
    "ASGAverageNetworkOut": ("AWS/EC2", "NetworkOut", "Average"),
}


class Tracking:
    """The target tracking policies' alarms and the capacity changes they make."""

    def __init__(self, lab, groups):
        self.lab = lab
        self.groups = groups

    # ---- policies and their alarms --------------------------------------------------------------
    def put(self, backend, policy) -> None:
        """Make (or update) the policy's AlarmHigh and AlarmLow, as Auto Scaling does on PutScalingPolicy."""
        config = policy.target_tracking_configuration
        spec = getattr(config, "PredefinedMetricSpecification", None) or {}
        custom = getattr(config, "CustomizedMetricSpecification", None) or {}
        group = policy.auto_scaling_group_name
        if spec:
            kind = spec.get("PredefinedMetricType")
            if kind not in PREDEFINED:
                raise LimitError("ValidationError", f"The lab does not support the predefined metric {kind} "
                                                    f"(it supports {', '.join(sorted(PREDEFINED))})")
            namespace, metric, statistic = PREDEFINED[kind]
            dimensions = [{"Name": "AutoScalingGroupName", "Value": group}]
        elif custom.get("MetricName"):
            namespace, metric = custom.get("Namespace"), custom.get("MetricName")
            statistic = custom.get("Statistic") or "Average"
            dimensions = [{"Name": d["Name"], "Value": d["Value"]} for d in custom.get("Dimensions") or []]
        else:
            raise LimitError("ValidationError", "A target tracking policy needs PredefinedMetricSpecification or "
                                                "CustomizedMetricSpecification with a MetricName")
        target = float(config.TargetValue)
        cw = cloudwatch_backends[ACCOUNT][backend.region_name]
        old = {a["AlarmName"] for a in getattr(policy, "lab_alarms", [])}
        for name in old:
            cw.alarms.pop(name, None)
        wanted = [("AlarmHigh", "GreaterThanThreshold", target, HIGH_PERIODS)]
        if not str(getattr(config, "DisableScaleIn", "false")).lower() == "true":
            wanted.append(("AlarmLow", "LessThanThreshold", target * LOW_FRACTION, LOW_PERIODS))
        made = []
        for suffix, operator, threshold, periods in wanted:
            name = f"TargetTracking-{group}-{suffix}-{uuid.uuid4()}"
            alarm = cw.put_metric_alarm(
                name=name, namespace=namespace, metric_name=metric, comparison_operator=operator,
                evaluation_periods=periods, datapoints_to_alarm=periods, period=PERIOD, threshold=threshold,
                statistic=statistic, description=f"DO NOT EDIT OR DELETE. For TargetTrackingScaling policy "
                                                 f"{policy.arn}.", dimensions=dimensions,
                alarm_actions=[policy.arn], unit=None)
            made.append({"AlarmName": name, "AlarmARN": alarm.alarm_arn})
        policy.lab_alarms = made
        policy.alarms = made

    def delete(self, region: str, policy) -> None:
        cw = cloudwatch_backends[ACCOUNT][region]
        for a in getattr(policy, "lab_alarms", []):
            cw.alarms.pop(a["AlarmName"], None)

    # ---- scaling --------------------------------------------------------------------------------
    def act(self, due: list) -> None:
        """Invoke the policies of the alarms in ALARM (CloudWatch invokes an Auto Scaling action once per period
        while its alarm stays in ALARM)."""
        for region, alarm in due:
            backend = autoscaling_backends[ACCOUNT][region]
            for policy in list(backend.policies.values()):
                if policy.policy_type != "TargetTrackingScaling" or policy.arn not in alarm.alarm_actions:
                    continue
                group = backend.autoscaling_groups.get(policy.auto_scaling_group_name)
                if group is None:
                    continue
                value = _latest(region, alarm)
                if value is None:
                    continue
                high = alarm.comparison_operator.startswith("Greater")
                self._scale(region, group, policy, alarm, value, high)

    def _scale(self, region: str, group, policy, alarm, value: float, out: bool) -> None:
        target = float(policy.target_tracking_configuration.TargetValue)
        warmup = float(policy.estimated_instance_warmup or group.default_cooldown or 300) * scale(self.lab)
        now = time.time()
        members = [s for s in group.instance_states if s.lifecycle_state == "InService"]
        warming = [s for s in members if launched_at(self.lab, s) + warmup > now]
        desired = int(group.desired_capacity or 0)
        if out:
            # Instances still warming up are not counted: the ready ones' load decides (see FIDELITY.md).
            ready = len(members) - len(warming)
            want = min(group.max_size, math.ceil(max(ready, 1) * value / target))
            if want <= desired:
                return
        else:
            if warming:
                return  # no scale-in while a scale-out's instances warm up
            want = max(group.min_size, math.ceil(len(members) * value / target))
            if want >= desired:
                return
        cause = (f"At {iso(now)} a monitor alarm {alarm.name} in state ALARM triggered policy {policy.name} "
                 f"changing the desired capacity from {desired} to {want}.  ")
        self.lab.event("scaling_policy", group=group.name, policy=policy.name, alarm=alarm.name,
                       desired_from=desired, desired_to=want)
        group.desired_capacity = want
        if out:
            group.lab_cause = cause
            try:
                missing = want - len(group.active_instances())
                if missing > 0:
                    group.replace_autoscaling_group_instances(missing, group.get_propagated_tags())
            finally:
                group.lab_cause = ""
        else:
            self.groups.scale_in(region, group, len(members) - want, cause, desired, want, wait=True)


def _latest(region: str, alarm) -> float | None:
    """The alarm's metric in its latest period (the value the policy tracks)."""
    cw = cloudwatch_backends[ACCOUNT][region]
    dims = sorted((d.name, d.value) for d in alarm.dimensions)
    mine = [d for d in cw.metric_data if d.namespace == alarm.namespace and d.name == alarm.metric_name
            and sorted((x.name, x.value) for x in d.dimensions) == dims]
    if not mine:
        return None
    newest = max(d.timestamp for d in mine)
    last = [d for d in mine if d.timestamp == newest]
    count = sum(getattr(d, "sample_count", 1) for d in last)
    total = sum(d.sum if hasattr(d, "sum") else d.value for d in last)
    return total / count if count else None


def install(tracking: Tracking) -> None:
    """PutScalingPolicy / DeletePolicy / DescribePolicies / DeleteAutoScalingGroup with the target tracking
    alarms."""
    def put_scaling_policy(original):
        def patched(backend, name, policy_type, *args, **kwargs):
            old = backend.policies.get(name)
            policy = original(backend, name, policy_type, *args, **kwargs)
            if old is not None and hasattr(old, "lab_alarms"):
                policy.lab_alarms = old.lab_alarms
            if policy_type == "TargetTrackingScaling":
                try:
                    tracking.put(backend, policy)
                except LimitError:
                    backend.policies.pop(name, None)
                    raise
            elif old is not None:
                tracking.delete(backend.region_name, old)
            return policy
        return patched

    replace(asg_models.AutoScalingBackend, "put_scaling_policy", put_scaling_policy)

    def delete_policy(original):
        def patched(backend, name):
            policy = backend.policies.get(name)
            original(backend, name)
            if policy is not None:
                tracking.delete(backend.region_name, policy)
        return patched

    replace(asg_models.AutoScalingBackend, "delete_policy", delete_policy)

    def delete_auto_scaling_group(original):
        def patched(backend, group_name):
            original(backend, group_name)
            # Deleting a group deletes its scaling policies, and with a target tracking policy its alarms.
            for name, policy in list(backend.policies.items()):
                if policy.auto_scaling_group_name == group_name:
                    backend.policies.pop(name, None)
                    tracking.delete(backend.region_name, policy)
        return patched

    replace(asg_models.AutoScalingBackend, "delete_auto_scaling_group", delete_auto_scaling_group)

    def put_response(self):
        params = self._get_params()
        policy = self.autoscaling_backend.put_scaling_policy(
            name=params.get("PolicyName"), policy_type=params.get("PolicyType", "SimpleScaling"),
            metric_aggregation_type=params.get("MetricAggregationType"),
            adjustment_type=params.get("AdjustmentType"), as_name=params.get("AutoScalingGroupName"),
            min_adjustment_magnitude=params.get("MinAdjustmentMagnitude"),
            scaling_adjustment=self._get_int_param("ScalingAdjustment"), cooldown=self._get_int_param("Cooldown"),
            target_tracking_config=params.get("TargetTrackingConfiguration", {}),
            step_adjustments=params.get("StepAdjustments", []),
            estimated_instance_warmup=params.get("EstimatedInstanceWarmup"),
            predictive_scaling_configuration=params.get("PredictiveScalingConfiguration", {}))
        return ActionResult({"PolicyARN": policy.arn, "Alarms": getattr(policy, "lab_alarms", [])})

    AutoScalingResponse.put_scaling_policy = put_response

    def group_exists(response):
        name = response._get_param("AutoScalingGroupName")
        if name not in response.autoscaling_backend.autoscaling_groups:
            raise LimitError("ValidationError", f"AutoScalingGroup name not found - {name}")

    before(AutoScalingResponse, "put_scaling_policy", group_exists)
