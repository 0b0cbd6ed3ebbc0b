"""The SSM agent of lab instances: AWS-RunShellScript as amazon-ssm-agent runs it (a script file run by `sh -c`,
as root), delivery and its timeouts, cancellation, rate controls, and the statuses SSM reports for each."""
import datetime
import os
import re
import signal
import subprocess
import threading
import time

from ..host.container import SHELL_ENV
from ..lab import Lab

DEFAULT_EXECUTION_TIMEOUT = 3600  # AWS-RunShellScript's documented default executionTimeout, seconds
STDOUT_LIMIT = 24000  # GetCommandInvocation's StandardOutputContent: the first 24,000 characters of stdout
STDERR_LIMIT = 8000   # GetCommandInvocation's StandardErrorContent: the first 8,000 characters of stderr
PLUGIN_OUTPUT_LIMIT = 2500  # characters of a plugin's Output in ListCommandInvocations, as SSM does
# How often a waiting invocation looks whether its instance's agent is reachable, and a running one whether it
# was cancelled: short against the seconds SSM takes, cheap (no process is started).
AGENT_POLL = 0.25
# Where the agent writes a command's script and runs it from (its orchestration directory).
ORCHESTRATION = "/var/lib/amazon/ssm/{instance}/document/orchestration/{command}/awsrunShellScript/0.awsrunShellScript"
# (Status, StatusDetails) of every terminal outcome, as "Understanding command statuses" documents them.
TERMINAL = {
    "Success": ("Success", "Success"),
    "Failed": ("Failed", "Failed"),
    "ExecutionTimedOut": ("TimedOut", "ExecutionTimedOut"),
    "DeliveryTimedOut": ("TimedOut", "DeliveryTimedOut"),
    "Undeliverable": ("Failed", "Undeliverable"),
    "Terminated": ("Failed", "Terminated"),
    "Cancelled": ("Cancelled", "Cancelled"),
}
# Parameter Store validates an aws:ec2:image value after PutParameter has answered; the lab takes this long.
IMAGE_PARAMETER_VALIDATION = 1.0
AMI_ID = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")
TERMINAL_STATUSES = {"Success", "Failed", "TimedOut", "Cancelled"}


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()


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


def _limit(value: str, count: int) -> int:
    """MaxConcurrency / MaxErrors: an absolute number, or a percentage of the targets (at least 1)."""
    value = str(value or "").strip()
    if value.endswith("%"):
        return max(1, (count * int(value[:-1]) + 99) // 100)
    return int(value) if value else count


def refresh_command_status(command) -> None:
    """A command's status summarises its invocations the way "Understanding command statuses" says: Undeliverable
    and DeliveryTimedOut do not count as errors, Failed and ExecutionTimedOut do, past MaxErrors the command fails."""
    invs = command.invocations
    done = [i for i in invs if i["Status"] in TERMINAL_STATUSES]
    command.completed_count = len(done)
    errors = [i for i in invs if i["StatusDetails"] in ("Failed", "ExecutionTimedOut")]
    command.error_count = len(errors)
    command.delivery_timed_out_count = sum(1 for i in invs if i["StatusDetails"] == "DeliveryTimedOut")
    if getattr(command, "cancel_requested", False) and len(done) == len(invs):
        command.status = command.status_details = "Cancelled"
        return
    if len(done) < len(invs):
        command.status = "InProgress" if any(i["Status"] != "Pending" for i in invs) else "Pending"
        command.status_details = command.status
        return
    max_errors = _limit(command.max_errors or "0", len(invs))
    details = [i["StatusDetails"] for i in invs]
    if errors and (len(errors) > max_errors or len(errors) == len(invs)):
        worst = "ExecutionTimedOut" if all(d == "ExecutionTimedOut" for d in
                                           (e["StatusDetails"] for e in errors)) else "Failed"
        command.status, command.status_details = ("TimedOut" if worst == "ExecutionTimedOut" else "Failed"), worst
    elif all(d == "Success" for d in details):
        command.status = command.status_details = "Success"
    elif all(d == "DeliveryTimedOut" for d in details):
        command.status, command.status_details = "TimedOut", "DeliveryTimedOut"
    elif all(d == "Cancelled" for d in details):
        command.status = command.status_details = "Cancelled"
    elif any(d == "Success" for d in details) and all(d in ("Success", "Undeliverable") for d in details):
        command.status = command.status_details = "Success"
    else:
        command.status, command.status_details = "Failed", "Incomplete"


def _finish(lab: Lab, command, invocation: dict, outcome: str, code: int, out: str = "", err: str = "",
            started: float | None = None) -> None:
    status, details = TERMINAL[outcome]
    ended = time.time()
    lab.event("command_finished", command_id=command.command_id, instance_id=invocation["InstanceId"],
              status=status, status_details=details, response_code=code)
    invocation.update(Status=status, StatusDetails=details, ResponseCode=code,
                      StandardOutputContent=out[:STDOUT_LIMIT], StandardErrorContent=err[:STDERR_LIMIT])
    if started is not None:
        invocation.update(ExecutionEndDateTime=_iso(ended), ExecutionElapsedTime=_elapsed(ended - started))
    refresh_command_status(command)


def run_command(lab: Lab, command, sent_at: float) -> None:
    """Deliver a command's invocations MaxConcurrency at a time; once more than MaxErrors failed, the ones not yet
    sent are Terminated (the documented rate controls)."""
    invs = list(command.invocations)
    concurrency = _limit(command.max_concurrency or "50", len(invs))
    max_errors = _limit(command.max_errors or "0", len(invs))
    for start in range(0, len(invs), concurrency):
        batch = invs[start:start + concurrency]
        if command.error_count > max_errors:
            for inv in batch:
                if inv["Status"] == "Pending":
                    _finish(lab, command, inv, "Terminated", -1)
            continue
        threads = [threading.Thread(target=_guarded, args=(lab, command, inv, sent_at),
                                    name=f"command {command.command_id} {inv['InstanceId']}", daemon=True)
                   for inv in batch]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _guarded(lab: Lab, command, invocation: dict, sent_at: float) -> None:
    try:
        run_invocation(lab, command, invocation, sent_at)
    except Exception as e:  # noqa: BLE001 - recorded, the invocation must still end
        lab.event("error", what=f"command {command.command_id} {invocation['InstanceId']}", error=str(e))
        if invocation["Status"] not in TERMINAL_STATUSES:
            _finish(lab, command, invocation, "Failed", 1, err=f"the lab's agent failed: {e}\n")


def run_invocation(lab: Lab, command, invocation: dict, sent_at: float) -> None:
    """Wait until the instance's agent can take the command (or the delivery timeout, TimeoutSeconds plus the
    executionTimeout, passes), run it, and record the outcome."""
    lab.sleep_until(sent_at, "command")
    params = command.parameters or {}
    timeout = float((params.get("executionTimeout") or [DEFAULT_EXECUTION_TIMEOUT])[0])
    delivery_deadline = sent_at + float(command.timeout_seconds) + timeout
    while True:
        if invocation["Status"] in TERMINAL_STATUSES:  # cancelled before delivery
            return
        inst = lab.instances.get(invocation["InstanceId"])
        if inst is None or inst.state in ("shutting-down", "terminated"):
            _finish(lab, command, invocation, "Undeliverable", -1)
            return
        if lab.ssm_online(inst):
            break
        if time.time() >= delivery_deadline:
            _finish(lab, command, invocation, "DeliveryTimedOut", -1)
            return
        time.sleep(AGENT_POLL)
    started = time.time()
    invocation.update(Status="InProgress", StatusDetails="InProgress", ExecutionStartDateTime=_iso(started))
    refresh_command_status(command)
    if command.document_name != "AWS-RunShellScript":
        code, out, err = 1, "", f"the lab's agent runs AWS-RunShellScript only, not {command.document_name}\n"
    else:
        code, out, err = _run_script(inst, command, invocation, params, timeout)
    if invocation["Status"] == "Cancelled":
        return
    if code is None:
        # The agent kills the process group and reports the timeout after what the script wrote.
        _finish(lab, command, invocation, "ExecutionTimedOut", -1, out,
                err + f"\nfailed to run commands: exit status timed out after {timeout:.0f}s\n", started)
    elif code == 0:
        _finish(lab, command, invocation, "Success", 0, out, err, started)
    else:
        _finish(lab, command, invocation, "Failed", code, out, err + f"failed to run commands: exit status {code}\n",
                started)


def _run_script(inst, command, invocation: dict, params: dict, timeout: float) -> tuple[int | None, str, str]:
    """As amazon-ssm-agent's runShellScript plugin does: the commands joined by newlines into _script.sh in the
    orchestration directory, run as `sh -c <path>` by root from workingDirectory (default: that directory), so a
    script without a #! line runs under /bin/sh (dash on Debian), one with a #! under its interpreter."""
    directory = ORCHESTRATION.format(instance=inst.id, command=command.command_id)
    host_dir = inst.container.rootfs / directory.lstrip("/")
    host_dir.mkdir(parents=True, exist_ok=True)
    script = host_dir / "_script.sh"
    script.write_text("\n".join(params.get("commands", [])) + "\n")
    script.chmod(0o700)
    cwd = (params.get("workingDirectory") or [""])[0] or directory
    pid = inst.container.leader()
    if pid is None:
        return 1, "", "instance is not running\n"
    # nsenter resolves -w on the host, so the shell enters the directory itself, then becomes `sh -c <script>`.
    proc = subprocess.Popen(inst.container.charged([
        "nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--", *SHELL_ENV, "sh", "-c",
        'cd "$1" && exec sh -c "$2"', "sh", cwd, f"{directory}/_script.sh"]),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    out = err = b""
    while True:
        try:
            out, err = proc.communicate(timeout=AGENT_POLL)
            code = proc.returncode
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() < deadline and invocation["Status"] != "Cancelled":
                continue
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = None
            break
    return code, out.decode(errors="replace"), err.decode(errors="replace")


def cancel(lab: Lab, command, instance_ids: list[str] | None) -> None:
    """CancelCommand: invocations not yet finished end Cancelled; a running script is killed."""
    command.cancel_requested = True
    for inv in command.invocations:
        if (instance_ids and inv["InstanceId"] not in instance_ids) or inv["Status"] in TERMINAL_STATUSES:
            continue
        _finish(lab, command, inv, "Cancelled", -1, inv["StandardOutputContent"], inv["StandardErrorContent"])


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


def validate_image_parameter(lab: Lab, backend, param) -> None:
    """After IMAGE_PARAMETER_VALIDATION, the version PutParameter answered becomes the parameter's newest if its value
    is an AMI id available in the region; otherwise it is dropped, so GetParameter and GetParameterHistory show the
    parameter as it was ("Native parameter support for Amazon Machine Image IDs")."""
    from moto.ec2 import ec2_backends

    time.sleep(IMAGE_PARAMETER_VALIDATION)
    ami = None
    if AMI_ID.match(param.value):
        ami = ec2_backends[backend.account_id][backend.region_name].amis.get(param.value)
    if ami is not None and getattr(ami, "state", "available") == "available":
        versions = backend._parameters[param.name]
        versions.append(param)
        versions.sort(key=lambda p: p.version)
        lab.event("parameter_validated", name=param.name, version=param.version, value=param.value)
    else:
        reason = "not an AMI id" if not AMI_ID.match(param.value) else "no such available AMI in the region"
        lab.event("parameter_validation_failed", name=param.name, version=param.version, value=param.value,
                  reason=reason)
