"""The Linux machinery under the lab: host commands, network namespaces, containers, root file systems, the base
image and the apt proxy. Nothing here knows moto."""
