"""The bake flow end to end, as the workshops do it by hand: nginx by user data, SSM checks, AMI, relaunch."""
import time
from pathlib import Path

from conftest import (
    BOOT_WAIT,
    container,
    describe,
    http_get,
    launch,
    run_command,
    run_until_success,
    runner_group,
    wait_for,
    wait_image,
    wait_online,
    wait_state,
)

USER_DATA = """#!/bin/bash
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y nginx
TOKEN=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)
ID=$(curl -s -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/instance-id)
echo "<h1>Immersion Day web server $ID</h1>" > /var/www/html/index.html
echo "user data ran on $ID" >> /root/user-data-runs
"""
PAGE_TIMEOUT = 60  # the bar: the page is served within 60 s of RunInstances (apt debs are cached)


def stored_layers(lab) -> list[str]:
    return sorted(p.name for p in (Path(lab.info["state_dir"]) / "layers").iterdir() if not p.name.startswith("."))


def workshop_flow(lab, ec2, ssm, image) -> None:
    web = runner_group(lab, ec2, f"workshop-web-{time.time_ns()}")  # the page is reached from the runner
    builder = launch(ec2, image, UserData=USER_DATA, MetadataOptions={"HttpTokens": "required"},
                     SecurityGroupIds=[web])
    started = time.monotonic()
    ip = wait_state(ec2, builder, "running")["PublicIpAddress"]
    page = wait_for("the page", lambda: (r := http_get(f"http://{ip}/")) and "Immersion Day" in r[1] and r,
                    PAGE_TIMEOUT, 0.5)
    assert time.monotonic() - started < PAGE_TIMEOUT
    assert page[1] == f"<h1>Immersion Day web server {builder}</h1>\n"

    wait_online(ssm, builder)
    cat = run_command(ssm, builder, ["cat /var/www/html/index.html"])
    assert (cat["Status"], cat["StandardOutputContent"]) == ("Success", page[1])
    failed = run_command(ssm, builder, ["systemctl is-active nginx", "exit 3"])
    assert (failed["Status"], failed["ResponseCode"], failed["StandardOutputContent"]) == ("Failed", 3, "active\n")

    pid = container(lab, builder)["leader_pid"]
    image = ec2.create_image(InstanceId=builder, Name=f"web-{builder}", TagSpecifications=[
        {"ResourceType": "image", "Tags": [{"Key": "bake:run", "Value": builder}]},
        {"ResourceType": "snapshot", "Tags": [{"Key": "bake:run", "Value": builder}]}])["ImageId"]
    assert ec2.describe_images(ImageIds=[image])["Images"][0]["State"] == "pending"
    ami = wait_image(ec2, image)
    assert container(lab, builder)["leader_pid"] not in (None, pid)  # NoReboot false: rebooted for the copy
    snapshot = ami["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    tags = ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["Tags"]
    assert tags == [{"Key": "bake:run", "Value": builder}]
    ec2.terminate_instances(InstanceIds=[builder])
    wait_state(ec2, builder, "terminated")

    clone = launch(ec2, image, subnet="Public subnet C", SecurityGroupIds=[web])
    clone_ip = wait_state(ec2, clone, "running")["PublicIpAddress"]
    assert wait_for("baked page", lambda: http_get(f"http://{clone_ip}/"), BOOT_WAIT) == (200, page[1])
    wait_online(ssm, clone)
    runs = run_command(ssm, clone, ["cat /root/user-data-runs"])["StandardOutputContent"]
    assert runs == f"user data ran on {builder}\n"
    ec2.terminate_instances(InstanceIds=[clone])
    wait_state(ec2, clone, "terminated")
    assert not any(c["instance_id"] in (builder, clone) for c in lab.get_json("/_lab/containers"))
    ec2.deregister_image(ImageId=image)
    ec2.delete_snapshot(SnapshotId=snapshot)


def test_workshop_flow_bakes_a_web_server_ami(lab, ec2, ssm, ubuntu_ami):
    before = stored_layers(lab)
    workshop_flow(lab, ec2, ssm, ubuntu_ami)
    assert stored_layers(lab) == before


def test_workshop_flow_survives_30_percent_throttling(lab, ubuntu_ami):
    retries = {"mode": "standard", "max_attempts": 10}
    ec2, ssm = lab.client("ec2", retries=retries), lab.client("ssm", retries=retries)
    since = time.time()
    lab.post("/_lab/faults", {"rate": 0.3, "kind": "throttle", "seed": 3})
    try:
        workshop_flow(lab, ec2, ssm, ubuntu_ami)
    finally:
        lab.post("/_lab/faults", {"rate": 0})
    rows = [r for r in lab.get_lines("/_lab/requests") if r["time"] >= since]
    throttled = [r for r in rows if r["fault"]]
    assert {r["service"] for r in throttled} == {"ec2", "ssm"}
    assert 0.15 < len(throttled) / len(rows) < 0.45
    assert all(r["status"] == (503 if r["service"] == "ec2" else 400) for r in throttled)


def test_copied_image_boots_in_the_other_region_and_runs_new_user_data(lab, ec2, ssm, ubuntu_ami):
    builder = launch(ec2, ubuntu_ami, UserData="#!/bin/sh\necho copied > /root/marker\n")
    wait_state(ec2, builder, "running")
    run_until_success(ssm, builder, ["cat /root/marker"], "user data")
    pid = container(lab, builder)["leader_pid"]
    image = ec2.create_image(InstanceId=builder, Name="copy-src", NoReboot=True)["ImageId"]
    wait_image(ec2, image)
    assert container(lab, builder)["leader_pid"] == pid
    ec2.terminate_instances(InstanceIds=[builder])
    us_ec2, us_ssm = lab.client("ec2", "us-east-1"), lab.client("ssm", "us-east-1")
    copy = us_ec2.copy_image(SourceImageId=image, SourceRegion="ap-northeast-2", Name="copy-dst")["ImageId"]
    wait_image(us_ec2, copy)
    # The copy's name is taken in its region now (AMI names are unique per account and region).
    try:
        us_ec2.copy_image(SourceImageId=image, SourceRegion="ap-northeast-2", Name="copy-dst")
        raise AssertionError("a second copy named copy-dst was accepted")
    except us_ec2.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidAMIName.Duplicate", e.response
    iid = us_ec2.run_instances(ImageId=copy, MinCount=1, MaxCount=1, IamInstanceProfile={"Name": "SSMInstanceProfile"},
                               UserData="#!/bin/sh\necho again > /root/again\n")["Instances"][0]["InstanceId"]
    try:
        wait_state(us_ec2, iid, "running")
        assert describe(us_ec2, iid)["Placement"]["AvailabilityZone"].startswith("us-east-1")
        # The baked file system is there, and user data given again runs on the new instance.
        result = run_until_success(us_ssm, iid, ["cat /root/marker /root/again"], "new user data")
        assert result["StandardOutputContent"] == "copied\nagain\n"
    finally:
        us_ec2.terminate_instances(InstanceIds=[iid])
        wait_state(us_ec2, iid, "terminated")


def test_new_instances_reuse_the_apt_cache(lab, ec2, ssm, ubuntu_ami):
    """Packages and by-hash lists come through the lab's proxy: a second instance's install fetches nothing new."""
    iids = []
    try:
        for _ in range(2):
            before = lab.get_json("/_lab/info")["apt_proxy"]
            iids.append(launch(ec2, ubuntu_ami))
            wait_state(ec2, iids[-1], "running")
            wait_online(ssm, iids[-1])
            result = run_command(ssm, iids[-1], ["apt-get update -qq", "apt-get install -y tree", "tree --version"],
                                 timeout=120)
            assert result["Status"] == "Success", result["StandardErrorContent"]
        after = lab.get_json("/_lab/info")["apt_proxy"]
        assert after["mirror_fetches"] == before["mirror_fetches"]
        assert after["hits"] > before["hits"]
    finally:
        ec2.terminate_instances(InstanceIds=iids)
