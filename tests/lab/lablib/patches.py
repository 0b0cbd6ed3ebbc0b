"""Patches to moto's EC2 and SSM classes that hand instances, images and commands to the lab."""
import datetime
import threading
import time

from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import EC2Backend
from moto.ec2.models import elastic_network_interfaces
from moto.ec2.responses.amis import AmisResponse
from moto.ssm import models as ssm_models
from moto.ssm.responses import SimpleSystemManagerResponse

from . import consistency, limits, secgroups, ssm
from .lab import Lab

_request = threading.local()  # request parameters moto's backend signatures drop (CreateImage's NoReboot)


class InvalidInstanceId(ServiceException):
    code = "InvalidInstanceId"


def _wrap(cls, name: str, after):
    """Replace cls.name by a call to the original followed by after(self, result, *args, **kwargs)."""
    original = getattr(cls, name)

    def patched(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        after(self, result, *args, **kwargs)
        return result

    patched.__wrapped__ = original
    setattr(cls, name, patched)
    return original


def install(lab: Lab) -> None:
    _patch_ec2(lab)
    _patch_ssm(lab)
    limits.install()
    consistency.install(lab)  # last: its windows apply before (and on top of) the lab's own patches


def _patch_ec2(lab: Lab) -> None:
    elastic_network_interfaces.random_public_ip = lab.net.allocate_public_ip

    def after_run(backend, reservation, *a, **kw):
        for instance in reservation.instances:
            lab.launch(instance, backend.region_name)

    def after_start(backend, pairs, *a, **kw):
        for instance, previous in pairs:
            if previous.name == "stopped":
                lab.start(instance.id)
            elif previous.name != "running":
                instance._state.name, instance._state.code = previous.name, previous.code

    def after_stop(backend, pairs, *a, **kw):
        for instance, previous in pairs:
            if previous.name in ("pending", "running"):
                lab.stop(instance.id)
            else:
                instance._state.name, instance._state.code = previous.name, previous.code

    def after_terminate(backend, pairs, *a, **kw):
        for instance, previous in pairs:
            if previous.name not in ("shutting-down", "terminated"):
                lab.terminate(instance.id)
            else:
                instance._state.name, instance._state.code = previous.name, previous.code

    def after_reboot(backend, instances, *a, **kw):
        for instance in instances:
            lab.reboot(instance.id)

    _wrap(EC2Backend, "run_instances", after_run)
    _wrap(EC2Backend, "start_instances", after_start)
    _wrap(EC2Backend, "stop_instances", after_stop)
    _wrap(EC2Backend, "terminate_instances", after_terminate)
    _wrap(EC2Backend, "reboot_instances", after_reboot)

    original_create_image = EC2Backend.create_image

    def create_image(backend, instance_id, name, description, tag_specifications):
        if instance_id not in lab.instances:
            raise EC2ClientError("IncorrectInstanceState",
                                   f"The instance '{instance_id}' is not in a state from which it can be imaged.")
        # "AMI names must be unique per account and Region" (CreateImage, Name); a taken name answers
        # InvalidAMIName.Duplicate ("Error codes for the Amazon EC2 API").
        taken = next((a.id for a in backend.amis.values()
                      if a.name == name and a.owner_id == backend.account_id
                      and getattr(a, "state", "available") != "deregistered"), None)
        if taken is not None:
            raise EC2ClientError("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {taken}")
        snapshot_tags = [t for spec in tag_specifications if spec.get("ResourceType") == "snapshot"
                         for t in spec.get("Tags", [])]
        others = [spec for spec in tag_specifications if spec.get("ResourceType") != "snapshot"]
        ami = original_create_image(backend, instance_id, name, description, others)
        for tag in snapshot_tags:
            ami.ebs_snapshot.add_tag(tag["Key"], tag["Value"])
        lab.create_image(ami, instance_id, backend.region_name, getattr(_request, "no_reboot", False))
        return ami

    EC2Backend.create_image = create_image

    response_create_image = AmisResponse.create_image

    def create_image_response(self):
        _request.no_reboot = str(self._get_param("NoReboot", False)).lower() == "true"
        return response_create_image(self)

    AmisResponse.create_image = create_image_response

    def enable_image_deprecation(self):
        # EC2 keeps whole minutes (seconds round to the nearest) and answers it as DeprecationTime.
        ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
        at = self._get_param("DeprecateAt")  # moto parses the timestamp
        if isinstance(at, str):
            at = datetime.datetime.fromisoformat(at.replace("Z", "+00:00"))
        if at.tzinfo is None:
            at = at.replace(tzinfo=datetime.timezone.utc)
        at = (at + datetime.timedelta(seconds=30)).replace(second=0, microsecond=0)
        ami.deprecation_time = at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return ActionResult({"Return": True})

    def disable_image_deprecation(self):
        ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
        ami.deprecation_time = None
        return ActionResult({"Return": True})

    AmisResponse.enable_image_deprecation = enable_image_deprecation
    AmisResponse.disable_image_deprecation = disable_image_deprecation

    def after_copy(backend, ami, source_image_id, source_region, *a, **kw):
        lab.copy_image(source_region, source_image_id, backend.region_name, ami)

    def after_deregister(backend, result, ami_id, *a, **kw):
        lab.layers.forget_image(backend.region_name, ami_id)

    def after_delete_snapshot(backend, snapshot, snapshot_id, *a, **kw):
        lab.snapshot_deleted(backend.region_name, snapshot_id)

    secgroups.install(lab, _wrap)
    _wrap(EC2Backend, "copy_image", after_copy)
    _wrap(EC2Backend, "deregister_image", after_deregister)
    _wrap(EC2Backend, "delete_snapshot", after_delete_snapshot)


def _patch_ssm(lab: Lab) -> None:
    backend_cls = ssm_models.SimpleSystemManagerBackend
    command_cls = ssm_models.Command
    original_targets = command_cls._get_instance_ids_from_targets

    def targets(command):
        """Only the named instances run a command (moto picks every instance when Targets is empty)."""
        ids = [v for t in command.targets if t["Key"] == "InstanceIds" for v in t["Values"]]
        rest = [t for t in command.targets if t["Key"] != "InstanceIds"]
        if rest:
            saved, command.targets = command.targets, rest
            try:
                ids += original_targets(command)
            finally:
                command.targets = saved
        return ids

    command_cls._get_instance_ids_from_targets = targets
    original_send = backend_cls.send_command

    def send_command(backend, **kwargs):
        sent_at = time.time()
        command = original_send(backend, **kwargs)
        # SSM takes a command for a managed node (one whose agent has registered) that is running, pending,
        # stopping or stopped; it is delivered once the agent is reachable, or times out (see ssm.run_invocation).
        unmanaged = [i for i in command.instance_ids
                     if not (i in lab.instances and lab.instances[i].region == backend.region_name
                             and (getattr(lab.instances[i], "was_online", False)
                                  or lab.ssm_online(lab.instances[i]))
                             and lab.instances[i].state in ("pending", "running", "stopping", "stopped"))]
        if unmanaged or not command.instance_ids:
            backend._commands.remove(command)
            raise InvalidInstanceId(f"Instances [{unmanaged}] not in a valid state for account {backend.account_id}"
                                    if unmanaged else "No instances to run the command on")
        command.invocations = [ssm.pending_invocation(command, i) for i in command.instance_ids]
        command.target_count = len(command.invocations)
        ssm.refresh_command_status(command)
        _request.deliver = lambda: lab.background(f"command {command.command_id}", ssm.run_command, lab, command,
                                                  sent_at)
        return command

    backend_cls.send_command = send_command
    send_command_response = SimpleSystemManagerResponse.send_command

    def send_command_then_deliver(self):
        """Deliver to the agents only once the response is built, so SendCommand answers Pending as SSM does."""
        _request.deliver = None
        result = send_command_response(self)
        if _request.deliver:
            _request.deliver()
        return result

    SimpleSystemManagerResponse.send_command = send_command_then_deliver

    def cancel_command(self):
        """CancelCommand: moto has none; the lab's agent stops what has not finished."""
        command = self.ssm_backend.get_command_by_id(self._get_param("CommandId"))
        ssm.cancel(lab, command, self._get_param("InstanceIds"))
        return ActionResult({})

    original_put_parameter = backend_cls.put_parameter

    def put_parameter(backend, name, description, value, parameter_type, allowed_pattern, keyid, overwrite,
                      tags, data_type, tier, policies):
        """An aws:ec2:image value is validated after PutParameter answers: the new version shows only once the
        AMI is found available in the region; naming a missing AMI leaves the parameter as it was."""
        param = original_put_parameter(backend, name, description, value, parameter_type, allowed_pattern, keyid,
                                       overwrite, tags, data_type, tier, policies)
        if param.data_type == "aws:ec2:image":
            versions = backend._parameters[name]
            versions.remove(param)
            if not versions:
                backend._parameters.pop(name, None)
            lab.background(f"validate {name} v{param.version}", ssm.validate_image_parameter, lab, backend, param)
        return param

    backend_cls.put_parameter = put_parameter

    def list_command_invocations(self):
        command_id = self._get_param("CommandId")
        instance_id = self._get_param("InstanceId")
        details = bool(self._get_param("Details", False))
        rows = []
        for command in self.ssm_backend.list_commands(command_id, None):
            for inv in command.invocations:
                if instance_id in (None, inv["InstanceId"]):
                    rows.append(ssm.list_invocation(command, inv, details))
        return ActionResult({"CommandInvocations": rows})

    def describe_instance_information(self):
        filters: dict[str, set] = {}
        for f in self._get_param("InstanceInformationFilterList", []) or []:
            filters.setdefault(f.get("key"), set()).update(f.get("valueSet", []))
        for f in self._get_param("Filters", []) or []:
            filters.setdefault(f.get("Key"), set()).update(f.get("Values", []))
        rows = []
        for inst in list(lab.instances.values()):
            online = lab.ssm_online(inst)
            ping = "Online" if online else "ConnectionLost"
            if (inst.region != self.region or (not online and not inst.was_online)
                    or inst.id not in filters.get("InstanceIds", {inst.id})
                    or ping not in filters.get("PingStatus", {ping})):
                continue
            rows.append({
                "InstanceId": inst.id, "PingStatus": ping,
                "LastPingDateTime": datetime.datetime.now(datetime.timezone.utc),
                "AgentVersion": "3.3.0.0", "IsLatestVersion": True,
                "PlatformType": "Linux", "PlatformName": "Debian GNU/Linux", "PlatformVersion": "12",
                "ResourceType": "EC2Instance", "IPAddress": inst.private_ip,
                "ComputerName": inst.container.hostname,
            })
        return ActionResult({"InstanceInformationList": rows})

    SimpleSystemManagerResponse.list_command_invocations = list_command_invocations
    SimpleSystemManagerResponse.cancel_command = cancel_command
    SimpleSystemManagerResponse.describe_instance_information = describe_instance_information
