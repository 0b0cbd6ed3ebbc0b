"""Instances are real containers: addresses, state transitions, user data as cloud-init runs it, metadata."""
import gzip
import subprocess
import time

import pytest

from conftest import (
    BOOT_WAIT,
    container,
    describe,
    launch,
    run_command,
    run_until_success,
    subnet_id,
    wait_for,
    wait_online,
    wait_state,
)


def netns_names() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


USER_DATA = """#!/bin/sh
echo "user data ran as $(id -un)"
echo ran >> /root/user-data-runs
echo to-stderr >&2
"""


@pytest.fixture(scope="module")
def public_instance(lab, ec2, ubuntu_ami):
    iid = launch(ec2, ubuntu_ami, UserData=USER_DATA)
    yield iid
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")


def test_instance_goes_pending_then_running_with_its_container(lab, ec2, public_instance):
    d = wait_state(ec2, public_instance, "running")
    observed = time.time()
    events = [e for e in lab.get_lines("/_lab/events")
              if e["event"] == "instance_running" and e["instance_id"] == public_instance]
    assert len(events) == 1 and events[0]["time"] <= observed  # recorded before the API could show it
    c = container(lab, public_instance)
    assert c["container"] is True and c["leader_pid"] > 0
    assert d["PrivateIpAddress"] == c["private_ip"] and d["PublicIpAddress"] == c["public_ip"]
    assert d["PrivateIpAddress"].startswith("10.0.10.")
    assert d["PublicIpAddress"].startswith(lab.info["public_range"].rsplit(".", 1)[0])
    assert events[0]["public_ip"] == d["PublicIpAddress"]


def test_private_subnet_instance_has_no_public_ip_unless_asked(lab, ec2, debian_ami):
    plain = launch(ec2, debian_ami, subnet="Private subnet C", profile=False)
    asked = ec2.run_instances(ImageId=debian_ami, MinCount=1, MaxCount=1, NetworkInterfaces=[{
        "DeviceIndex": 0, "SubnetId": subnet_id(ec2, "Private subnet A"), "AssociatePublicIpAddress": True}]
    )["Instances"][0]["InstanceId"]
    try:
        d = wait_state(ec2, plain, "running")
        assert d["PrivateIpAddress"].startswith("10.0.200.") and "PublicIpAddress" not in d
        d = wait_state(ec2, asked, "running")
        assert d["PrivateIpAddress"].startswith("10.0.100.") and d["PublicIpAddress"]
    finally:
        ec2.terminate_instances(InstanceIds=[plain, asked])


def test_user_data_runs_once_with_cloud_init_output(lab, ec2, ssm, public_instance):
    wait_state(ec2, public_instance, "running")
    out = run_until_success(ssm, public_instance, ["grep -q finished /var/log/cloud-init-output.log",
                                                   "cat /var/log/cloud-init-output.log"],
                            "user data finished")["StandardOutputContent"]
    assert "user data ran as root" in out and "to-stderr" in out
    pid = container(lab, public_instance)["leader_pid"]
    ec2.reboot_instances(InstanceIds=[public_instance])
    wait_for("rebooted container", lambda: container(lab, public_instance)["leader_pid"] not in (None, pid),
             BOOT_WAIT)
    result = run_until_success(ssm, public_instance, ["cat /root/user-data-runs; systemctl is-active lab-init"],
                               "agent back after the reboot")
    assert result["StandardOutputContent"] == "ran\nactive\n"


def test_gzipped_user_data_is_unpacked(lab, ec2, ssm, ubuntu_ami):
    script = b"#!/bin/sh\necho gz-ok > /root/gz\n"
    iid = launch(ec2, ubuntu_ami, UserData=gzip.compress(script))  # boto3 base64-encodes it, as the API wants
    try:
        wait_state(ec2, iid, "running")
        result = run_until_success(ssm, iid, ["cat /root/gz"], "gzipped user data")
        assert result["StandardOutputContent"] == "gz-ok\n"
    finally:
        ec2.terminate_instances(InstanceIds=[iid])


def test_metadata_requires_a_token_when_http_tokens_required(lab, ec2, ssm, ubuntu_ami):
    iid = launch(ec2, ubuntu_ami, UserData="#!/bin/sh\necho meta\n",
                 MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"})
    try:
        wait_state(ec2, iid, "running")
        wait_online(ssm, iid)
        imds = "http://169.254.169.254/latest"
        out = run_command(ssm, iid, [
            f"curl -s -o /dev/null -w '%{{http_code}}\\n' {imds}/meta-data/instance-id",
            f"T=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' {imds}/api/token)",
            f"curl -s -H \"X-aws-ec2-metadata-token: $T\" {imds}/meta-data/instance-id; echo",
            f"curl -s -H \"X-aws-ec2-metadata-token: $T\" {imds}/user-data",
            f"curl -s -o /dev/null -w '%{{http_code}}\\n' -H 'X-aws-ec2-metadata-token: forged' {imds}/user-data",
        ])["StandardOutputContent"]
        assert out.splitlines() == ["401", iid, "#!/bin/sh", "echo meta", "401"]
    finally:
        ec2.terminate_instances(InstanceIds=[iid])


def test_stop_start_and_terminate_act_on_the_container(lab, ec2, debian_ami):
    iid = launch(ec2, debian_ami, profile=False)
    wait_state(ec2, iid, "running")
    pid = container(lab, iid)["leader_pid"]
    ec2.stop_instances(InstanceIds=[iid])
    assert describe(ec2, iid)["State"]["Name"] in ("stopping", "stopped")
    wait_state(ec2, iid, "stopped")
    assert container(lab, iid)["container"] is False
    ec2.start_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "running")
    assert container(lab, iid)["leader_pid"] not in (None, pid)
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    assert container(lab, iid) is None and iid not in netns_names()
