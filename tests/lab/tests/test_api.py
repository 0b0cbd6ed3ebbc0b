"""The lab's API surface: bootstrap contents, protocols on one port, control endpoints, faults, request log."""
import re
import subprocess
import time

import boto3
import botocore.exceptions
import pytest

from conftest import REGION, describe, launch, subnet_id, wait_state


def test_sts_returns_moto_account(lab):
    assert lab.client("sts").get_caller_identity()["Account"] == "123456789012"


def test_workshop_network_is_there(ec2):
    vpc = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"]
    assert [v["CidrBlock"] for v in vpc] == ["10.0.0.0/16"]
    subnets = {next(t["Value"] for t in s["Tags"] if t["Key"] == "Name"): s
               for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc[0]["VpcId"]]}])["Subnets"]}
    expect = {"Public subnet A": ("10.0.10.0/24", "a", True), "Public subnet C": ("10.0.20.0/24", "c", True),
              "Private subnet A": ("10.0.100.0/24", "a", False), "Private subnet C": ("10.0.200.0/24", "c", False)}
    for name, (cidr, zone, public) in expect.items():
        s = subnets[name]
        assert (s["CidrBlock"], s["AvailabilityZone"], s["MapPublicIpOnLaunch"]) == (cidr, REGION + zone, public)
        rt = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [s["SubnetId"]]}])
        default = [r for r in rt["RouteTables"][0]["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"][0]
        assert default.get("GatewayId", "").startswith("igw-") if public else default["NatGatewayId"].startswith("nat-")


def test_ssm_instance_profile_has_the_ssm_core_policy(lab):
    iam = lab.client("iam")
    profile = iam.get_instance_profile(InstanceProfileName="SSMInstanceProfile")["InstanceProfile"]
    role = profile["Roles"][0]["RoleName"]
    policies = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
    assert "AmazonSSMManagedInstanceCore" in [p["PolicyName"] for p in policies]


@pytest.mark.parametrize("region", ["ap-northeast-2", "us-east-1"])
def test_debian_ami_is_published_as_debian_does(lab, region):
    ec2, ssm = lab.client("ec2", region), lab.client("ssm", region)
    ami = ssm.get_parameter(Name="/aws/service/debian/release/bookworm/latest/amd64")["Parameter"]["Value"]
    found = ec2.describe_images(Owners=["136693071363"],
                                Filters=[{"Name": "name", "Values": ["debian-12-amd64-*"]}])["Images"]
    assert [i["ImageId"] for i in found] == [ami]
    assert re.fullmatch(r"debian-12-amd64-\d{8}-\d+", found[0]["Name"])
    assert found[0]["Public"] is True and found[0]["State"] == "available"


def test_checkip_answers_one_line_with_the_hosts_lab_address(lab):
    body = lab.request("/_lab/checkip")
    assert body.endswith("\n") and body.count("\n") == 1
    assert body.strip() == lab.info["checkip"] and body.startswith("100.127.")


def test_requests_log_records_each_call_with_status(lab, ec2, ssm):
    since = time.time()
    ec2.describe_vpcs()
    with pytest.raises(botocore.exceptions.ClientError):
        ssm.get_parameter(Name="/no/such/parameter")
    rows = [r for r in lab.get_lines("/_lab/requests") if r["time"] >= since]
    assert [(r["service"], r["action"], r["status"], r["fault"]) for r in rows] == [
        ("ec2", "DescribeVpcs", 200, False), ("ssm", "GetParameter", 400, False)]


def test_requests_log_records_the_access_key_each_call_was_signed_with(lab):
    since = time.time()
    other = boto3.client("ec2", endpoint_url=lab.endpoint, region_name=REGION,
                         aws_access_key_id="AKIDOTHERKEY", aws_secret_access_key="secret")
    lab.client("ec2").describe_vpcs()
    other.describe_vpcs()
    rows = [r for r in lab.get_lines("/_lab/requests") if r["time"] >= since]
    assert [(r["action"], r["access_key"]) for r in rows] == [
        ("DescribeVpcs", "AKIDLABTEST"), ("DescribeVpcs", "AKIDOTHERKEY")]


def test_throttle_faults_answer_in_each_protocols_format(lab):
    no_retry = {"mode": "standard", "max_attempts": 1}
    lab.post("/_lab/faults", {"rate": 1.0, "kind": "throttle"})
    try:
        cases = [(lab.client("ec2", retries=no_retry).describe_vpcs, "RequestLimitExceeded", 503),
                 (lab.client("ssm", retries=no_retry).describe_instance_information, "ThrottlingException", 400),
                 (lab.client("iam", retries=no_retry).list_roles, "Throttling", 400),
                 (lab.client("sts", retries=no_retry).get_caller_identity, "Throttling", 400)]
        for call, code, status in cases:
            with pytest.raises(botocore.exceptions.ClientError) as err:
                call()
            assert err.value.response["Error"]["Code"] == code
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    finally:
        lab.post("/_lab/faults", {"rate": 0})
    lab.client("ec2", retries=no_retry).describe_vpcs()


def test_5xx_faults_hit_only_the_named_services(lab):
    no_retry = {"mode": "standard", "max_attempts": 1}
    lab.post("/_lab/faults", {"rate": 1.0, "kind": "5xx", "services": ["ssm"]})
    try:
        with pytest.raises(botocore.exceptions.ClientError) as err:
            lab.client("ssm", retries=no_retry).describe_instance_information()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        lab.client("ec2", retries=no_retry).describe_vpcs()
    finally:
        lab.post("/_lab/faults", {"rate": 0})
    faulted = [r for r in lab.get_lines("/_lab/requests") if r["fault"]]
    assert faulted[-1]["service"] == "ssm" and faulted[-1]["status"] == 503


def test_standard_retries_get_through_partial_throttling(lab):
    lab.post("/_lab/faults", {"rate": 0.3, "kind": "throttle", "services": ["ec2"], "seed": 7})
    since = time.time()
    try:
        ec2 = lab.client("ec2", retries={"mode": "standard", "max_attempts": 10})
        for _ in range(20):
            ec2.describe_vpcs()
    finally:
        lab.post("/_lab/faults", {"rate": 0})
    rows = [r for r in lab.get_lines("/_lab/requests") if r["time"] >= since and r["service"] == "ec2"]
    throttled = [r for r in rows if r["fault"]]
    assert len(rows) - len(throttled) == 20
    assert throttled and all(r["status"] == 503 for r in throttled)


def test_latency_holds_an_instance_pending(lab, ec2, debian_ami):
    lab.post("/_lab/latency", {"instance_running": 4})
    try:
        started = time.time()
        iid = launch(ec2, debian_ami, profile=False)
        time.sleep(2)  # past the ~1 s real boot, still inside the 4 s latency
        assert describe(ec2, iid)["State"]["Name"] == "pending"
        wait_state(ec2, iid, "running")
        assert time.time() - started >= 4
    finally:
        lab.post("/_lab/latency", {"instance_running": 0})
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")


def test_terminating_an_instance_again_succeeds_while_it_shuts_down_and_once_it_is_gone(ec2, debian_ami):
    iid = launch(ec2, debian_ami, profile=False)
    wait_state(ec2, iid, "running")
    first = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert first["PreviousState"]["Name"] == "running"
    again = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert again["PreviousState"]["Name"] in ("shutting-down", "terminated"), again
    wait_state(ec2, iid, "terminated")
    last = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert last["PreviousState"]["Name"] == "terminated", last
    assert describe(ec2, iid)["State"]["Name"] == "terminated"


def test_reset_removes_containers_and_rebuilds_the_lab(lab, ec2, debian_ami):
    iid = launch(ec2, debian_ami, profile=False)
    wait_state(ec2, iid, "running")
    ec2.create_vpc(CidrBlock="10.9.0.0/16")
    lab.post("/_lab/latency", {"image_available": 9})
    lab.post("/_lab/reset")
    assert lab.get_json("/_lab/containers") == []
    assert lab.get_lines("/_lab/requests") == [] and lab.get_lines("/_lab/events") == []
    assert lab.get_json("/_lab/latency")["image_available"] == 1.0
    cidrs = sorted(v["CidrBlock"] for v in ec2.describe_vpcs()["Vpcs"])
    assert cidrs == ["10.0.0.0/16", "10.20.0.0/16", "172.31.0.0/16"]  # VPC-Lab, My-VPC, the default VPC
    assert subnet_id(ec2, "Public subnet A")
    assert lab.client("iam").get_instance_profile(InstanceProfileName="SSMInstanceProfile")
    assert iid not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_several_fault_rules_apply_together(lab):
    lab.post("/_lab/faults", {"rules": [{"rate": 1.0, "kind": "throttle", "services": ["ssm"]},
                                        {"rate": 1.0, "kind": "5xx", "services": ["ec2"]}]})
    since = time.time()
    no_retry = {"mode": "standard", "max_attempts": 1}
    try:
        with pytest.raises(botocore.exceptions.ClientError):
            lab.client("ssm", retries=no_retry).describe_instance_information()
        with pytest.raises(botocore.exceptions.ClientError):
            lab.client("ec2", retries=no_retry).describe_vpcs()
    finally:
        lab.post("/_lab/faults", {"rate": 0})
    kinds = {r["service"]: r["fault_kind"] for r in lab.get_lines("/_lab/requests") if r["time"] >= since}
    assert kinds == {"ssm": "throttle", "ec2": "5xx"}


def test_image_deprecation_is_kept_to_the_minute_and_can_be_lifted(ec2):
    ami = ec2.register_image(Name="deprecation-check", RootDeviceName="/dev/xvda")["ImageId"]
    try:
        ec2.enable_image_deprecation(ImageId=ami, DeprecateAt="2031-03-04T05:06:40Z")
        assert ec2.describe_images(ImageIds=[ami])["Images"][0]["DeprecationTime"] == "2031-03-04T05:07:00.000Z"
        ec2.disable_image_deprecation(ImageId=ami)
        assert "DeprecationTime" not in ec2.describe_images(ImageIds=[ami])["Images"][0]
        # AMI names are unique per account and region, for RegisterImage as for CreateImage.
        with pytest.raises(botocore.exceptions.ClientError, match="InvalidAMIName.Duplicate"):
            ec2.register_image(Name="deprecation-check", RootDeviceName="/dev/xvda")
    finally:
        ec2.deregister_image(ImageId=ami)
