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
