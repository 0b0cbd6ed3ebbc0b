"""Security-group enforcement (opt-in): ingress rules decide what reaches an instance or a load
balancer, from the runner and from a load balancer's proxy and health checks."""
import pytest

from conftest import PAGE_USER_DATA, http_get, launch, run_until_success, subnet_id, wait_for, wait_state

NGINX = "#!/bin/sh\napt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx\n"


@pytest.fixture
def enforced(lab):
    lab.post("/_lab/security-groups", {"enforce": True})
    yield
    lab.post("/_lab/security-groups", {"enforce": False})


def test_ingress_rules_open_and_close_the_port(lab, ec2, ssm, ubuntu_ami, enforced):
    vpc = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]
    sg = ec2.create_security_group(GroupName="web-sg", Description="web", VpcId=vpc)["GroupId"]
    iid = launch(ec2, ubuntu_ami, UserData=NGINX, SecurityGroupIds=[sg])
    try:
        ip = wait_state(ec2, iid, "running")["PublicIpAddress"]
        run_until_success(ssm, iid, ["systemctl is-active nginx"], "nginx installed by user data")
        assert http_get(f"http://{ip}/", timeout=1) is None
        mine = lab.request("/_lab/checkip").strip() + "/32"
        rule = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": mine}]}]
        ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=rule)
        assert http_get(f"http://{ip}/")[0] == 200
        ec2.revoke_security_group_ingress(GroupId=sg, IpPermissions=rule)
        assert http_get(f"http://{ip}/", timeout=1) is None
        lab.post("/_lab/security-groups", {"enforce": False})
        assert http_get(f"http://{ip}/")[0] == 200
    finally:
        ec2.terminate_instances(InstanceIds=[iid])
        wait_state(ec2, iid, "terminated")


def target_state(elb, tg: str, iid: str) -> dict | None:
    for d in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]:
        if d["Target"]["Id"] == iid:
            return d["TargetHealth"]
    return None


def test_only_the_balancers_group_reaches_the_instance_and_only_allowed_clients_the_balancer(
        lab, ec2, ssm, ubuntu_ami, enforced):
    elb = lab.client("elbv2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]
    app_sg = ec2.create_security_group(GroupName="app-sg", Description="app", VpcId=vpc)["GroupId"]
    alb_sg = ec2.create_security_group(GroupName="alb-sg", Description="alb", VpcId=vpc)["GroupId"]
    mine = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
             "IpRanges": [{"CidrIp": lab.request("/_lab/checkip").strip() + "/32"}]}]
    ec2.authorize_security_group_ingress(GroupId=alb_sg, IpPermissions=mine)
    iid = launch(ec2, ubuntu_ami, UserData=PAGE_USER_DATA.format(page="app"), SecurityGroupIds=[app_sg])
    tg = elb.create_target_group(Name="sg-tg", Protocol="HTTP", Port=80, VpcId=vpc, HealthCheckPath="/",
                                 HealthyThresholdCount=2, UnhealthyThresholdCount=2)["TargetGroups"][0]["TargetGroupArn"]
    lb = elb.create_load_balancer(Name="sg-alb", SecurityGroups=[alb_sg],
                                  Subnets=[subnet_id(ec2, "Public subnet A"),
                                           subnet_id(ec2, "Public subnet C")])["LoadBalancers"][0]
    try:
        elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
        ip = wait_state(ec2, iid, "running")["PublicIpAddress"]
        elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": iid, "Port": 80}])
        url = f"http://{lb['DNSName']}/"

        # The app's group admits nothing: the balancer's checks time out, as on AWS.
        state = wait_for("the target unhealthy", lambda: (t := target_state(elb, tg, iid)) and
                         t["State"] == "unhealthy" and t, 60)
        assert state["Reason"] == "Target.Timeout", state
        assert http_get(url)[0] == 503

        # A rule naming the balancer's group lets its checks and its traffic in, and nobody else's.
        from_alb = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "UserIdGroupPairs": [{"GroupId": alb_sg}]}]
        ec2.authorize_security_group_ingress(GroupId=app_sg, IpPermissions=from_alb)
        wait_for("the target healthy", lambda: target_state(elb, tg, iid)["State"] == "healthy", 60)
        assert http_get(url) == (200, f"app {iid}\n")
        assert http_get(f"http://{ip}/", timeout=1) is None, "the runner is not in the balancer's group"

        # Without the runner's rule the balancer itself is closed to it.
        ec2.revoke_security_group_ingress(GroupId=alb_sg, IpPermissions=mine)
        assert http_get(url, timeout=1) is None
    finally:
        elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
        ec2.terminate_instances(InstanceIds=[iid])
        wait_state(ec2, iid, "terminated")
        elb.delete_target_group(TargetGroupArn=tg)
