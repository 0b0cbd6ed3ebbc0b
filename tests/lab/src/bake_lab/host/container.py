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
# cgroup v2 (unified) hierarchy, where systemd-nspawn puts the container: on a pure v2 host /sys/fs/cgroup, on a
# hybrid one /sys/fs/cgroup/unified. Each container gets a cgroup of its own there (named as its network namespace),
# so its CPU use can be read (cpu.stat usage_usec, which cgroup v2 keeps without the cpu controller).
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
SHELL_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8"]


def _rmdir_tree(top: Path) -> None:
    """Remove an empty cgroup and its empty children, deepest first (a cgroup goes once it has no process)."""
    for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [top]:
        try:
            path.rmdir()
        except OSError:
            pass


def remove_cgroups(prefix: str) -> None:
    """Remove the containers' cgroups whose names start with prefix (what a dead lab left)."""
    for root in CGROUP_ROOTS:
        if (root / "cgroup.procs").exists():
            for top in root.glob(prefix + "*"):
                _rmdir_tree(top)


class Container:
    def __init__(self, name: str, rootfs: Path, netns: str, hostname: str, console_log: Path):
        self.name = name
        self.rootfs = rootfs
        self.netns = netns
        self.hostname = hostname
        self.console_log = console_log
        self.proc: subprocess.Popen | None = None
        root = next((r for r in CGROUP_ROOTS if (r / "cgroup.procs").exists() and (r / "cpu.stat").exists()), None)
        self.cgroup: Path | None = root / netns if root is not None else None

    def start(self) -> None:
        argv = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
                f"--directory={self.rootfs}", f"--network-namespace-path=/run/netns/{self.netns}",
                f"--machine={self.name}", f"--hostname={self.hostname}",
                "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=passive"]
        if self.cgroup is not None:
            # nspawn (--keep-unit) stays in the cgroup it is started in and puts the container in its `payload`
            # child: the shell moves itself there, then becomes nspawn (same pid).
            self.cgroup.mkdir(exist_ok=True)
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup / "cgroup.procs"), *argv]
        out = open(self.console_log, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            out.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_usage_usec(self) -> int | None:
        """CPU time the instance has used, in microseconds: cgroup v2 cpu.stat usage_usec of its cgroup (the
        container's systemd in `payload`, what `exec` runs in `exec`, nspawn itself in `supervisor`: a few
        milliseconds); None when it is not running or the host has no cgroup v2 hierarchy."""
        if self.cgroup is None or not self.alive:
            return None
        try:
            for line in (self.cgroup / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def charged(self, argv: list[str]) -> list[str]:
        """argv run in the instance's cgroup (its `exec` child), so what it runs inside the instance uses the
        instance's CPU, as a command SSM runs does on EC2."""
        if self.cgroup is None or not self.cgroup.exists():
            return argv
        (self.cgroup / "exec").mkdir(exist_ok=True)
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup / "exec" / "cgroup.procs"), *argv]

    def _remove_cgroup(self) -> None:
        """Remove the container's (now empty) cgroups, deepest first."""
        if self.cgroup is not None and self.cgroup.exists():
            _rmdir_tree(self.cgroup)

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
            self._remove_cgroup()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("container %s did not stop within %ss: killing it", self.name, STOP_TIMEOUT)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
        self._remove_cgroup()

    def exec(self, script: str, timeout: float) -> tuple[int | None, str, str]:
        """Run a shell script as root inside the container; exit code None means it timed out and was killed."""
        pid = self.leader()
        if pid is None:
            raise RuntimeError(f"container {self.name} is not running")
        argv = self.charged(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
                             *SHELL_ENV, "/bin/sh", "-c", script])
        proc = subprocess.Popen(argv,
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
