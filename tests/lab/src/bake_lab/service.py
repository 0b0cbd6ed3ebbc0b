"""The lab as a service: moto's app behind the control layer on one port, with reset and bootstrap."""
import logging
import threading
from pathlib import Path

from moto.ec2.models import ec2_backends
from moto.moto_api._internal.models import moto_api_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from . import bootstrap, endpoint, patches, s3
from .control import ControlApp
from .ec2 import copies, sharing
from .host.net import LabNet
from .lab import DEFAULT_LATENCY, Lab
from .patching import backends
from .scaling import Scaling
from .ssm import agent

log = logging.getLogger("lab")


class LabService:
    """One lab: its world, moto patched to act through it, and the app that serves both on one port."""

    def __init__(self, lab_net: LabNet, state_dir: Path, cache: Path, base_image: Path, enforce_sg: bool):
        self.base_image = base_image
        self.enforce_sg = enforce_sg
        self.lab = Lab(lab_net, state_dir, cache, base_image / "rootfs")
        self.agent_layer = agent.preinstalled_layer(cache, base_image, self.lab.agent_deb)
        self.lab.layers.keep(self.agent_layer)
        bootstrap.default_vpcs_as_aws()
        self.lab.scaling = Scaling(self.lab)
        patches.install(self.lab)
        self.app = ControlApp(DomainDispatcherApplication(create_backend_app), self)
        self.endpoint = ""
        self.images: dict[str, str] = {}
        self.ubuntu_images: dict[str, str] = {}
        self._reset_lock = threading.Lock()
        self.set_security_groups({"enforce": enforce_sg}, by="launcher")

    def serve(self, port: int):
        server = make_server("127.0.0.1", port, self.app, threaded=True, request_handler=MotoRequestHandler)
        self.endpoint = f"http://127.0.0.1:{server.server_port}"
        threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
        self.lab.imds.start()
        self.lab.apt.start()
        self.lab.scaling.start()
        self.lab.front.start(server.server_port)
        self.lab.agents.start()
        return server

    def bootstrap(self) -> None:
        built = (self.base_image / "built").read_text().strip()
        build_number = int(self.base_image.name.rsplit("-", 1)[-1][:4], 16) % 10000
        self.images = bootstrap.debian_images(built, build_number)
        for region, ami in self.images.items():
            self.lab.layers.register(region, ami, [self.lab.layers.base])
        self.ubuntu_images = bootstrap.ubuntu_images(built)
        for region, ami in self.ubuntu_images.items():
            self.lab.layers.register(region, ami, [self.lab.layers.base, self.agent_layer])
        s3.publish_agent(self.lab.agent_deb, endpoint.regions())
        self.network = bootstrap.workshop_network(self.endpoint)
        self.networks = {bootstrap.WORKSHOP_REGION: self.network,
                         bootstrap.SECOND_REGION: bootstrap.workshop_network(self.endpoint, bootstrap.SECOND_REGION)}
        self.ssm_network = bootstrap.session_manager_network(self.endpoint)
        bootstrap.ssm_instance_profile(self.endpoint)

    # ---- what the control endpoints call -------------------------------------------------------
    def reset(self) -> None:
        with self._reset_lock:
            self.lab.destroy_all()
            self.lab.endpoints.clear()
            for _, backend in backends(ec2_backends):  # Elastic IPs hold addresses of the lab's public range
                for address in list(backend.addresses):
                    self.lab.net.release_public_ip(address.public_ip)
            self.lab.layers.clear()
            moto_api_backend.reset()
            self.lab.events.clear()
            self.lab.latency = dict(DEFAULT_LATENCY)
            self.lab.copy_failures.clear()
            sharing.clear()
            copies.clear()
            self.set_security_groups({"enforce": self.enforce_sg}, by="launcher")
            self.bootstrap()

    @property
    def latency(self) -> dict:
        return self.lab.latency

    @property
    def events(self) -> list:
        return self.lab.events

    def set_latency(self, body: dict) -> dict:
        for key, value in body.items():
            if float(value) < 0:
                raise ValueError(f"latency {key} must not be negative")
            self.lab.latency[key] = float(value)
        return self.lab.latency

    def set_security_groups(self, body: dict, by: str = "api") -> dict:
        """Turn enforcement on or off. Off is never silent: a `security_groups_not_enforced` event (and a
        warning in the lab's log) says who turned it off; turning it back on by the API is an event too."""
        enforce = body["enforce"]
        if not isinstance(enforce, bool):
            raise ValueError("enforce must be true or false")
        was = self.lab.enforce_security_groups
        self.lab.enforce_security_groups = enforce
        self.lab.sync_security_groups()
        if not enforce:
            how = "--no-enforce-security-groups" if by == "launcher" else "POST /_lab/security-groups"
            log.warning("security groups are NOT enforced (%s): every port of every instance is open", how)
            self.lab.event("security_groups_not_enforced", by=by)
        elif not was and by == "api":
            self.lab.event("security_groups_enforced", by=by)
        return self.security_groups()

    def security_groups(self) -> dict:
        return {"enforce": self.lab.enforce_security_groups}

    def checkip(self) -> str:
        return self.lab.net.host_addr

    def containers(self) -> list:
        return self.lab.containers()

    def info(self) -> dict:
        n = self.lab.net
        return {"index": n.index, "public_range": str(n.public_net), "checkip": n.host_addr,
                "router_ns": n.router_ns, "state_dir": str(self.lab.state_dir), "debian_images": self.images,
                "ubuntu_images": self.ubuntu_images, "network": self.network,
                "networks": self.networks,
                "ssm_network": self.ssm_network, "apt_proxy": dict(self.lab.apt.stats),
                "service_address": n.service_addr, "ca_pem": self.lab.authority.ca_pem().decode(),
                "dns": dict(self.lab.dns.stats), "aws_front": dict(self.lab.front.stats),
                "security_groups_enforced": self.lab.enforce_security_groups}
