"""A second region: the workshops' VPC-Lab exists in us-east-1 too (same names, its own CIDR), and an instance
launched there is wired, addressed and reachable as in ap-northeast-2."""
from conftest import PAGE_USER_DATA, USER_DATA_WAIT, http_get, launch, runner_group, wait_for, wait_state

SECOND = "us-east-1"
NAMES = ["Public subnet A", "Public subnet C", "Private subnet A", "Private subnet C"]


def test_vpc_lab_is_in_us_east_1_with_its_own_cidr(lab):
    home, second = lab.client("ec2"), lab.client("ec2", SECOND)
    cidrs = {}
    for region, ec2 in (("home", home), ("second", second)):
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"]
        assert len(vpcs) == 1, (region, vpcs)
        cidrs[region] = vpcs[0]["CidrBlock"]
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}])["Subnets"]
        names = sorted(t["Value"] for s in subnets for t in s.get("Tags", []) if t["Key"] == "Name")
        assert names == sorted(NAMES), (region, names)
        public = [s for s in subnets if any(t["Value"].startswith("Public") for t in s.get("Tags", []))]
        assert all(s["MapPublicIpOnLaunch"] for s in public)
        nats = ec2.describe_nat_gateways(Filter=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}])["NatGateways"]
        assert [n["State"] for n in nats] == ["available"], (region, nats)
        igws = ec2.describe_internet_gateways(
            Filters=[{"Name": "attachment.vpc-id", "Values": [vpcs[0]["VpcId"]]}])["InternetGateways"]
        assert len(igws) == 1
    assert cidrs == {"home": "10.0.0.0/16", "second": "10.1.0.0/16"}
    assert lab.get_json("/_lab/info")["networks"][SECOND]["cidr"] == "10.1.0.0/16"


def test_an_instance_in_us_east_1_answers_http_from_the_runner(lab, ubuntu_ami):
    ec2 = lab.client("ec2", SECOND)
    image = lab.get_json("/_lab/info")["ubuntu_images"][SECOND]
    group = runner_group(lab, ec2, "second-region-web")
    iid = launch(ec2, image, profile=False, SecurityGroupIds=[group], UserData=PAGE_USER_DATA.format(page="east"))
    try:
        desc = wait_state(ec2, iid, "running")
        assert desc["Placement"]["AvailabilityZone"] == "us-east-1a"
        assert desc["PrivateIpAddress"].startswith("10.1.10."), desc["PrivateIpAddress"]
        got = wait_for("the page in us-east-1", lambda: (r := http_get(f"http://{desc['PublicIpAddress']}/"))
                       and r[0] == 200 and r, USER_DATA_WAIT)
        assert got[1] == f"east {iid}\n"
    finally:
        ec2.terminate_instances(InstanceIds=[iid])
        wait_state(ec2, iid, "terminated")
