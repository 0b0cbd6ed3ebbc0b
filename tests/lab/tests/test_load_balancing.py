"""The workshops' part 2 in the lab: an ALB in front of an Auto Scaling group, real target health,
instance refreshes that replace real instances and roll back."""
import base64
import concurrent.futures
import time

from conftest import PAGE_USER_DATA as USER_DATA
from conftest import http_get, run_command, runner_group, subnet_id, wait_for, wait_online

BROKEN = "#!/bin/bash\necho 'this version serves nothing'\n"
HEALTHY_WAIT = 90  # boot (~1 s), user data (~1 s), two 1-s probes; 90 s means broken
REFRESH_WAIT = 180  # two batches of the above


def template_data(ami: str, sg: str, user_data: str) -> dict:
    return {"ImageId": ami, "InstanceType": "t3.micro", "SecurityGroupIds": [sg],
            "IamInstanceProfile": {"Name": "SSMInstanceProfile"},
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "UserData": base64.b64encode(user_data.encode()).decode()}


def healthy(elb, tg: str) -> list[str]:
    found = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    return [d["Target"]["Id"] for d in found if d["TargetHealth"]["State"] == "healthy"]


def pages(url: str, n: int) -> set[str]:
    seen = set()
    for _ in range(n):
        got = http_get(url)
        assert got and got[0] == 200, got
        seen.add(got[1].strip())
    return seen


def refresh_ends(asg, group: str, refresh: str, states: tuple[str, ...]) -> dict:
    def done():
        r = asg.describe_instance_refreshes(AutoScalingGroupName=group, InstanceRefreshIds=[refresh])
        r = r["InstanceRefreshes"][0]
        return r if r["Status"] in states else None
    return wait_for(f"refresh {refresh} to end", done, REFRESH_WAIT, 0.5)


def web_stack(lab, ec2, name: str, ami: str, user_data: str) -> dict:
    """The workshop's stack under `name`: an internet-facing ALB (its group admitting the runner, as on AWS),
    a target group checking `/` (2 checks either way), and a group of 2 (up to 4) in the private subnets whose
    instances' group admits only the balancer's. The grace period (600 s) is longer than a test: the group
    leaves unhealthy targets to the target group's checks. Returns the ARNs, ids and the balancer."""
    elb, asg = lab.client("elbv2"), lab.client("autoscaling")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]
    alb_sg = runner_group(lab, ec2, f"{name}-alb")
    sg = ec2.create_security_group(GroupName=name, Description="web", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "UserIdGroupPairs": [{"GroupId": alb_sg}]}])
    template = ec2.create_launch_template(LaunchTemplateName=name,
                                          LaunchTemplateData=template_data(ami, sg, user_data))
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    tg = elb.create_target_group(Name=f"{name}-tg", Protocol="HTTP", Port=80, VpcId=vpc, HealthCheckPath="/",
                                 HealthyThresholdCount=2,
                                 UnhealthyThresholdCount=2)["TargetGroups"][0]["TargetGroupArn"]
    lb = elb.create_load_balancer(Name=f"{name}-alb", SecurityGroups=[alb_sg],
                                  Subnets=[subnet_id(ec2, "Public subnet A"),
                                           subnet_id(ec2, "Public subnet C")])["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    private = [subnet_id(ec2, "Private subnet A"), subnet_id(ec2, "Private subnet C")]
    asg.create_auto_scaling_group(
        AutoScalingGroupName=f"{name}-asg", MinSize=2, MaxSize=4, DesiredCapacity=2, HealthCheckType="ELB",
        HealthCheckGracePeriod=600, LaunchTemplate={"LaunchTemplateId": template_id, "Version": "1"},
        VPCZoneIdentifier=",".join(private), TargetGroupARNs=[tg])
    return {"sg": sg, "template_id": template_id, "tg": tg, "lb": lb, "private": private}


def test_alb_serves_the_group_and_refreshes_replace_and_roll_back(lab, ec2, ssm, ubuntu_ami):
    elb, asg = lab.client("elbv2"), lab.client("autoscaling")
    # The grace period (longer than the test) leaves the stopped server below to the target group's checks (with
    # none, the API's default, the group would replace the instance as soon as its target turned unhealthy).
    stack = web_stack(lab, ec2, "lb-web", ubuntu_ami, USER_DATA.format(page="v1"))
    sg, template_id, tg, lb, private = (stack[k] for k in ("sg", "template_id", "tg", "lb", "private"))
    url = f"http://{lb['DNSName']}/"
    assert lb["DNSName"].startswith("100.64."), lb["DNSName"]

    members = wait_for("two healthy targets", lambda: len(h := healthy(elb, tg)) == 2 and h, HEALTHY_WAIT)
    reservations = ec2.describe_instances(InstanceIds=members)["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    assert sorted(i["SubnetId"] for i in instances) == sorted(private)
    assert all(i["MetadataOptions"]["HttpTokens"] == "required" for i in instances)
    assert pages(url, 6) == {f"v1 {m}" for m in members}, "round robin over both instances"

    # One server stops: its target turns unhealthy with a reason; the ALB sends everything to the other.
    down, up = members
    wait_online(ssm, down)
    run_command(ssm, down, ["systemctl stop page.socket"])
    def unhealthy():
        for d in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]:
            if d["Target"]["Id"] == down and d["TargetHealth"]["State"] == "unhealthy":
                return d["TargetHealth"]
    assert wait_for("the stopped target unhealthy", unhealthy, 30)["Reason"] == "Target.FailedHealthChecks"
    assert pages(url, 4) == {f"v1 {up}"}

    # A new version, rolled out by an instance refresh.
    ec2.create_launch_template_version(LaunchTemplateId=template_id,
                                       LaunchTemplateData=template_data(ubuntu_ami, sg, USER_DATA.format(page="v2")))
    refresh = asg.start_instance_refresh(
        AutoScalingGroupName="lb-web-asg", Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 0},
        DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": template_id, "Version": "2"}})["InstanceRefreshId"]
    assert refresh_ends(asg, "lb-web-asg", refresh, ("Successful", "Failed"))["Status"] == "Successful"
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["lb-web-asg"])["AutoScalingGroups"][0]
    assert group["LaunchTemplate"]["Version"] == "2"
    assert [i["LaunchTemplate"]["Version"] for i in group["Instances"]] == ["2", "2"]
    assert not {i["InstanceId"] for i in group["Instances"]} & set(members)
    assert {p.split()[0] for p in pages(url, 4)} == {"v2"}

    # A version that serves nothing: the refresh fails and rolls itself back.
    lab.post("/_lab/latency", {"refresh_instance_timeout": 10})
    ec2.create_launch_template_version(LaunchTemplateId=template_id,
                                       LaunchTemplateData=template_data(ubuntu_ami, sg, BROKEN))
    refresh = asg.start_instance_refresh(
        AutoScalingGroupName="lb-web-asg",
        Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 0, "AutoRollback": True},
        DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": template_id, "Version": "3"}})["InstanceRefreshId"]
    ended = refresh_ends(asg, "lb-web-asg", refresh, ("RollbackSuccessful", "RollbackFailed", "Successful"))
    assert ended["Status"] == "RollbackSuccessful", ended
    assert "did not become healthy" in ended["StatusReason"]
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["lb-web-asg"])["AutoScalingGroups"][0]
    assert [i["LaunchTemplate"]["Version"] for i in group["Instances"]] == ["2", "2"]
    assert {p.split()[0] for p in pages(url, 4)} == {"v2"}

    asg.delete_auto_scaling_group(AutoScalingGroupName="lb-web-asg", ForceDelete=True)
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    wait_for("the ALB's address to go", lambda: http_get(url, timeout=1) is None, 10)
    lab.post("/_lab/latency", {"refresh_instance_timeout": 60})


# The page of PAGE_USER_DATA, but a request for /slow is answered after 5 s, one for /slower after 30 s.
SLOW_USER_DATA = USER_DATA.replace(
    "while IFS= read -r line && [",
    "read -r request\ncase $request in *' /slow '*) sleep 5 ;; *' /slower '*) sleep 30 ;; esac\n"
    "while IFS= read -r line && [")
SLOWER = 30


def test_a_refresh_drains_a_target_before_terminating_its_instance_within_the_deregistration_delay(
        lab, ec2, ubuntu_ami):
    """Auto Scaling deregisters an instance from its target groups before terminating it; ELB sends it no
    new requests and lets those in flight answer, for up to the deregistration delay."""
    elb, asg = lab.client("elbv2"), lab.client("autoscaling")
    stack = web_stack(lab, ec2, "drain", ubuntu_ami, SLOW_USER_DATA.format(page="v1"))
    sg, template_id, tg, lb = (stack[k] for k in ("sg", "template_id", "tg", "lb"))
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": "30"}])
    url = f"http://{lb['DNSName']}"
    members = wait_for("two healthy targets", lambda: len(h := healthy(elb, tg)) == 2 and h, HEALTHY_WAIT)

    def refresh_under_slow_requests(version: int, path: str) -> list:
        """Two slow requests, one on each instance (round robin), in flight while a refresh at 50 % healthy
        replaces the instances; what each request got."""
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(http_get, url + path, SLOWER + 10) for _ in range(2)]
            time.sleep(0.5)
            refresh = asg.start_instance_refresh(
                AutoScalingGroupName="drain-asg", Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 0},
                DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": template_id,
                                                         "Version": str(version)}})["InstanceRefreshId"]
            got = [a.result() for a in answers]
        assert refresh_ends(asg, "drain-asg", refresh, ("Successful", "Failed"))["Status"] == "Successful"
        return got

    # Within the delay: both requests answered, by the two instances that were there.
    ec2.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData=template_data(
        ubuntu_ami, sg, SLOW_USER_DATA.format(page="v2")))
    got = refresh_under_slow_requests(2, "/slow")
    assert sorted(got) == sorted((200, f"v1 {m}\n") for m in members), got
    # The terminated instances are shown draining until their delay ends, asked for or not.
    listed = {d["Target"]["Id"]: d["TargetHealth"]
              for d in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]}
    for m in members:
        assert listed[m] == {"State": "draining", "Reason": "Target.DeregistrationInProgress",
                             "Description": "Target deregistration is in progress"}, listed
    asked = elb.describe_target_health(TargetGroupArn=tg, Targets=[{"Id": members[0]}])
    assert asked["TargetHealthDescriptions"][0]["TargetHealth"]["State"] == "draining"
    serving = [i for i in listed if i not in members]

    # A delay shorter than the requests: each instance is terminated once it passes, and its request fails.
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": "1"}])
    ec2.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData=template_data(
        ubuntu_ami, sg, SLOW_USER_DATA.format(page="v3")))
    got = refresh_under_slow_requests(3, "/slower")
    assert [status for status, _page in got] == [502, 502], got
    # Past its delay a deregistered target is no longer listed, and asked for it is unused.
    listed = {d["Target"]["Id"]: d["TargetHealth"]["State"]
              for d in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]}
    assert not set(listed) & set(serving), listed
    asked = elb.describe_target_health(TargetGroupArn=tg, Targets=[{"Id": serving[0]}])
    assert asked["TargetHealthDescriptions"][0]["TargetHealth"]["State"] == "unused", asked

    asg.delete_auto_scaling_group(AutoScalingGroupName="drain-asg", ForceDelete=True)
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])


def _states(elb, tg: str) -> dict[str, str]:
    """Target id -> state, as DescribeTargetHealth lists the target group."""
    return {d["Target"]["Id"]: d["TargetHealth"]["State"]
            for d in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]}


def _asked(elb, tg: str, target: str) -> dict:
    """The health of one target asked for by id."""
    found = elb.describe_target_health(TargetGroupArn=tg, Targets=[{"Id": target}])["TargetHealthDescriptions"]
    return found[0]["TargetHealth"]


DRAINING = {"State": "draining", "Reason": "Target.DeregistrationInProgress",
            "Description": "Target deregistration is in progress"}
# SetDesiredCapacity and DeregisterTargets are answered at once on AWS: well under the 5 s of a /slow request.
ANSWERED_AT_ONCE = 3.0


def test_a_set_desired_capacity_scale_in_drains_before_terminating_and_answers_at_once(lab, ec2, ubuntu_ami):
    """SetDesiredCapacity below the instances in service: the one the termination policy picks is Terminating,
    deregistered (draining) and terminated only once its in-flight request answered, within the delay; with a
    delay shorter than the request, that request fails with a 502. The call itself does not wait."""
    elb, asg = lab.client("elbv2"), lab.client("autoscaling")
    stack = web_stack(lab, ec2, "shrink", ubuntu_ami, SLOW_USER_DATA.format(page="v1"))
    tg, lb = stack["tg"], stack["lb"]
    url = f"http://{lb['DNSName']}"
    asg.update_auto_scaling_group(AutoScalingGroupName="shrink-asg", MinSize=1)

    def scale_in_under_slow_requests(delay: int) -> tuple[str, str, dict]:
        """Two /slow requests, one on each instance, in flight while the group shrinks from 2 to 1: the
        instance picked, the one kept, and what each request got (by the instance that answered it, or
        'cut')."""
        elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
            {"Key": "deregistration_delay.timeout_seconds", "Value": str(delay)}])
        members = wait_for("two healthy targets", lambda: len(h := healthy(elb, tg)) == 2 and h, HEALTHY_WAIT)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(http_get, url + "/slow", SLOWER) for _ in range(2)]
            time.sleep(0.5)
            started = time.monotonic()
            asg.set_desired_capacity(AutoScalingGroupName="shrink-asg", DesiredCapacity=1)
            assert time.monotonic() - started < ANSWERED_AT_ONCE
            group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["shrink-asg"])["AutoScalingGroups"][0]
            lifecycle = {i["InstanceId"]: i["LifecycleState"] for i in group["Instances"]}
            picked = next(i for i, state in lifecycle.items() if state == "Terminating")
            kept = next(m for m in members if m != picked)
            assert lifecycle[kept] == "InService", lifecycle
            assert _asked(elb, tg, picked) == DRAINING
            assert _states(elb, tg)[picked] == "draining"
            got = [a.result() for a in answers]
        return picked, kept, {(g[1].split()[1] if g and g[0] == 200 else "cut"): g for g in got}

    # Within the delay: the picked instance answers its request, then it is terminated (before the delay ends).
    picked, kept, got = scale_in_under_slow_requests(30)
    assert set(got) == {picked, kept}, got
    state = wait_for(f"{picked} terminated", lambda: (s := ec2.describe_instances(InstanceIds=[picked])[
        "Reservations"][0]["Instances"][0]["State"]["Name"]) in ("shutting-down", "terminated") and s, 20, 0.5)
    assert state in ("shutting-down", "terminated")
    wait_for(f"{picked} out of the group", lambda: picked not in {
        i["InstanceId"] for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=["shrink-asg"])[
            "AutoScalingGroups"][0]["Instances"]}, 20, 0.5)
    assert _asked(elb, tg, picked) == DRAINING  # until its delay ends

    # A delay shorter than the request: the picked instance's request is cut; the kept one's answers.
    asg.set_desired_capacity(AutoScalingGroupName="shrink-asg", DesiredCapacity=2)
    picked, kept, got = scale_in_under_slow_requests(1)
    assert set(got) == {"cut", kept}, got
    assert got["cut"] == (502, "502 Bad Gateway\n"), got
    # Past its delay the target is no longer listed, and asked for it is unused.
    assert picked not in _states(elb, tg)
    assert _asked(elb, tg, picked)["State"] == "unused"
    activities = asg.describe_scaling_activities(AutoScalingGroupName="shrink-asg")["Activities"]
    assert any(a["Description"] == f"Terminating EC2 instance: {picked}"
               and "a user request explicitly set group desired capacity" in a["Cause"] for a in activities)

    asg.delete_auto_scaling_group(AutoScalingGroupName="shrink-asg", ForceDelete=True)
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])


def test_deregister_targets_drains_the_target_within_the_deregistration_delay(lab, ec2, ubuntu_ami):
    """DeregisterTargets: the target gets no new requests at once, its in-flight request answers within the
    delay (cut with a 502 past it), DescribeTargetHealth shows it draining, then unused; its instance runs on.
    Registered again while draining, it is a target again (health checks from the start)."""
    elb = lab.client("elbv2")
    stack = web_stack(lab, ec2, "dereg", ubuntu_ami, SLOW_USER_DATA.format(page="v1"))
    tg, lb = stack["tg"], stack["lb"]
    url = f"http://{lb['DNSName']}"

    def deregister_under_slow_requests(delay: int) -> tuple[str, str, dict]:
        """Two /slow requests, one on each target, in flight while one target is deregistered: the target
        deregistered, the one kept, and what each request got (by the instance that answered, or 'cut')."""
        elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
            {"Key": "deregistration_delay.timeout_seconds", "Value": str(delay)}])
        members = wait_for("two healthy targets", lambda: len(h := healthy(elb, tg)) == 2 and h, HEALTHY_WAIT)
        gone, kept = sorted(members)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(http_get, url + "/slow", SLOWER) for _ in range(2)]
            time.sleep(0.5)
            started = time.monotonic()
            elb.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": gone}])
            assert time.monotonic() - started < ANSWERED_AT_ONCE
            assert _asked(elb, tg, gone) == DRAINING
            assert _states(elb, tg)[gone] == "draining"
            # New requests go to the other target only.
            assert pages(url, 4) == {f"v1 {kept}"}
            got = [a.result() for a in answers]
        return gone, kept, {(g[1].split()[1] if g and g[0] == 200 else "cut"): g for g in got}

    gone, kept, got = deregister_under_slow_requests(30)
    assert set(got) == {gone, kept}, got
    assert _asked(elb, tg, gone) == DRAINING  # its request answered; draining until the delay ends
    # Nothing registers it again (not its group either), and its instance runs on.
    time.sleep(2)
    assert _asked(elb, tg, gone) == DRAINING
    inst = ec2.describe_instances(InstanceIds=[gone])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "running"

    # Registered again while draining: a target again, from its first health check.
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": gone}])
    assert _asked(elb, tg, gone)["State"] == "initial"

    # A delay shorter than the request: the deregistered target's request is cut; the other answers.
    gone, kept, got = deregister_under_slow_requests(1)
    assert set(got) == {"cut", kept}, got
    assert got["cut"] == (502, "502 Bad Gateway\n"), got
    assert gone not in _states(elb, tg)
    assert _asked(elb, tg, gone) == {"State": "unused", "Reason": "Target.NotRegistered",
                                     "Description": "Target is not registered to the target group"}

    lab.client("autoscaling").delete_auto_scaling_group(AutoScalingGroupName="dereg-asg", ForceDelete=True)
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])


def test_every_way_out_of_a_group_drains_and_answers_at_once(lab, ec2, ubuntu_ami):
    """DetachInstances, TerminateInstanceInAutoScalingGroup (with and without decrementing the desired capacity)
    and UpdateAutoScalingGroup lowering MaxSize: each answers at once, and each instance leaving the group is
    deregistered from its target group (draining); a detached one runs on, a terminated one is Terminating
    until it is terminated; without a decrement the group launches a replacement."""
    elb, asg = lab.client("elbv2"), lab.client("autoscaling")
    stack = web_stack(lab, ec2, "leave", ubuntu_ami, SLOW_USER_DATA.format(page="v1"))
    tg, lb = stack["tg"], stack["lb"]
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": "30"}])
    asg.update_auto_scaling_group(AutoScalingGroupName="leave-asg", MinSize=0)

    def lifecycle() -> dict[str, str]:
        group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["leave-asg"])["AutoScalingGroups"][0]
        return {i["InstanceId"]: i["LifecycleState"] for i in group["Instances"]}

    def at_once(call, **kwargs):
        started = time.monotonic()
        call(**kwargs)
        assert time.monotonic() - started < ANSWERED_AT_ONCE

    def instance_state(iid: str) -> str:
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]

    a, b = wait_for("two healthy targets", lambda: len(h := healthy(elb, tg)) == 2 and sorted(h), HEALTHY_WAIT)

    # Detached (no decrement): draining, running on, not registered again; the group replaces it.
    at_once(asg.detach_instances, AutoScalingGroupName="leave-asg", InstanceIds=[a],
            ShouldDecrementDesiredCapacity=False)
    assert a not in lifecycle()
    assert _asked(elb, tg, a) == DRAINING
    # Terminated without a decrement, a request in flight on it (the only target left): Terminating and
    # draining at once, terminated once the request answered; replaced.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(http_get, f"http://{lb['DNSName']}/slow", SLOWER)
        time.sleep(0.5)
        at_once(asg.terminate_instance_in_auto_scaling_group, InstanceId=b, ShouldDecrementDesiredCapacity=False)
        assert lifecycle()[b] == "Terminating"
        assert _asked(elb, tg, b) == DRAINING
        assert answer.result() == (200, f"v1 {b}\n")
    activities = asg.describe_scaling_activities(AutoScalingGroupName="leave-asg")["Activities"]
    assert any(x["Description"] == f"Terminating EC2 instance: {b}"
               and "taken out of service in response to a user request." in x["Cause"] for x in activities)
    wait_for(f"{b} terminated", lambda: instance_state(b) in ("shutting-down", "terminated"), 20, 0.5)
    wait_for(f"{b} out of the group", lambda: b not in lifecycle(), 20, 0.5)
    assert instance_state(a) == "running" and _asked(elb, tg, a) == DRAINING
    kept = wait_for("two healthy replacements", lambda: len(h := healthy(elb, tg)) == 2 and h, HEALTHY_WAIT)
    assert not {a, b} & set(kept), kept
    assert asg.describe_auto_scaling_groups(AutoScalingGroupNames=["leave-asg"])[
        "AutoScalingGroups"][0]["DesiredCapacity"] == 2

    # A lower MaxSize: one instance Terminating and draining at once.
    at_once(asg.update_auto_scaling_group, AutoScalingGroupName="leave-asg", MaxSize=1)
    states = lifecycle()
    activities = asg.describe_scaling_activities(AutoScalingGroupName="leave-asg")["Activities"]
    picked = next(x["Description"].split(": ")[1] for x in activities
                  if "a user request update of AutoScalingGroup constraints" in x["Cause"])
    assert picked in kept and states.get(picked, "Terminating") == "Terminating", (picked, states)
    last = next(i for i in kept if i != picked)
    assert states[last] == "InService", states
    assert _asked(elb, tg, picked) == DRAINING

    # Terminated with a decrement: draining, desired capacity 0, nothing replaces it.
    at_once(asg.terminate_instance_in_auto_scaling_group, InstanceId=last, ShouldDecrementDesiredCapacity=True)
    assert _asked(elb, tg, last) == DRAINING
    wait_for("the group empty", lambda: not lifecycle(), 30, 0.5)
    time.sleep(2)  # a replacement would be launched by now
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["leave-asg"])["AutoScalingGroups"][0]
    assert group["DesiredCapacity"] == 0 and not group["Instances"], group

    asg.delete_auto_scaling_group(AutoScalingGroupName="leave-asg", ForceDelete=True)
    ec2.terminate_instances(InstanceIds=[a])
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
