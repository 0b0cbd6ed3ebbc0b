"""NAT gateways and Elastic IPs with EC2's lifecycle (moto makes a NAT gateway available at once and deletes it at
once): pending -> available and deleting -> deleted after settable latencies, the address held by its gateway
until the gateway is deleted, addresses from the lab's public range, routes to a deleted gateway in blackhole,
and the filter rebuilt whenever a route, an association, a gateway's state or an instance's public IP changes."""
import time

from moto.core.utils import utcnow
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import EC2Backend, elastic_ip_addresses
from moto.ec2.models.route_tables import Route
from moto.ec2.utils import tag_filter_matches

from .. import consistency
from ..patching import replace, wrap


def _nat_of(backend, eni):
    """The NAT gateway (not yet deleted) whose network interface eni is, if any."""
    return next((n for n in list(backend.nat_gateways.values())
                 if n._eni is eni and n.state != "deleted"), None)


def install(lab) -> None:
    # Elastic IPs are public addresses of the lab, so one associated with an instance is routed to it.
    elastic_ip_addresses.random_ip = lab.net.allocate_public_ip

    def create_nat_gateway(original):
        def patched(backend, subnet_id, allocation_id, tags=None, connectivity_type="public"):
            nat = original(backend, subnet_id, allocation_id, tags, connectivity_type)
            if consistency.serving_one_of("CreateNatGateway"):  # a client's gateway; the lab's own is ready
                nat.state = "pending"
                lab.background(f"nat gateway {nat.id}", _settle, backend, nat, time.time())
            return nat
        return patched

    def _settle(backend, nat, started: float) -> None:
        """pending -> available after the latency; failed (as EC2 reports it) when the VPC has no internet
        gateway, which a public NAT gateway needs ("NatGateway" FailureCode Gateway.NotAttached)."""
        lab.sleep_until(started, "nat_gateway_available")
        if nat.state != "pending":
            return
        attached = any(igw.vpc is not None and igw.vpc.id == nat.vpc_id
                       for igw in list(backend.internet_gateways.values()))
        if (nat.connectivity_type or "public") == "public" and not attached:
            nat.failure_code = "Gateway.NotAttached"
            nat.failure_message = f"Network {nat.vpc_id} has no Internet gateway attached"
            _free(backend, nat)
            nat.state = "failed"
            lab.event("nat_gateway_failed", nat_gateway_id=nat.id, region=backend.region_name,
                      reason=nat.failure_code)
        else:
            lab.event("nat_gateway_available", nat_gateway_id=nat.id, region=backend.region_name)
            nat.state = "available"
        lab.sync_security_groups()

    def _free(backend, nat) -> None:
        """The gateway's address goes back to the account (still allocated) and its interface away."""
        for eip in list(backend.addresses):
            if eip.eni is nat._eni:
                eip.eni, eip.instance, eip.association_id = None, None, None
        backend.enis.pop(nat._eni.id, None)

    def delete_nat_gateway(original):
        def patched(backend, nat_gateway_id):
            nat = backend.nat_gateways.get(nat_gateway_id)
            if nat is None:
                raise EC2ClientError("NatGatewayNotFound", f"NAT gateway {nat_gateway_id} was not found")
            if nat.state in ("deleting", "deleted"):
                return nat
            nat.state = "deleting"  # "may still be processing traffic": the lab routes nothing through it
            lab.sync_security_groups()
            lab.background(f"delete nat gateway {nat.id}", _deleted, backend, nat, time.time())
            return nat
        return patched

    def _deleted(backend, nat, started: float) -> None:
        lab.sleep_until(started, "nat_gateway_deleted")
        _free(backend, nat)
        nat.delete_time = utcnow()
        lab.event("nat_gateway_deleted", nat_gateway_id=nat.id, region=backend.region_name)
        nat.state = "deleted"  # stays listed, as EC2 lists deleted gateways for about an hour
        lab.sync_security_groups()

    def describe_nat_gateways(original):
        def patched(backend, filters, nat_gateway_ids):
            found = original(backend, filters, nat_gateway_ids)
            # moto ignores tag filters here (it would list every gateway); EC2 takes tag:KEY, tag-key, tag-value.
            for name, values in (filters or {}).items():
                if name.startswith("tag:") or name in ("tag-key", "tag-value"):
                    found = [n for n in found if tag_filter_matches(n, name, values)]
            return found
        return patched

    replace(EC2Backend, "describe_nat_gateways", describe_nat_gateways)
    replace(EC2Backend, "create_nat_gateway", create_nat_gateway)
    replace(EC2Backend, "delete_nat_gateway", delete_nat_gateway)

    def release_address(original):
        def patched(backend, address=None, allocation_id=None):
            eip = (backend.address_by_ip([address]) if address else backend.address_by_allocation([allocation_id]))[0]
            # ReleaseAddress: in a nondefault VPC an associated address must be disassociated first
            # (InvalidIPAddress.InUse); a NAT gateway holds its address until it is deleted.
            eni = eip.eni or (eip.instance.nics[0] if eip.instance is not None else None)
            if eni is not None:
                vpc = backend.vpcs.get(getattr(eni.subnet, "vpc_id", None))
                if _nat_of(backend, eni) is not None or vpc is None or not vpc.is_default:
                    raise EC2ClientError("InvalidIPAddress.InUse", f"Address {eip.public_ip} is in use.")
            result = original(backend, address, allocation_id)
            lab.net.release_public_ip(eip.public_ip)
            lab.refresh_public_ips()
            return result
        return patched

    replace(EC2Backend, "release_address", release_address)

    def create_route(original):
        def patched(backend, route_table_id, destination_cidr_block, *args, **kwargs):
            nat_id = kwargs.get("nat_gateway_id")
            # A route to a gateway that does not exist (moto would make one to nothing); a pending one is accepted.
            if nat_id is not None and nat_id not in backend.nat_gateways:
                raise EC2ClientError("InvalidNatGatewayID.NotFound", f"The natGateway ID '{nat_id}' does not exist")
            return original(backend, route_table_id, destination_cidr_block, *args, **kwargs)
        return patched

    replace(EC2Backend, "create_route", create_route)
    replace(EC2Backend, "replace_route", create_route)

    def state(route) -> str:
        """blackhole while the route's NAT gateway is deleted or failed (its target is not available)."""
        nat = route.nat_gateway
        return "blackhole" if nat is not None and nat.state in ("deleted", "failed") else "active"

    Route.state = property(state)

    def after_change(backend, *a, **kw):
        lab.sync_security_groups()

    for name in ("create_route", "replace_route", "delete_route", "associate_route_table",
                 "disassociate_route_table", "replace_route_table_association", "delete_route_table"):
        wrap(EC2Backend, name, after_change)

    def after_address(backend, *a, **kw):
        lab.refresh_public_ips()

    for name in ("associate_address", "disassociate_address"):
        wrap(EC2Backend, name, after_address)
