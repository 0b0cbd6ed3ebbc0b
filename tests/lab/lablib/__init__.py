"""The lab's machinery: network, containers, image layers, metadata, SSM agent and the moto patches."""
