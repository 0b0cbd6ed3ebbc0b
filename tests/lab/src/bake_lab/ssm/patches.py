"""SSM as moto lacks it: the patches that hand commands to the lab's agents (SendCommand only to managed nodes,
delivered after the answer; CancelCommand; ListCommandInvocations; DescribeInstanceInformation from the agents;
aws:ec2:image parameters validated after PutParameter answers)."""
import datetime
import threading
import time

from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.ssm import models as ssm_models
from moto.ssm.responses import SimpleSystemManagerResponse

from ..lab import Lab
from . import commands

_request = threading.local()  # the delivery SendCommand's response starts once it is built


class InvalidInstanceId(ServiceException):
    code = "InvalidInstanceId"


def install(lab: Lab) -> None:
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
        # stopping or stopped; it is delivered once the agent is reachable, or times out (see commands.run_invocation).
        unmanaged = [i for i in command.instance_ids
                     if not (i in lab.instances and lab.instances[i].region == backend.region_name
                             and (getattr(lab.instances[i], "was_online", False)
                                  or lab.ssm_online(lab.instances[i]))
                             and lab.instances[i].state in ("pending", "running", "stopping", "stopped"))]
        if unmanaged or not command.instance_ids:
            backend._commands.remove(command)
            raise InvalidInstanceId(f"Instances [{unmanaged}] not in a valid state for account {backend.account_id}"
                                    if unmanaged else "No instances to run the command on")
        command.invocations = [commands.pending_invocation(command, i) for i in command.instance_ids]
        command.target_count = len(command.invocations)
        commands.refresh_command_status(command)
        _request.deliver = lambda: lab.background(f"command {command.command_id}", commands.run_command, lab, command,
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
        commands.cancel(lab, command, self._get_param("InstanceIds"))
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
            lab.background(f"validate {name} v{param.version}", commands.validate_image_parameter, lab, backend, param)
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
                    rows.append(commands.list_invocation(command, inv, details))
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
                "LastPingDateTime": datetime.datetime.now(datetime.UTC),
                "AgentVersion": "3.3.0.0", "IsLatestVersion": True,
                "PlatformType": "Linux", "PlatformName": "Debian GNU/Linux", "PlatformVersion": "12",
                "ResourceType": "EC2Instance", "IPAddress": inst.private_ip,
                "ComputerName": inst.container.hostname,
            })
        return ActionResult({"InstanceInformationList": rows})

    SimpleSystemManagerResponse.list_command_invocations = list_command_invocations
    SimpleSystemManagerResponse.cancel_command = cancel_command
    SimpleSystemManagerResponse.describe_instance_information = describe_instance_information
