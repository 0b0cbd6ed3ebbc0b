"""Security-group enforcement (opt-in): ingress rules decide what reaches an instance from the runner."""
import pytest

from conftest import http_get, launch, run_until_success, wait_state

NGINX = "#!/bin/sh\napt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx\n"


@pytest.fixture
def enforced(lab):
    lab.post("/_lab/security-groups", {"enforce": True})
    yield
    lab.post("/_lab/security-groups", {"enforce": False})


def test_ingress_rules_open_and_close_the_port(lab, ec2, ssm, debian_ami, enforced):
    vpc = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]
    sg = ec2.create_security_group(GroupName="web-sg", Description="web", VpcId=vpc)["GroupId"]
    iid = launch(ec2, debian_ami, UserData=NGINX, SecurityGroupIds=[sg])
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
