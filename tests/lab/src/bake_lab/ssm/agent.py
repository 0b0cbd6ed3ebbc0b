"""The SSM agent as the lab sees it: its stand-in .deb, the preinstalled layer, and when an instance is Online.

AWS: an instance is a managed node (PingStatus Online) only while the agent runs on it, its instance
profile lets it call SSM, and it can reach SSM's endpoints (ssm, ssmmessages, ec2messages) over HTTPS:
through an internet gateway with a public IP, through a NAT gateway, or through interface VPC
endpoints with private DNS whose security group admits 443 from it. Debian's AMIs ship no agent;
Ubuntu's and Amazon Linux's do.
"""
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..ec2 import paths
from ..host import sh

log = logging.getLogger("lab")

VERSION = "3.3.0.0-lab1"  # the stand-in's version (the real agent's 3.3 line; "-lab1" marks the stand-in)
UNITS = ("amazon-ssm-agent.service", "snap.amazon-ssm-agent.amazon-ssm-agent.service")  # deb / Ubuntu's snap
SSM_SERVICES = ("ssm", "ssmmessages", "ec2messages")  # the endpoints the agent needs (SSM's VPC endpoint docs)
# How often the lab asks an instance whether its agent runs: often while it does not yet in the first
# minute after boot, when user data installs it (so Online follows the unit by under a second), then
# less often (an instance without an agent costs little); rarely once it runs (a stopped agent shows
# ConnectionLost within seconds; SSM itself takes minutes). Each check is one nsenter + systemctl.
POLL_WAITING = 0.5
POLL_WAITING_LATE = 2.0
WAITING_FAST_FOR = 60.0
POLL_RUNNING = 3.0
CHECK_TIMEOUT = 10  # one `systemctl is-active` inside a container answers in milliseconds

# The stand-in daemon: it stays up as the real agent does; the lab (not this process) runs commands.
DAEMON = """#!/bin/sh
# amazon-ssm-agent (bake lab stand-in): stays running as the agent does. The lab delivers Run Command
# to this instance itself while this unit is active, the instance has a profile and a path to SSM.
mkdir -p /var/log/amazon/ssm
echo "$(date -u +%FT%TZ) INFO [lab stand-in] amazon-ssm-agent {version} started" >>/var/log/amazon/ssm/amazon-ssm-agent.log
exec sleep infinity
"""  # noqa: E501 (a shell script, as the agent writes it)
# Shaped like the agent's own unit (packaging/ubuntu/amazon-ssm-agent.service of amazon-ssm-agent).
UNIT = """[Unit]
Description=Amazon SSM Agent (bake lab stand-in)
Documentation=https://docs.aws.amazon.com/systems-manager/latest/userguide/ssm-agent.html
Wants=network-online.target
After=network-online.target nss-lookup.target cloud-init.target
ConditionFileIsExecutable=/usr/bin/amazon-ssm-agent

[Service]
Type=simple
WorkingDirectory=/usr/bin/
ExecStart=/usr/bin/amazon-ssm-agent
KillMode=process
Restart=always
RestartPreventExitStatus=194
RestartSec=90

[Install]
WantedBy=multi-user.target
"""
CONTROL = """Package: amazon-ssm-agent
Version: {version}
Architecture: amd64
Maintainer: bake lab <lab@bake.invalid>
Section: admin
Priority: optional
Description: Amazon SSM Agent (bake lab stand-in)
 Installs the amazon-ssm-agent systemd unit. Like the real package, installing it
 neither enables nor starts the unit: `systemctl enable --now amazon-ssm-agent` does.
"""
# As the real package's scripts: reload systemd when it runs; enabling and starting is the installer's step.
POSTINST = """#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
"""
PRERM = """#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl stop amazon-ssm-agent || true; fi
"""


def _recipe() -> dict[str, tuple[str, int]]:
    return {
        "DEBIAN/control": (CONTROL.format(version=VERSION), 0o644),
        "DEBIAN/postinst": (POSTINST, 0o755),
        "DEBIAN/prerm": (PRERM, 0o755),
        "usr/bin/amazon-ssm-agent": (DAEMON.format(version=VERSION), 0o755),
        "lib/systemd/system/amazon-ssm-agent.service": (UNIT, 0o644),
    }


def recipe_hash() -> str:
    h = hashlib.sha256()
    for path, (text, mode) in sorted(_recipe().items()):
        h.update(f"{path}\0{mode}\0{text}\0".encode())
    return h.hexdigest()[:12]


def _locked_build(final: Path, build) -> Path:
    """Build `final` once (atomically, under a lock shared by every lab using the cache)."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists():
            return final
        tmp = final.parent / f".tmp-{final.name}"
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)
        build(tmp)
        os.rename(tmp, final)
    return final


def package(cache: Path) -> Path:
    """The stand-in amazon-ssm-agent .deb (built with dpkg-deb once per recipe, kept in the cache)."""
    final = cache / "agent" / f"amazon-ssm-agent_{VERSION}_amd64-{recipe_hash()}.deb"

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as root:
            for rel, (text, mode) in _recipe().items():
                path = Path(root) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                path.chmod(mode)
            sh.run("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, str(tmp))
    return _locked_build(final, build)


def preinstalled_layer(cache: Path, base_image: Path, deb: Path) -> Path:
    """A layer over the base image with the agent installed by dpkg and enabled, as the AMIs of families
    that ship it have it (cached per base image and package)."""
    final = cache / "layers" / f"{base_image.name}+agent-{recipe_hash()}"

    def build(tmp: Path) -> None:
        work = Path(tempfile.mkdtemp(dir=final.parent, prefix=".work-"))
        merged = work / "merged"
        (work / "w").mkdir()
        merged.mkdir()
        tmp.mkdir()
        sh.run("mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir={base_image / 'rootfs'},upperdir={tmp},workdir={work / 'w'}", str(merged))
        try:
            shutil.copy(deb, merged / "tmp" / "amazon-ssm-agent.deb")
            # dpkg's own install (its database knows the package); in a chroot systemctl only enables.
            sh.run("chroot", str(merged), "dpkg", "-i", "/tmp/amazon-ssm-agent.deb", timeout=120)
            sh.run("chroot", str(merged), "systemctl", "enable", "amazon-ssm-agent.service")
            (merged / "tmp" / "amazon-ssm-agent.deb").unlink()
        finally:
            sh.run("umount", str(merged), check=False)
            shutil.rmtree(work, ignore_errors=True)
    return _locked_build(final, build)


def unit_active(leader_pid: int | None) -> bool:
    """Whether the agent's unit is active inside the container whose PID 1 is leader_pid."""
    if not leader_pid:
        return False
    try:
        out = subprocess.run(["nsenter", "-t", str(leader_pid), "-m", "-p", "--", "systemctl", "is-active", *UNITS],
                             capture_output=True, text=True, timeout=CHECK_TIMEOUT).stdout
    except (subprocess.TimeoutExpired, OSError):
        return False
    return "active" in out.split()


# ---- the network path to SSM (routes and endpoints: ec2/paths.py) ---------------------------------
def network_path(model, public_ip: str | None, private_ip: str) -> str | None:
    """How the instance reaches SSM's endpoints, or None when it cannot."""
    path = paths.internet_path(model, public_ip)
    if path is None and set(SSM_SERVICES) <= paths.endpoint_services(model, private_ip, ("interface",)):
        path = "vpc endpoints"
    return path


def service_of(host: str) -> str:
    """The service an AWS endpoint name belongs to: `s3` for every S3 form, else its first label."""
    labels = host.lower().rstrip(".").split(".")
    if "s3" in labels or labels[0].startswith("s3-"):
        return "s3"
    return labels[0]


def reaches(model, public_ip: str | None, private_ip: str, host: str) -> bool:
    """Whether the instance reaches the public endpoint `host` (AWS's public addresses): an internet path, or
    a gateway endpoint (S3) on its route table. An interface endpoint is reached at its own addresses instead
    (its private DNS names them; ec2/endpoints.py)."""
    return paths.internet_path(model, public_ip) is not None or \
        service_of(host) in paths.endpoint_services(model, private_ip, ("gateway",))


class AgentWatch:
    """One thread that follows every running instance's agent unit (the lab's view of 'the agent runs')."""

    def __init__(self, lab):
        self.lab = lab
        self._stop = threading.Event()
        self._due: dict[str, float] = {}
        self.thread = threading.Thread(target=self._loop, name="agents", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.check_all()
            except Exception:  # noqa: BLE001 - logged; the watch goes on with the next round
                log.exception("agent watch failed")

    def check_all(self) -> None:
        now = time.time()
        for inst in list(self.lab.instances.values()):
            if inst.running_at is None or inst.gone:
                inst.agent_since = None
                self._due.pop(inst.id, None)
                continue
            if now >= self._due.get(inst.id, 0):
                active = unit_active(inst.container.leader())
                if active and inst.agent_since is None:
                    inst.agent_since = time.time()
                elif not active:
                    inst.agent_since = None
                if active:
                    interval = POLL_RUNNING
                elif now - (inst.running_at or now) < WAITING_FAST_FOR:
                    interval = POLL_WAITING
                else:
                    interval = POLL_WAITING_LATE
                self._due[inst.id] = time.time() + interval
            self.lab.ssm_online(inst)  # records offline spells and the ssm_online event
        for gone in set(self._due) - set(self.lab.instances):
            self._due.pop(gone, None)
