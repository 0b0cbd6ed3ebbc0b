"""Distribution as EC2 does it: a second account acting through STS AssumeRole, CopyImage into other regions
(per-region latency, ClientToken, tags, KMS keys, forced failures), launch and create-volume permissions
across accounts and organizations, and KMS keys another account may or may not use."""
import json
import time

import pytest
from botocore.exceptions import ClientError

from bake_lab.client import ACCOUNT_B, ACCOUNT_C, HOME_ACCOUNT
from conftest import BOOT_WAIT, IMAGE_WAIT, container, describe, launch, wait_for, wait_state

HOME, EAST, WEST = "ap-northeast-2", "us-east-1", "us-west-2"
COPY_LATENCY = 4  # seconds, set for us-east-1 below: long enough to see the copy pending, short for the suite


def code_of(call, **params) -> str:
    with pytest.raises(ClientError) as e:
        call(**params)
    return e.value.response["Error"]["Code"]


def image(ec2, image_id: str) -> dict:
    return ec2.describe_images(ImageIds=[image_id])["Images"][0]


def settled(ec2, image_id: str) -> dict:
    """The copy once it is no longer pending (available or failed)."""
    return wait_for(f"{image_id} settled", lambda: (i := image(ec2, image_id))["State"] != "pending" and i,
                    IMAGE_WAIT)


@pytest.fixture(scope="module")
def source(lab, ec2, debian_ami):
    """A baked image in ap-northeast-2 with user tags and a deprecation time, as bake leaves one."""
    iid = launch(ec2, debian_ami, profile=False)
    wait_state(ec2, iid, "running")
    ami = ec2.create_image(InstanceId=iid, Name="dist-source", NoReboot=True, TagSpecifications=[
        {"ResourceType": "image", "Tags": [{"Key": "bake:image", "Value": "web"}, {"Key": "Name", "Value": "web"}]}])
    ami = ami["ImageId"]
    wait_for(f"{ami} available", lambda: image(ec2, ami)["State"] == "available", IMAGE_WAIT)
    ec2.enable_image_deprecation(ImageId=ami, DeprecateAt="2031-03-04T05:06:00Z")
    ec2.terminate_instances(InstanceIds=[iid])
    return ami


def test_a_second_account_acts_through_assume_role(lab, ec2, source):
    assert lab.as_account(ACCOUNT_B, "sts").get_caller_identity()["Account"] == ACCOUNT_B
    assert lab.as_account(ACCOUNT_C, "sts").get_caller_identity()["Account"] == ACCOUNT_C
    assert lab.client("sts").get_caller_identity()["Account"] == HOME_ACCOUNT
    b = lab.as_account(ACCOUNT_B, "ec2", settle=False)
    # An image of another account that is not shared does not exist for B, by id or in listings.
    assert code_of(b.describe_images, ImageIds=[source]) == "InvalidAMIID.NotFound"
    assert b.describe_images(ExecutableUsers=["self"])["Images"] == []
    logged = [r for r in lab.get_lines("/_lab/requests") if r["action"] == "DescribeImages"]
    assert logged[-1]["account"] == ACCOUNT_B and logged[-1]["access_key"] != "AKIDLABTEST"


def test_a_copy_is_pending_for_its_regions_latency_and_keeps_only_what_copy_image_says(lab, ec2, source):
    lab.post("/_lab/latency", {f"image_copy.{EAST}": COPY_LATENCY})
    east = lab.client("ec2", EAST)
    started = time.time()
    copy = east.copy_image(SourceImageId=source, SourceRegion=HOME, Name="dist-copy", ClientToken="dist-copy-1",
                           CopyImageTags=True, TagSpecifications=[
                               {"ResourceType": "image", "Tags": [{"Key": "Name", "Value": "web-east"}]},
                               {"ResourceType": "snapshot", "Tags": [{"Key": "copied", "Value": "yes"}]}])["ImageId"]
    assert image(east, copy)["State"] == "pending"
    # The same ClientToken is the same request: the same image, nothing new.
    again = east.copy_image(SourceImageId=source, SourceRegion=HOME, Name="dist-copy", ClientToken="dist-copy-1",
                            CopyImageTags=True, TagSpecifications=[
                                {"ResourceType": "image", "Tags": [{"Key": "Name", "Value": "web-east"}]}])
    assert again["ImageId"] == copy
    assert code_of(east.copy_image, SourceImageId=source, SourceRegion=HOME, Name="dist-other",
                   ClientToken="dist-copy-1") == "IdempotentParameterMismatch"
    done = settled(east, copy)
    assert done["State"] == "available"
    event = next(e for e in lab.get_lines("/_lab/events") if e["event"] == "image_available" and e["image_id"] == copy)
    assert event["time"] - started >= COPY_LATENCY
    tags = {t["Key"]: t["Value"] for t in done["Tags"]}
    assert tags == {"bake:image": "web", "Name": "web-east"}  # user tags copied, TagSpecifications win
    snapshot = done["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snap_tags = east.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0].get("Tags", [])
    assert {"Key": "copied", "Value": "yes"} in snap_tags
    # Launch permissions are not copied; without CopyImageTags no user tag is.
    assert east.describe_image_attribute(ImageId=copy, Attribute="launchPermission")["LaunchPermissions"] == []
    bare = east.copy_image(SourceImageId=source, SourceRegion=HOME, Name="dist-bare")["ImageId"]
    assert "Tags" not in settled(east, bare) or settled(east, bare)["Tags"] == []
    # Other regions keep the default latency.
    west = lab.client("ec2", WEST)
    other = west.copy_image(SourceImageId=source, SourceRegion=HOME, Name="dist-west")["ImageId"]
    assert settled(west, other)["State"] == "available"
    for ec2_, ami in ((east, bare), (west, other)):
        ec2_.deregister_image(ImageId=ami)


def test_an_encrypted_copy_records_its_regions_key_and_a_missing_key_fails_it(lab, source):
    east, kms = lab.client("ec2", EAST), lab.client("kms", EAST)
    key = kms.create_key(Description="east images")["KeyMetadata"]
    kms.create_alias(AliasName="alias/images", TargetKeyId=key["KeyId"])
    copy = east.copy_image(SourceImageId=source, SourceRegion=HOME, Name="dist-encrypted", Encrypted=True,
                           KmsKeyId="alias/images")["ImageId"]
    ebs = settled(east, copy)["BlockDeviceMappings"][0]["Ebs"]
    snapshot = east.describe_snapshots(SnapshotIds=[ebs["SnapshotId"]])["Snapshots"][0]
    assert snapshot["Encrypted"] and snapshot["KmsKeyId"] == key["Arn"]
    # A key of the source region is not one of this region: the copy is accepted, then fails (AWS checks the
    # key asynchronously), as it does for an alias that does not exist.
    for name, ref in (("dist-nokey", "alias/no-such-key"),
                      ("dist-otherregion", lab.client("kms").create_key()["KeyMetadata"]["Arn"])):
        bad = east.copy_image(SourceImageId=source, SourceRegion=HOME, Name=name, Encrypted=True,
                              KmsKeyId=ref)["ImageId"]
        failed = settled(east, bad)
        assert failed["State"] == "failed", failed
        assert failed["StateReason"]["Code"] == "Client.InvalidKMSKey.InvalidState", failed
        east.deregister_image(ImageId=bad)


def test_a_copy_forced_to_fail_fails_only_there_and_only_as_often_as_asked(lab, source):
    east, west = lab.client("ec2", EAST), lab.client("ec2", WEST)
    assert lab.post("/_lab/copy-failures", {"region": EAST, "count": 1}) == {EAST: 1}
    bad = east.copy_image(SourceImageId=source, SourceRegion=HOME, Name="dist-forced")["ImageId"]
    good = west.copy_image(SourceImageId=source, SourceRegion=HOME, Name="dist-forced")["ImageId"]
    failed = settled(east, bad)
    assert failed["State"] == "failed"
    assert failed["StateReason"]["Code"] == "Server.InternalError", failed
    assert settled(west, good)["State"] == "available"
    assert any(e["event"] == "image_failed" and e["image_id"] == bad for e in lab.get_lines("/_lab/events"))
    assert lab.get_json("/_lab/copy-failures") == {}
    east.deregister_image(ImageId=bad)
    retry = east.copy_image(SourceImageId=source, SourceRegion=HOME, Name="dist-forced")["ImageId"]
    assert settled(east, retry)["State"] == "available"
    lab.post("/_lab/copy-failures", {"region": WEST, "all": True})
    for n in range(2):
        gone = west.copy_image(SourceImageId=source, SourceRegion=HOME, Name=f"dist-all-{n}")["ImageId"]
        assert settled(west, gone)["State"] == "failed"
        west.deregister_image(ImageId=gone)
    assert lab.post("/_lab/copy-failures", {"region": WEST, "count": 0}) == {}
    for ec2_, ami in ((east, retry), (west, good)):
        ec2_.deregister_image(ImageId=ami)


def test_shared_images_are_found_and_launched_by_the_accounts_named_only(lab, source):
    east = lab.client("ec2", EAST)
    copy = east.copy_image(SourceImageId=source, SourceRegion=HOME, Name="dist-shared")["ImageId"]
    snapshot = settled(east, copy)["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    east.modify_image_attribute(ImageId=copy, LaunchPermission={"Add": [{"UserId": ACCOUNT_B}]})
    east.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission",
                                   OperationType="add", UserIds=[ACCOUNT_B])
    assert east.describe_image_attribute(ImageId=copy, Attribute="launchPermission")["LaunchPermissions"] == [
        {"UserId": ACCOUNT_B}]
    volume = east.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
    assert volume["CreateVolumePermissions"] == [{"UserId": ACCOUNT_B}]
    b, c = lab.as_account(ACCOUNT_B, "ec2", EAST), lab.as_account(ACCOUNT_C, "ec2", EAST, settle=False)
    assert [i["ImageId"] for i in b.describe_images(ImageIds=[copy])["Images"]] == [copy]
    assert [i["ImageId"] for i in b.describe_images(ExecutableUsers=["self"])["Images"]] == [copy]
    assert b.describe_images(Owners=[HOME_ACCOUNT], ExecutableUsers=["self"])["Images"][0]["OwnerId"] == HOME_ACCOUNT
    assert code_of(c.describe_images, ImageIds=[copy]) == "InvalidAMIID.NotFound"
    assert c.describe_images(ExecutableUsers=["self"])["Images"] == []
    assert code_of(c.run_instances, ImageId=copy, MinCount=1, MaxCount=1,
                   InstanceType="t3.micro") == "InvalidAMIID.NotFound"
    # B launches a real instance of A's image, in B's own default VPC.
    iid = b.run_instances(ImageId=copy, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    try:
        running = wait_state(b, iid, "running", BOOT_WAIT)
        assert running["ImageId"] == copy
        assert container(lab, iid)["container"] is True
    finally:
        b.terminate_instances(InstanceIds=[iid])
        wait_state(b, iid, "terminated")
    # Removing the permission ends it; an organization's permission admits its members (the lab's table).
    east.modify_image_attribute(ImageId=copy, LaunchPermission={"Remove": [{"UserId": ACCOUNT_B}]})
    assert code_of(lab.as_account(ACCOUNT_B, "ec2", EAST, settle=False).describe_images,
                   ImageIds=[copy]) == "InvalidAMIID.NotFound"
    org = f"arn:aws:organizations::{HOME_ACCOUNT}:organization/o-lab0000001"
    ou = f"arn:aws:organizations::{HOME_ACCOUNT}:ou/o-lab0000001/ou-lab0-prod0001"
    lab.post("/_lab/accounts", {ACCOUNT_B: {"organization": org, "organizational_units": [ou]}})
    east.modify_image_attribute(ImageId=copy, LaunchPermission={"Add": [{"OrganizationalUnitArn": ou}]})
    assert [i["ImageId"] for i in b.describe_images(ExecutableUsers=["self"])["Images"]] == [copy]
    assert c.describe_images(ExecutableUsers=["self"])["Images"] == []
    east.modify_image_attribute(ImageId=copy, LaunchPermission={"Remove": [{"OrganizationalUnitArn": ou}],
                                                                "Add": [{"OrganizationArn": org}]})
    assert [i["ImageId"] for i in b.describe_images(ImageIds=[copy])["Images"]] == [copy]
    lab.post("/_lab/accounts", {})
    assert code_of(lab.as_account(ACCOUNT_B, "ec2", EAST, settle=False).describe_images,
                   ImageIds=[copy]) == "InvalidAMIID.NotFound"
    east.deregister_image(ImageId=copy)


def b_launch(lab, image_id: str, region: str = EAST) -> dict:
    """Launch A's image as account B in `region` and return the instance once it is running or terminated."""
    b = lab.as_account(ACCOUNT_B, "ec2", region)
    iid = b.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]
    iid = iid["InstanceId"]
    done = wait_for(f"{iid} settled", lambda: (d := describe(b, iid))["State"]["Name"] in ("running", "terminated")
                    and d, BOOT_WAIT)
    if done["State"]["Name"] == "running":
        b.terminate_instances(InstanceIds=[iid])
        wait_state(b, iid, "terminated")
    return done


def test_another_account_launches_only_with_a_key_its_policy_lets_it_use(lab, source):
    east, kms = lab.client("ec2", EAST), lab.client("kms", EAST)
    key = kms.create_key(Description="shared images")["KeyMetadata"]
    copies = {}
    for name, ref in (("cmk", key["Arn"]), ("aws-ebs", None)):
        params = {"KmsKeyId": ref} if ref else {}
        copies[name] = east.copy_image(SourceImageId=source, SourceRegion=HOME, Name=f"dist-kms-{name}",
                                       Encrypted=True, **params)["ImageId"]
    for ami in copies.values():
        assert settled(east, ami)["State"] == "available"
        east.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": ACCOUNT_B}]})
    # The key's default policy names only its own account: B's launch is accepted, then terminated.
    for ami in copies.values():
        refused = b_launch(lab, ami)
        assert refused["State"]["Name"] == "terminated", refused
        assert refused["StateReason"]["Code"] == "Client.InternalError", refused
        assert refused["StateReason"]["Message"] == "Client.InternalError: Client error on launch", refused
    # A key policy that gives B's root what EBS needs lets B launch; aws/ebs can never be shared.
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "owner", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{HOME_ACCOUNT}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "b", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_B}:root"},
         "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
         "Resource": "*"}]}
    kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps(policy))
    assert b_launch(lab, copies["cmk"])["State"]["Name"] == "running"
    assert b_launch(lab, copies["aws-ebs"])["State"]["Name"] == "terminated"
    # The owner launches from both.
    own = east.run_instances(ImageId=copies["aws-ebs"], MinCount=1, MaxCount=1, InstanceType="t3.micro")
    own = own["Instances"][0]["InstanceId"]
    wait_state(east, own, "running")
    east.terminate_instances(InstanceIds=[own])
    wait_state(east, own, "terminated")


def test_reset_forgets_tokens_forced_failures_and_memberships(lab):
    east = lab.client("ec2", EAST)
    lab.post("/_lab/copy-failures", {"region": EAST, "all": True})
    lab.post("/_lab/accounts", {ACCOUNT_B: {"organization": f"arn:aws:organizations::{HOME_ACCOUNT}:organization/o-x"}})
    lab.post("/_lab/latency", {f"image_copy.{EAST}": 9})
    lab.post("/_lab/reset")
    assert lab.get_json("/_lab/copy-failures") == {} and lab.get_json("/_lab/accounts") == {}
    assert f"image_copy.{EAST}" not in lab.get_json("/_lab/latency")
    home = lab.client("ec2")
    base = lab.get_json("/_lab/info")["debian_images"][HOME]
    iid = launch(home, base, profile=False)
    wait_state(home, iid, "running")
    ami = home.create_image(InstanceId=iid, Name="after-reset", NoReboot=True)["ImageId"]
    wait_for(f"{ami} available", lambda: image(home, ami)["State"] == "available", IMAGE_WAIT)
    home.terminate_instances(InstanceIds=[iid])
    # The token of a copy made before the reset names nothing now: a new copy is made, and it does not fail.
    copy = east.copy_image(SourceImageId=ami, SourceRegion=HOME, Name="after-reset", ClientToken="dist-copy-1")
    assert settled(east, copy["ImageId"])["State"] == "available"


def test_an_image_of_an_encrypted_instance_is_encrypted_with_the_volumes_key(lab, ec2, debian_ami):
    """CreateImage snapshots the instance's own root volume: its size, and its encryption with the same key, so
    another account can launch the image only where that key's policy lets it."""
    kms = lab.client("kms")
    key = kms.create_key(Description="builder volumes")["KeyMetadata"]
    root = image(ec2, debian_ami)["RootDeviceName"]
    iid = launch(ec2, debian_ami, profile=False, BlockDeviceMappings=[
        {"DeviceName": root, "Ebs": {"VolumeSize": 12, "Encrypted": True, "KmsKeyId": key["KeyId"]}}])
    plain = launch(ec2, debian_ami, profile=False)
    default = launch(ec2, debian_ami, profile=False, BlockDeviceMappings=[
        {"DeviceName": root, "Ebs": {"VolumeSize": 8, "Encrypted": True}}])
    for instance in (iid, plain, default):
        wait_state(ec2, instance, "running")
    made = {}
    for name, instance in (("cmk", iid), ("plain", plain), ("default", default)):
        made[name] = ec2.create_image(InstanceId=instance, Name=f"dist-encrypted-{name}", NoReboot=True)["ImageId"]
    ec2.terminate_instances(InstanceIds=[iid, plain, default])
    for ami in made.values():
        assert settled(ec2, ami)["State"] == "available"
    mapping = image(ec2, made["cmk"])["BlockDeviceMappings"][0]["Ebs"]
    assert (mapping["Encrypted"], mapping["VolumeSize"]) == (True, 12), mapping
    snapshot = ec2.describe_snapshots(SnapshotIds=[mapping["SnapshotId"]])["Snapshots"][0]
    assert (snapshot["Encrypted"], snapshot["KmsKeyId"]) == (True, key["Arn"]), snapshot
    assert image(ec2, made["plain"])["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is False
    # A volume encrypted with no key named used the account's default EBS key, the AWS managed aws/ebs.
    snapshot = image(ec2, made["default"])["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]
    described = kms.describe_key(KeyId=snapshot["KmsKeyId"])["KeyMetadata"]
    assert (snapshot["Encrypted"], described["KeyManager"]) == (True, "AWS"), (snapshot, described)
    assert kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"] == described["Arn"]
    # Shared with B, the unencrypted image launches there; the encrypted one needs its key, which B may not use.
    for ami in (made["cmk"], made["plain"]):
        ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": ACCOUNT_B}]})
    assert b_launch(lab, made["cmk"], HOME)["State"]["Name"] == "terminated"
    assert b_launch(lab, made["plain"], HOME)["State"]["Name"] == "running"
