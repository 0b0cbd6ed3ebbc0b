"""The launcher's lifecycle: parallel labs stay apart, SIGTERM removes everything, a killed lab's leftovers go."""
import signal
import subprocess
import sys
from pathlib import Path

from conftest import HERE, LabProcess, launch, wait_state


def leftovers(index: int, state_dir: str) -> dict:
    """Everything of lab `index` visible on the host."""
    netns = [l.split()[0] for l in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
             .stdout.splitlines() if l.startswith(f"bakelab{index}-")]
    links = subprocess.run(["ip", "-o", "link", "show", f"bl{index}h"], capture_output=True, text=True).stdout
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    mounts = [l for l in Path("/proc/mounts").read_text().splitlines() if state_dir in l]
    nspawn = subprocess.run(["pgrep", "-f", f"systemd-nspawn.*{state_dir}/"], capture_output=True, text=True).stdout
    found = {"netns": netns, "link": links.strip(), "nft": f"table ip bakelab{index}" in nft.splitlines(),
             "mounts": mounts, "state_dir": Path(state_dir).exists(), "nspawn": nspawn.split()}
    return {k: v for k, v in found.items() if v}


def running_lab_with_instance() -> tuple[LabProcess, str]:
    other = LabProcess()
    ec2, ssm = other.client("ec2"), other.client("ssm")
    ami = ssm.get_parameter(Name="/aws/service/debian/release/bookworm/latest/amd64")["Parameter"]["Value"]
    iid = launch(ec2, ami, profile=False)
    wait_state(ec2, iid, "running")
    return other, iid


def test_a_second_lab_runs_apart_and_sigterm_removes_all_it_made(lab):
    other, iid = running_lab_with_instance()
    assert other.info["index"] != lab.info["index"]
    assert other.info["public_range"] != lab.info["public_range"]
    assert other.get_json("/_lab/containers")[0]["instance_id"] == iid
    assert all(c["instance_id"] != iid for c in lab.get_json("/_lab/containers"))
    assert leftovers(other.info["index"], other.info["state_dir"])["netns"]
    assert other.stop(signal.SIGTERM) == 0
    assert leftovers(other.info["index"], other.info["state_dir"]) == {}
    assert lab.client("ec2").describe_vpcs()["Vpcs"]  # the session's lab is untouched


def test_cleanup_stale_removes_a_killed_labs_leftovers_only(lab):
    other, _ = running_lab_with_instance()
    other.stop(signal.SIGKILL)
    assert leftovers(other.info["index"], other.info["state_dir"])
    subprocess.run([sys.executable, str(HERE / "launcher.py"), "--cleanup-stale"], check=True, timeout=120)
    assert leftovers(other.info["index"], other.info["state_dir"]) == {}
    assert leftovers(lab.info["index"], lab.info["state_dir"])["netns"]
    assert lab.client("ec2").describe_vpcs()["Vpcs"]
