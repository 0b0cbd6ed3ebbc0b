"""bake-lab: a local AWS for bake. moto's server with real instances (systemd-nspawn containers) behind it.

Layout: `cli.py` (the `bake-lab` command) and `launcher.py` (one lab process) start it; `service.py`,
`control.py` and `lab.py` are the running lab; `patches.py` installs every change to moto, which lives with its
service: `ec2/`, `ssm/`, `asg.py`, `elb.py`, `refresh.py` (driven by `scaling.py`), `s3.py`, `dns.py`,
`endpoint.py`; `consistency.py` and `limits.py` hold what the services share; `host/` is the Linux side
(namespaces, containers, root file systems, the base image, the apt proxy); `client.py` talks to a lab."""
