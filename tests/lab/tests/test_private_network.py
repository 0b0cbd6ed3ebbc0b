"""The Session Manager workshop's private network with boto3: My-VPC as a fresh lab holds it, NAT gateways and
Elastic IPs with EC2's states and latencies, interface endpoints with private DNS, and an instance in a private
subnet that reaches the mirror only through an available NAT gateway and SSM only with a path."""
import subprocess

import pytest
from botocore.exceptions import ClientError

from conftest import REGION, container, wait_for

MIRROR = "http://deb.debian.org/debian/dists/bookworm/InRelease"  # through the apt proxy, as apt fetches it
MIRROR_WAIT = 3  # seconds for one fetch of the mirror's index (cached or passed through: well under a second)
SSM_SERVICES = ("ssm", "ssmmessages", "ec2messages")
SETTLE = 4  # long enough for an agent (if it could) to come Online: ssm_online 2 s, the watch polls each 0.5 s
STATE_WAIT = 30  # a NAT gateway or endpoint settles within its latency (a few seconds here) of the call


def named(ec2, kind: str, name: str) -> str:
    """The id of the VPC, subnet, route table or group tagged Name=name."""
    call, key, field = {"vpc": ("describe_vpcs", "Vpcs", "VpcId"),
                        "subnet": ("describe_subnets", "Subnets", "SubnetId"),
                        "route-table": ("describe_route_tables", "RouteTables", "RouteTableId"),
                        "security-group": ("describe_security_groups", "SecurityGroups", "GroupId")}[kind]
    found = getattr(ec2, call)(Filters=[{"Name": "tag:Name", "Values": [name]}])[key]
    assert len(found) == 1, f"{kind} {name}: {found}"
    return found[0][field]


def code(call, **params) -> str:
    with pytest.raises(ClientError) as e:
        call(**params)
    return e.value.response["Error"]["Code"]


def nat_state(ec2, nat_id: str) -> str:
    return ec2.describe_nat_gateways(NatGatewayIds=[nat_id])["NatGateways"][0]["State"]


def endpoint_state(ec2, endpoint_id: str) -> str | None:
    """The endpoint's state; None once it is gone."""
    try:
        return ec2.describe_vpc_endpoints(VpcEndpointIds=[endpoint_id])["VpcEndpoints"][0]["State"]
    except ClientError as e:
        if e.response["Error"]["Code"] != "InvalidVpcEndpointId.NotFound":
            raise
        return None


def default_route(ec2, table: str) -> dict | None:
    routes = ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]["Routes"]
    return next((r for r in routes if r.get("DestinationCidrBlock") == "0.0.0.0/0"), None)


def inside(lab, instance_id: str, *command: str) -> subprocess.CompletedProcess:
    """A command in the instance's namespaces (its network, resolver, trust store), not through SSM."""
    pid = container(lab, instance_id)["leader_pid"]
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "-p", "--", *command],
                          capture_output=True, text=True, timeout=30)


def mirror_status(lab, instance_id: str) -> str:
    """The HTTP status of the mirror's index through the apt proxy from inside ("000": nothing answered)."""
    return inside(lab, instance_id, "curl", "-s", "-m", str(MIRROR_WAIT), "-x", "http://169.254.169.254:3142", "-o",
                  "/dev/null", "-w", "%{http_code}", MIRROR).stdout


def ping(ssm, instance_id: str) -> str | None:
    rows = ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])["InstanceInformationList"]
    return rows[0]["PingStatus"] if rows else None


def online_path(lab, instance_id: str) -> str | None:
    events = [e for e in lab.get_lines("/_lab/events")
              if e["event"] == "ssm_online" and e["instance_id"] == instance_id]
    return events[-1]["path"] if events else None


@pytest.fixture
def latency(lab):
    yield lambda **values: lab.post("/_lab/latency", values)
    lab.post("/_lab/latency", {"nat_gateway_available": 2, "nat_gateway_deleted": 2,
                               "vpc_endpoint_available": 2, "vpc_endpoint_deleted": 1})


def nat_gateway(ec2, subnet: str) -> tuple[str, str]:
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=allocation)["NatGateway"]
    assert nat["State"] == "pending"
    return nat["NatGatewayId"], allocation


def remove_nat_gateway(ec2, nat_id: str, allocation: str) -> None:
    ec2.delete_nat_gateway(NatGatewayId=nat_id)
    wait_for(f"{nat_id} deleted", lambda: nat_state(ec2, nat_id) == "deleted", STATE_WAIT)
    ec2.release_address(AllocationId=allocation)


def test_the_session_manager_workshop_network_is_there(lab, ec2):
    vpc = named(ec2, "vpc", "My-VPC")
    assert ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"] == "10.20.0.0/16"
    for attribute in ("enableDnsSupport", "enableDnsHostnames"):
        answer = ec2.describe_vpc_attribute(VpcId=vpc, Attribute=attribute)
        assert answer[attribute[0].upper() + attribute[1:]]["Value"] is True
    igw = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc]}])["InternetGateways"]
    assert len(igw) == 1
    expect = {"my-subnet-public01": ("10.20.1.0/24", "a"), "my-subnet-private01": ("10.20.10.0/24", "a"),
              "my-subnet-private02": ("10.20.20.0/24", "b")}
    for name, (cidr, zone) in expect.items():
        subnet = ec2.describe_subnets(SubnetIds=[named(ec2, "subnet", name)])["Subnets"][0]
        assert (subnet["VpcId"], subnet["CidrBlock"], subnet["AvailabilityZone"]) == (vpc, cidr, REGION + zone)
    public = default_route(ec2, named(ec2, "route-table", "my-route-public"))
    assert public["GatewayId"] == igw[0]["InternetGatewayId"]
    private = named(ec2, "route-table", "my-route-private")
    table = ec2.describe_route_tables(RouteTableIds=[private])["RouteTables"][0]
    assert {a.get("SubnetId") for a in table["Associations"]} == {named(ec2, "subnet", "my-subnet-private01"),
                                                                   named(ec2, "subnet", "my-subnet-private02")}
    assert default_route(ec2, private) is None, "no NAT route until the workshop adds one"
    assert ec2.describe_nat_gateways(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["NatGateways"] == []
    assert ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["VpcEndpoints"] == []
    group = ec2.describe_security_groups(GroupIds=[named(ec2, "security-group", "my-SG-private-service")])
    assert group["SecurityGroups"][0]["GroupName"] == "my-SG-private-service"
    iam = lab.client("iam")
    profile = iam.get_instance_profile(InstanceProfileName="MySSMRoleForServiceInstance")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["MySSMRoleForServiceInstance"]
    policies = iam.list_attached_role_policies(RoleName="MySSMRoleForServiceInstance")["AttachedPolicies"]
    assert [p["PolicyName"] for p in policies] == ["AmazonSSMManagedInstanceCore"]
