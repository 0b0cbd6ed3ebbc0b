"""Where an instance's packets can go beyond its VPC, as its subnet's route table decides: an internet gateway
(with a public IP), an available NAT gateway, or VPC endpoints; and the nft table that holds pathless
instances to it (the mirror through the apt proxy, anything out of the router's uplink)."""
import ipaddress

from ..host import aptproxy

IMDS = "169.254.169.254"


def flag(value) -> bool:
    """A VPC attribute or request flag as moto keeps it (a bool, or the query's "true"/"false")."""
    return str(value).lower() == "true"


def route_table(backend, vpc_id: str, subnet_id: str):
    """The subnet's route table: its explicit association, else the VPC's main table."""
    main = None
    for table in list(backend.route_tables.values()):
        if table.vpc_id != vpc_id:
            continue
        if subnet_id in table._associations.values():
            return table
        if table.main_association_id is not None:
            main = table
    return main


def internet_path(model, public_ip: str | None) -> str | None:
    """The instance's way to public addresses: its subnet's 0.0.0.0/0 route to an internet gateway (with a
    public IP) or to an available NAT gateway; None when it has neither (a pending, deleting or deleted NAT
    gateway processes no traffic: "NatGateway", EC2 API Reference)."""
    backend = model.ec2_backend
    subnet = backend.get_subnet(model.subnet_id)
    table = route_table(backend, subnet.vpc_id, subnet.id)
    for route in list(table._routes.values()) if table else []:
        if route.destination_cidr_block != "0.0.0.0/0":
            continue
        if route.gateway is not None and str(route.gateway.id).startswith("igw-") and public_ip:
            return "internet gateway"
        if route.nat_gateway is not None and route.nat_gateway.state == "available":
            return "nat gateway"
    return None


def admits_443(backend, group_ids, private_ip: str, instance_groups: set[str]) -> bool:
    """Whether one of the endpoint's groups admits HTTPS from the instance (by CIDR or by its groups)."""
    for gid in group_ids:
        group = backend.get_security_group_from_id(gid)
        for rule in (group.ingress_rules if group else []):
            proto = (rule.ip_protocol or "-1").lower()
            if proto not in ("-1", "all", "tcp", "6"):
                continue
            if proto not in ("-1", "all") and rule.from_port not in (None, -1) and \
                    not rule.from_port <= 443 <= rule.to_port:
                continue
            cidr = rule.ip_range.get("CidrIp") if rule.ip_range else None
            if cidr and ipaddress.ip_address(private_ip) in ipaddress.ip_network(cidr, strict=False):
                return True
            if (rule.source_group or {}).get("GroupId") in instance_groups:
                return True
    return False


def endpoint_services(model, private_ip: str, kinds: tuple[str, ...] = ("interface", "gateway")) -> set[str]:
    """The AWS services (`ssm`, `s3`, ...) the instance reaches through VPC endpoints: available interface
    endpoints in its VPC with private DNS (and the VPC's DNS support and hostnames) whose groups admit 443 from
    it, and S3 gateway endpoints on its route table."""
    backend = model.ec2_backend
    subnet = backend.get_subnet(model.subnet_id)
    vpc = backend.get_vpc(subnet.vpc_id)
    table = route_table(backend, vpc.id, subnet.id)
    prefix = f"com.amazonaws.{backend.region_name}."
    groups = {g.id for g in model.security_groups}
    services = set()
    for ep in list(getattr(backend, "vpc_end_points", {}).values()):
        if ep.vpc_id != vpc.id or ep.state != "available" or not ep.service_name.startswith(prefix):
            continue
        kind = (ep.vpc_endpoint_type or "").lower()
        if kind not in kinds:
            continue
        dns = flag(vpc.enable_dns_support) and flag(vpc.enable_dns_hostnames)
        if kind == "interface" and ep.private_dns_enabled and dns \
                and admits_443(backend, ep.security_group_ids, private_ip, groups):
            services.add(ep.service_name[len(prefix):])
        elif kind == "gateway" and table is not None and table.id in (ep.route_table_ids or []):
            services.add(ep.service_name[len(prefix):])
    return services


def ruleset(instances, has_path, uplink: str) -> str:
    """An nft script that replaces table ip path: instances without an internet path (has_path(inst) false)
    reach neither the apt proxy (the mirror on the internet) nor anything out of the router's uplink. Only what
    they start is stopped (`ct direction original`), so answers to connections made to them still leave; a
    route removed stops their flows at once, as a route change does on AWS. Security groups are not involved:
    this table stays when their enforcement is off."""
    pathless = [i.private_ip for i in instances if not has_path(i)]
    lines = ["table ip path {}", "delete table ip path", "table ip path {"]
    rules = []
    if pathless:
        addresses = ", ".join(sorted(set(pathless)))
        rules = [f"    ip saddr {{ {addresses} }} ip daddr {IMDS} tcp dport {aptproxy.PORT} drop",
                 f'    ip saddr {{ {addresses} }} oifname "{uplink}" ct direction original drop']
    for hook, hook_rules in (("input", rules[:1]), ("forward", rules[1:])):
        lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority -5; policy accept;",
                  *hook_rules, "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"
