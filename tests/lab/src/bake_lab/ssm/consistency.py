"""SSM's eventual consistency (see consistency.py): a new command's invocation does not exist for a moment."""
from moto.ssm import models as ssm_models
from moto.ssm.exceptions import SSMException

from ..consistency import Consistency, serving_one_of
from ..patching import replace


def install(c: Consistency) -> None:
    backend_cls = ssm_models.SimpleSystemManagerBackend

    def send_command(original):
        def patched(backend, *args, **kwargs):
            command = original(backend, *args, **kwargs)
            if serving_one_of("SendCommand"):
                c.created("invocation", command.command_id)
            return command
        return patched

    def get_command_invocation(original):
        def patched(backend, command_id, *args, **kwargs):
            if serving_one_of("GetCommandInvocation") and c.new(command_id):
                raise SSMException("InvocationDoesNotExist",
                                   "An error occurred (InvocationDoesNotExist) when calling the "
                                   "GetCommandInvocation operation")
            return original(backend, command_id, *args, **kwargs)
        return patched

    replace(backend_cls, "send_command", send_command)
    replace(backend_cls, "get_command_invocation", get_command_invocation)


