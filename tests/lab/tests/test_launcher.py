"""The launcher's lifecycle: parallel labs stay apart, SIGTERM removes everything (however many arrive), a killed
lab's leftovers go."""
import signal
import subprocess
import sys

from conftest import LabProcess, launch_running, leftovers


def running_lab_with_instance() -> tuple[LabProcess, str]:
    other = LabProcess()
    return other, launch_running(other)


def test_a_second_lab_runs_apart_and_sigterm_removes_all_it_made(lab):
    other, iid = running_lab_with_instance()
    assert other.info["index"] != lab.info["index"]
    assert other.info["public_range"] != lab.info["public_range"]
    assert other.get_json("/_lab/containers")[0]["instance_id"] == iid
    assert all(c["instance_id"] != iid for c in lab.get_json("/_lab/containers"))
    assert leftovers(other.info["index"], other.info["state_dir"], [iid])["instance netns"]
    assert other.stop(signal.SIGTERM) == 0
    assert leftovers(other.info["index"], other.info["state_dir"], [iid]) == {}
    assert lab.client("ec2").describe_vpcs()["Vpcs"]  # the session's lab is untouched


def test_a_burst_of_signals_stops_the_lab_once_and_removes_all_it_made():
    """A supervisor that signals again and again (systemd's stop, a test harness's retry, ^C ^C) must not wedge the
    lab: each signal lands wherever the main thread is, including inside a lock."""
    other, iid = running_lab_with_instance()
    for n in range(50):
        other.proc.send_signal(signal.SIGINT if n % 2 else signal.SIGTERM)
    assert other.proc.wait(120) == 0
    assert leftovers(other.info["index"], other.info["state_dir"], [iid]) == {}


def test_cleanup_stale_removes_a_killed_labs_leftovers_only(lab):
    other, iid = running_lab_with_instance()
    mine = launch_running(lab)
    other.stop(signal.SIGKILL)
    assert leftovers(other.info["index"], other.info["state_dir"], [iid])["nspawn"]
    subprocess.run([sys.executable, "-m", "bake_lab", "cleanup"], check=True, timeout=120)
    assert leftovers(other.info["index"], other.info["state_dir"], [iid]) == {}
    assert leftovers(lab.info["index"], lab.info["state_dir"], [mine])["instance netns"] == [mine]
    lab.client("ec2").terminate_instances(InstanceIds=[mine])
