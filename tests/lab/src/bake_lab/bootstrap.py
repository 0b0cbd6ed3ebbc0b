"""What a fresh lab holds besides moto's defaults: the workshops' networks (VPC-Lab, and My-VPC of the Session
Manager workshop) and profiles, the base AMIs of two families (Debian's without the SSM agent, Ubuntu's with it)
and default VPCs routed to the internet."""
import datetime
import hashlib
import json

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import EC2Backend, ec2_backends
from moto.ec2.models.amis import Ami
from moto.ssm.models import Parameter, ssm_backends

from .control import INTERNAL_KEY

WORKSHOP_REGION = "ap-northeast-2"
# The workshops' VPC-Lab in a second region, for distribution (issue 14): the same Name tags, its own CIDR
# (the lab's router keys subnet bridges by CIDR, so two regions' subnets must not overlap).
SECOND_REGION = "us-east-1"
WORKSHOP_CIDRS = {WORKSHOP_REGION: "10.0", SECOND_REGION: "10.1"}
BASE_IMAGE_REGIONS = ["ap-northeast-2", "us-east-1", "us-west-2", "eu-west-1"]
DEBIAN_OWNER = "136693071363"  # the account Debian publishes its official AMIs from
DEBIAN_PARAMETERS = ["/aws/service/debian/release/bookworm/latest/amd64", "/aws/service/debian/release/12/latest/amd64"]
SSM_ROLE_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
# The family whose AMIs ship the SSM agent: Ubuntu Server as Canonical publishes it.
CANONICAL_OWNER = "099720109477"
UBUNTU_PARAMETERS = ["/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
                     "/aws/service/canonical/ubuntu/server/noble/stable/current/amd64/hvm/ebs-gp3/ami-id"]


def _client(endpoint: str, service: str, region: str):
    return boto3.client(service, endpoint_url=endpoint, region_name=region,
                        aws_access_key_id=INTERNAL_KEY, aws_secret_access_key="lab")


def _tag(name: str, kind: str) -> list:
    return [{"ResourceType": kind, "Tags": [{"Key": "Name", "Value": name}]}]


def workshop_network(endpoint: str, region: str = WORKSHOP_REGION) -> dict:
    """VPC-Lab as the workshops build it: public subnets A/C via an IGW, private A/C via a NAT gateway. In
    ap-northeast-2 it is 10.0.0.0/16, in us-east-1 10.1.0.0/16 (same names, same layout)."""
    ec2 = _client(endpoint, "ec2", region)
    net = WORKSHOP_CIDRS[region]
    vpc = ec2.create_vpc(CidrBlock=f"{net}.0.0/16", TagSpecifications=_tag("VPC-Lab", "vpc"))["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    igw = ec2.create_internet_gateway(TagSpecifications=_tag("VPC-Lab-IGW", "internet-gateway"))
    igw = igw["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    subnets = {}
    for name, cidr, zone in [("Public subnet A", f"{net}.10.0/24", "a"),
                             ("Public subnet C", f"{net}.20.0/24", "c"),
                             ("Private subnet A", f"{net}.100.0/24", "a"),
                             ("Private subnet C", f"{net}.200.0/24", "c")]:
        sid = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=region + zone,
                                TagSpecifications=_tag(name, "subnet"))["Subnet"]["SubnetId"]
        if name.startswith("Public"):
            ec2.modify_subnet_attribute(SubnetId=sid, MapPublicIpOnLaunch={"Value": True})
        subnets[name] = sid
    public_rt = ec2.create_route_table(VpcId=vpc, TagSpecifications=_tag("VPC-Lab-public", "route-table"))
    public_rt = public_rt["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=public_rt, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=subnets["Public subnet A"], AllocationId=eip,
                                 TagSpecifications=_tag("VPC-Lab-NAT", "natgateway"))["NatGateway"]["NatGatewayId"]
    private_rt = ec2.create_route_table(VpcId=vpc, TagSpecifications=_tag("VPC-Lab-private", "route-table"))
    private_rt = private_rt["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=private_rt, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
    for name, sid in subnets.items():
        ec2.associate_route_table(RouteTableId=public_rt if name.startswith("Public") else private_rt, SubnetId=sid)
    return {"vpc": vpc, "subnets": subnets, "region": region, "cidr": f"{net}.0.0/16"}


def session_manager_network(endpoint: str) -> dict:
    """My-VPC as the Session Manager workshop (001) has it before its NAT step: an internet gateway, a public
    subnet for the NAT it adds while packages install, two private subnets sharing "my-route-private" with no
    default route (no NAT, no endpoints), the service instances' group "my-SG-private-service"."""
    ec2 = _client(endpoint, "ec2", WORKSHOP_REGION)
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16", TagSpecifications=_tag("My-VPC", "vpc"))["Vpc"]["VpcId"]
    # Interface endpoints with private DNS need both (the workshop's endpoints step relies on them).
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsSupport={"Value": True})
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    igw = ec2.create_internet_gateway(TagSpecifications=_tag("my-igw", "internet-gateway"))
    igw = igw["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    subnets = {}
    for name, cidr, zone in [("my-subnet-public01", "10.20.1.0/24", "a"),
                             ("my-subnet-private01", "10.20.10.0/24", "a"),
                             ("my-subnet-private02", "10.20.20.0/24", "b")]:
        subnets[name] = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=WORKSHOP_REGION + zone,
                                          TagSpecifications=_tag(name, "subnet"))["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=subnets["my-subnet-public01"], MapPublicIpOnLaunch={"Value": True})
    public_rt = ec2.create_route_table(VpcId=vpc, TagSpecifications=_tag("my-route-public", "route-table"))
    public_rt = public_rt["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=public_rt, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    ec2.associate_route_table(RouteTableId=public_rt, SubnetId=subnets["my-subnet-public01"])
    private_rt = ec2.create_route_table(VpcId=vpc, TagSpecifications=_tag("my-route-private", "route-table"))
    private_rt = private_rt["RouteTable"]["RouteTableId"]
    for name in ("my-subnet-private01", "my-subnet-private02"):
        ec2.associate_route_table(RouteTableId=private_rt, SubnetId=subnets[name])
    group = ec2.create_security_group(GroupName="my-SG-private-service", VpcId=vpc,
                                      Description="the private service instances (Session Manager workshop)",
                                      TagSpecifications=_tag("my-SG-private-service", "security-group"))["GroupId"]
    return {"vpc": vpc, "subnets": subnets, "route_tables": {"my-route-public": public_rt,
                                                             "my-route-private": private_rt},
            "internet_gateway": igw, "security_group": group}


def ssm_instance_profile(endpoint: str) -> None:
    """The instance profiles the workshops attach for Session Manager and Run Command: SSMInstanceProfile
    (Immersion Day) and MySSMRoleForServiceInstance (Session Manager workshop), each a role of that name with
    AmazonSSMManagedInstanceCore, as the console's "EC2" role makes them."""
    iam = _client(endpoint, "iam", "us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "ec2.amazonaws.com"}}]}
    for name in ("SSMInstanceProfile", "MySSMRoleForServiceInstance"):
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
        iam.attach_role_policy(RoleName=name, PolicyArn=SSM_ROLE_POLICY)
        iam.create_instance_profile(InstanceProfileName=name)
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


def debian_images(built: str, build_number: int) -> dict[str, str]:
    """Register the base image in each region as Debian publishes it (no SSM agent); returns region -> AMI id."""
    return _publish(f"debian-12-amd64-{built}-{build_number}", f"Debian 12 ({built}-{build_number})",
                    DEBIAN_OWNER, DEBIAN_PARAMETERS, built, "/dev/xvda")


def ubuntu_images(built: str) -> dict[str, str]:
    """Register the agent-preinstalled family as Canonical publishes Ubuntu Server; returns region -> AMI id.
    (Instances still run the lab's Debian 12 userland, with the agent installed and enabled.)"""
    name = f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-{built}"
    return _publish(name, "Canonical, Ubuntu, 24.04, amd64 noble image", CANONICAL_OWNER, UBUNTU_PARAMETERS,
                    built, "/dev/sda1")


def _publish(name: str, description: str, owner: str, parameters: list[str], built: str,
             root_device: str) -> dict[str, str]:
    created = datetime.datetime.strptime(built, "%Y%m%d").replace(tzinfo=datetime.UTC)
    ids = {}
    for region in BASE_IMAGE_REGIONS:
        backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
        # A public AMI keeps its id: the same after a lab reset, so ids a client read before it stay valid.
        ami_id = "ami-" + hashlib.sha256(f"{owner}/{name}/{region}".encode()).hexdigest()[:17]
        ami = Ami(backend, ami_id, name=name, description=description,
                  owner_id=owner, public=True, architecture="x86_64", virtualization_type="hvm",
                  hypervisor="xen", root_device_type="ebs", root_device_name=root_device, region_name=region,
                  creation_date=created, boot_mode="uefi-preferred", image_location=f"{owner}/{name}")
        backend.amis[ami.id] = ami
        ssm = ssm_backends[DEFAULT_ACCOUNT_ID][region]
        for param in parameters:
            ssm._parameters[param].append(Parameter(
                account_id=DEFAULT_ACCOUNT_ID, name=param, value=ami.id, parameter_type="String",
                description=None, allowed_pattern=None, keyid=None, last_modified_date=created, version=1,
                data_type="aws:ec2:image"))
        ids[region] = ami.id
    return ids


def default_vpcs_as_aws() -> None:
    """Default VPCs as EC2 makes them: an internet gateway attached and 0.0.0.0/0 to it in the main route
    table (moto makes neither), so default-subnet instances with public IPs reach AWS's endpoints."""
    if getattr(EC2Backend.create_default_vpc, "lab_patched", False):
        return
    original = EC2Backend.create_default_vpc

    def create_default_vpc(backend):
        vpc = original(backend)
        igw = backend.create_internet_gateway()
        backend.attach_internet_gateway(igw.id, vpc.id)
        main = next(t for t in backend.route_tables.values() if t.vpc_id == vpc.id and t.main_association_id)
        backend.create_route(main.id, "0.0.0.0/0", gateway_id=igw.id)
        return vpc

    create_default_vpc.lab_patched = True
    EC2Backend.create_default_vpc = create_default_vpc
