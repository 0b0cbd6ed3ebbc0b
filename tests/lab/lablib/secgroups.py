"""Security-group ingress rules of the lab's instances as one nftables table in the router namespace."""
import ipaddress


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


def ruleset(instances) -> str:
    """An nft script that replaces table ip sg: per instance, its groups' ingress rules then drop.

    Only routed traffic passes the forward hook: from the host (the runner), from other subnets and
    through public addresses. Traffic between two instances of one subnet is bridged and not filtered.
    """
    members: dict[str, list[str]] = {}
    for inst in instances:
        for group in inst.model.nics[0].group_set:
            members.setdefault(group.id, []).append(inst.private_ip)
    lines = ["table ip sg {}", "delete table ip sg", "table ip sg {",
             "  chain forward {", "    type filter hook forward priority 0; policy accept;",
             "    ct state established,related accept"]
    chains = []
    for n, inst in enumerate(instances):
        lines.append(f"    ip daddr {inst.private_ip} jump i{n}")
        rules = []
        for group in inst.model.nics[0].group_set:
            for rule in group.ingress_rules:
                match, sources = _match_protocol(rule), _sources(rule, members)
                if match is None or sources is None:
                    continue
                saddr = f"ip saddr {{ {', '.join(sources)} }}" if sources else ""
                rules.append("    " + " ".join(part for part in (saddr, match, "accept") if part))
        chains += [f"  chain i{n} {{", *rules, "    drop", "  }"]
    lines += ["  }", *chains, "}"]
    return "\n".join(lines) + "\n"


def disabled() -> str:
    return "table ip sg {}\ndelete table ip sg\n"
