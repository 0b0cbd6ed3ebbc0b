"""The launcher's lifecycle: parallel labs stay apart, SIGTERM removes everything, a killed lab's leftovers go."""
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


def test_cleanup_stale_removes_a_killed_labs_leftovers_only(lab):
    other, iid = running_lab_with_instance()
    mine = launch_running(lab)
    other.stop(signal.SIGKILL)
    assert leftovers(other.info["index"], other.info["state_dir"], [iid])["nspawn"]
    subprocess.run([sys.executable, "-m", "bake_lab", "cleanup"], check=True, timeout=120)
    assert leftovers(other.info["index"], other.info["state_dir"], [iid]) == {}
    assert leftovers(lab.info["index"], lab.info["state_dir"], [mine])["instance netns"] == [mine]
    lab.client("ec2").terminate_instances(InstanceIds=[mine])
