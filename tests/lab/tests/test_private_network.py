"""The Session Manager workshop's private network with boto3: My-VPC as a fresh lab holds it, NAT gateways and
Elastic IPs with EC2's states and latencies, interface endpoints with private DNS, and an instance in a private
subnet that reaches the mirror only through an available NAT gateway and SSM only with a path."""
import subprocess
import time

import pytest
from botocore.exceptions import ClientError

from conftest import AGENT_WAIT, BOOT_WAIT, REGION, container, wait_for, wait_state

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


def nat_gateway(ec2, subnet: str, tags: list[dict] | None = None) -> tuple[str, str]:
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    spec = {"TagSpecifications": [{"ResourceType": "natgateway", "Tags": tags}]} if tags else {}
    nat = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=allocation, **spec)["NatGateway"]
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


def test_a_nat_gateway_is_pending_then_available_and_holds_its_address_until_deleted(lab, ec2, latency):
    latency(nat_gateway_available=3, nat_gateway_deleted=3)
    public01 = named(ec2, "subnet", "my-subnet-public01")
    private = named(ec2, "route-table", "my-route-private")
    started = time.monotonic()
    nat_id, allocation = nat_gateway(ec2, public01, tags=[{"Key": "bake:run-id", "Value": "lab-test"}])
    assert nat_state(ec2, nat_id) == "pending"
    tagged = ec2.describe_nat_gateways(Filters=[{"Name": "tag:bake:run-id", "Values": ["lab-test"]}])
    assert [n["NatGatewayId"] for n in tagged["NatGateways"]] == [nat_id], "tag filters select"
    assert code(ec2.release_address, AllocationId=allocation) == "InvalidIPAddress.InUse"
    # A route to a pending gateway is accepted (it carries traffic once the gateway is available).
    ec2.create_route(RouteTableId=private, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat_id)
    assert default_route(ec2, private)["State"] == "active"
    wait_for(f"{nat_id} available", lambda: nat_state(ec2, nat_id) == "available", STATE_WAIT)
    assert time.monotonic() - started >= 3, "available only after nat_gateway_available"
    address = ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]
    described = ec2.describe_nat_gateways(NatGatewayIds=[nat_id])["NatGateways"][0]
    assert described["NatGatewayAddresses"][0]["PublicIp"] == address["PublicIp"]
    assert address["PublicIp"].startswith(lab.info["public_range"].rsplit(".", 1)[0] + ".")
    assert address.get("AssociationId"), "associated with the gateway's interface"
    deleting_at = time.monotonic()
    ec2.delete_nat_gateway(NatGatewayId=nat_id)
    assert nat_state(ec2, nat_id) == "deleting"
    assert code(ec2.release_address, AllocationId=allocation) == "InvalidIPAddress.InUse"
    wait_for(f"{nat_id} deleted", lambda: nat_state(ec2, nat_id) == "deleted", STATE_WAIT)
    assert time.monotonic() - deleting_at >= 3, "deleted only after nat_gateway_deleted"
    assert default_route(ec2, private)["State"] == "blackhole", "the route stays, to nothing"
    assert not ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0].get("AssociationId")
    ec2.release_address(AllocationId=allocation)
    ec2.delete_route(RouteTableId=private, DestinationCidrBlock="0.0.0.0/0")
    assert nat_id in [n["NatGatewayId"] for n in ec2.describe_nat_gateways()["NatGateways"]], "deleted stays listed"
    assert code(ec2.delete_nat_gateway, NatGatewayId="nat-0123456789abcdef0") == "NatGatewayNotFound"
    assert code(ec2.create_route, RouteTableId=private, DestinationCidrBlock="0.0.0.0/0",
                NatGatewayId="nat-0123456789abcdef0") == "InvalidNatGatewayID.NotFound"


def test_a_nat_gateway_in_a_vpc_without_an_internet_gateway_fails(lab, ec2):
    vpc = ec2.create_vpc(CidrBlock="10.31.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.31.1.0/24")["Subnet"]["SubnetId"]
    nat_id, allocation = nat_gateway(ec2, subnet)
    wait_for(f"{nat_id} failed", lambda: nat_state(ec2, nat_id) == "failed", STATE_WAIT)
    nat = ec2.describe_nat_gateways(NatGatewayIds=[nat_id])["NatGateways"][0]
    assert nat["FailureCode"] == "Gateway.NotAttached" and vpc in nat["FailureMessage"]
    ec2.release_address(AllocationId=allocation)  # a failed gateway holds no address
    ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_vpc(VpcId=vpc)


def test_elastic_ips_stop_at_the_regions_quota(lab, ec2):
    taken = len(ec2.describe_addresses()["Addresses"])  # VPC-Lab's NAT gateway holds one
    mine = [ec2.allocate_address(Domain="vpc")["AllocationId"] for _ in range(5 - taken)]
    try:
        assert code(ec2.allocate_address, Domain="vpc") == "AddressLimitExceeded"
    finally:
        for allocation in mine:
            ec2.release_address(AllocationId=allocation)
    ec2.release_address(AllocationId=ec2.allocate_address(Domain="vpc")["AllocationId"])


def test_interface_endpoints_are_pending_then_available_and_refuse_what_aws_refuses(lab, ec2, latency):
    latency(vpc_endpoint_available=3, vpc_endpoint_deleted=2)
    vpc = named(ec2, "vpc", "My-VPC")
    subnets = [named(ec2, "subnet", "my-subnet-private01"), named(ec2, "subnet", "my-subnet-private02")]
    group = named(ec2, "security-group", "my-SG-private-service")
    started = time.monotonic()
    endpoint = ec2.create_vpc_endpoint(VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.ssm",
                                       VpcEndpointType="Interface", SubnetIds=subnets, SecurityGroupIds=[group],
                                       PrivateDnsEnabled=True)["VpcEndpoint"]
    endpoint_id = endpoint["VpcEndpointId"]
    try:
        assert endpoint["State"] == "pending"
        enis = ec2.describe_network_interfaces(NetworkInterfaceIds=endpoint["NetworkInterfaceIds"])
        by_subnet = {e["SubnetId"]: e["PrivateIpAddress"] for e in enis["NetworkInterfaces"]}
        assert sorted(by_subnet) == sorted(subnets)
        assert by_subnet[subnets[0]].startswith("10.20.10.") and by_subnet[subnets[1]].startswith("10.20.20.")
        again = dict(VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.ssm", VpcEndpointType="Interface",
                     SubnetIds=subnets[:1], SecurityGroupIds=[group])
        assert code(ec2.create_vpc_endpoint, **again) == "InvalidParameter", "a second private DNS for ssm"
        wait_for(f"{endpoint_id} available", lambda: endpoint_state(ec2, endpoint_id) == "available", STATE_WAIT)
        assert time.monotonic() - started >= 3
    finally:
        ec2.delete_vpc_endpoints(VpcEndpointIds=[endpoint_id])
    assert endpoint_state(ec2, endpoint_id) == "deleting"
    wait_for(f"{endpoint_id} deleted", lambda: endpoint_state(ec2, endpoint_id) in ("deleted", None), STATE_WAIT)
    wait_for(f"{endpoint_id} gone", lambda: endpoint_state(ec2, endpoint_id) is None, STATE_WAIT)
    # Private DNS needs the VPC's DNS hostnames (a new VPC has them off).
    bare = ec2.create_vpc(CidrBlock="10.32.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=bare, CidrBlock="10.32.1.0/24")["Subnet"]["SubnetId"]
    with pytest.raises(ClientError) as e:
        ec2.create_vpc_endpoint(VpcId=bare, ServiceName=f"com.amazonaws.{REGION}.ssm", VpcEndpointType="Interface",
                                SubnetIds=[subnet], PrivateDnsEnabled=True)
    assert e.value.response["Error"]["Code"] == "InvalidParameter"
    assert "enableDnsHostnames" in e.value.response["Error"]["Message"]
    assert ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [bare]}])["VpcEndpoints"] == []
    ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_vpc(VpcId=bare)


@pytest.fixture
def private_instance(lab, ec2, ubuntu_ami):
    """An instance of the agent family in my-subnet-private01 with the workshop's profile and a group of its own
    (all outbound, no inbound), its agent running."""
    vpc = named(ec2, "vpc", "My-VPC")
    group = ec2.create_security_group(GroupName=f"builder-{time.time_ns()}", Description="the private builder",
                                      VpcId=vpc)["GroupId"]
    iid = ec2.run_instances(ImageId=ubuntu_ami, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                            SubnetId=named(ec2, "subnet", "my-subnet-private01"), SecurityGroupIds=[group],
                            IamInstanceProfile={"Name": "MySSMRoleForServiceInstance"})["Instances"][0]["InstanceId"]
    yield iid, group
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated", BOOT_WAIT)
    ec2.delete_security_group(GroupId=group)


def test_a_private_instance_reaches_the_mirror_only_through_an_available_nat_gateway(lab, ec2, ssm, latency,
                                                                                   private_instance):
    iid, _ = private_instance
    # Longer than the fetches made while it is pending: a dropped SYN is sent again, and would pass once it is not.
    latency(nat_gateway_available=3 * MIRROR_WAIT)
    described = wait_state(ec2, iid, "running")
    assert not described.get("PublicIpAddress")
    time.sleep(SETTLE)
    assert mirror_status(lab, iid) == "000", "no route out: the mirror is out of reach"
    assert ping(ssm, iid) is None, "no NAT, no endpoints: never Online"
    private = named(ec2, "route-table", "my-route-private")
    nat_id, allocation = nat_gateway(ec2, named(ec2, "subnet", "my-subnet-public01"))
    try:
        ec2.create_route(RouteTableId=private, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat_id)
        assert nat_state(ec2, nat_id) == "pending" and mirror_status(lab, iid) == "000", "a pending gateway"
        wait_for(f"{nat_id} available", lambda: nat_state(ec2, nat_id) == "available", STATE_WAIT)
        assert mirror_status(lab, iid) == "200"
        wait_for(f"{iid} Online through the NAT gateway", lambda: ping(ssm, iid) == "Online", AGENT_WAIT)
        assert online_path(lab, iid) == "nat gateway"
        ec2.delete_route(RouteTableId=private, DestinationCidrBlock="0.0.0.0/0")
        assert mirror_status(lab, iid) == "000", "the route is gone: so is the way out"
        wait_for(f"{iid} ConnectionLost", lambda: ping(ssm, iid) == "ConnectionLost", AGENT_WAIT)
        ec2.create_route(RouteTableId=private, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat_id)
        assert mirror_status(lab, iid) == "200"
        ec2.delete_nat_gateway(NatGatewayId=nat_id)
        assert mirror_status(lab, iid) == "000", "a deleting gateway carries nothing"
    finally:
        if default_route(ec2, private) is not None:
            ec2.delete_route(RouteTableId=private, DestinationCidrBlock="0.0.0.0/0")
        remove_nat_gateway(ec2, nat_id, allocation)


def test_interface_endpoints_answer_inside_their_vpc_and_admit_only_their_groups(lab, ec2, ssm, ubuntu_ami, latency,
                                                                                private_instance):
    iid, builder = private_instance
    latency(vpc_endpoint_available=3)
    vpc = named(ec2, "vpc", "My-VPC")
    service_address = lab.info["service_address"]
    ssm_name = f"ssm.{REGION}.amazonaws.com"
    endpoint_group = ec2.create_security_group(GroupName=f"endpoints-{time.time_ns()}", VpcId=vpc,
                                               Description="443 from the builder")["GroupId"]
    https = [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "UserIdGroupPairs": [{"GroupId": builder}]}]
    ec2.authorize_security_group_ingress(GroupId=endpoint_group, IpPermissions=https)
    outside = ec2.run_instances(ImageId=ubuntu_ami, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                SubnetId=named(ec2, "subnet", "Public subnet A"))["Instances"][0]["InstanceId"]
    endpoints = []
    try:
        wait_state(ec2, iid, "running")
        assert inside(lab, iid, "getent", "hosts", ssm_name).stdout.split()[0] == service_address
        for service in SSM_SERVICES:
            endpoints.append(ec2.create_vpc_endpoint(
                VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.{service}", VpcEndpointType="Interface",
                SubnetIds=[named(ec2, "subnet", "my-subnet-private01")], SecurityGroupIds=[endpoint_group],
                PrivateDnsEnabled=True)["VpcEndpoint"]["VpcEndpointId"])
        time.sleep(1)
        assert ping(ssm, iid) is None, "pending endpoints carry nothing"
        wait_for(f"{iid} Online through the endpoints", lambda: ping(ssm, iid) == "Online", AGENT_WAIT)
        assert online_path(lab, iid) == "vpc endpoints"
        enis = ec2.describe_vpc_endpoints(VpcEndpointIds=endpoints[:1])["VpcEndpoints"][0]["NetworkInterfaceIds"]
        address = ec2.describe_network_interfaces(NetworkInterfaceIds=enis)["NetworkInterfaces"][0]["PrivateIpAddress"]
        assert inside(lab, iid, "getent", "hosts", ssm_name).stdout.split()[0] == address, "private DNS inside"
        wait_state(ec2, outside, "running")
        assert inside(lab, outside, "getent", "hosts", ssm_name).stdout.split()[0] == service_address, \
            "another VPC still gets the public name"
        url = f"https://{ssm_name}/"
        reach = ("curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", url)
        assert inside(lab, iid, *reach).returncode == 0, "HTTPS to the endpoint from the builder's group"
        ec2.revoke_security_group_ingress(GroupId=endpoint_group, IpPermissions=https)
        assert inside(lab, iid, *reach).returncode != 0, "the endpoint's group no longer admits 443: dropped"
        ec2.authorize_security_group_ingress(GroupId=endpoint_group, IpPermissions=https)
        assert inside(lab, iid, *reach).returncode == 0
        assert mirror_status(lab, iid) == "000", "endpoints are no way to the internet"
    finally:
        ec2.terminate_instances(InstanceIds=[outside])
        if endpoints:
            ec2.delete_vpc_endpoints(VpcEndpointIds=endpoints)
            for endpoint in endpoints:
                wait_for(f"{endpoint} gone", lambda e=endpoint: endpoint_state(ec2, e) is None, STATE_WAIT)
        wait_state(ec2, outside, "terminated")
        ec2.delete_security_group(GroupId=endpoint_group)
