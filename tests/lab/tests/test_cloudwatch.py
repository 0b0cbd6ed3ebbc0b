"""CloudWatch with real data: an instance's CPU from its container, alarms that evaluate it (OK -> ALARM -> OK, with
history), the ALB's request counts, group metrics, target tracking that scales a group under load through the ALB
and back, and ELB health replacement."""
import base64
import threading
import time
from datetime import UTC, datetime, timedelta

from conftest import (
    PAGE_USER_DATA,
    http_get,
    launch,
    run_command,
    runner_group,
    subnet_id,
    wait_for,
    wait_online,
    wait_state,
)

PERIOD = 2  # the lab's default metric_period: one 60-s CloudWatch period lasts 2 s
# An alarm of 2 periods needs 2 data points: a few periods after a change, plus the SSM command's own seconds.
ALARM_WAIT = 40
HEALTHY_WAIT = 90  # boot (~1 s), user data (~1 s), two 1-s probes; 90 s means broken
# The burner: two busy loops (t3.micro has 2 vCPUs) for at most 60 s (stopped earlier by the test), in its own unit.
BURN = "systemd-run --unit=burn timeout 60 sh -c 'while :; do :; done & while :; do :; done'"
LOAD_WORKERS = 8  # concurrent /load requests through the ALB
LOAD_WAIT = 90  # the load stream runs until the group scales out, at most this long (it takes ~20 s here)
SCALE_IN_WAIT = 120  # 15 low periods (30 s), the warm-up (300 s scaled: 10 s), the terminations
# A page whose /load burns a second of CPU before answering, served by systemd socket activation.
LOAD_USER_DATA = r"""#!/bin/bash
set -euo pipefail
cat >/usr/local/sbin/page <<'SH'
#!/bin/bash
read -r method path rest || exit 0
while IFS= read -r line && [ -n "${line%$'\r'}" ]; do :; done
if [ "$path" = /load ]; then timeout 1 sh -c 'while :; do :; done' || true; fi
body="$method $path from $(hostname)"
printf 'HTTP/1.0 200 OK\r\nContent-Length: %s\r\n\r\n%s\n' "$((${#body} + 1))" "$body"
SH
chmod +x /usr/local/sbin/page
printf '[Socket]\nListenStream=80\nAccept=yes\n[Install]\nWantedBy=sockets.target\n' >/etc/systemd/system/page.socket
printf '[Service]\nExecStart=/usr/local/sbin/page\nStandardInput=socket\nStandardOutput=socket\n' \
  >/etc/systemd/system/page@.service
systemctl daemon-reload
systemctl enable --now page.socket
"""


def alarm(cw, name: str) -> dict:
    return cw.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]


def wait_alarm(cw, name: str, state: str, timeout: float = ALARM_WAIT) -> dict:
    return wait_for(f"alarm {name} {state}", lambda: (a := alarm(cw, name))["StateValue"] == state and a, timeout)


def test_instance_cpu_is_published_and_an_alarm_goes_ok_alarm_ok(lab, ec2, ssm, ubuntu_ami):
    cw = lab.client("cloudwatch")
    iid = launch(ec2, ubuntu_ami)
    wait_state(ec2, iid, "running")
    wait_online(ssm, iid)
    dims = [{"Name": "InstanceId", "Value": iid}]
    cw.put_metric_alarm(AlarmName="cw-cpu", Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims,
                        Statistic="Average", Period=60, EvaluationPeriods=2, Threshold=20,
                        ComparisonOperator="GreaterThanThreshold")
    first = alarm(cw, "cw-cpu")
    assert first["StateValue"] == "INSUFFICIENT_DATA", first
    ok = wait_alarm(cw, "cw-cpu", "OK")
    assert "not greater than the threshold (20)" in ok["StateReason"], ok["StateReason"]

    listed = cw.list_metrics(Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims)["Metrics"]
    assert [m["Dimensions"] for m in listed] == [dims], listed

    assert run_command(ssm, iid, [BURN])["Status"] == "Success"
    high = wait_alarm(cw, "cw-cpu", "ALARM")
    assert "were greater than the threshold (20)" in high["StateReason"], high["StateReason"]
    now = datetime.now(UTC)
    stats = cw.get_metric_statistics(Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims,
                                     StartTime=now - timedelta(minutes=5), EndTime=now + timedelta(seconds=1),
                                     Period=60, Statistics=["Maximum", "Minimum"])["Datapoints"]
    assert stats and max(d["Maximum"] for d in stats) > 20, stats
    assert all(0 <= d["Minimum"] <= 100 for d in stats), stats

    assert run_command(ssm, iid, ["systemctl stop burn"])["Status"] == "Success"
    wait_alarm(cw, "cw-cpu", "OK")
    history = cw.describe_alarm_history(AlarmName="cw-cpu", HistoryItemType="StateUpdate")["AlarmHistoryItems"]
    summaries = [h["HistorySummary"] for h in reversed(history)]
    assert summaries[:3] == ["Alarm updated from INSUFFICIENT_DATA to OK", "Alarm updated from OK to ALARM",
                             "Alarm updated from ALARM to OK"], summaries

    # SetAlarmState still works; the next evaluation puts the alarm back where the data says.
    cw.set_alarm_state(AlarmName="cw-cpu", StateValue="ALARM", StateReason="testing")
    assert alarm(cw, "cw-cpu")["StateValue"] == "ALARM"
    wait_alarm(cw, "cw-cpu", "OK", 5 * PERIOD)
    # Updating the alarm keeps its state (PutMetricAlarm on an existing alarm).
    cw.put_metric_alarm(AlarmName="cw-cpu", Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims,
                        Statistic="Average", Period=60, EvaluationPeriods=3, Threshold=25,
                        ComparisonOperator="GreaterThanThreshold")
    assert alarm(cw, "cw-cpu")["StateValue"] == "OK"
    cw.delete_alarms(AlarmNames=["cw-cpu"])
    ec2.terminate_instances(InstanceIds=[iid])


def web_stack(lab, ec2, name: str, ami: str, user_data: str, size: tuple[int, int, int], grace: int) -> dict:
    """An ALB over a group in the private subnets, as the workshops build it (groups admitting the runner and the
    ALB); returns the names and ARNs the tests use."""
    elb, asg = lab.client("elbv2"), lab.client("autoscaling")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]
    alb_sg = runner_group(lab, ec2, f"{name}-alb")
    sg = ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "UserIdGroupPairs": [{"GroupId": alb_sg}]}])
    template = ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": ami, "InstanceType": "t3.micro", "SecurityGroupIds": [sg],
        "IamInstanceProfile": {"Name": "SSMInstanceProfile"},
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "UserData": base64.b64encode(user_data.encode()).decode()})["LaunchTemplate"]["LaunchTemplateId"]
    tg = elb.create_target_group(Name=f"{name}-tg", Protocol="HTTP", Port=80, VpcId=vpc, HealthCheckPath="/",
                                 HealthyThresholdCount=2,
                                 UnhealthyThresholdCount=2)["TargetGroups"][0]["TargetGroupArn"]
    lb = elb.create_load_balancer(Name=f"{name}-alb", SecurityGroups=[alb_sg],
                                  Subnets=[subnet_id(ec2, "Public subnet A"),
                                           subnet_id(ec2, "Public subnet C")])["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    low, desired, high = size
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=low, MaxSize=high, DesiredCapacity=desired, HealthCheckType="ELB",
        HealthCheckGracePeriod=grace, LaunchTemplate={"LaunchTemplateId": template, "Version": "1"},
        VPCZoneIdentifier=",".join([subnet_id(ec2, "Private subnet A"), subnet_id(ec2, "Private subnet C")]),
        TargetGroupARNs=[tg])
    return {"group": name, "tg": tg, "lb": lb["LoadBalancerArn"], "url": f"http://{lb['DNSName']}/"}


def healthy(elb, tg: str) -> list[str]:
    found = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    return [d["Target"]["Id"] for d in found if d["TargetHealth"]["State"] == "healthy"]


def group(asg, name: str) -> dict:
    return asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]


def statistic(cw, namespace: str, metric: str, dims: list[dict], stat: str) -> list[float]:
    now = datetime.now(UTC)
    found = cw.get_metric_statistics(Namespace=namespace, MetricName=metric, Dimensions=dims, Statistics=[stat],
                                     StartTime=now - timedelta(minutes=10), EndTime=now + timedelta(seconds=1),
                                     Period=600)["Datapoints"]
    return [d[stat] for d in found]


def series(cw, name: str) -> list[float]:
    """The group's average CPU, period by period, for a failure's message."""
    now = datetime.now(UTC)
    found = cw.get_metric_statistics(Namespace="AWS/EC2", MetricName="CPUUtilization",
                                     Dimensions=[{"Name": "AutoScalingGroupName", "Value": name}],
                                     StartTime=now - timedelta(minutes=5), EndTime=now, Period=PERIOD,
                                     Statistics=["Average"])["Datapoints"]
    return [round(d["Average"]) for d in sorted(found, key=lambda d: d["Timestamp"])]


def test_target_tracking_scales_out_under_load_through_the_alb_and_back_in(lab, ec2, debian_ami):
    elb, asg, cw = lab.client("elbv2"), lab.client("autoscaling"), lab.client("cloudwatch")
    web = web_stack(lab, ec2, "cw-track", debian_ami, LOAD_USER_DATA, (2, 2, 4), grace=300)
    asg.enable_metrics_collection(AutoScalingGroupName="cw-track", Granularity="1Minute")
    put = asg.put_scaling_policy(
        AutoScalingGroupName="cw-track", PolicyName="cpu30", PolicyType="TargetTrackingScaling",
        TargetTrackingConfiguration={"PredefinedMetricSpecification": {"PredefinedMetricType":
                                                                       "ASGAverageCPUUtilization"},
                                     "TargetValue": 30.0})
    names = sorted(a["AlarmName"] for a in put["Alarms"])
    assert [n.rsplit("-", 5)[0] for n in names] == ["TargetTracking-cw-track-AlarmHigh",
                                                    "TargetTracking-cw-track-AlarmLow"], names
    high, low = (cw.describe_alarms(AlarmNames=[n])["MetricAlarms"][0] for n in names)
    assert (high["Threshold"], high["EvaluationPeriods"], high["ComparisonOperator"], high["Period"]) == \
        (30.0, 3, "GreaterThanThreshold", 60)
    assert (low["Threshold"], low["EvaluationPeriods"], low["ComparisonOperator"]) == (27.0, 15, "LessThanThreshold")
    assert high["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": "cw-track"}]
    policies = asg.describe_policies(AutoScalingGroupName="cw-track")["ScalingPolicies"]
    assert sorted(a["AlarmName"] for a in policies[0]["Alarms"]) == names

    wait_for("two healthy targets", lambda: len(healthy(elb, web["tg"])) == 2, HEALTHY_WAIT)
    stop, answers = threading.Event(), []

    def load():
        while not stop.is_set():
            answers.append(http_get(web["url"] + "load", timeout=10))
    # Eight requests at a time: four busy loops on each 2-vCPU instance, enough to pass 30 % on a busy host.
    workers = [threading.Thread(target=load, daemon=True) for _ in range(LOAD_WORKERS)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + LOAD_WAIT
        while group(asg, "cw-track")["DesiredCapacity"] < 3:
            assert time.monotonic() < deadline, ("no scale-out under load; the group's CPU:",
                                                 series(cw, "cw-track"))
            time.sleep(1)
    finally:
        stop.set()
        for w in workers:
            w.join(15)
    ok = [a for a in answers if a and a[0] == 200]
    assert len(ok) >= len(answers) * 0.9 and ok, answers[:5]
    activities = asg.describe_scaling_activities(AutoScalingGroupName="cw-track")["Activities"]
    assert any(f"{names[0]} in state ALARM triggered policy cpu30" in a["Cause"] for a in activities), activities

    lb_dims = [{"Name": "LoadBalancer", "Value": web["lb"].split(":loadbalancer/")[1]}]
    tg_dims = [{"Name": "TargetGroup", "Value": web["tg"].rsplit(":", 1)[1]}] + lb_dims
    assert sum(statistic(cw, "AWS/ApplicationELB", "RequestCount", lb_dims, "Sum")) >= len(ok)
    assert max(statistic(cw, "AWS/ApplicationELB", "TargetResponseTime", tg_dims, "Maximum")) >= 0.9
    assert max(statistic(cw, "AWS/EC2", "CPUUtilization", [{"Name": "AutoScalingGroupName", "Value": "cw-track"}],
                         "Maximum")) > 30
    # Group metrics (EnableMetricsCollection): the new desired capacity in the next period's data point.
    wait_for("GroupDesiredCapacity >= 3", lambda: max(statistic(
        cw, "AWS/AutoScaling", "GroupDesiredCapacity", [{"Name": "AutoScalingGroupName", "Value": "cw-track"}],
        "Maximum")) >= 3, 5 * PERIOD)

    # Load gone: 15 periods under 27 % and the group is back at its minimum.
    wait_for("the group to scale in", lambda: (g := group(asg, "cw-track"))["DesiredCapacity"] == 2
             and len(g["Instances"]) == 2, SCALE_IN_WAIT, 1)
    activities = asg.describe_scaling_activities(AutoScalingGroupName="cw-track")["Activities"]
    assert any(f"{names[1]} in state ALARM triggered policy cpu30" in a["Cause"]
               and a["Description"].startswith("Terminating EC2 instance") for a in activities), activities
    assert len(healthy(elb, web["tg"])) == 2

    asg.delete_policy(AutoScalingGroupName="cw-track", PolicyName="cpu30")
    assert cw.describe_alarms(AlarmNames=names)["MetricAlarms"] == []
    asg.delete_auto_scaling_group(AutoScalingGroupName="cw-track", ForceDelete=True)


def test_elb_health_checks_replace_an_unhealthy_instance_after_the_grace_period(lab, ec2, ssm, ubuntu_ami):
    elb, asg = lab.client("elbv2"), lab.client("autoscaling")
    web = web_stack(lab, ec2, "cw-heal", ubuntu_ami, PAGE_USER_DATA.format(page="heal"), (1, 1, 1), grace=60)
    first = wait_for("a healthy target", lambda: healthy(elb, web["tg"]), HEALTHY_WAIT)[0]
    wait_online(ssm, first)
    assert run_command(ssm, first, ["systemctl stop page.socket"])["Status"] == "Success"

    def replaced():
        ids = [i["InstanceId"] for i in group(asg, "cw-heal")["Instances"]]
        return ids and first not in ids and ids
    wait_for("the unhealthy instance to be replaced", replaced, HEALTHY_WAIT)
    wait_state(ec2, first, "terminated")
    activities = asg.describe_scaling_activities(AutoScalingGroupName="cw-heal")["Activities"]
    assert any(a["Description"] == f"Terminating EC2 instance: {first}"
               and "in response to an ELB system health check failure" in a["Cause"] for a in activities), activities
    second = wait_for("the replacement healthy", lambda: healthy(elb, web["tg"]), HEALTHY_WAIT)[0]
    assert second != first
    got = http_get(web["url"])
    assert got and got == (200, f"heal {second}\n"), got
    asg.delete_auto_scaling_group(AutoScalingGroupName="cw-heal", ForceDelete=True)
