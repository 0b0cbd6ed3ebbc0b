"""The SSM agent and the instance network as AWS documents them: Debian ships no agent, the agent comes
from its S3 download locations through the VPC resolver and HTTPS, and Online needs the agent running,
a profile and a network path to SSM (internet gateway, NAT gateway or the three interface endpoints)."""
import hashlib
import subprocess
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import (
    AGENT_WAIT,
    REGION,
    UBUNTU_PARAMETER,
    USER_DATA_WAIT,
    container,
    launch,
    run_command,
    run_until_success,
    wait_for,
    wait_state,
)

REGIONAL_URL = f"https://s3.{REGION}.amazonaws.com/amazon-ssm-{REGION}/latest/debian_amd64/amazon-ssm-agent.deb"
GLOBAL_URL = "https://s3.amazonaws.com/ec2-downloads-windows/SSMAgent/latest/debian_amd64/amazon-ssm-agent.deb"
# As AWS's manual install for Debian: the region from IMDSv2, the regional package, dpkg, enable and start.
INSTALL_AGENT = """#!/bin/sh
set -eu
token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
region=$(curl -sf -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/placement/region)
curl -fsS -o /tmp/amazon-ssm-agent.deb \
  "https://s3.$region.amazonaws.com/amazon-ssm-$region/latest/debian_amd64/amazon-ssm-agent.deb"
dpkg -i /tmp/amazon-ssm-agent.deb
systemctl enable --now amazon-ssm-agent
"""
# Long enough after boot for an agent (if any) to have registered: ssm_online is 2 s, the watch polls each 0.5 s.
SETTLE = 4


def ping(ssm, instance_id: str) -> str | None:
    rows = ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])["InstanceInformationList"]
    return rows[0]["PingStatus"] if rows else None


def unit_active(lab, instance_id: str) -> bool:
    """Whether amazon-ssm-agent runs inside the instance, asked of its systemd directly (not through SSM)."""
    pid = container(lab, instance_id)["leader_pid"]
    out = subprocess.run(["nsenter", "-t", str(pid), "-m", "-p", "--", "systemctl", "is-active", "amazon-ssm-agent"],
                         capture_output=True, text=True, timeout=10).stdout
    return out.strip() == "active"


def curl_inside(lab, instance_id: str, url: str) -> subprocess.CompletedProcess:
    """curl url from inside the instance (its network, resolver and trust store), not through SSM."""
    pid = container(lab, instance_id)["leader_pid"]
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "-p", "--", "curl", "-sS", "-m", "5", "-o",
                           "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True, timeout=20)


def ssm_events(lab, instance_id: str) -> list[dict]:
    return [e for e in lab.get_lines("/_lab/events") if e["event"] == "ssm_online" and e["instance_id"] == instance_id]


def refused(ssm, instance_id: str) -> str:
    with pytest.raises(ClientError) as e:
        ssm.send_command(InstanceIds=[instance_id], DocumentName="AWS-RunShellScript",
                         Parameters={"commands": ["true"]})
    return e.value.response["Error"]["Code"]


@pytest.fixture
def cleanup(ec2):
    ids = []
    yield ids
    if ids:
        ec2.terminate_instances(InstanceIds=ids)


def test_debian_has_no_agent_and_is_never_online_until_user_data_installs_it(lab, ec2, ssm, debian_ami, cleanup):
    plain = launch(ec2, debian_ami)
    installed = launch(ec2, debian_ami, UserData=INSTALL_AGENT)
    cleanup += [plain, installed]
    wait_for(f"{installed} Online", lambda: ping(ssm, installed) == "Online", USER_DATA_WAIT)
    assert unit_active(lab, installed)
    assert ssm_events(lab, installed)[0]["path"] == "internet gateway"
    out = run_command(ssm, installed, ["dpkg-query -W -f '${Status} ${Version}' amazon-ssm-agent",
                                       "systemctl is-enabled amazon-ssm-agent"])
    assert out["StandardOutputContent"] == "install ok installed 3.3.0.0-lab1enabled\n"
    # The plain one booted as long ago, has the same profile and subnet, and no agent: never Online.
    wait_state(ec2, plain, "running")
    time.sleep(SETTLE)
    assert not unit_active(lab, plain)
    assert ping(ssm, plain) is None and not ssm_events(lab, plain)
    assert refused(ssm, plain) == "InvalidInstanceId"


def test_the_agent_downloads_from_both_documented_urls_through_the_vpc_resolver(lab, ec2, ssm, ubuntu_ami, cleanup):
    iid = launch(ec2, ubuntu_ami)
    cleanup.append(iid)
    service = lab.info["service_address"]
    out = run_until_success(ssm, iid, [
        "cat /etc/resolv.conf",
        f"getent hosts s3.{REGION}.amazonaws.com s3.amazonaws.com ssm.{REGION}.amazonaws.com",
        "getent hosts $(hostname)",
        f"curl -fsS {REGIONAL_URL} | sha256sum", f"curl -fsS {GLOBAL_URL} | sha256sum",
        "getent ahostsv4 deb.debian.org | head -n 1",  # not AWS's: the host's resolver answers it
    ], "the agent's package from inside")["StandardOutputContent"].splitlines()
    assert out[:2] == ["# AmazonProvidedDNS (the bake lab's VPC resolver)", "nameserver 10.0.0.2"]
    assert [line.split()[0] for line in out[3:6]] == [service] * 3
    private_ip = container(lab, iid)["private_ip"]
    assert out[6].split()[0] == private_ip  # ip-A-B-C-D.REGION.compute.internal from the resolver
    deb = hashlib.sha256(boto3.client(
        "s3", endpoint_url=lab.endpoint, region_name=REGION, aws_access_key_id="AKIDLABTEST",
        aws_secret_access_key="secret").get_object(
        Bucket=f"amazon-ssm-{REGION}", Key="latest/debian_amd64/amazon-ssm-agent.deb")["Body"].read()).hexdigest()
    assert out[7].split()[0] == out[8].split()[0] == deb
    assert out[9].split()[0] != service and lab.get_json("/_lab/info")["dns"]["forwarded"] >= 1


def test_presigned_urls_work_from_instances_and_private_objects_do_not(lab, ec2, ssm, ubuntu_ami, cleanup):
    s3 = lab.client("s3")
    s3.create_bucket(Bucket="bake-lab-app", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="bake-lab-app", Key="app/index.php", Body=b"<?php echo 'hi';\n")
    # Signed for the real endpoint (no request is made to sign): the instance resolves it to the lab.
    real = boto3.client("s3", region_name=REGION, aws_access_key_id="AKIDLABTEST", aws_secret_access_key="secret",
                        config=Config(signature_version="s3v4"))
    url = real.generate_presigned_url("get_object", Params={"Bucket": "bake-lab-app", "Key": "app/index.php"},
                                      ExpiresIn=600)
    assert url.startswith("https://bake-lab-app.s3.") and ".amazonaws.com/app/index.php?" in url, url
    plain = f"https://s3.{REGION}.amazonaws.com/bake-lab-app/app/index.php"
    iid = launch(ec2, ubuntu_ami)
    cleanup.append(iid)
    out = run_until_success(ssm, iid, [f"curl -fsS '{url}'", f"curl -s -o /dev/null -w '%{{http_code}}' {plain}"],
                            "a pre-signed GET from inside")["StandardOutputContent"]
    assert out == "<?php echo 'hi';\n403"
    s3.delete_object(Bucket="bake-lab-app", Key="app/index.php")
    s3.delete_bucket(Bucket="bake-lab-app")


def test_the_agent_family_is_published_as_canonical_does_and_online_without_user_data(lab, ec2, ssm, ubuntu_ami,
                                                                                        cleanup):
    image = ec2.describe_images(ImageIds=[ubuntu_ami])["Images"][0]
    assert image["OwnerId"] == "099720109477" and image["Name"].startswith(
        "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-")
    noble = ssm.get_parameter(Name=UBUNTU_PARAMETER.replace("/24.04/", "/noble/"))["Parameter"]["Value"]
    assert noble == ubuntu_ami
    with_profile, without = launch(ec2, ubuntu_ami, subnet="Private subnet A"), launch(ec2, ubuntu_ami, profile=False)
    cleanup += [with_profile, without]
    wait_for(f"{with_profile} Online", lambda: ping(ssm, with_profile) == "Online", AGENT_WAIT)
    assert ssm_events(lab, with_profile)[0]["path"] == "nat gateway"
    wait_state(ec2, without, "running")
    time.sleep(SETTLE)
    assert unit_active(lab, without) and ping(ssm, without) is None
    assert refused(ssm, without) == "InvalidInstanceId"


def test_a_stopped_agent_is_connection_lost_and_gets_no_commands(lab, ec2, ssm, ubuntu_ami, cleanup):
    """SSM still takes a command for a managed node whose agent is gone, but nothing runs it: it stays
    Pending (until its delivery timeout) rather than reaching the instance."""
    iid = launch(ec2, ubuntu_ami)
    cleanup.append(iid)
    wait_for(f"{iid} Online", lambda: ping(ssm, iid) == "Online", AGENT_WAIT)
    assert run_command(ssm, iid, ["systemctl stop amazon-ssm-agent"])["Status"] == "Success"
    wait_for(f"{iid} ConnectionLost", lambda: ping(ssm, iid) == "ConnectionLost", 10)
    command = ssm.send_command(InstanceIds=[iid], DocumentName="AWS-RunShellScript", TimeoutSeconds=30,
                               Parameters={"commands": ["touch /root/ran"]})["Command"]["CommandId"]
    time.sleep(SETTLE)
    assert ssm.get_command_invocation(CommandId=command, InstanceId=iid)["Status"] == "Pending"
    pid = container(lab, iid)["leader_pid"]
    ran = subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "test", "-e", "/root/ran"], timeout=10)
    assert ran.returncode == 1


def test_no_path_to_ssm_until_interface_endpoints_admit_https(lab, ec2, ssm, ubuntu_ami, cleanup):
    """An isolated subnet (no internet or NAT route) with the agent running: never Online, and no AWS
    endpoint answers it; the ssm, ssmmessages and ec2messages interface endpoints with private DNS and
    443 admitted make it Online (S3 still needs its own endpoint: a gateway endpoint on its route table)."""
    vpc = lab.get_json("/_lab/info")["network"]["vpc"]  # this lab's now (a reset remakes the network)
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.77.0/24", AvailabilityZone=REGION + "a")["Subnet"]["SubnetId"]
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    association = ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)["AssociationId"]
    endpoint_sg = ec2.create_security_group(GroupName="ssm-endpoints", Description="HTTPS from the VPC",
                                           VpcId=vpc)["GroupId"]
    iid = ec2.run_instances(ImageId=ubuntu_ami, MinCount=1, MaxCount=1, InstanceType="t3.micro", SubnetId=subnet,
                            IamInstanceProfile={"Name": "SSMInstanceProfile"})["Instances"][0]["InstanceId"]
    cleanup.append(iid)
    endpoints = []
    try:
        wait_state(ec2, iid, "running")
        wait_for("the agent running", lambda: unit_active(lab, iid), AGENT_WAIT)
        time.sleep(SETTLE)
        assert ping(ssm, iid) is None and refused(ssm, iid) == "InvalidInstanceId"
        ssm_url = f"https://ssm.{REGION}.amazonaws.com/"
        assert curl_inside(lab, iid, ssm_url).returncode != 0, "no route to SSM's endpoint"
        assert curl_inside(lab, iid, REGIONAL_URL).returncode != 0, "nor to S3's"
        for service in ("ssm", "ssmmessages", "ec2messages"):
            endpoints.append(ec2.create_vpc_endpoint(
                VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.{service}", VpcEndpointType="Interface",
                SubnetIds=[subnet], SecurityGroupIds=[endpoint_sg],
                PrivateDnsEnabled=True)["VpcEndpoint"]["VpcEndpointId"])
        time.sleep(SETTLE)
        assert ping(ssm, iid) is None, "the endpoints' group admits nothing yet"
        ec2.authorize_security_group_ingress(GroupId=endpoint_sg, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}])
        wait_for(f"{iid} Online through the endpoints", lambda: ping(ssm, iid) == "Online", AGENT_WAIT)
        assert ssm_events(lab, iid)[0]["path"] == "vpc endpoints"
        assert curl_inside(lab, iid, ssm_url).returncode == 0, "SSM's endpoint answers through the endpoint"
        assert curl_inside(lab, iid, REGIONAL_URL).returncode != 0, "S3 still needs an endpoint of its own"
        endpoints.append(ec2.create_vpc_endpoint(VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.s3",
                                                 VpcEndpointType="Gateway", RouteTableIds=[table])
                         ["VpcEndpoint"]["VpcEndpointId"])
        assert curl_inside(lab, iid, REGIONAL_URL).stdout == "200", "S3 through its gateway endpoint"
        assert run_command(ssm, iid, ["echo reached"])["StandardOutputContent"] == "reached\n"
    finally:
        ec2.terminate_instances(InstanceIds=[iid])
        wait_state(ec2, iid, "terminated")
        if endpoints:
            ec2.delete_vpc_endpoints(VpcEndpointIds=endpoints)
        ec2.delete_security_group(GroupId=endpoint_sg)
        ec2.disassociate_route_table(AssociationId=association)
        ec2.delete_route_table(RouteTableId=table)
        ec2.delete_subnet(SubnetId=subnet)


def test_default_vpcs_route_to_an_internet_gateway(lab, ec2, ssm, ubuntu_ami, cleanup):
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    igws = ec2.describe_internet_gateways(
        Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}])["InternetGateways"]
    assert len(igws) == 1
    main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]},
                                              {"Name": "association.main", "Values": ["true"]}])["RouteTables"][0]
    assert {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": igws[0]["InternetGatewayId"]}.items() <= \
        next(r for r in main["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0").items()
    # An instance in a default subnet (public IP on launch) reaches SSM through that gateway.
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]},
                                           {"Name": "default-for-az", "Values": ["true"]}])["Subnets"][0]
    iid = launch(ec2, ubuntu_ami, subnet=None, SubnetId=subnet["SubnetId"])
    cleanup.append(iid)
    wait_for(f"{iid} Online", lambda: ping(ssm, iid) == "Online", AGENT_WAIT)
    assert ssm_events(lab, iid)[0]["path"] == "internet gateway"
    resolver = run_command(ssm, iid, ["grep nameserver /etc/resolv.conf"])["StandardOutputContent"]
    assert resolver == "nameserver 172.31.0.2\n"
