"""The `bake-lab` command: start a lab in the background and stop, inspect or reset it (up, down, status,
reset), run a command in one of its instances (exec); run a lab in the foreground (serve); build the base image
(image); remove what dead labs left (cleanup)."""
import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

from . import launcher
from .client import LabClient
from .host import image

UP_TIMEOUT = 300  # seconds to the endpoint line: ~5 s with a cached image, ~70 s when the lab builds it first
DOWN_TIMEOUT = 60  # seconds for a lab to power off its containers and remove all it made
POLL = 0.2
ENDPOINT_PREFIX = "AWS_ENDPOINT_URL="


class LabDir:
    """Where `up` keeps a background lab's pid, endpoint line and log (`.lab/` by default)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.pid_file = self.path / "pid"
        self.endpoint_file = self.path / "endpoint"
        self.log = self.path / "lab.log"

    def running_pid(self) -> int | None:
        """The pid of this directory's lab while that process is still a lab (pids are reused)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if b"bake_lab" in cmdline and b"serve" in cmdline else None

    def endpoint_line(self) -> str | None:
        try:
            lines = self.endpoint_file.read_text().splitlines()
        except OSError:
            return None
        return next((line for line in reversed(lines) if line.startswith(ENDPOINT_PREFIX)), None)

    def client(self) -> LabClient | None:
        line = self.endpoint_line() if self.running_pid() else None
        return LabClient(line.split("=", 1)[1]) if line else None


def serve_argv(args: argparse.Namespace) -> list[str]:
    """`bake-lab serve`'s arguments from the same options given to `up`."""
    argv = ["--port", str(args.port), "--cache", args.cache]
    if args.state_dir:
        argv += ["--state-dir", args.state_dir]
    if not args.enforce_security_groups:
        argv.append("--no-enforce-security-groups")
    if args.verbose:
        argv.append("--verbose")
    return argv


def up(args: argparse.Namespace) -> int:
    d = LabDir(args.dir)
    d.path.mkdir(parents=True, exist_ok=True)
    if d.running_pid() and d.endpoint_line():
        print(d.endpoint_line())
        return 0
    d.endpoint_file.unlink(missing_ok=True)
    with open(d.endpoint_file, "w") as out, open(d.log, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bake_lab", "serve", *serve_argv(args)], stdout=out,
                                stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    d.pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + UP_TIMEOUT
    while d.endpoint_line() is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL)
    line = d.endpoint_line()
    if line is None:
        print(f"bake-lab: the lab did not start (log: {d.log})", file=sys.stderr)
        print("\n".join(d.log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
        return 1
    print(f"bake-lab: lab up (pid {proc.pid}, log {d.log}); `bake-lab down` stops it", file=sys.stderr)
    print(line)
    return 0


def down(args: argparse.Namespace) -> int:
    """Stop this directory's lab (SIGTERM, then wait for it), then remove what any dead lab left behind."""
    d = LabDir(args.dir)
    pid = d.running_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_TIMEOUT
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(POLL / 2)
    d.pid_file.unlink(missing_ok=True)
    d.endpoint_file.unlink(missing_ok=True)
    launcher.cleanup_stale()
    return 0


def status(args: argparse.Namespace) -> int:
    d = LabDir(args.dir)
    lab = d.client()
    if lab is None:
        print(f"bake-lab: no lab running from {d.path}", file=sys.stderr)
        return 1
    info = lab.info
    containers = lab.get_json("/_lab/containers")
    enforced = "enforced" if info["security_groups_enforced"] else "NOT enforced"
    print(d.endpoint_line())
    print(f"lab {info['index']} (pid {d.running_pid()}): public range {info['public_range']}, checkip "
          f"{info['checkip']}, {len(containers)} instance(s), security groups {enforced}")
    return 0


def reset(args: argparse.Namespace) -> int:
    lab = LabDir(args.dir).client()
    if lab is None:
        print(f"bake-lab: no lab running from {args.dir}", file=sys.stderr)
        return 1
    try:
        lab.post("/_lab/reset")
    except urllib.error.URLError as e:
        print(f"bake-lab: reset failed: {e}", file=sys.stderr)
        return 1
    print("bake-lab: lab reset (fresh network, profile and AMIs; no instances)", file=sys.stderr)
    return 0


def exec_in(args: argparse.Namespace) -> int:
    """Run a command inside an instance (its container's namespaces), e.g. to read a builder's user data log."""
    lab = LabDir(args.dir).client()
    if lab is None:
        print(f"bake-lab: no lab running from {args.dir}", file=sys.stderr)
        return 1
    found = next((c for c in lab.get_json("/_lab/containers") if c["instance_id"] == args.instance), None)
    if found is None or not found["container"]:
        print(f"bake-lab: no running instance {args.instance} in this lab", file=sys.stderr)
        return 1
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    nsenter = ["nsenter", "-t", str(found["leader_pid"]), "-m", "-u", "-i", "-n", "-p", "--"]
    return subprocess.run(nsenter + (command or ["/bin/bash", "-l"]), check=False).returncode


def cleanup(args: argparse.Namespace) -> int:
    launcher.cleanup_stale()
    return 0


def build_image(args: argparse.Namespace) -> int:
    cache = Path(args.cache)
    print(image.build(cache) if args.action == "build" else image.image_dir(cache))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bake-lab", description="A local AWS for bake: moto with real instances "
                                "(systemd-nspawn containers). Needs root on Linux.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_dir(sp):
        sp.add_argument("--dir", default=os.environ.get("LAB_STATE", ".lab"),
                        help="where `up` keeps the lab's pid, endpoint and log (default: $LAB_STATE or .lab)")
        return sp

    u = with_dir(sub.add_parser("up", help="start a lab in the background; prints AWS_ENDPOINT_URL=... last"))
    launcher.add_serve_args(u)
    u.set_defaults(run=up)
    with_dir(sub.add_parser("down", help="stop the lab `up` started, then remove dead labs' leftovers")).set_defaults(
        run=down)
    with_dir(sub.add_parser("status", help="the running lab's endpoint and a summary (exit 1: none)")).set_defaults(
        run=status)
    with_dir(sub.add_parser("reset", help="back to a fresh lab: no instances, fresh network and AMIs")).set_defaults(
        run=reset)
    e = with_dir(sub.add_parser("exec", help="run a command in an instance (default: a shell), e.g. "
                                             "`bake-lab exec i-0abc -- cat /var/log/bake-userdata.log`"))
    e.add_argument("instance")
    e.add_argument("command", nargs=argparse.REMAINDER)
    e.set_defaults(run=exec_in)
    s = sub.add_parser("serve", help="run a lab in the foreground until SIGTERM; prints AWS_ENDPOINT_URL=... "
                                     "once ready")
    launcher.add_serve_args(s)
    s.set_defaults(run=launcher.serve)
    sub.add_parser("cleanup", help="remove what dead labs left behind (live labs are untouched)").set_defaults(
        run=cleanup)
    i = sub.add_parser("image", help="build the base image unless cached (build) or print its path (path)")
    i.add_argument("action", choices=["build", "path"], nargs="?", default="build")
    i.add_argument("--cache", default=str(image.cache_dir()))
    i.set_defaults(run=build_image)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)
