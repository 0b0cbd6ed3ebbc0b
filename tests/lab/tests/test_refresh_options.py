"""Instance refresh options on real instances behind an ALB: MaxHealthyPercentage launches before it
terminates, checkpoints pause, BakeTime holds the end, SkipMatching, an AlarmSpecification alarm rolls the
refresh back, and StartInstanceRefresh refuses preferences AWS refuses."""
import time

import pytest
from botocore.exceptions import ClientError
from test_load_balancing import healthy, template_data

from conftest import PAGE_USER_DATA, runner_group, subnet_id, wait_for

HEALTHY_WAIT = 90  # boot (~1 s), user data (~1 s), two 1-s probes; 90 s means broken
REFRESH_WAIT = 240  # a group of 4 replaced in one launch-first batch, plus bake time, with room for 2 cores
TICK = 0.25  # how often the tests sample target health (the lab's scaling loop ticks as often)
BAKE = 6  # the refresh's BakeTime in the tests: long enough to see Baking, short enough to wait for
PAUSE = 8  # how long a test watches a refresh stay at its checkpoint


def web_group(lab, ec2, ami: str, name: str, size: int) -> dict:
    """An ALB, its target group and an ELB-checked group of `size` page servers on template version 1;
    version 2 serves the next page. Returns the ids the test needs."""
    elb, asg = lab.client("elbv2"), lab.client("autoscaling")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]
    alb_sg = runner_group(lab, ec2, f"{name}-alb")
    sg = ec2.create_security_group(GroupName=name, Description="web", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "UserIdGroupPairs": [{"GroupId": alb_sg}]}])
    lt = ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=template_data(
        ami, sg, PAGE_USER_DATA.format(page="v1")))["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_launch_template_version(LaunchTemplateId=lt, LaunchTemplateData=template_data(
        ami, sg, PAGE_USER_DATA.format(page="v2")))
    tg = elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc, HealthCheckPath="/",
                                 HealthyThresholdCount=2,
                                 UnhealthyThresholdCount=2)["TargetGroups"][0]["TargetGroupArn"]
    lb = elb.create_load_balancer(Name=name, SecurityGroups=[alb_sg], Subnets=[
        subnet_id(ec2, "Public subnet A"), subnet_id(ec2, "Public subnet C")])["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    private = [subnet_id(ec2, "Private subnet A"), subnet_id(ec2, "Private subnet C")]
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=1, MaxSize=2 * size, DesiredCapacity=size, HealthCheckType="ELB",
        LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"}, VPCZoneIdentifier=",".join(private),
        TargetGroupARNs=[tg])
    wait_for(f"{size} healthy targets", lambda: len(healthy(elb, tg)) == size, HEALTHY_WAIT)
    return {"lt": lt, "tg": tg, "lb": lb["LoadBalancerArn"], "sgs": [sg, alb_sg]}


def remove(lab, ec2, name: str, made: dict) -> None:
    lab.client("autoscaling").delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    lab.client("elbv2").delete_load_balancer(LoadBalancerArn=made["lb"])
    ec2.delete_launch_template(LaunchTemplateId=made["lt"])


def refresh(asg, name: str, refresh_id: str) -> dict:
    return asg.describe_instance_refreshes(AutoScalingGroupName=name,
                                          InstanceRefreshIds=[refresh_id])["InstanceRefreshes"][0]


def instances(asg, name: str) -> list[dict]:
    return asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]["Instances"]


def desired(lt: str, version: str) -> dict:
    return {"LaunchTemplate": {"LaunchTemplateId": lt, "Version": version}}


def test_launch_before_terminate_keeps_desired_healthy_then_bakes_and_skip_matching(lab, ec2, ubuntu_ami):
    asg, elb = lab.client("autoscaling"), lab.client("elbv2")
    name = "ro-launch"
    made = web_group(lab, ec2, ubuntu_ami, name, 4)
    before = {i["InstanceId"] for i in instances(asg, name)}
    prefs = {"MinHealthyPercentage": 100, "MaxHealthyPercentage": 200, "InstanceWarmup": 0, "BakeTime": BAKE,
             "SkipMatching": True}
    rid = asg.start_instance_refresh(AutoScalingGroupName=name, Preferences=prefs,
                                     DesiredConfiguration=desired(made["lt"], "2"))["InstanceRefreshId"]
    # Sample target health every tick until the refresh ends: never fewer than 4 healthy targets.
    fewest, most, statuses, baking_at = 4, 4, [], None
    deadline = time.monotonic() + REFRESH_WAIT
    while True:
        fewest = min(fewest, len(healthy(elb, made["tg"])))
        most = max(most, len(instances(asg, name)))
        r = refresh(asg, name, rid)
        if not statuses or statuses[-1] != r["Status"]:
            statuses.append(r["Status"])
            if r["Status"] == "Baking":
                baking_at = time.monotonic()
        if r["Status"] not in ("Pending", "InProgress", "Baking"):
            break
        assert time.monotonic() < deadline, f"refresh still {r['Status']} after {REFRESH_WAIT}s"
        time.sleep(TICK)
    assert r["Status"] == "Successful", r
    assert fewest >= 4, f"healthy targets dropped to {fewest} during the refresh"
    assert 4 < most <= 8, f"launch before terminate runs above desired, within 200%: most {most}"
    # BakeTime: all replaced, then Baking for BakeTime before Successful.
    assert statuses[-2:] == ["Baking", "Successful"], statuses
    assert time.monotonic() - baking_at >= BAKE - 1, "Successful came before the bake time passed"
    assert r["PercentageComplete"] == 100 and r["InstancesToUpdate"] == 0, r
    assert r["Preferences"]["MaxHealthyPercentage"] == 200 and r["Preferences"]["BakeTime"] == BAKE, r
    after = instances(asg, name)
    assert len(after) == 4 and [i["LaunchTemplate"]["Version"] for i in after] == ["2"] * 4, after
    assert not {i["InstanceId"] for i in after} & before

    # SkipMatching: a refresh to the version every instance already runs has nothing to do.
    ids = {i["InstanceId"] for i in after}
    rid = asg.start_instance_refresh(AutoScalingGroupName=name, Preferences={**prefs, "BakeTime": 0},
                                     DesiredConfiguration=desired(made["lt"], "2"))["InstanceRefreshId"]
    done = wait_for("the matching refresh to end", lambda: (r := refresh(asg, name, rid))["Status"]
                    not in ("Pending", "InProgress") and r, 10)
    assert done["Status"] == "Successful", done
    assert {i["InstanceId"] for i in instances(asg, name)} == ids

    # SkipMatching false (the API's default) replaces them all the same.
    rid = asg.start_instance_refresh(AutoScalingGroupName=name, Preferences={
        "MinHealthyPercentage": 100, "MaxHealthyPercentage": 200, "InstanceWarmup": 0},
        DesiredConfiguration=desired(made["lt"], "2"))["InstanceRefreshId"]
    done = wait_for("the non-matching refresh to end", lambda: (r := refresh(asg, name, rid))["Status"]
                    not in ("Pending", "InProgress") and r, REFRESH_WAIT, 0.5)
    assert done["Status"] == "Successful", done
    assert done["Preferences"]["SkipMatching"] is False, done
    now = instances(asg, name)
    assert len(now) == 4 and not {i["InstanceId"] for i in now} & ids, now
    remove(lab, ec2, name, made)


def test_a_checkpoint_pauses_and_an_alarm_rolls_the_refresh_back(lab, ec2, ubuntu_ami):
    asg, cw = lab.client("autoscaling"), lab.client("cloudwatch")
    name = "ro-canary"
    made = web_group(lab, ec2, ubuntu_ami, name, 2)
    alarm = f"{name}-TG-5xx"
    cw.put_metric_alarm(AlarmName=alarm, Namespace="AWS/ApplicationELB", MetricName="HTTPCode_Target_5XX_Count",
                        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1,
                        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    cw.set_alarm_state(AlarmName=alarm, StateValue="OK", StateReason="test: quiet before the refresh")
    rid = asg.start_instance_refresh(
        AutoScalingGroupName=name, DesiredConfiguration=desired(made["lt"], "2"),
        Preferences={"MinHealthyPercentage": 100, "MaxHealthyPercentage": 200, "InstanceWarmup": 0,
                     "CheckpointPercentages": [50, 100], "CheckpointDelay": 600, "AutoRollback": True,
                     "AlarmSpecification": {"Alarms": [alarm]}})["InstanceRefreshId"]

    # The first checkpoint: half the group new, then a pause (the delay is 10 minutes).
    paused = wait_for("the first checkpoint", lambda: (r := refresh(asg, name, rid))["PercentageComplete"] >= 50
                      and r, REFRESH_WAIT, 0.5)
    assert paused["Status"] == "InProgress" and paused["PercentageComplete"] == 50, paused
    assert "Checkpoint 1 of 2" in paused["StatusReason"], paused
    assert paused["Preferences"]["CheckpointPercentages"] == [50, 100], paused
    assert paused["Preferences"]["AlarmSpecification"] == {"Alarms": [alarm]}, paused
    versions = wait_for("the old instance of the first slice to go", lambda: sorted(
        i["LaunchTemplate"]["Version"] for i in instances(asg, name)) == ["1", "2"] or None, 30)
    assert versions
    time.sleep(PAUSE)
    held = refresh(asg, name, rid)
    assert held["PercentageComplete"] == 50 and held["Status"] == "InProgress", repr((
        held["PercentageComplete"], held["InstancesToUpdate"],
        [(i["InstanceId"], i["LaunchTemplate"]["Version"]) for i in instances(asg, name)],
        [(d["Target"]["Id"], d["TargetHealth"]["State"]) for d in lab.client("elbv2").describe_target_health(
            TargetGroupArn=made["tg"])["TargetHealthDescriptions"]]))
    assert sorted(i["LaunchTemplate"]["Version"] for i in instances(asg, name)) == ["1", "2"]

    # The alarm goes to ALARM: the refresh rolls back the slice it deployed.
    cw.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="test: 5xx from the new version")
    ended = wait_for("the rollback to end", lambda: (r := refresh(asg, name, rid))["Status"]
                     in ("RollbackSuccessful", "RollbackFailed", "Failed", "Successful") and r, REFRESH_WAIT, 0.5)
    assert ended["Status"] == "RollbackSuccessful", ended
    assert alarm in ended["StatusReason"] and "ALARM" in ended["StatusReason"], ended
    details = ended["RollbackDetails"]
    assert alarm in details["RollbackReason"] and details["PercentageCompleteOnRollback"] == 50, details
    assert details["InstancesToUpdateOnRollback"] == 1, details
    after = instances(asg, name)
    assert sorted(i["LaunchTemplate"]["Version"] for i in after) == ["1", "1"], after
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    assert group["LaunchTemplate"]["Version"] == "1", group
    cw.delete_alarms(AlarmNames=[alarm])
    remove(lab, ec2, name, made)


def refused(call, **kwargs) -> dict:
    with pytest.raises(ClientError) as e:
        call(**kwargs)
    return e.value.response["Error"]


def test_refresh_preferences_are_checked_as_aws_checks_them(lab, ec2, debian_ami):
    asg = lab.client("autoscaling")
    name = "ro-rules"
    lt = ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": debian_ami, "InstanceType": "t3.micro"})["LaunchTemplate"]["LaunchTemplateId"]
    asg.create_auto_scaling_group(AutoScalingGroupName=name, MinSize=0, MaxSize=2, DesiredCapacity=0,
                                  LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"},
                                  VPCZoneIdentifier=subnet_id(ec2, "Private subnet A"))
    start = asg.start_instance_refresh
    cases = [
        ({"MinHealthyPercentage": 50, "MaxHealthyPercentage": 200}, "cannot be greater than 100"),
        ({"MaxHealthyPercentage": 150}, "must also specify MinHealthyPercentage"),
        ({"MinHealthyPercentage": 90, "MaxHealthyPercentage": 201}, "less than or equal to 200"),
        ({"CheckpointDelay": 60}, "must also specify CheckpointPercentages"),
        ({"CheckpointPercentages": [50, 20, 100]}, "ascending order"),
        ({"CheckpointPercentages": [50, 50, 100]}, "unique"),
        ({"BakeTime": 172801}, "less than or equal to 172800"),
        ({"AlarmSpecification": {"Alarms": ["no-such-alarm"]}}, "no-such-alarm"),
        ({"AlarmSpecification": {"Alarms": [f"a{i}" for i in range(11)]}}, "up to 10 alarms"),
    ]
    for prefs, words in cases:
        err = refused(start, AutoScalingGroupName=name, Preferences=prefs)
        assert err["Code"] == "ValidationError" and words in err["Message"], (prefs, err)
    assert asg.describe_instance_refreshes(AutoScalingGroupName=name)["InstanceRefreshes"] == []

    # Accepted preferences are shown as given, with the defaults AWS fills in.
    rid = start(AutoScalingGroupName=name, Preferences={
        "MinHealthyPercentage": 100, "MaxHealthyPercentage": 200, "CheckpointPercentages": [25, 100],
        "BakeTime": 30})["InstanceRefreshId"]
    found = refresh(asg, name, rid)
    grace = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0][
        "HealthCheckGracePeriod"]  # the warmup when neither InstanceWarmup nor DefaultInstanceWarmup is set
    assert found["Preferences"] == {
        "MinHealthyPercentage": 100, "MaxHealthyPercentage": 200, "CheckpointPercentages": [25, 100],
        "CheckpointDelay": 3600, "BakeTime": 30, "InstanceWarmup": grace, "SkipMatching": False,
        "AutoRollback": False, "ScaleInProtectedInstances": "Wait", "StandbyInstances": "Wait"}, found
    # An empty group's refresh has nothing to do: it succeeds at once, without baking.
    done = wait_for("the empty refresh to end", lambda: (r := refresh(asg, name, rid))["Status"]
                    not in ("Pending", "InProgress") and r, 10)
    assert done["Status"] == "Successful" and done["PercentageComplete"] == 100, done
    asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateId=lt)


def test_standby_instances_wait_for_service_or_are_terminated(lab, ec2, debian_ami):
    asg = lab.client("autoscaling")
    name = "ro-standby"
    lt = ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": debian_ami, "InstanceType": "t3.micro"})["LaunchTemplate"]["LaunchTemplateId"]
    for _ in range(2):
        ec2.create_launch_template_version(LaunchTemplateId=lt, LaunchTemplateData={
            "ImageId": debian_ami, "InstanceType": "t3.micro"})
    asg.create_auto_scaling_group(AutoScalingGroupName=name, MinSize=0, MaxSize=3, DesiredCapacity=2,
                                  LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"},
                                  VPCZoneIdentifier=subnet_id(ec2, "Private subnet A"))
    two = wait_for("two instances", lambda: len(found := instances(asg, name)) == 2 and found, HEALTHY_WAIT)
    first, second = (i["InstanceId"] for i in two)
    asg.enter_standby(AutoScalingGroupName=name, InstanceIds=[first], ShouldDecrementDesiredCapacity=True)
    prefs = {"MinHealthyPercentage": 0, "InstanceWarmup": 0}
    rid = asg.start_instance_refresh(AutoScalingGroupName=name, Preferences=prefs,
                                     DesiredConfiguration=desired(lt, "2"))["InstanceRefreshId"]
    # Wait (the default): the instance in service is replaced, then the refresh waits for the standby one.
    waiting = wait_for("the refresh to wait for the standby instance", lambda: "Standby" in (
        r := refresh(asg, name, rid))["StatusReason"] and r, HEALTHY_WAIT)
    assert waiting["Status"] == "InProgress" and waiting["PercentageComplete"] == 50, waiting
    assert first in waiting["StatusReason"], waiting
    asg.exit_standby(AutoScalingGroupName=name, InstanceIds=[first])
    ended = wait_for("the refresh to end", lambda: (r := refresh(asg, name, rid))["Status"]
                     not in ("Pending", "InProgress") and r, HEALTHY_WAIT)
    assert ended["Status"] == "Successful", ended
    now = instances(asg, name)
    assert [i["LaunchTemplate"]["Version"] for i in now] == ["2", "2"] and not {
        i["InstanceId"] for i in now} & {first, second}, now

    # Terminate: a standby instance is terminated, not waited for.
    third = now[0]["InstanceId"]
    asg.enter_standby(AutoScalingGroupName=name, InstanceIds=[third], ShouldDecrementDesiredCapacity=True)
    rid = asg.start_instance_refresh(AutoScalingGroupName=name,
                                     Preferences={**prefs, "StandbyInstances": "Terminate"},
                                     DesiredConfiguration=desired(lt, "3"))["InstanceRefreshId"]
    ended = wait_for("the refresh to end", lambda: (r := refresh(asg, name, rid))["Status"]
                     not in ("Pending", "InProgress") and r, HEALTHY_WAIT)
    assert ended["Status"] == "Successful", ended
    now = instances(asg, name)
    assert [i["LaunchTemplate"]["Version"] for i in now] == ["3"] and third not in {i["InstanceId"] for i in now}
    state = ec2.describe_instances(InstanceIds=[third])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated"), state
    assert ended["Preferences"]["StandbyInstances"] == "Terminate", ended
    asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateId=lt)
