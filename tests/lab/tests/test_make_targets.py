"""The Make interface: lab-up prints the endpoint last and is idempotent; lab-down leaves nothing behind."""
import os
import subprocess

from conftest import REPO, LabClient, launch_running, leftovers


def make(target: str, state: str) -> str:
    """Run a lab.mk target from the repo root, as the top-level Makefile will (300 s covers a cold image build)."""
    proc = subprocess.run(["make", "-s", "-f", "tests/lab/lab.mk", target, f"LAB_STATE={state}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_lab_up_then_lab_down_leaves_nothing(tmp_path):
    state = str(tmp_path / "state")
    out = make("lab-up", state)
    last = out.strip().splitlines()[-1]
    assert last.startswith("AWS_ENDPOINT_URL=http://127.0.0.1:")
    assert make("lab-up", state).strip().splitlines()[-1] == last  # already up: same lab
    lab = LabClient(last.split("=", 1)[1])
    info = lab.info
    iid = launch_running(lab)
    assert leftovers(info["index"], info["state_dir"], [iid])["instance netns"]
    make("lab-down", state)
    assert leftovers(info["index"], info["state_dir"], [iid]) == {}
    assert not (tmp_path / "state" / "pid").exists()
