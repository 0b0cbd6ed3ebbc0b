"""EC2 in the lab: instances and images handed to real containers, security groups as nftables, instance metadata,
and EC2's request rules and consistency windows."""
