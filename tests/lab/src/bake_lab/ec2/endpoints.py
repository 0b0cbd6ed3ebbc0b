"""Interface VPC endpoints as AWS runs them (moto makes them available at once, with addresses outside their
subnets and no DNS): pending -> available and deleting -> deleted (then gone) after settable latencies; one
network interface per subnet with an address of that subnet; private DNS refused without the VPC's DNS support
and hostnames, and for a second endpoint of the service in one VPC; the service's name answered inside that VPC
with the endpoint's addresses (dns.py asks `answer`); each address served by the lab's AWS front on 443 and
filtered by the endpoint's security groups (`filtered`, as a load balancer's)."""
import threading
import time

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import EC2Backend, ec2_backends
from moto.ec2.responses import EC2Response

from ..host import sh
from ..patching import ACCOUNT, before, replace
from . import secgroups
from .paths import flag

HTTPS = 443  # interface endpoints for AWS services answer HTTPS only


def dns_name(endpoint, region: str) -> str:
    """The public name an endpoint's private DNS takes over: com.amazonaws.REGION.X -> X.REGION.amazonaws.com."""
    service = endpoint.service_name[len(f"com.amazonaws.{region}."):]
    return f"{service}.{region}.amazonaws.com"


def is_interface(endpoint) -> bool:
    return (endpoint.vpc_endpoint_type or "").lower() == "interface"


class Endpoints:
    """The addresses of the lab's interface endpoints: on the router, served by the AWS front, in the filter."""

    def __init__(self, lab):
        self.lab = lab
        self.served: dict[str, tuple[str, str, object]] = {}  # address -> (region, endpoint id, endpoint)
        self._lock = threading.Lock()

    def addresses(self, backend, endpoint) -> list[str]:
        return [eni.private_ip_address for eni_id in endpoint.network_interface_ids
                if (eni := backend.enis.get(eni_id)) is not None]

    def serve(self, backend, endpoint) -> None:
        for address in self.addresses(backend, endpoint):
            with self._lock:
                if address in self.served:
                    continue
                self.served[address] = (backend.region_name, endpoint.id, endpoint)
            sh.run("ip", "-n", self.lab.net.router_ns, "addr", "replace", f"{address}/32", "dev", "lo")
            self.lab.front.listen(address, HTTPS)
        self.lab.sync_security_groups()

    def withdraw(self, endpoint_id: str) -> None:
        with self._lock:
            gone = [a for a, (_, eid, _) in self.served.items() if eid == endpoint_id]
            for address in gone:
                self.served.pop(address)
        for address in gone:
            self.lab.front.close(address, HTTPS)
            sh.run("ip", "-n", self.lab.net.router_ns, "addr", "del", f"{address}/32", "dev", "lo", check=False)
        self.lab.sync_security_groups()

    def clear(self) -> None:
        for endpoint_id in {eid for _, eid, _ in list(self.served.values())}:
            self.withdraw(endpoint_id)

    def serves(self, address: str, host: str) -> bool | None:
        """For a connection to `address`: None if it is no endpoint's, else whether that endpoint is for the
        service the client asks for (`host`, the TLS server name)."""
        entry = self.served.get(address)
        if entry is None:
            return None
        region, _, endpoint = entry
        return endpoint.state == "available" and host.lower().rstrip(".") == dns_name(endpoint, region)

    def filtered(self) -> list[secgroups.Balancer]:
        """Each served address with its endpoint's groups, for the security-group filter."""
        found = []
        for address, (region, _, endpoint) in list(self.served.items()):
            backend = ec2_backends[ACCOUNT][region]
            groups = [g for g in map(backend.get_security_group_from_id, endpoint.security_group_ids) if g]
            found.append(secgroups.Balancer(address, [HTTPS], groups))
        return found

    def answer(self, client_ip: str, name: str) -> list[str] | None:
        """Private DNS: the endpoint addresses for `name` if the asking instance's VPC has an available interface
        endpoint with private DNS for it; None otherwise (the public answer stands)."""
        inst = next((i for i in list(self.lab.instances.values()) if i.private_ip == client_ip), None)
        if inst is None:
            return None
        backend = inst.model.ec2_backend
        vpc = backend.vpcs.get(inst.model.vpc_id)
        if vpc is None or not (flag(vpc.enable_dns_support) and flag(vpc.enable_dns_hostnames)):
            return None
        for endpoint in list(backend.vpc_end_points.values()):
            if endpoint.vpc_id == vpc.id and is_interface(endpoint) and endpoint.private_dns_enabled \
                    and endpoint.state == "available" and dns_name(endpoint, backend.region_name) == name:
                return self.addresses(backend, endpoint)
        return None


def install(lab) -> None:
    endpoints = Endpoints(lab)
    lab.endpoints = endpoints

    def check_create(response) -> None:
        """CreateVpcEndpoint (Interface) with private DNS (the default for AWS services): the VPC needs DNS
        support and hostnames, and no other endpoint of the VPC may hold the service's name."""
        if (response._get_param("VpcEndpointType") or "Gateway").lower() != "interface":
            return
        if not response._get_bool_param("PrivateDnsEnabled", if_none=True):
            return
        backend = response.ec2_backend
        vpc = backend.get_vpc(response._get_param("VpcId"))
        if not (flag(vpc.enable_dns_support) and flag(vpc.enable_dns_hostnames)):
            raise EC2ClientError("InvalidParameter", "Enabling private DNS requires both enableDnsSupport and "
                                                     f"enableDnsHostnames VPC attributes set to true for {vpc.id}")
        service = response._get_param("ServiceName") or ""
        for other in list(backend.vpc_end_points.values()):
            if other.vpc_id == vpc.id and is_interface(other) and other.private_dns_enabled \
                    and other.service_name == service and other.state not in ("deleted", "failed", "rejected"):
                raise EC2ClientError(
                    "InvalidParameter", "private-dns-enabled cannot be set because there is already a conflicting "
                                        f"DNS domain for {dns_name(other, backend.region_name)} in the VPC {vpc.id}")

    before(EC2Response, "create_vpc_endpoint", check_create)

    def create_vpc_endpoint(original):
        def patched(backend, vpc_id, service_name, endpoint_type, *args, **kwargs):
            endpoint = original(backend, vpc_id, service_name, endpoint_type, *args, **kwargs)
            if not is_interface(endpoint):
                return endpoint  # a gateway endpoint is available at once
            for eni_id in endpoint.network_interface_ids:
                eni = backend.enis[eni_id]  # moto gave it an address outside its subnet
                eni.private_ip_address = eni.subnet.get_available_subnet_ip(eni)
                eni.private_ip_addresses = [{"Primary": True, "PrivateIpAddress": eni.private_ip_address}]
                eni.description = f"VPC Endpoint Interface {endpoint.id}"
            if not endpoint.security_group_ids:  # AWS gives the endpoint the VPC's default group
                default = backend.get_default_security_group(vpc_id)
                endpoint.security_group_ids = [default.id] if default else []
            endpoint.state = "pending"
            lab.background(f"vpc endpoint {endpoint.id}", _available, backend, endpoint, time.time())
            return endpoint
        return patched

    def _available(backend, endpoint, started: float) -> None:
        lab.sleep_until(started, "vpc_endpoint_available")
        if endpoint.state != "pending":
            return
        endpoints.serve(backend, endpoint)
        lab.event("vpc_endpoint_available", vpc_endpoint_id=endpoint.id, region=backend.region_name,
                  service=endpoint.service_name)
        endpoint.state = "available"
        lab.sync_security_groups()  # the agent watch and the filter see the new path

    def delete_vpc_endpoints(original):
        def patched(backend, vpce_ids=None):
            interface = [backend.vpc_end_points[i] for i in vpce_ids or []
                         if i in backend.vpc_end_points and is_interface(backend.vpc_end_points[i])
                         and backend.vpc_end_points[i].state not in ("deleting", "deleted")]
            original(backend, [i for i in vpce_ids or [] if i not in {e.id for e in interface}])
            for endpoint in interface:
                endpoint.state = "deleting"
                lab.background(f"delete vpc endpoint {endpoint.id}", _deleted, backend, endpoint, time.time())
        return patched

    def _deleted(backend, endpoint, started: float) -> None:
        lab.sleep_until(started, "vpc_endpoint_deleted")
        endpoints.withdraw(endpoint.id)
        for eni_id in endpoint.network_interface_ids:
            backend.enis.pop(eni_id, None)
        lab.event("vpc_endpoint_deleted", vpc_endpoint_id=endpoint.id, region=backend.region_name)
        endpoint.state = "deleted"
        lab.sync_security_groups()
        # Listed as deleted for a moment, then gone from DescribeVpcEndpoints.
        lab.sleep_until(time.time(), "vpc_endpoint_deleted")
        backend.vpc_end_points.pop(endpoint.id, None)

    replace(EC2Backend, "create_vpc_endpoint", create_vpc_endpoint)
    replace(EC2Backend, "delete_vpc_endpoints", delete_vpc_endpoints)
