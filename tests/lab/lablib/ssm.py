"""The SSM agent of lab instances: runs AWS-RunShellScript commands inside the containers, as SSM reports them."""
import datetime
import time

from .lab import Lab

DEFAULT_EXECUTION_TIMEOUT = 3600  # AWS-RunShellScript's documented default executionTimeout, seconds
SSM_OUTPUT_LIMIT = 24000  # characters of stdout/stderr that GetCommandInvocation returns, as SSM does
PLUGIN_OUTPUT_LIMIT = 2500  # characters of a plugin's Output in ListCommandInvocations, as SSM does


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def _elapsed(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


def pending_invocation(command, instance_id: str) -> dict:
    return {
        "CommandId": command.command_id, "InstanceId": instance_id, "Comment": command.comment,
        "DocumentName": command.document_name, "DocumentVersion": "$DEFAULT", "PluginName": "aws:runShellScript",
        "ResponseCode": -1, "ExecutionStartDateTime": "", "ExecutionElapsedTime": "", "ExecutionEndDateTime": "",
        "Status": "Pending", "StatusDetails": "Pending", "StandardOutputContent": "", "StandardOutputUrl": "",
        "StandardErrorContent": "", "StandardErrorUrl": "",
    }


def refresh_command_status(command) -> None:
    """A command's status summarises its invocations the way SSM does."""
    states = [i["Status"] for i in command.invocations]
    done = [s for s in states if s in ("Success", "Failed", "TimedOut", "Cancelled")]
    command.completed_count = len(done)
    command.error_count = sum(1 for s in states if s in ("Failed", "TimedOut"))
    if len(done) < len(states):
        command.status = "InProgress" if any(s != "Pending" for s in states) else "Pending"
    elif "TimedOut" in states:
        command.status = "TimedOut"
    elif "Failed" in states:
        command.status = "Failed"
    else:
        command.status = "Success"
    command.status_details = command.status


def run_invocation(lab: Lab, command, invocation: dict, sent_at: float) -> None:
    """Deliver one invocation to its instance's agent, run it, and record the outcome."""
    lab.sleep_until(sent_at, "command")
    inst = lab.instances.get(invocation["InstanceId"])
    started = time.time()
    invocation.update(Status="InProgress", StatusDetails="InProgress", ExecutionStartDateTime=_iso(started))
    refresh_command_status(command)
    params = command.parameters or {}
    script = "\n".join(params.get("commands", [])) + "\n"
    timeout = float((params.get("executionTimeout") or [DEFAULT_EXECUTION_TIMEOUT])[0])
    if command.document_name != "AWS-RunShellScript":
        code, out, err = 1, "", f"the lab's agent runs AWS-RunShellScript only, not {command.document_name}\n"
    elif inst is None or not inst.container.alive:
        code, out, err = 1, "", "instance is not running\n"
    else:
        if params.get("workingDirectory", [""])[0]:
            script = f"cd {params['workingDirectory'][0]} || exit 1\n{script}"
        code, out, err = inst.container.exec(script, timeout)
    ended = time.time()
    if code is None:
        status, details, code = "TimedOut", "ExecutionTimedOut", -1
        err += f"\nfailed to run commands: exit status timed out after {timeout:.0f}s\n"
    elif code == 0:
        status, details = "Success", "Success"
    else:
        status, details = "Failed", "Failed"
        err += f"failed to run commands: exit status {code}\n"
    lab.event("command_finished", command_id=command.command_id, instance_id=invocation["InstanceId"],
              status=status, response_code=code)
    invocation.update(Status=status, StatusDetails=details, ResponseCode=code,
                      StandardOutputContent=out[:SSM_OUTPUT_LIMIT], StandardErrorContent=err[:SSM_OUTPUT_LIMIT],
                      ExecutionEndDateTime=_iso(ended), ExecutionElapsedTime=_elapsed(ended - started))
    refresh_command_status(command)


def list_invocation(command, inv: dict, details: bool) -> dict:
    """An invocation as ListCommandInvocations shows it (plugins only when Details is true)."""
    out = {
        "CommandId": command.command_id, "InstanceId": inv["InstanceId"], "InstanceName": "",
        "Comment": command.comment, "DocumentName": command.document_name, "DocumentVersion": "$DEFAULT",
        "RequestedDateTime": command.requested_date_time, "Status": inv["Status"],
        "StatusDetails": inv["StatusDetails"], "StandardOutputUrl": "", "StandardErrorUrl": "",
        "CommandPlugins": [], "ServiceRole": command.service_role_arn,
    }
    if details:
        plugin = {"Name": "aws:runShellScript", "Status": inv["Status"], "StatusDetails": inv["StatusDetails"],
                  "ResponseCode": inv["ResponseCode"],
                  "Output": (inv["StandardOutputContent"] + inv["StandardErrorContent"])[:PLUGIN_OUTPUT_LIMIT],
                  "StandardOutputUrl": "", "StandardErrorUrl": ""}
        for key, field in (("ResponseStartDateTime", "ExecutionStartDateTime"),
                           ("ResponseFinishDateTime", "ExecutionEndDateTime")):
            if inv[field]:
                plugin[key] = datetime.datetime.fromisoformat(inv[field])
        out["CommandPlugins"] = [plugin]
    return out
