"""Security groups as EC2 applies them: each network interface's ingress and egress rules, stateful, as one
nftables table in the router namespace (plus the moto patches that keep the groups and the filter in step)."""
import ipaddress
from dataclasses import dataclass

from ..host import aptproxy
from ..patching import wrap

IMDS = "169.254.169.254"
# Traffic EC2 never filters ("Security group rules", VPC user guide): the Amazon DNS server (VPC base + 2 and
# 169.254.169.253), the Amazon Time Sync Service, instance metadata, and the VPC router's reserved addresses.
DNS_LINK_LOCAL = "169.254.169.253"
TIME_SYNC = "169.254.169.123"


@dataclass
class Balancer:
    """A load balancer as the filter sees it: its address on the router, listener ports and security groups."""
    address: str
    ports: list[int]
    groups: list  # moto SecurityGroup objects


def _match_protocol(rule) -> str | None:
    """The nft match of a rule's protocol and ports ('' for all traffic, None if the lab cannot express it)."""
    proto = (rule.ip_protocol or "-1").lower()
    if proto in ("-1", "all"):
        return ""
    if proto in ("tcp", "udp", "6", "17"):
        name = "tcp" if proto in ("tcp", "6") else "udp"
        if rule.from_port in (None, -1):
            return f"meta l4proto {name}"
        ports = str(rule.from_port) if rule.from_port == rule.to_port else f"{rule.from_port}-{rule.to_port}"
        return f"{name} dport {ports}"
    if proto in ("icmp", "1"):
        # For ICMP, FromPort is the type and ToPort the code (-1: all).
        match = "ip protocol icmp"
        if rule.from_port not in (None, -1):
            match += f" icmp type {int(rule.from_port)}"
            if rule.to_port not in (None, -1):
                match += f" icmp code {int(rule.to_port)}"
        return match
    return f"ip protocol {int(proto)}" if proto.isdigit() else None


def _peers(rule, members: dict[str, list[str]]) -> list[str] | None:
    """Addresses a rule names (sources of an ingress rule, destinations of an egress rule); [] means any,
    None means nothing can match (yet): a group with no members, or what the lab cannot express."""
    cidr = rule.ip_range.get("CidrIp") if rule.ip_range else None
    if cidr:
        net = ipaddress.ip_network(cidr, strict=False)
        return [] if net.prefixlen == 0 else [str(net)]
    group = (rule.source_group or {}).get("GroupId")
    if group:
        return members.get(group) or None
    return None


def _chain(name: str, rules, members: dict[str, list[str]], direction: str) -> list[str]:
    """A chain that returns (to the next check) what one of the rules admits and drops the rest."""
    lines = []
    for rule in rules:
        match, peers = _match_protocol(rule), _peers(rule, members)
        if match is None or peers is None:
            continue
        addr = f"ip {direction} {{ {', '.join(peers)} }}" if peers else ""
        lines.append("    " + " ".join(part for part in (addr, match, "return") if part))
    return [f"  chain {name} {{", *lines, "    drop", "  }"]


def admits_internet_http(groups) -> bool:
    """Whether the groups' egress rules let an instance reach a web server on the internet (tcp 80 anywhere),
    which is what the apt proxy stands in for."""
    for group in groups:
        for rule in group.egress_rules:
            cidr = (rule.ip_range or {}).get("CidrIp")
            if not cidr or ipaddress.ip_network(cidr, strict=False).prefixlen != 0:
                continue
            proto = (rule.ip_protocol or "-1").lower()
            if proto in ("-1", "all") or (proto in ("tcp", "6") and (
                    rule.from_port in (None, -1) or rule.from_port <= 80 <= rule.to_port)):
                return True
    return False


def groups_of(inst) -> list:
    """The security groups of an instance's primary network interface."""
    return list(inst.model.nics[0].group_set)


def exempt_addresses(instances) -> list[str]:
    """Addresses EC2 never filters traffic to: the Amazon DNS server of each instance's VPC (its primary CIDR's
    base + 2) and at 169.254.169.253, Time Sync, and each subnet's VPC router (base + 1)."""
    found = {DNS_LINK_LOCAL, TIME_SYNC}
    for inst in instances:
        found.add(str(ipaddress.ip_network(inst.cidr).network_address + 1))
        vpc = inst.model.ec2_backend.vpcs.get(inst.model.vpc_id)
        if vpc is not None:
            found.add(str(ipaddress.ip_network(vpc.cidr_block).network_address + 2))
    return sorted(found, key=ipaddress.ip_address)


def ruleset(instances, balancers: list[Balancer] = ()) -> str:
    """An nft script that replaces table ip sg: every instance's and load balancer's groups, ingress and egress.

    The router namespace sees every packet an instance sends or receives: routed traffic (the runner, other
    subnets, public addresses, the internet) in its forward hook, traffic to the router's own addresses
    (metadata, the apt proxy, load balancers) in input, what the router sends (a load balancer's proxy and
    health checks, from the balancer's address) in output, and, with bridge-nf-call-iptables, traffic
    between two instances of one subnet, bridged, in forward too. Connection tracking makes it stateful:
    the answers of an admitted connection pass whatever the rules say. A packet passes the sender's egress
    chain and the receiver's ingress chain; each returns when a rule admits it and drops it otherwise.
    A load balancer created without security groups is not filtered.
    """
    members: dict[str, list[str]] = {}
    for inst in instances:
        for group in groups_of(inst):
            members.setdefault(group.id, []).append(inst.private_ip)
    filtered = [b for b in balancers if b.groups]
    for lb in filtered:
        for group in lb.groups:
            members.setdefault(group.id, []).append(lb.address)
    chains, sends, receives = [], [], []
    for n, inst in enumerate(instances):
        groups = groups_of(inst)
        chains += _chain(f"in_i{n}", [r for g in groups for r in g.ingress_rules], members, "saddr")
        chains += _chain(f"out_i{n}", [r for g in groups for r in g.egress_rules], members, "daddr")
        sends.append(f"{inst.private_ip} : jump out_i{n}")
        receives.append(f"{inst.private_ip} : jump in_i{n}")
    lb_sends, lb_receives = [], []
    for n, lb in enumerate(filtered):
        chains += _chain(f"in_b{n}", [r for g in lb.groups for r in g.ingress_rules], members, "saddr")
        chains += _chain(f"out_b{n}", [r for g in lb.groups for r in g.egress_rules], members, "daddr")
        lb_sends.append(f"{lb.address} : jump out_b{n}")
        lb_receives.append(f"{lb.address} : jump in_b{n}")

    def vmap(field: str, entries: list[str]) -> list[str]:
        # One verdict per address: two instances with one address (same CIDR in two VPCs) share the first's.
        unique = {entry.split(" : ")[0]: entry for entry in reversed(entries)}
        return [f"    ip {field} vmap {{ {', '.join(reversed(unique.values()))} }}"] if unique else []

    exempt = [f"    ip daddr {{ {', '.join(exempt_addresses(instances))} }} accept",
              f"    ip daddr {IMDS} tcp dport 80 accept"]
    apt = []
    if instances:
        allowed = [i.private_ip for i in instances if admits_internet_http(groups_of(i))]
        if allowed:
            apt.append(f"    ip daddr {IMDS} tcp dport {aptproxy.PORT} ip saddr {{ {', '.join(allowed)} }} accept")
        apt.append(f"    ip daddr {IMDS} tcp dport {aptproxy.PORT} ip saddr "
                   f"{{ {', '.join(i.private_ip for i in instances)} }} drop")
    hooks = {
        "forward": [*exempt, *vmap("saddr", sends), *vmap("daddr", receives)],
        "input": [*exempt, *apt, *vmap("saddr", sends), *vmap("daddr", lb_receives)],
        "output": [*vmap("saddr", lb_sends), *vmap("daddr", receives)],
    }
    lines = ["table ip sg {}", "delete table ip sg", "table ip sg {"]
    for hook, rules in hooks.items():
        lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority 0; policy accept;",
                  "    ct state established,related accept", *rules, "  }"]
    lines += [*chains, "}"]
    return "\n".join(lines) + "\n"


def disabled() -> str:
    return "table ip sg {}\ndelete table ip sg\n"


# ---- moto patches ----------------------------------------------------------------------------------
def install(lab) -> None:
    """Patch moto's EC2 backend: every rule or membership change rebuilds the filter, the default group
    admits its own members as EC2's does, and changing an instance's groups changes its primary interface's."""
    from moto.ec2.models import EC2Backend
    from moto.ec2.models.security_groups import SecurityGroupRule

    def after_rule_change(backend, *a, **kw):
        lab.sync_security_groups()

    for name in ("authorize_security_group_ingress", "revoke_security_group_ingress",
                 "authorize_security_group_egress", "revoke_security_group_egress",
                 "delete_security_group"):
        wrap(EC2Backend, name, after_rule_change)

    def after_modify_instance(backend, instance, *a, **kw):
        # moto keeps the interface's launch groups beside the new ones (group_set is their union).
        instance.nics[0]._group_set = list(instance.security_groups)
        lab.sync_security_groups()

    def after_modify_interface(backend, result, *a, **kw):
        eni_id, group_ids = (a + (None, None))[:2] if a else (kw.get("eni_id"), kw.get("group_ids"))
        eni = backend.get_network_interface(eni_id)
        instance = getattr(eni, "instance", None)
        if group_ids and instance is not None and instance.nics.get(0) is eni:
            instance.security_groups = list(eni._group_set)
        lab.sync_security_groups()

    wrap(EC2Backend, "modify_instance_security_groups", after_modify_instance)
    wrap(EC2Backend, "modify_network_interface_attribute", after_modify_interface)

    def after_create_group(backend, group, *a, **kw):
        # A VPC's default group allows inbound traffic from its own members (and all outbound, as moto has it).
        # Built on the model directly: the group is new, and nothing else is to see a call about it.
        if group.is_default and group.vpc_id and not group.ingress_rules:
            owner = backend.account_id
            group.add_ingress_rule(SecurityGroupRule(
                backend, "-1", group.id, None, None, None,
                {"GroupId": group.id, "OwnerId": owner, "UserId": owner}, is_egress=False))

    wrap(EC2Backend, "create_security_group", after_create_group)
