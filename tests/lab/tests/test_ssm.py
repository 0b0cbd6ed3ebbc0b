"""SSM through the lab's agent: Online only with a profile, commands really run as the agent runs them (a script file
under `sh -c`, as root) with the statuses, codes and output limits SSM reports; aws:ec2:image parameters validated
after PutParameter answers."""
import time

import pytest

from conftest import AGENT_WAIT, COMMAND_WAIT, launch, run_command, wait_for, wait_state


def online(ssm, instance_id: str) -> bool:
    rows = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]},
                                                      {"Key": "PingStatus", "Values": ["Online"]}])
    return [r["InstanceId"] for r in rows["InstanceInformationList"]] == [instance_id]


@pytest.fixture(scope="module")
def managed(ec2, ssm, ubuntu_ami):
    """Two instances with the SSM profile, one without."""
    ids = [launch(ec2, ubuntu_ami), launch(ec2, ubuntu_ami, subnet="Private subnet A"),
           launch(ec2, ubuntu_ami, profile=False)]
    for iid in ids:
        wait_state(ec2, iid, "running")
    wait_for("agents online", lambda: online(ssm, ids[0]) and online(ssm, ids[1]), AGENT_WAIT)
    yield ids
    ec2.terminate_instances(InstanceIds=ids)
    for iid in ids:
        wait_state(ec2, iid, "terminated")


@pytest.fixture(scope="module")
def stopped_nodes(ec2, ssm, ubuntu_ami):
    """Two managed nodes, stopped, each sent a command: the delivery timeout (TimeoutSeconds 30 s, the minimum, plus
    executionTimeout 1 s) runs out while the module's other tests run, the last test checks the outcome."""
    ids = [launch(ec2, ubuntu_ami), launch(ec2, ubuntu_ami)]
    for iid in ids:
        wait_state(ec2, iid, "running")
    wait_for("agents online", lambda: online(ssm, ids[0]) and online(ssm, ids[1]), AGENT_WAIT)
    ec2.stop_instances(InstanceIds=ids)
    for iid in ids:
        wait_state(ec2, iid, "stopped")
    sent = time.monotonic()
    commands = [ssm.send_command(InstanceIds=[iid], DocumentName="AWS-RunShellScript", TimeoutSeconds=30,
                                 Parameters={"commands": ["true"], "executionTimeout": ["1"]})["Command"]["CommandId"]
                for iid in ids]
    yield ids, commands, sent
    ec2.terminate_instances(InstanceIds=ids)


def test_a_stopped_node_takes_commands_and_a_terminated_one_makes_them_undeliverable(ec2, ssm, stopped_nodes):
    """First in this file: its fixture starts the delivery timeout the last test checks."""
    ids, commands, _ = stopped_nodes
    assert ssm.get_command_invocation(CommandId=commands[0], InstanceId=ids[0])["Status"] == "Pending"
    ec2.terminate_instances(InstanceIds=[ids[1]])
    gone = wait_for("undeliverable", lambda: (i := ssm.get_command_invocation(
        CommandId=commands[1], InstanceId=ids[1]))["Status"] == "Failed" and i, COMMAND_WAIT)
    assert (gone["StatusDetails"], gone["ResponseCode"]) == ("Undeliverable", -1)


def test_only_instances_with_a_profile_come_online_after_the_agent_delay(lab, ec2, ssm, ubuntu_ami):
    lab.post("/_lab/latency", {"ssm_online": 3})
    try:
        with_profile, without = launch(ec2, ubuntu_ami), launch(ec2, ubuntu_ami, profile=False)
        wait_state(ec2, with_profile, "running")
        assert not online(ssm, with_profile)
        wait_for("agent online", lambda: online(ssm, with_profile), AGENT_WAIT)
        wait_state(ec2, without, "running")
        assert not online(ssm, without)
        events = {e["instance_id"]: e for e in lab.get_lines("/_lab/events") if "instance_id" in e}
        assert events[with_profile]["event"] == "ssm_online" and events[without]["event"] == "instance_running"
    finally:
        lab.post("/_lab/latency", {"ssm_online": 2})
        ec2.terminate_instances(InstanceIds=[with_profile, without])


def test_commands_return_output_and_exit_code(ssm, managed):
    ok = run_command(ssm, managed[0], ["echo hello > /tmp/f", "cat /tmp/f", "echo oops >&2"])
    assert (ok["Status"], ok["ResponseCode"], ok["StandardOutputContent"]) == ("Success", 0, "hello\n")
    assert ok["StandardErrorContent"] == "oops\n"
    failed = run_command(ssm, managed[0], ["echo before", "exit 3"])
    assert (failed["Status"], failed["StatusDetails"], failed["ResponseCode"]) == ("Failed", "Failed", 3)
    assert failed["StandardOutputContent"] == "before\n"


def test_command_status_goes_pending_in_progress_then_done(lab, ssm, managed):
    lab.post("/_lab/latency", {"command": 1})
    try:
        sent = ssm.send_command(InstanceIds=[managed[0]], DocumentName="AWS-RunShellScript",
                                Parameters={"commands": ["sleep 2"]})["Command"]
        cid = sent["CommandId"]
        assert sent["Status"] == "Pending"
        seen = []

        def status():
            s = ssm.get_command_invocation(CommandId=cid, InstanceId=managed[0])["Status"]
            if not seen or seen[-1] != s:
                seen.append(s)
            return s == "Success"
        wait_for("command done", status, COMMAND_WAIT, 0.1)
        assert seen == ["Pending", "InProgress", "Success"]
    finally:
        lab.post("/_lab/latency", {"command": 0})


def test_command_past_its_execution_timeout_is_timed_out(ssm, managed):
    result = run_command(ssm, managed[0], ["sleep 30"], executionTimeout=2)
    assert result["Status"] == "TimedOut" and result["StatusDetails"] == "ExecutionTimedOut"


def test_output_is_truncated_at_24000_characters(ssm, managed):
    result = run_command(ssm, managed[0], ["head -c 30000 /dev/zero | tr '\\0' x"])
    assert len(result["StandardOutputContent"]) == 24000


def test_stderr_is_truncated_at_8000_characters(ssm, managed):
    result = run_command(ssm, managed[0], ["head -c 10000 /dev/zero | tr '\\0' e >&2", "echo out"])
    assert result["Status"] == "Success"
    assert result["StandardErrorContent"] == "e" * 8000
    assert result["StandardOutputContent"] == "out\n"


def test_scripts_run_under_sh_as_root_from_a_script_file(ssm, managed):
    result = run_command(ssm, managed[0], ['echo "${BASH_VERSION:-none}"', "id -u", 'echo "$0"', "pwd"])
    shell, uid, script, cwd = result["StandardOutputContent"].splitlines()
    assert (shell, uid) == ("none", "0")
    assert script.endswith("/awsrunShellScript/0.awsrunShellScript/_script.sh"), script
    assert script.startswith(f"/var/lib/amazon/ssm/{managed[0]}/document/orchestration/") and cwd in script
    # bash-only syntax fails under dash, as it does on a Debian instance's agent...
    bashism = run_command(ssm, managed[0], ["[[ 1 -lt 2 ]] && echo yes"])
    assert (bashism["Status"], bashism["ResponseCode"], bashism["StandardOutputContent"]) == ("Failed", 127, "")
    # ...unless the script names its interpreter: the file is executed, so its #! line counts.
    shebang = run_command(ssm, managed[0], ["#!/bin/bash", 'echo "${BASH_VERSION:-none}"'])
    assert shebang["StandardOutputContent"] != "none\n" and shebang["Status"] == "Success"
    in_tmp = run_command(ssm, managed[0], ["pwd"], workingDirectory="/tmp")
    assert in_tmp["StandardOutputContent"] == "/tmp\n"


def test_a_cancelled_command_is_killed_and_reported_cancelled(ssm, managed):
    cid = ssm.send_command(InstanceIds=[managed[0]], DocumentName="AWS-RunShellScript",
                           Parameters={"commands": ["sleep 41; touch /tmp/not-cancelled"]})["Command"]["CommandId"]
    wait_for("running", lambda: ssm.get_command_invocation(CommandId=cid, InstanceId=managed[0])["Status"]
             == "InProgress", COMMAND_WAIT, 0.1)
    ssm.cancel_command(CommandId=cid)
    inv = wait_for("cancelled", lambda: (i := ssm.get_command_invocation(CommandId=cid, InstanceId=managed[0]))
                   ["Status"] == "Cancelled" and i, COMMAND_WAIT)
    assert inv["StatusDetails"] == "Cancelled"
    assert ssm.list_commands(CommandId=cid)["Commands"][0]["Status"] == "Cancelled"
    still = run_command(ssm, managed[0], ["pgrep -f 'sleep 41' || echo gone"])
    assert still["StandardOutputContent"] == "gone\n"


def test_past_max_errors_the_remaining_invocations_are_terminated(ssm, managed):
    cid = ssm.send_command(InstanceIds=managed[:2], DocumentName="AWS-RunShellScript", MaxConcurrency="1",
                           MaxErrors="0", Parameters={"commands": ["exit 4"]})["Command"]["CommandId"]
    wait_for("done", lambda: ssm.list_commands(CommandId=cid)["Commands"][0]["Status"] not in
             ("Pending", "InProgress"), COMMAND_WAIT)
    rows = ssm.list_command_invocations(CommandId=cid)["CommandInvocations"]
    assert sorted((r["Status"], r["StatusDetails"]) for r in rows) == [("Failed", "Failed"), ("Failed", "Terminated")]
    command = ssm.list_commands(CommandId=cid)["Commands"][0]
    assert (command["Status"], command["ErrorCount"], command["CompletedCount"]) == ("Failed", 1, 2)


def test_an_image_parameter_naming_a_missing_ami_is_not_updated(lab, ssm):
    debian_ami = ssm.get_parameter(Name="/aws/service/debian/release/bookworm/latest/amd64")["Parameter"]["Value"]
    name = "/lab-test/image-parameter/ami-id"
    first = ssm.put_parameter(Name=name, Value=debian_ami, Type="String", DataType="aws:ec2:image")
    assert first["Version"] == 1
    # Validation happens after PutParameter answers: a moment later the parameter holds the AMI.
    with pytest.raises(ssm.exceptions.ParameterNotFound):  # not created until validated
        ssm.get_parameter(Name=name)
    wait_for("validated", lambda: ssm.get_parameters(Names=[name])["Parameters"], 10, 0.2)
    assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == debian_ami
    missing = "ami-0123456789abcdef0"
    second = ssm.put_parameter(Name=name, Value=missing, Type="String", DataType="aws:ec2:image", Overwrite=True)
    assert second["Version"] == 2  # PutParameter succeeds...
    wait_for("validation failed", lambda: any(e["event"] == "parameter_validation_failed" and e["name"] == name
                                              for e in lab.get_lines("/_lab/events")), 10, 0.2)
    # ...but the parameter is not updated, and its history has no version naming the missing AMI.
    param = ssm.get_parameter(Name=name)["Parameter"]
    assert (param["Value"], param["Version"]) == (debian_ami, 1)
    history = ssm.get_parameter_history(Name=name)["Parameters"]
    assert [(h["Version"], h["Value"]) for h in history] == [(1, debian_ami)]
    never = "/lab-test/image-parameter/never"
    ssm.put_parameter(Name=never, Value=missing, Type="String", DataType="aws:ec2:image")
    time.sleep(2)  # twice the lab's validation time
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=never)


def test_only_the_named_instances_run_a_command(ssm, managed):
    cid = ssm.send_command(InstanceIds=[managed[1]], DocumentName="AWS-RunShellScript",
                           Parameters={"commands": ["hostname -I"]})["Command"]["CommandId"]
    wait_for("done", lambda: ssm.list_commands(CommandId=cid)["Commands"][0]["Status"] == "Success", COMMAND_WAIT)
    invocations = ssm.list_command_invocations(CommandId=cid, Details=True)["CommandInvocations"]
    assert [i["InstanceId"] for i in invocations] == [managed[1]]
    plugin = invocations[0]["CommandPlugins"][0]
    assert plugin["Status"] == "Success" and plugin["Output"].startswith("10.0.100.")
    assert [i["InstanceId"] for i in ssm.list_command_invocations(InstanceId=managed[0])["CommandInvocations"]
            if i["CommandId"] == cid] == []


def test_an_instance_without_profile_cannot_be_sent_commands(ssm, managed):
    with pytest.raises(ssm.exceptions.InvalidInstanceId):
        ssm.send_command(InstanceIds=[managed[2]], DocumentName="AWS-RunShellScript",
                         Parameters={"commands": ["true"]})


def test_a_command_never_delivered_times_out_after_timeout_seconds_plus_the_execution_timeout(ssm, stopped_nodes):
    """Last in this file, so the 31 s delivery timeout has mostly passed during the other tests."""
    ids, commands, sent = stopped_nodes
    late = wait_for("delivery timeout", lambda: (i := ssm.get_command_invocation(
        CommandId=commands[0], InstanceId=ids[0]))["Status"] == "TimedOut" and i, 31 + COMMAND_WAIT)
    assert late["StatusDetails"] == "DeliveryTimedOut" and time.monotonic() - sent >= 30
    command = ssm.list_commands(CommandId=commands[0])["Commands"][0]
    assert (command["Status"], command["StatusDetails"]) == ("TimedOut", "DeliveryTimedOut")
