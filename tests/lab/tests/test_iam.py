"""IAM enforced for the lab's one test user: its policy decides, with implied actions, resource ARNs and conditions;
each service denies in its own shape; every other key is served as before; what was judged is recorded."""
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from bake_lab.iam import evaluate
from conftest import REGION, subnet_id, wait_state

POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["ec2:Describe*", "ssm:GetParameter", "autoscaling:DescribeAutoScalingGroups"],
     "Resource": "*"},
    {"Effect": "Allow", "Action": "ec2:CreateSecurityGroup", "Resource": "*"},
    {"Effect": "Allow", "Action": "ec2:TerminateInstances", "Resource": "arn:aws:ec2:*:*:instance/*",
     "Condition": {"Null": {"aws:ResourceTag/bake:run-id": "false"}}},
]}


def as_user(lab, service: str, policy: dict):
    user = lab.post("/_lab/iam-user", {"name": "lab-test", "policy": policy})
    config = Config(retries={"mode": "standard", "max_attempts": 1})
    return boto3.client(service, endpoint_url=lab.endpoint, region_name=REGION, config=config,
                        aws_access_key_id=user["access_key_id"], aws_secret_access_key=user["secret_access_key"])


def test_the_policy_decides_for_the_user_only_and_each_service_denies_in_its_shape(lab, ec2):
    user_ec2 = as_user(lab, "ec2", POLICY)
    user_ec2.describe_vpcs()
    with pytest.raises(ClientError) as denied:
        user_ec2.create_vpc(CidrBlock="10.9.0.0/16")
    assert denied.value.response["Error"]["Code"] == "UnauthorizedOperation"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "ec2:CreateVpc" in denied.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as denied:
        as_user(lab, "elbv2", POLICY).describe_load_balancers()
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert "elasticloadbalancing:DescribeLoadBalancers" in denied.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as denied:
        as_user(lab, "ssm", POLICY).get_parameters_by_path(Path="/")
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    # Every other key is served as before.
    ec2.describe_vpcs()
    records = lab.get_lines("/_lab/iam")
    assert {"action": "ssm:GetParametersByPath", "allowed": False} in [
        {"action": r["action"], "allowed": r["allowed"]} for r in records]


def test_tag_on_create_needs_create_tags_and_terminate_needs_the_tag(lab, ec2, debian_ami):
    user_ec2 = as_user(lab, "ec2", POLICY)
    vpc = ec2.describe_subnets(SubnetIds=[subnet_id(ec2, "Public subnet A")])["Subnets"][0]["VpcId"]
    user_ec2.create_security_group(GroupName="iam-untagged", Description="d", VpcId=vpc)
    with pytest.raises(ClientError) as denied:
        user_ec2.create_security_group(GroupName="iam-tagged", Description="d", VpcId=vpc, TagSpecifications=[
            {"ResourceType": "security-group", "Tags": [{"Key": "k", "Value": "v"}]}])
    assert "ec2:CreateTags" in denied.value.response["Error"]["Message"]
    records = lab.get_lines("/_lab/iam")
    assert records[-1]["action"] == "ec2:CreateTags" and records[-1]["allowed"] is False

    tagged, untagged = (ec2.run_instances(
        ImageId=debian_ami, InstanceType="t3.micro", MinCount=1, MaxCount=1,
        SubnetId=subnet_id(ec2, "Public subnet A"),
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}] if tags else [],
    )["Instances"][0]["InstanceId"] for tags in ([{"Key": "bake:run-id", "Value": "r1"}], None))
    for instance in (tagged, untagged):  # known to EC2 (eventual consistency) before the user acts on them
        wait_state(ec2, instance, "running")
    with pytest.raises(ClientError) as denied:
        user_ec2.terminate_instances(InstanceIds=[untagged])
    assert "ec2:TerminateInstances" in denied.value.response["Error"]["Message"]
    user_ec2.terminate_instances(InstanceIds=[tagged])
    ec2.terminate_instances(InstanceIds=[untagged])


def test_evaluation_follows_iam_logic():
    allow = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::*:role/Builder",
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/bake/*"},
        {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"},
    ]}
    role = "arn:aws:iam::123456789012:role/Builder"
    assert evaluate(allow, "iam:PassRole", [role], {"iam:PassedToService": "ec2.amazonaws.com"})
    assert not evaluate(allow, "iam:PassRole", [role], {"iam:PassedToService": "lambda.amazonaws.com"})
    assert not evaluate(allow, "iam:PassRole", ["arn:aws:iam::123456789012:role/Other"],
                        {"iam:PassedToService": "ec2.amazonaws.com"})
    assert evaluate(allow, "s3:GetObject", ["arn:aws:s3:::b/bake/leases/web"], {})
    assert not evaluate(allow, "s3:GetObject", ["arn:aws:s3:::b/other"], {})
    assert not evaluate(allow, "s3:DeleteObject", ["arn:aws:s3:::b/bake/x"], {}), "an explicit deny wins"
    # An action evaluated on "*" (no resource-level permissions) is allowed only by Resource "*".
    assert not evaluate(allow, "s3:ListAllMyBuckets", ["*"], {})
