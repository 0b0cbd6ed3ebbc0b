"""EC2 Auto Scaling and ELB refusing and reporting as AWS does: AutoRollback only where a rollback is
supported, no rollback of an ended refresh, launch failures as failed scaling activities retried with a
backoff, targets in a zone the load balancer does not cover left unused."""
import json
import time

import pytest
from botocore.exceptions import ClientError

from conftest import subnet_id, wait_for

ACTIVITY_WAIT = 10  # the group launches within its CreateAutoScalingGroup call; activities show at once
LAUNCH_RETRY = 2  # the test's first retry delay (the lab's default is 10 s), doubling after each failure
RETRY_WAIT = 15  # two retries of the above
TARGET_WAIT = 15  # target states change on the 1-s probe interval


def vpc_id(ec2) -> str:
    return ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]


def template(ec2, name: str, image: str) -> str:
    return ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": image, "InstanceType": "t3.micro"})["LaunchTemplate"]["LaunchTemplateId"]


def refused(call, **kwargs) -> dict:
    with pytest.raises(ClientError) as e:
        call(**kwargs)
    return e.value.response["Error"]


def test_auto_rollback_is_refused_where_a_rollback_is_not_supported(lab, ec2, debian_ami):
    asg = lab.client("autoscaling")
    lt = template(ec2, "rules-rollback", debian_ami)
    ec2.create_launch_template_version(LaunchTemplateId=lt, LaunchTemplateData={
        "ImageId": debian_ami, "InstanceType": "t3.micro"})
    ssm_image = "resolve:ssm:/aws/service/debian/release/bookworm/latest/amd64"
    ec2.create_launch_template_version(LaunchTemplateId=lt, LaunchTemplateData={
        "ImageId": ssm_image, "InstanceType": "t3.micro"})
    private = subnet_id(ec2, "Private subnet A")
    asg.create_auto_scaling_group(AutoScalingGroupName="rules-rollback", MinSize=0, MaxSize=1, DesiredCapacity=0,
                                  LaunchTemplate={"LaunchTemplateId": lt, "Version": "$Latest"},
                                  VPCZoneIdentifier=private)
    desired = lambda v: {"LaunchTemplate": {"LaunchTemplateId": lt, "Version": v}}  # noqa: E731
    rollback = {"AutoRollback": True, "MinHealthyPercentage": 50}
    start = asg.start_instance_refresh

    # The group on $Latest: nothing to roll back to.
    err = refused(start, AutoScalingGroupName="rules-rollback", Preferences=rollback, DesiredConfiguration=desired("2"))
    assert err["Code"] == "ValidationError" and "$Latest" in err["Message"], err
    # No desired configuration.
    err = refused(start, AutoScalingGroupName="rules-rollback", Preferences=rollback)
    assert err["Code"] == "ValidationError" and "DesiredConfiguration" in err["Message"], err

    asg.update_auto_scaling_group(AutoScalingGroupName="rules-rollback",
                                  LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"})
    # A desired configuration on $Default, or a template whose image is a Systems Manager parameter.
    err = refused(start, AutoScalingGroupName="rules-rollback", Preferences=rollback,
                  DesiredConfiguration=desired("$Default"))
    assert err["Code"] == "ValidationError" and "$Default" in err["Message"], err
    err = refused(start, AutoScalingGroupName="rules-rollback", Preferences=rollback, DesiredConfiguration=desired("3"))
    assert err["Code"] == "ValidationError" and "Systems Manager parameter" in err["Message"], err

    # A pinned group moving to a pinned AMI version may ask for it.
    refresh = start(AutoScalingGroupName="rules-rollback", Preferences=rollback,
                    DesiredConfiguration=desired("2"))["InstanceRefreshId"]
    found = asg.describe_instance_refreshes(AutoScalingGroupName="rules-rollback", InstanceRefreshIds=[refresh])
    assert found["InstanceRefreshes"][0]["Preferences"]["AutoRollback"] is True

    # An empty group's refresh ends at once; an ended refresh cannot be rolled back.
    wait_for("the refresh to end", lambda: asg.describe_instance_refreshes(
        AutoScalingGroupName="rules-rollback", InstanceRefreshIds=[refresh])["InstanceRefreshes"][0]["Status"]
        == "Successful", ACTIVITY_WAIT)
    err = refused(asg.rollback_instance_refresh, AutoScalingGroupName="rules-rollback")
    assert err["Code"] == "ActiveInstanceRefreshNotFound", err
    asg.delete_auto_scaling_group(AutoScalingGroupName="rules-rollback", ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateId=lt)


def failed_activities(asg, group: str) -> list[dict]:
    found = asg.describe_scaling_activities(AutoScalingGroupName=group)["Activities"]
    return [a for a in found if a["StatusCode"] == "Failed"]


def test_a_group_that_cannot_launch_records_failed_activities_and_retries(lab, ec2, debian_ami):
    asg = lab.client("autoscaling")
    lt = template(ec2, "rules-capacity", debian_ami)
    zone_a, zone_c = "ap-northeast-2a", "ap-northeast-2c"
    lab.post("/_lab/capacity", {"unavailable": [
        {"instance_type": "t3.micro", "zone": zone_a},
        {"instance_type": "t3.micro", "zone": zone_c, "reason": "unsupported"}]})
    lab.post("/_lab/latency", {"launch_retry": LAUNCH_RETRY})
    try:
        private = [subnet_id(ec2, "Private subnet A"), subnet_id(ec2, "Private subnet C")]
        asg.create_auto_scaling_group(AutoScalingGroupName="rules-capacity", MinSize=1, MaxSize=1, DesiredCapacity=1,
                                      LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"},
                                      VPCZoneIdentifier=",".join(private))
        first = wait_for("failed activities", lambda: failed_activities(asg, "rules-capacity"), ACTIVITY_WAIT)
        messages = {a["StatusMessage"] for a in first}
        assert ("We currently do not have sufficient t3.micro capacity in the Availability Zone you requested "
                f"({zone_a}). Our system will be working on provisioning additional capacity. You can currently get "
                "t3.micro capacity by not specifying an Availability Zone in your request or choosing another zone. "
                "Launching EC2 instance failed.") in messages, messages
        assert ("Your requested instance type (t3.micro) is not supported in your requested Availability Zone "
                f"({zone_c}). Please retry your request by not specifying an Availability Zone or choosing another "
                "zone. Launching EC2 instance failed.") in messages, messages
        assert all(a["Description"].startswith("Launching a new EC2 instance.  Status Reason: ") for a in first)
        assert all("difference between desired and actual capacity" in a["Cause"] for a in first)
        group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["rules-capacity"])["AutoScalingGroups"][0]
        assert group["Instances"] == []

        # Retried after a backoff, not in a tight loop.
        started = time.monotonic()
        again = wait_for("a retried launch", lambda: len(a := failed_activities(asg, "rules-capacity")) > len(first)
                         and a, RETRY_WAIT)
        assert time.monotonic() - started >= LAUNCH_RETRY - 1, "retried too soon"
        assert len(again) == 2 * len(first), again

        # With capacity in one zone, the next attempt launches there.
        lab.post("/_lab/capacity", {"unavailable": [{"instance_type": "t3.micro", "zone": zone_a}]})
        def launched():
            g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["rules-capacity"])["AutoScalingGroups"][0]
            return g["Instances"]
        instances = wait_for("a launch in the zone with capacity", launched, RETRY_WAIT + 5)
        assert [i["AvailabilityZone"] for i in instances] == [zone_c]
        newest = asg.describe_scaling_activities(AutoScalingGroupName="rules-capacity")["Activities"][0]
        assert newest["StatusCode"] == "Successful", newest
    finally:
        lab.post("/_lab/capacity", {"unavailable": []})
        lab.post("/_lab/latency", {"launch_retry": 10})
        asg.delete_auto_scaling_group(AutoScalingGroupName="rules-capacity", ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateId=lt)


def test_a_target_in_a_zone_the_load_balancer_does_not_cover_is_unused(lab, ec2, debian_ami):
    elb = lab.client("elbv2")
    vpc = vpc_id(ec2)
    zone_b = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.90.0/24",
                               AvailabilityZone="ap-northeast-2b")["Subnet"]["SubnetId"]
    lb = elb.create_load_balancer(Name="rules-zones", Subnets=[subnet_id(ec2, "Public subnet A"), zone_b])
    lb_arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
    tg = elb.create_target_group(Name="rules-zones", Protocol="HTTP", Port=80, VpcId=vpc)["TargetGroups"][0]
    tg_arn = tg["TargetGroupArn"]
    elb.create_listener(LoadBalancerArn=lb_arn, Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arn}])
    ids = []
    for name in ("Private subnet A", "Private subnet C"):
        run = ec2.run_instances(ImageId=debian_ami, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                SubnetId=subnet_id(ec2, name))
        ids.append(run["Instances"][0]["InstanceId"])
    try:
        covered, uncovered = ids
        ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        elb.register_targets(TargetGroupArn=tg_arn, Targets=[{"Id": i} for i in ids])

        def states():
            found = elb.describe_target_health(TargetGroupArn=tg_arn)["TargetHealthDescriptions"]
            seen = {d["Target"]["Id"]: d["TargetHealth"] for d in found}
            return seen if len(seen) == 2 and seen[uncovered]["State"] == "unused" else None
        seen = wait_for("the target outside the load balancer's zones unused", states, TARGET_WAIT)
        assert seen[uncovered]["Reason"] == "Target.NotInUse", seen
        assert seen[covered]["State"] != "unused", seen
    finally:
        ec2.terminate_instances(InstanceIds=ids)
        elb.delete_load_balancer(LoadBalancerArn=lb_arn)


def test_a_snapshot_key_without_a_grant_for_the_auto_scaling_role_fails_the_launch(lab, ec2, debian_ami):
    asg, kms = lab.client("autoscaling"), lab.client("kms")
    key = kms.create_key(Description="rules-kms")["KeyMetadata"]
    image = ec2.copy_image(SourceImageId=debian_ami, SourceRegion="ap-northeast-2", Name="rules-kms",
                           Encrypted=True, KmsKeyId=key["Arn"])["ImageId"]
    wait_available(ec2, image)
    lt = template(ec2, "rules-kms", image)
    lab.post("/_lab/latency", {"launch_retry": LAUNCH_RETRY})
    try:
        asg.create_auto_scaling_group(AutoScalingGroupName="rules-kms", MinSize=1, MaxSize=1, DesiredCapacity=1,
                                      LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"},
                                      VPCZoneIdentifier=subnet_id(ec2, "Private subnet A"))
        failed = wait_for("a failed launch", lambda: failed_activities(asg, "rules-kms"), ACTIVITY_WAIT)
        assert failed[0]["StatusMessage"] == \
            "Client.InternalError: Client error on launch. Launching EC2 instance failed.", failed

        # The key's grant for the service-linked role lets the next attempt launch.
        kms.create_grant(KeyId=key["KeyId"], Operations=["Decrypt", "GenerateDataKeyWithoutPlaintext",
                                                         "ReEncryptFrom", "ReEncryptTo", "CreateGrant"],
                         GranteePrincipal="arn:aws:iam::123456789012:role/aws-service-role/"
                                          "autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling")
        wait_for("a launch once the role has a grant", lambda: asg.describe_auto_scaling_groups(
            AutoScalingGroupNames=["rules-kms"])["AutoScalingGroups"][0]["Instances"], RETRY_WAIT)
    finally:
        lab.post("/_lab/latency", {"launch_retry": 10})
        asg.delete_auto_scaling_group(AutoScalingGroupName="rules-kms", ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateId=lt)


def test_a_key_policy_that_lets_the_auto_scaling_role_use_the_key_needs_no_grant(lab, ec2, debian_ami):
    asg, kms = lab.client("autoscaling"), lab.client("kms")
    role = "arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "owner", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "use", "Effect": "Allow", "Principal": {"AWS": [role]},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
         "Resource": "*"},
        {"Sid": "grants", "Effect": "Allow", "Principal": {"AWS": [role]}, "Action": "kms:CreateGrant",
         "Resource": "*", "Condition": {"Bool": {"kms:GrantIsForAWSResource": True}}}]}
    key = kms.create_key(Description="rules-kms-policy", Policy=json.dumps(policy))["KeyMetadata"]
    image = ec2.copy_image(SourceImageId=debian_ami, SourceRegion="ap-northeast-2", Name="rules-kms-policy",
                           Encrypted=True, KmsKeyId=key["Arn"])["ImageId"]
    wait_available(ec2, image)
    lt = template(ec2, "rules-kms-policy", image)
    try:
        asg.create_auto_scaling_group(AutoScalingGroupName="rules-kms-policy", MinSize=1, MaxSize=1,
                                      DesiredCapacity=1, LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"},
                                      VPCZoneIdentifier=subnet_id(ec2, "Private subnet A"))
        wait_for("a launch the key policy allows", lambda: asg.describe_auto_scaling_groups(
            AutoScalingGroupNames=["rules-kms-policy"])["AutoScalingGroups"][0]["Instances"], ACTIVITY_WAIT)
        assert not failed_activities(asg, "rules-kms-policy")
    finally:
        asg.delete_auto_scaling_group(AutoScalingGroupName="rules-kms-policy", ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateId=lt)


def test_the_aws_managed_ebs_key_needs_no_grant_for_a_group_to_launch(lab, ec2, debian_ami):
    asg, kms = lab.client("autoscaling"), lab.client("kms")
    assert kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["KeyManager"] == "AWS"
    image = ec2.copy_image(SourceImageId=debian_ami, SourceRegion="ap-northeast-2", Name="rules-aws-ebs",
                           Encrypted=True)["ImageId"]
    wait_available(ec2, image)
    lt = template(ec2, "rules-aws-ebs", image)
    try:
        asg.create_auto_scaling_group(AutoScalingGroupName="rules-aws-ebs", MinSize=1, MaxSize=1,
                                      DesiredCapacity=1, LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"},
                                      VPCZoneIdentifier=subnet_id(ec2, "Private subnet A"))
        wait_for("a launch with no grant", lambda: asg.describe_auto_scaling_groups(
            AutoScalingGroupNames=["rules-aws-ebs"])["AutoScalingGroups"][0]["Instances"], ACTIVITY_WAIT)
        assert not failed_activities(asg, "rules-aws-ebs")
    finally:
        asg.delete_auto_scaling_group(AutoScalingGroupName="rules-aws-ebs", ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateId=lt)


def wait_available(ec2, image: str) -> None:
    """Waits until a new AMI (a copy) is available."""
    def available():
        try:
            return ec2.describe_images(ImageIds=[image])["Images"][0]["State"] == "available"
        except ClientError as e:  # a new AMI is unknown to DescribeImages for a moment (eventual consistency)
            if e.response["Error"]["Code"] != "InvalidAMIID.NotFound":
                raise
            return False
    wait_for("the copy available", available, ACTIVITY_WAIT)
