"""`make demo`: bake the Debian nginx example in the running lab, boot an instance from the AMI
and print the page it serves."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "nginx-debian.toml"
REGION = "ap-northeast-2"
BOOT_TIMEOUT = 120  # an instance of the baked AMI boots in seconds in the lab; 2 minutes is broken
PAGE_TIMEOUT = 60  # nginx and the app start with systemd; a minute covers a slow machine


def main() -> int:
    endpoint = sys.argv[1]
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_REGION=REGION,
               AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo",
               BAKE_CHECKIP_URL=f"{endpoint}/_lab/checkip")
    bake = str(ROOT / "target" / "debug" / "bake")
    step(f"bake ami web  (config {EXAMPLE.relative_to(ROOT)}, lab at {endpoint})")
    result = subprocess.run([bake, "-c", str(EXAMPLE), "-o", "json", "ami", "web"],
                            env=env, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        print(f"bake ami failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode
    baked = json.loads(result.stdout)["images"][0]
    skipped = " (already baked: same inputs)" if baked["skipped"] else ""
    step(f"baked {baked['ami_id']} {baked['ami_name']}{skipped}, digest {baked['digest'][:12]}")

    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION,
                       aws_access_key_id="demo", aws_secret_access_key="demo")
    subnet = ec2.describe_subnets(Filters=[{"Name": "tag:Name", "Values": ["Public subnet A"]}])["Subnets"][0]
    runner = urllib.request.urlopen(f"{endpoint}/_lab/checkip", timeout=10).read().decode().strip()
    group = ec2.create_security_group(GroupName=f"demo-web-{int(time.time())}", VpcId=subnet["VpcId"],
                                      Description="demo: HTTP from this machine")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpProtocol="tcp", FromPort=80, ToPort=80,
                                         CidrIp=f"{runner}/32")
    instance = ec2.run_instances(ImageId=baked["ami_id"], InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                 SubnetId=subnet["SubnetId"], SecurityGroupIds=[group],
                                 MetadataOptions={"HttpTokens": "required"},
                                 TagSpecifications=[{"ResourceType": "instance",
                                                     "Tags": [{"Key": "Name", "Value": "demo web"}]}])
    instance_id = instance["Instances"][0]["InstanceId"]
    step(f"launched {instance_id} from {baked['ami_id']} (no user data: the AMI holds the server)")
    ip = wait_running(ec2, instance_id)
    step(f"GET http://{ip}/")
    print(wait_page(f"http://{ip}/"))
    step("the lab keeps running: `make lab-down` stops it and removes everything it made")
    return 0


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def wait_running(ec2, instance_id: str) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        if found["State"]["Name"] == "running":
            return found["PublicIpAddress"]
        time.sleep(0.5)
    raise SystemExit(f"{instance_id} did not run within {BOOT_TIMEOUT} s")


def wait_page(url: str) -> str:
    deadline = time.monotonic() + PAGE_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return response.read().decode()
        except OSError as e:
            last = str(e)
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {PAGE_TIMEOUT} s: {last}")


if __name__ == "__main__":
    sys.exit(main())
