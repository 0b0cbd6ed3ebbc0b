"""One instance's container: systemd-nspawn booting its overlay root inside its network namespace."""
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger("lab")

# systemd reaches basic.target in about a second here; 60 s means the container is broken.
BOOT_TIMEOUT = 60
# A clean poweroff of the container takes about a second; 30 s then SIGKILL.
STOP_TIMEOUT = 30
# Boot progress is polled this often: short against the ~1 s boot, cheap (one nsenter).
BOOT_POLL = 0.1
SHELL_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8"]


class Container:
    def __init__(self, name: str, rootfs: Path, netns: str, hostname: str, console_log: Path):
        self.name = name
        self.rootfs = rootfs
        self.netns = netns
        self.hostname = hostname
        self.console_log = console_log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
                f"--directory={self.rootfs}", f"--network-namespace-path=/run/netns/{self.netns}",
                f"--machine={self.name}", f"--hostname={self.hostname}",
                "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=passive"]
        out = open(self.console_log, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            out.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def leader(self) -> int | None:
        """Host PID of the container's PID 1 (the descendant of nspawn that is PID 1 in its namespace)."""
        if not self.alive:
            return None
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
                if len(nspid) > 2 and nspid[-1] == "1":
                    return pid
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo.extend(int(c) for c in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                continue
        return None

    def wait_booted(self) -> None:
        """Return once systemd in the container is past basic.target (as EC2 reports running while cloud-init runs)."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"container {self.name} exited during boot (see {self.console_log})")
            pid = self.leader()
            if pid:
                state = subprocess.run(["nsenter", "-t", str(pid), "-m", "-p", "--", "systemctl",
                                        "is-system-running"], capture_output=True, text=True).stdout.strip()
                if state in ("starting", "running", "degraded"):
                    return
            time.sleep(BOOT_POLL)
        raise RuntimeError(f"container {self.name} did not boot within {BOOT_TIMEOUT}s")

    def stop(self) -> None:
        """Power the container off cleanly (nspawn turns SIGTERM into a shutdown of its systemd)."""
        if not self.alive:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("container %s did not stop within %ss: killing it", self.name, STOP_TIMEOUT)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)

    def exec(self, script: str, timeout: float) -> tuple[int | None, str, str]:
        """Run a shell script as root inside the container; exit code None means it timed out and was killed."""
        pid = self.leader()
        if pid is None:
            raise RuntimeError(f"container {self.name} is not running")
        proc = subprocess.Popen(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
                                 *SHELL_ENV, "/bin/sh", "-c", script],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = None
        return code, out.decode(errors="replace"), err.decode(errors="replace")
