"""The metrics AWS publishes for the lab's resources, with real data, into moto's CloudWatch (so GetMetricData,
GetMetricStatistics and ListMetrics see them): AWS/EC2 CPUUtilization of each instance (its container's cgroup CPU
time) and of each Auto Scaling group, AWS/ApplicationELB counts and response times from the lab's ALB proxies, and
AWS/AutoScaling group metrics once EnableMetricsCollection asked for them."""
from datetime import UTC, datetime

from moto.autoscaling.models import autoscaling_backends
from moto.cloudwatch.models import MetricAggregatedDatum, cloudwatch_backends
from moto.ec2.models.instance_types import INSTANCE_TYPES

from ..patching import ACCOUNT, backends

# How many periods of the lab's own data points are kept (AWS keeps 1-minute data 15 days; six hours of periods
# keeps moto's linear scans fast and is far more than any lab run looks back).
RETENTION_PERIODS = 360
# The group metrics of EnableMetricsCollection ("Auto Scaling group metrics"); none named means all of them.
GROUP_METRICS = ("GroupMinSize", "GroupMaxSize", "GroupDesiredCapacity", "GroupInServiceInstances",
                 "GroupPendingInstances", "GroupStandbyInstances", "GroupTerminatingInstances",
                 "GroupTotalInstances", "GroupInServiceCapacity", "GroupPendingCapacity", "GroupStandbyCapacity",
                 "GroupTerminatingCapacity", "GroupTotalCapacity")


def when(t: float) -> datetime:
    """A time as moto's CloudWatch keeps it (naive UTC)."""
    return datetime.fromtimestamp(t, UTC).replace(tzinfo=None)


def vcpus(instance_type: str) -> int:
    """The instance type's default vCPU count, as EC2 describes it (DescribeInstanceTypes)."""
    info = INSTANCE_TYPES.get(instance_type) or {}
    return int((info.get("VCpuInfo") or {}).get("DefaultVCpus") or 1)


def lb_dimension(arn: str) -> str:
    """The LoadBalancer dimension AWS uses: app/NAME/ID, the end of the load balancer's ARN."""
    return arn.split(":loadbalancer/", 1)[-1]


def tg_dimension(arn: str) -> str:
    """The TargetGroup dimension AWS uses: targetgroup/NAME/ID, the end of the target group's ARN."""
    return arn.rsplit(":", 1)[-1]


class Publisher:
    """Each period's data points: what the containers used and what the load balancers served."""

    def __init__(self, lab, groups, balancers):
        self.lab = lab
        self.groups = groups
        self.balancers = balancers
        self._cpu: dict[str, tuple[float, int]] = {}  # instance id -> (when, usage_usec) at the last sample

    def clear(self) -> None:
        self._cpu.clear()
        self.balancers.traffic.drain()

    def sample(self, now: float) -> dict[str, float]:
        """CPUUtilization of every running instance since its last sample: cgroup CPU time over wall time over
        the instance type's vCPUs, in percent (at most 100)."""
        found = {}
        for inst in list(self.lab.instances.values()):
            if inst.gone or inst.state != "running":
                self._cpu.pop(inst.id, None)
                continue
            usage = inst.container.cpu_usage_usec()
            if usage is None:
                continue
            last = self._cpu.get(inst.id)
            self._cpu[inst.id] = (now, usage)
            if last is None or now <= last[0]:
                continue
            share = (usage - last[1]) / 1e6 / (now - last[0]) / vcpus(inst.model.instance_type)
            found[inst.id] = max(0.0, min(100.0, share * 100))
        for iid in list(self._cpu):
            if iid not in self.lab.instances:
                del self._cpu[iid]
        return found

    def publish(self, start: float, end: float) -> None:
        """The period [start, end)'s data points, stamped at its start (as CloudWatch stamps a period)."""
        cpu = self.sample(end)
        at = when(start)
        points: dict[str, list] = {}  # region -> data points
        for iid, value in cpu.items():
            inst = self.lab.instances.get(iid)
            if inst is None:
                continue
            points.setdefault(inst.region, []).append(
                _datum("AWS/EC2", "CPUUtilization", [("InstanceId", iid)], at, [value], "Percent"))
        for region, backend in backends(autoscaling_backends):
            for group in list(backend.autoscaling_groups.values()):
                values = [cpu[s.instance.id] for s in group.instance_states if s.instance.id in cpu]
                if values:
                    points.setdefault(region, []).append(_datum(
                        "AWS/EC2", "CPUUtilization", [("AutoScalingGroupName", group.name)], at, values, "Percent"))
                points.setdefault(region, []).extend(self._group_metrics(group, at))
        for (region, lb, tg), e in self.balancers.traffic.drain().items():
            points.setdefault(region, []).extend(_elb_points(lb, tg, e, at))
        horizon = when(end - RETENTION_PERIODS * (end - start))
        for region, new in points.items():
            backend = cloudwatch_backends[ACCOUNT][region]
            backend.metric_data[:] = [d for d in backend.metric_data
                                      if not getattr(d, "lab", False) or d.timestamp >= horizon] + new

    def _group_metrics(self, group, at: datetime) -> list:
        """AWS/AutoScaling group metrics, only those EnableMetricsCollection turned on (1-minute granularity)."""
        enabled = [m for m in getattr(group, "metrics", None) or [] if m in GROUP_METRICS]
        if not enabled:
            return []
        states = [s.lifecycle_state for s in group.instance_states]
        pending = sum(1 for s in group.instance_states if s.lifecycle_state == "InService"
                      and s.instance.id in self.lab.instances and self.lab.instances[s.instance.id].state == "pending")
        in_service = sum(1 for x in states if x == "InService") - pending
        standby = sum(1 for x in states if x.startswith("Standby"))
        terminating = sum(1 for x in states if x.startswith("Terminating"))
        values = {"GroupMinSize": group.min_size, "GroupMaxSize": group.max_size,
                  "GroupDesiredCapacity": group.desired_capacity or 0, "GroupInServiceInstances": in_service,
                  "GroupPendingInstances": pending, "GroupStandbyInstances": standby,
                  "GroupTerminatingInstances": terminating, "GroupTotalInstances": len(states)}
        for kind in ("InService", "Pending", "Standby", "Terminating", "Total"):
            values[f"Group{kind}Capacity"] = values[f"Group{kind}Instances"]
        return [_datum("AWS/AutoScaling", name, [("AutoScalingGroupName", group.name)], at, [float(values[name])],
                       "None") for name in enabled]


def _elb_points(lb: str, tg: str | None, e: dict, at: datetime) -> list:
    """AWS/ApplicationELB data points of one load balancer (tg None) or one of its target groups. As on AWS, a count
    with nothing to count is not published (metrics are reported only when requests flow)."""
    dims = [("LoadBalancer", lb_dimension(lb))]
    if tg is not None:
        dims = [("TargetGroup", tg_dimension(tg))] + dims
    found = []
    if e["requests"]:
        found.append(_datum("AWS/ApplicationELB", "RequestCount", dims, at, [float(e["requests"])], "Count"))
    for klass, n in sorted(e["codes"].items()):
        if 2 <= klass <= 5:
            found.append(_datum("AWS/ApplicationELB", f"HTTPCode_Target_{klass}XX_Count", dims, at, [float(n)],
                                "Count"))
    if e["times"]:
        found.append(_datum("AWS/ApplicationELB", "TargetResponseTime", dims, at, e["times"], "Seconds"))
    if tg is None:
        elb5 = sum(n for code, n in e["elb"].items() if 500 <= code < 600)
        if elb5:
            found.append(_datum("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", dims, at, [float(elb5)], "Count"))
        for code, n in sorted(e["elb"].items()):
            found.append(_datum("AWS/ApplicationELB", f"HTTPCode_ELB_{code}_Count", dims, at, [float(n)], "Count"))
    return found


def _datum(namespace: str, name: str, dims: list[tuple[str, str]], at: datetime, values: list[float],
           unit: str) -> MetricAggregatedDatum:
    """One data point as a statistic set (sum, min, max, sample count), as PutMetricData's StatisticValues store it;
    it keeps its values (`lab_values`) for percentiles and is marked as the lab's own (`lab`)."""
    d = MetricAggregatedDatum(namespace=namespace, name=name, min_stat=min(values), max_stat=max(values),
                              sample_count=float(len(values)), sum_stat=float(sum(values)),
                              dimensions=[{"Name": k, "Value": v} for k, v in dims], timestamp=at, unit=unit)
    d.lab = True
    d.lab_values = list(values)
    return d
