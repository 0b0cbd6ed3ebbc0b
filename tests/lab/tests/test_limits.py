"""Name, size and format rules AWS enforces and moto does not: client tokens, tags, load balancer and target group
names, SSM parameter names. A refused request creates nothing."""
import boto3
import pytest
from botocore.config import Config

from conftest import REGION, subnet_id


def vpc_id(ec2) -> str:
    return ec2.describe_subnets(SubnetIds=[subnet_id(ec2, "Public subnet A")])["Subnets"][0]["VpcId"]


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_a_client_token_of_65_characters_is_refused(ec2, debian_ami):
    before = len(ec2.describe_instances()["Reservations"])
    with pytest.raises(ec2.exceptions.ClientError) as refused:
        ec2.run_instances(ImageId=debian_ami, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                          SubnetId=subnet_id(ec2, "Public subnet A"), ClientToken="t" * 65)
    assert error_code(refused) == "InvalidParameterValue" and "64" in str(refused.value)
    assert len(ec2.describe_instances()["Reservations"]) == before
    with pytest.raises(ec2.exceptions.ClientError) as non_ascii:
        ec2.create_launch_template(LaunchTemplateName="lab-limits-token", ClientToken="jeton-é",
                                   LaunchTemplateData={"ImageId": debian_ami})
    assert error_code(non_ascii) == "InvalidParameterValue"
    made = ec2.create_launch_template(LaunchTemplateName="lab-limits-token", ClientToken="t" * 64,
                                      LaunchTemplateData={"ImageId": debian_ami})["LaunchTemplate"]
    ec2.delete_launch_template(LaunchTemplateId=made["LaunchTemplateId"])


def tagged_group(ec2, name: str, tags: list[dict]):
    return ec2.create_security_group(GroupName=name, Description="limits", VpcId=vpc_id(ec2),
                                     TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}])


@pytest.mark.parametrize("tags, code", [
    ([{"Key": f"k{i}", "Value": "v"} for i in range(51)], "TagLimitExceeded"),
    ([{"Key": "k" * 129, "Value": "v"}], "InvalidParameterValue"),
    ([{"Key": "k", "Value": "v" * 257}], "InvalidParameterValue"),
    ([{"Key": "aws:owner", "Value": "me"}], "InvalidParameterValue"),
    ([{"Key": "AWS:owner", "Value": "me"}], "InvalidParameterValue"),
])
def test_tags_over_the_limits_are_refused(ec2, tags, code):
    with pytest.raises(ec2.exceptions.ClientError) as refused:
        tagged_group(ec2, "lab-limits-refused", tags)
    assert error_code(refused) == code
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["lab-limits-refused"]}])[
        "SecurityGroups"]


def test_tags_at_the_limits_are_accepted_and_create_tags_is_checked_too(ec2):
    tags = [{"Key": f"{i:03d}" + "k" * 125, "Value": "v" * 256} for i in range(50)]
    group = tagged_group(ec2, "lab-limits-accepted", tags)["GroupId"]
    try:
        with pytest.raises(ec2.exceptions.ClientError) as reserved:
            ec2.create_tags(Resources=[group], Tags=[{"Key": "aws:cloudformation:stack-name", "Value": "x"}])
        assert error_code(reserved) == "InvalidParameterValue"
        found = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["Tags"]
        assert len(found) == 50
    finally:
        ec2.delete_security_group(GroupId=group)


@pytest.mark.parametrize("name", ["a" * 33, "-web", "web-", "web_alb", "internal-web"])
def test_load_balancer_names_aws_refuses(ec2, lab, name):
    elb = lab.client("elbv2")
    with pytest.raises(elb.exceptions.ClientError) as refused:
        elb.create_load_balancer(Name=name, Subnets=[subnet_id(ec2, "Public subnet A"),
                                                     subnet_id(ec2, "Public subnet C")])
    assert error_code(refused) == "ValidationError"
    assert name not in [lb["LoadBalancerName"] for lb in elb.describe_load_balancers()["LoadBalancers"]]


@pytest.mark.parametrize("name", ["t" * 33, "-tg", "tg-", "tg.1"])
def test_target_group_names_aws_refuses(ec2, lab, name):
    elb = lab.client("elbv2")
    with pytest.raises(elb.exceptions.ClientError) as refused:
        elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc_id(ec2))
    assert error_code(refused) == "ValidationError"


def test_a_32_character_target_group_name_is_accepted(ec2, lab):
    elb = lab.client("elbv2")
    arn = elb.create_target_group(Name="t" * 32, Protocol="HTTP", Port=80, VpcId=vpc_id(ec2))[
        "TargetGroups"][0]["TargetGroupArn"]
    elb.delete_target_group(TargetGroupArn=arn)


@pytest.mark.parametrize("name, code", [
    ("/bake/web app/ami-id", "ValidationException"),
    ("/bake/web:app", "ValidationException"),
    ("bake/web/ami-id", "ValidationException"),
    ("/" + "/".join(f"l{i}" for i in range(16)), "HierarchyLevelLimitExceededException"),
    ("/" + "n" * 1000, "ValidationException"),
    ("/ssm/mine", "ValidationException"),
])
def test_parameter_names_aws_refuses(ssm, name, code):
    with pytest.raises(ssm.exceptions.ClientError) as refused:
        ssm.put_parameter(Name=name, Value="v", Type="String")
    assert error_code(refused) == code
    with pytest.raises(ssm.exceptions.ClientError):  # ParameterNotFound, or a refusal of the name itself
        ssm.get_parameter(Name=name)


def test_parameter_names_at_the_limits_are_accepted(ssm):
    deep = "/" + "/".join(f"l{i}" for i in range(15))
    for name in (deep, "/bake/web_app-1.2/ami-id", "plain.name-1_x"):
        ssm.put_parameter(Name=name, Value="v", Type="String")
        assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == "v"
        ssm.delete_parameter(Name=name)


def test_parameter_labels_follow_awss_rules_and_move_between_versions(ssm):
    name = "/lab/limits/labels"
    ssm.put_parameter(Name=name, Value="one", Type="String")
    ssm.put_parameter(Name=name, Value="two", Type="String", Overwrite=True)
    # Reserved prefixes in any case, a leading digit or a space: not attached, answered in InvalidLabels.
    refused = ssm.label_parameter_version(Name=name, ParameterVersion=1,
                                          Labels=["tested", "AWSlabel", "Ssm-x", "9lives", "has space"])
    assert sorted(refused["InvalidLabels"]) == ["9lives", "AWSlabel", "Ssm-x", "has space"]
    history = {p["Version"]: p.get("Labels", []) for p in ssm.get_parameter_history(Name=name)["Parameters"]}
    assert history == {1: ["tested"], 2: []}
    # A label on another version moves (one version holds it at a time).
    ssm.label_parameter_version(Name=name, ParameterVersion=2, Labels=["tested"])
    history = {p["Version"]: p.get("Labels", []) for p in ssm.get_parameter_history(Name=name)["Parameters"]}
    assert history == {1: [], 2: ["tested"]}
    assert ssm.get_parameter(Name=f"{name}:tested")["Parameter"]["Value"] == "two"
    # At most 10 labels on a version.
    ssm.label_parameter_version(Name=name, ParameterVersion=2, Labels=[f"l{i}" for i in range(9)])
    with pytest.raises(ssm.exceptions.ClientError) as full:
        ssm.label_parameter_version(Name=name, ParameterVersion=2, Labels=["eleventh"])
    assert error_code(full) == "ParameterVersionLabelLimitExceeded"
    with pytest.raises(ssm.exceptions.ClientError) as long:
        ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=["l" * 101])
    assert error_code(long) == "ValidationException"
    ssm.delete_parameter(Name=name)


def unchecked(lab, service: str):
    """A client without boto3's own parameter checks, so the request reaches the lab."""
    return boto3.client(service, endpoint_url=lab.endpoint, region_name=REGION, aws_access_key_id="AKIDLABTEST",
                        aws_secret_access_key="secret", config=Config(parameter_validation=False))


def test_send_command_timeout_seconds_below_30_is_refused(lab, ssm):
    """boto3 checks the 30 s minimum itself; without that check the lab refuses it as SSM does."""
    raw = unchecked(lab, "ssm")
    with pytest.raises(raw.exceptions.ClientError) as refused:
        raw.send_command(InstanceIds=["i-0123456789abcdef0"], DocumentName="AWS-RunShellScript", TimeoutSeconds=5,
                         Parameters={"commands": ["true"]})
    assert error_code(refused) == "ValidationException" and "timeoutSeconds" in str(refused.value)


def test_launch_templates_are_listed_in_pages_of_max_results_with_a_next_token(lab, ec2, debian_ami):
    # More templates than moto's unasked-for cut of 15: one answer without MaxResults, pages of 5 with it.
    made = [ec2.create_launch_template(
        LaunchTemplateName=f"lab-limits-page-{i:02}", LaunchTemplateData={"ImageId": debian_ami},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": "lab-limits", "Value": "page"}]}],
    )["LaunchTemplate"]["LaunchTemplateId"] for i in range(17)]
    mine = [{"Name": "tag:lab-limits", "Values": ["page"]}]
    try:
        whole = ec2.describe_launch_templates(Filters=mine)
        assert sorted(t["LaunchTemplateId"] for t in whole["LaunchTemplates"]) == sorted(made)
        assert "NextToken" not in whole
        pages, token = [], None
        for _ in range(10):
            page = ec2.describe_launch_templates(Filters=mine, MaxResults=5, **({"NextToken": token} if token else {}))
            pages.append([t["LaunchTemplateId"] for t in page["LaunchTemplates"]])
            token = page.get("NextToken")
            if token is None:
                break
        assert [len(p) for p in pages] == [5, 5, 5, 2]
        assert sorted(sum(pages, [])) == sorted(made)
        raw = unchecked(lab, "ec2")
        for limit in (0, 201):
            with pytest.raises(raw.exceptions.ClientError) as refused:
                raw.describe_launch_templates(MaxResults=limit)
            assert error_code(refused) == "InvalidParameterValue" and "200" in str(refused.value)
        with pytest.raises(ec2.exceptions.ClientError) as stale:
            ec2.describe_launch_templates(MaxResults=5, NextToken="not-a-token")
        assert error_code(stale) == "InvalidPaginationToken"
    finally:
        for template in made:
            ec2.delete_launch_template(LaunchTemplateId=template)
