"""Security-group ingress rules of the lab's instances and load balancers as one nftables table in the router namespace."""
import ipaddress
from dataclasses import dataclass


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
        return f"{name} dport {rule.from_port}-{rule.to_port}"
    if proto in ("icmp", "1"):
        return "ip protocol icmp"
    return f"ip protocol {int(proto)}" if proto.isdigit() else None


def _sources(rule, members: dict[str, list[str]]) -> list[str] | None:
    """Source addresses a rule admits; [] means any, None means no instance can match (yet)."""
    cidr = rule.ip_range.get("CidrIp") if rule.ip_range else None
    if cidr:
        net = ipaddress.ip_network(cidr, strict=False)
        return [] if net.prefixlen == 0 else [str(net)]
    group = (rule.source_group or {}).get("GroupId")
    if group:
        return members.get(group) or None
    return None


def _chain(name: str, groups, members: dict[str, list[str]]) -> list[str]:
    """A chain that accepts what the groups' ingress rules admit and drops the rest."""
    rules = []
    for group in groups:
        for rule in group.ingress_rules:
            match, sources = _match_protocol(rule), _sources(rule, members)
            if match is None or sources is None:
                continue
            saddr = f"ip saddr {{ {', '.join(sources)} }}" if sources else ""
            rules.append("    " + " ".join(part for part in (saddr, match, "accept") if part))
    return [f"  chain {name} {{", *rules, "    drop", "  }"]


def ruleset(instances, balancers: list[Balancer] = ()) -> str:
    """An nft script that replaces table ip sg: per instance and per load balancer, its groups'
    ingress rules then drop.

    An instance is filtered on routed traffic (from the host, i.e. the runner, from other subnets,
    through public addresses) and on traffic the router itself sends, which is what a load
    balancer's proxy and health checks are: they leave from the balancer's address, so a rule
    naming the balancer's security group admits them. Traffic between two instances of one subnet
    is bridged and not filtered. A load balancer is filtered on its listener ports; one without
    security groups is not filtered.
    """
    members: dict[str, list[str]] = {}
    for inst in instances:
        for group in inst.model.nics[0].group_set:
            members.setdefault(group.id, []).append(inst.private_ip)
    for lb in balancers:
        for group in lb.groups:
            members.setdefault(group.id, []).append(lb.address)
    jumps = [f"    ip daddr {inst.private_ip} jump i{n}" for n, inst in enumerate(instances)]
    chains = []
    for n, inst in enumerate(instances):
        chains += _chain(f"i{n}", inst.model.nics[0].group_set, members)
    inbound = []
    for n, lb in enumerate(b for b in balancers if b.groups and b.ports):
        ports = ", ".join(str(p) for p in sorted(set(lb.ports)))
        inbound.append(f"    ip daddr {lb.address} tcp dport {{ {ports} }} jump b{n}")
        chains += _chain(f"b{n}", lb.groups, members)
    lines = ["table ip sg {}", "delete table ip sg", "table ip sg {"]
    for hook, rules in (("forward", jumps), ("output", jumps), ("input", inbound)):
        lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority 0; policy accept;",
                  "    ct state established,related accept", *rules, "  }"]
    lines += [*chains, "}"]
    return "\n".join(lines) + "\n"


def disabled() -> str:
    return "table ip sg {}\ndelete table ip sg\n"
