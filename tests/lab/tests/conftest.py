"""Pytest fixtures for the lab's own tests: one lab per session, clients, and bounded waiting helpers."""
import fcntl
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from bake_lab.client import REGION, LabClient, LabProcess  # noqa: F401 (tests import them from here)

LAB_DIR = Path(__file__).resolve().parent.parent  # tests/lab: the package's root
REPO = LAB_DIR.parent.parent

UBUNTU_PARAMETER = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"

# How long tests wait for the lab, each far above what it takes here (2 cores, warm caches):
BOOT_WAIT = 60       # a container boots (or powers off) in about a second
AGENT_WAIT = 30      # the agent is Online ssm_online (2 s by default) after its unit starts (at boot, or by user data)
USER_DATA_WAIT = 60  # short user data finishes within seconds of boot, a cached apt install within ~20 s
IMAGE_WAIT = 60      # a bake copies the upper dir (~100 MB: about a second) and waits image_available (1 s)
COMMAND_WAIT = 60    # the tests' commands take at most a few seconds (a cached apt install)

# A page naming the instance and its version, served at boot by systemd socket activation.
PAGE_USER_DATA = """#!/bin/bash
set -euo pipefail
TOKEN=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
ID=$(curl -s -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/instance-id)
mkdir -p /srv && echo "{page} $ID" > /srv/index.html
cat >/usr/local/sbin/page <<'SH'
#!/bin/bash
while IFS= read -r line && [ -n "${{line%$'\\r'}}" ]; do :; done
printf 'HTTP/1.0 200 OK\\r\\nContent-Length: %s\\r\\n\\r\\n' "$(wc -c </srv/index.html)"
cat /srv/index.html
SH
chmod +x /usr/local/sbin/page
printf '[Socket]\\nListenStream=80\\nAccept=yes\\n[Install]\\nWantedBy=sockets.target\\n' >/etc/systemd/system/page.socket
printf '[Service]\\nExecStart=/usr/local/sbin/page\\nStandardInput=socket\\nStandardOutput=socket\\n' >/etc/systemd/system/page@.service
systemctl daemon-reload
systemctl enable --now page.socket
"""  # noqa: E501 (shell)


def wait_for(what: str, fn, timeout: float, interval: float = 0.25):
    """Poll fn until it returns something truthy; fail the test with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 3) -> tuple[int, str] | None:
    """GET url; None while nothing answers (connection refused, timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (namespaces, mounts, nftables)")
    proc = LabProcess()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="session")
def ec2(lab):
    return lab.client("ec2")


@pytest.fixture(scope="session")
def ssm(lab):
    return lab.client("ssm")


@pytest.fixture(scope="session")
def debian_ami(ssm):
    """Debian's official AMI: no SSM agent, so never Online unless user data installs one."""
    return ssm.get_parameter(Name="/aws/service/debian/release/bookworm/latest/amd64")["Parameter"]["Value"]


@pytest.fixture(scope="session")
def ubuntu_ami(ssm):
    """The family that ships the SSM agent (installed and enabled), as Canonical publishes Ubuntu Server."""
    return ssm.get_parameter(Name=UBUNTU_PARAMETER)["Parameter"]["Value"]


def container(lab, instance_id: str) -> dict | None:
    """The lab's view of an instance's container (None once it is gone)."""
    return next((c for c in lab.get_json("/_lab/containers") if c["instance_id"] == instance_id), None)


def subnet_id(ec2, name: str) -> str:
    return ec2.describe_subnets(Filters=[{"Name": "tag:Name", "Values": [name]}])["Subnets"][0]["SubnetId"]


def describe(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def wait_state(ec2, instance_id: str, state: str, timeout: float = BOOT_WAIT) -> dict:
    """Wait for an instance state and return the instance's description."""
    return wait_for(f"{instance_id} {state}",
                    lambda: (d := describe(ec2, instance_id))["State"]["Name"] == state and d, timeout)


def launch(ec2, image_id: str, subnet: str = "Public subnet A", profile: bool = True, **kwargs) -> str:
    if profile:
        kwargs["IamInstanceProfile"] = {"Name": "SSMInstanceProfile"}
    if subnet:
        kwargs["SubnetId"] = subnet_id(ec2, subnet)
    resp = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro", **kwargs)
    return resp["Instances"][0]["InstanceId"]


def run_command(ssm, instance_id: str, commands: list[str], timeout: float = COMMAND_WAIT, **params) -> dict:
    """Send AWS-RunShellScript and wait for its terminal status."""
    parameters = {"commands": commands, **{k: [str(v)] for k, v in params.items()}}
    command_id = ssm.send_command(InstanceIds=[instance_id], DocumentName="AWS-RunShellScript",
                                  Parameters=parameters)["Command"]["CommandId"]

    def done():
        inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        return inv if inv["Status"] not in ("Pending", "InProgress", "Delayed") else None
    return wait_for(f"command {command_id}", done, timeout)


def launch_running(lab) -> str:
    """An instance of the Debian AMI in the given lab, waited for until running."""
    ec2, ssm = lab.client("ec2"), lab.client("ssm")
    ami = ssm.get_parameter(Name="/aws/service/debian/release/bookworm/latest/amd64")["Parameter"]["Value"]
    iid = launch(ec2, ami, profile=False)
    wait_state(ec2, iid, "running")
    return iid


def index_taken(index: int) -> bool:
    """Whether a live lab holds index `index` now (its launcher keeps an flock on the registration)."""
    lock = Path(f"/run/bake-lab/{index}/lock")
    if not lock.exists():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def leftovers(index: int, state_dir: str, instance_ids: list[str]) -> dict:
    """What a lab left on the host: its instances' namespaces, mounts, state dir and containers, and,
    unless another lab has taken its index since (labs run in parallel here), its router, link and nft table."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if state_dir in line]
    nspawn = subprocess.run(["pgrep", "-f", f"systemd-nspawn.*{state_dir}/"], capture_output=True, text=True).stdout
    found = {"instance netns": [i for i in instance_ids if f"bakelab{index}-{i}" in netns], "mounts": mounts,
             "state_dir": Path(state_dir).exists(), "nspawn": nspawn.split()}
    if not index_taken(index):
        links = subprocess.run(["ip", "-o", "link", "show", f"bl{index}h"], capture_output=True, text=True).stdout
        nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        found.update({"router netns": f"bakelab{index}-r" in netns.split(), "link": links.strip(),
                      "nft": f"table ip bakelab{index}" in nft.splitlines()})
    return {k: v for k, v in found.items() if v}


def wait_online(ssm, instance_id: str) -> None:
    """Wait for PingStatus Online (a rebooting instance is listed, ConnectionLost, until its agent is back)."""
    wait_for(f"{instance_id} Online in SSM", lambda: ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]},
                 {"Key": "PingStatus", "Values": ["Online"]}])["InstanceInformationList"], AGENT_WAIT)


def wait_image(ec2, image_id: str) -> dict:
    return wait_for(f"{image_id} available", lambda: (i := ec2.describe_images(ImageIds=[image_id])["Images"][0])
                    ["State"] == "available" and i, IMAGE_WAIT)


def run_until_success(ssm, instance_id: str, commands: list[str], what: str) -> dict:
    """Run commands until they succeed (e.g. until user data has made what they read); returns the invocation."""
    wait_online(ssm, instance_id)

    def attempt():
        try:
            r = run_command(ssm, instance_id, commands)
        except ClientError as e:  # Online can end between the wait and the send (a reboot): try again
            if e.response["Error"]["Code"] != "InvalidInstanceId":
                raise
            return None
        return r["Status"] == "Success" and r
    return wait_for(what, attempt, USER_DATA_WAIT, 0.5)


def runner_group(lab, ec2, name: str, port: int = 80) -> str:
    """A security group in VPC-Lab that admits the runner (the checkip address) on one TCP port, as a user
    would make one to reach an instance (security groups are enforced by default, as on AWS)."""
    vpc = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName=name, Description=f"{name}: the runner on {port}", VpcId=vpc)["GroupId"]
    runner = lab.request("/_lab/checkip").strip()
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": f"{runner}/32"}]}])
    return group
