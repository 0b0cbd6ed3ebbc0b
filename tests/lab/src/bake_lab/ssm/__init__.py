"""Systems Manager in the lab: the agent (its package, preinstalled layer, Online), Run Command as the agent runs it,
and SSM's request rules and consistency window."""
