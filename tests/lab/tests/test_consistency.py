"""Eventual consistency and teardown lags at the lab's defaults, and throttle bursts: one test per behaviour."""
import time

import botocore.exceptions
import pytest

from conftest import (
    AGENT_WAIT,
    BOOT_WAIT,
    UBUNTU_PARAMETER,
    describe,
    launch,
    subnet_id,
    wait_for,
    wait_image,
    wait_online,
    wait_state,
)

DEFAULTS = {"instance": 3.0, "security_group": 3.0, "image": 1.0, "invocation": 0.5, "snapshot_release": 3.0,
            "load_balancer_release": 10.0, "instance_release": 3.0}


def code_of(call, *args, **kwargs) -> str | None:
    """The AWS error code of a call, None when it succeeds."""
    try:
        call(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    return None


def settled(what: str, call, *args, timeout: float = 30, **kwargs):
    """Repeat a call until it succeeds (the window has passed); returns its answer."""
    def attempt():
        try:
            return call(*args, **kwargs) or True
        except botocore.exceptions.ClientError:
            return None
    return wait_for(what, attempt, timeout, 0.1)


@pytest.fixture(scope="module")
def ec2(lab):
    """A client that sees the windows: it does not ask again on NotFound as the shared fixtures do."""
    return lab.client("ec2", settle=False)


@pytest.fixture(scope="module")
def ssm(lab):
    return lab.client("ssm", settle=False)


@pytest.fixture(scope="module")
def ami_id(ssm):
    return ssm.get_parameter(Name="/aws/service/debian/release/bookworm/latest/amd64")["Parameter"]["Value"]


@pytest.fixture(scope="module")
def vpc_id(ec2):
    return ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]


@pytest.fixture(scope="module")
def running(ec2, ssm):
    """One running instance with the SSM profile and an agent (the Ubuntu family ships it), shared by the
    tests that need an instance to work on."""
    iid = launch(ec2, ssm.get_parameter(Name=UBUNTU_PARAMETER)["Parameter"]["Value"])
    settled(f"{iid} known", describe, ec2, iid)
    wait_state(ec2, iid, "running")
    yield iid
    settled(f"terminate {iid}", ec2.terminate_instances, InstanceIds=[iid])


def test_consistency_is_on_by_default_and_tunable(lab):
    assert lab.get_json("/_lab/consistency") == {"enabled": True, "windows": DEFAULTS}
    try:
        got = lab.post("/_lab/consistency", {"windows": {"instance": 1.5}})
        assert got["windows"]["instance"] == 1.5 and got["enabled"] is True
        with pytest.raises(Exception, match="400"):
            lab.post("/_lab/consistency", {"windows": {"no-such-window": 1}})
    finally:
        lab.post("/_lab/consistency", {"enabled": True, "windows": DEFAULTS})


def test_terminate_right_after_run_answers_not_found_and_the_instance_keeps_running(lab, ec2, ami_id):
    tag = f"consistency-{time.time_ns()}"
    iid = launch(ec2, ami_id, profile=False,
                 TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "lab-test", "Value": tag}]}])
    try:
        assert code_of(ec2.terminate_instances, InstanceIds=[iid]) == "InvalidInstanceID.NotFound"
        assert code_of(ec2.describe_instances, InstanceIds=[iid]) == "InvalidInstanceID.NotFound"
        assert code_of(ec2.create_tags, Resources=[iid], Tags=[{"Key": "k", "Value": "v"}]) \
            == "InvalidInstanceID.NotFound"
        listed = ec2.describe_instances(Filters=[{"Name": "tag:lab-test", "Values": [tag]}])["Reservations"]
        assert listed == []
        # The NotFound did not terminate it: once EC2 knows it, it boots and runs.
        settled(f"{iid} known", describe, ec2, iid)
        assert wait_state(ec2, iid, "running")["InstanceId"] == iid
        listed = ec2.describe_instances(Filters=[{"Name": "tag:lab-test", "Values": [tag]}])["Reservations"]
        assert [i["InstanceId"] for r in listed for i in r["Instances"]] == [iid]
        ec2.create_tags(Resources=[iid], Tags=[{"Key": "k", "Value": "v"}])
    finally:
        settled(f"terminate {iid}", ec2.terminate_instances, InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")


def test_a_new_security_group_is_unknown_for_a_few_seconds(ec2, vpc_id, ami_id):
    started = time.monotonic()
    sg = ec2.create_security_group(GroupName=f"consistency-{time.time_ns()}", Description="lab test",
                                   VpcId=vpc_id)["GroupId"]
    rule = {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}
    assert code_of(ec2.authorize_security_group_ingress, GroupId=sg, IpPermissions=[rule]) == "InvalidGroup.NotFound"
    assert code_of(ec2.describe_security_groups, GroupIds=[sg]) == "InvalidGroup.NotFound"
    assert code_of(ec2.run_instances, ImageId=ami_id, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                   SubnetId=subnet_id(ec2, "Public subnet A"), SecurityGroupIds=[sg]) == "InvalidGroup.NotFound"
    settled(f"authorize on {sg}", ec2.authorize_security_group_ingress, GroupId=sg, IpPermissions=[rule])
    assert time.monotonic() - started >= 2.5
    assert ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]["IpPermissions"][0]["FromPort"] == 80
    ec2.delete_security_group(GroupId=sg)


def test_a_new_ami_is_unknown_to_describe_images_then_its_snapshots_stay_in_use_after_deregister(ec2, running):
    ami = ec2.create_image(InstanceId=running, Name=f"consistency-{time.time_ns()}", NoReboot=True)["ImageId"]
    assert code_of(ec2.describe_images, ImageIds=[ami]) == "InvalidAMIID.NotFound"
    assert ami not in [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]]
    known = settled(f"{ami} known", ec2.describe_images, ImageIds=[ami])
    assert known["Images"][0]["State"] == "pending"  # known before it is available, as on EC2
    image = wait_image(ec2, ami)
    snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
    assert snapshots
    ec2.deregister_image(ImageId=ami)
    assert code_of(ec2.delete_snapshot, SnapshotId=snapshots[0]) == "InvalidSnapshot.InUse"
    settled(f"delete {snapshots[0]}", ec2.delete_snapshot, SnapshotId=snapshots[0])
    assert code_of(ec2.delete_snapshot, SnapshotId=snapshots[0]) == "InvalidSnapshot.NotFound"


def test_a_new_command_invocation_does_not_exist_for_a_moment(ssm, running):
    wait_online(ssm, running)
    command = ssm.send_command(InstanceIds=[running], DocumentName="AWS-RunShellScript",
                               Parameters={"commands": ["true"]})["Command"]["CommandId"]
    assert code_of(ssm.get_command_invocation, CommandId=command, InstanceId=running) == "InvocationDoesNotExist"
    got = settled(f"invocation of {command}", ssm.get_command_invocation, CommandId=command, InstanceId=running,
                  timeout=AGENT_WAIT)
    assert got["CommandId"] == command


def test_a_group_on_a_network_interface_cannot_be_deleted_until_its_instance_is_gone(ec2, vpc_id, ami_id):
    sg = ec2.create_security_group(GroupName=f"consistency-{time.time_ns()}", Description="lab test",
                                   VpcId=vpc_id)["GroupId"]
    iid = settled(f"launch with {sg}", ec2.run_instances, ImageId=ami_id, MinCount=1, MaxCount=1,
                  InstanceType="t3.micro", SubnetId=subnet_id(ec2, "Public subnet A"),
                  SecurityGroupIds=[sg])["Instances"][0]["InstanceId"]
    settled(f"{iid} known", describe, ec2, iid)
    wait_state(ec2, iid, "running")
    assert code_of(ec2.delete_security_group, GroupId=sg) == "DependencyViolation"
    ec2.terminate_instances(InstanceIds=[iid])
    # Terminated (or still shutting down), its interface holds the group a little longer.
    assert code_of(ec2.delete_security_group, GroupId=sg) == "DependencyViolation"
    wait_state(ec2, iid, "terminated", BOOT_WAIT)
    settled(f"delete {sg}", ec2.delete_security_group, GroupId=sg)
    assert code_of(ec2.describe_security_groups, GroupIds=[sg]) == "InvalidGroup.NotFound"


def test_delete_target_group_right_after_delete_load_balancer_answers_resource_in_use(lab, ec2, vpc_id):
    elb = lab.client("elbv2", settle=False)
    name = f"cons-{time.time_ns() % 10**9}"
    sg = ec2.create_security_group(GroupName=name, Description="lab test alb", VpcId=vpc_id)["GroupId"]
    settled(f"{sg} known", ec2.describe_security_groups, GroupIds=[sg])
    lb = elb.create_load_balancer(Name=name, Subnets=[subnet_id(ec2, "Public subnet A"),
                                                      subnet_id(ec2, "Public subnet C")],
                                  SecurityGroups=[sg])["LoadBalancers"][0]["LoadBalancerArn"]
    tg = elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc_id,
                                 TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
    elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    assert code_of(ec2.delete_security_group, GroupId=sg) == "DependencyViolation"
    deleted = time.monotonic()
    elb.delete_load_balancer(LoadBalancerArn=lb)
    assert code_of(elb.delete_target_group, TargetGroupArn=tg) == "ResourceInUse"
    assert code_of(ec2.delete_security_group, GroupId=sg) == "DependencyViolation"
    settled(f"delete {tg}", elb.delete_target_group, TargetGroupArn=tg)
    settled(f"delete {sg}", ec2.delete_security_group, GroupId=sg)
    assert time.monotonic() - deleted >= DEFAULTS["load_balancer_release"] - 1


def test_with_consistency_off_a_new_instance_is_known_at_once(lab, ec2, ami_id):
    lab.post("/_lab/consistency", {"enabled": False})
    try:
        iid = launch(ec2, ami_id, profile=False)
        assert describe(ec2, iid)["InstanceId"] == iid
        ec2.terminate_instances(InstanceIds=[iid])
    finally:
        lab.post("/_lab/consistency", {"enabled": True})
    wait_state(ec2, iid, "terminated")


def test_a_burst_throttles_every_describe_of_its_services_for_its_duration(lab):
    ec2 = lab.client("ec2", retries={"mode": "standard", "max_attempts": 1}, settle=False)
    ssm = lab.client("ssm", retries={"mode": "standard", "max_attempts": 1}, settle=False)
    ec2.describe_vpcs()  # load the client's models before the clock matters
    duration, every = 3.0, 6.0
    before = time.monotonic()
    lab.post("/_lab/faults", {"kind": "burst", "duration": duration, "every": every, "services": ["ec2"]})
    after = time.monotonic()  # the lab started the burst between `before` and `after`
    try:
        samples = []
        while time.monotonic() - before < every + duration - 0.5:
            t0 = time.monotonic()
            got = code_of(ec2.describe_vpcs)
            samples.append((t0 - after, time.monotonic() - before, got))
            if not samples[1:]:
                # Other services, and calls that change something, are not part of the burst.
                assert code_of(ssm.get_parameter, Name="/aws/service/debian/release/bookworm/latest/amd64") is None
                assert code_of(ec2.create_tags, Resources=["vpc-00000000"], Tags=[{"Key": "k", "Value": "v"}]) \
                    != "RequestLimitExceeded"
            time.sleep(0.2)
        # Classify each call by the bounds of when the lab saw it, relative to the burst's start.
        in_first = [g for start, end, g in samples if end < duration]
        between = [g for start, end, g in samples if start > duration and end < every]
        in_second = [g for start, end, g in samples if start > every and end < every + duration]
        assert in_first and between and in_second, samples
        assert set(in_first) == {"RequestLimitExceeded"}, samples
        assert set(between) == {None}, samples
        assert set(in_second) == {"RequestLimitExceeded"}, samples
        with pytest.raises(Exception, match="400"):
            lab.post("/_lab/faults", {"kind": "burst", "duration": 5, "every": 2})
    finally:
        lab.post("/_lab/faults", {"rate": 0})


def test_run_instances_again_with_the_same_client_token_answers_the_same_instance(ec2, ami_id):
    token = f"consistency-{time.time_ns()}"
    first = launch(ec2, ami_id, ClientToken=token)
    again = launch(ec2, ami_id, ClientToken=token)
    other = launch(ec2, ami_id, ClientToken=token + "-other")
    try:
        assert again == first and other != first
    finally:
        for iid in {first, other}:
            settled(f"terminate {iid}", ec2.terminate_instances, InstanceIds=[iid])


def test_a_lost_create_image_answer_took_effect_and_the_retry_finds_the_name_taken(lab, ec2, running):
    once = lab.client("ec2", retries={"mode": "standard", "total_max_attempts": 1}, settle=False)
    name = f"lost-{time.time_ns()}"
    lab.post("/_lab/faults", {"kind": "lost", "rate": 1, "services": ["ec2"], "actions": ["CreateImage"]})
    try:
        with pytest.raises(botocore.exceptions.ClientError) as lost:
            once.create_image(InstanceId=running, Name=name, NoReboot=True)
        assert lost.value.response["Error"]["Code"] == "InternalError"
        assert lost.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        # The answer was lost, not the request: the image exists, and a retry meets its name (error answers are
        # passed on, not lost).
        images = wait_for(f"{name} listed", lambda: ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"], 30, 0.1)
        assert [i["Name"] for i in images] == [name]
        assert code_of(once.create_image, InstanceId=running, Name=name, NoReboot=True) == "InvalidAMIName.Duplicate"
    finally:
        lab.post("/_lab/faults", {"rate": 0})
    ec2.deregister_image(ImageId=images[0]["ImageId"])
    # A deregistered image's name is free again.
    again = ec2.create_image(InstanceId=running, Name=name, NoReboot=True)["ImageId"]
    settled(f"{again} known", ec2.describe_images, ImageIds=[again])
    ec2.deregister_image(ImageId=again)
