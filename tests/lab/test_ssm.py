"""SSM through the lab's agent: Online only with a profile, commands really run with status, code and output."""
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
