"""One lab's lifetime (`bake-lab serve`): takes a free lab index, serves moto on 127.0.0.1 with real instances
patched in, prints the endpoint line once ready, and on SIGTERM removes all it made; also what dead labs left
behind (`bake-lab cleanup`)."""
import argparse
import fcntl
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from .host import container, image, net, rootfs

log = logging.getLogger("lab")
# How often the main thread looks for SIGTERM/SIGINT: the lab begins stopping within this.
STOP_POLL = 0.2
MAX_LABS = 250  # lab indexes 1..250 map to 100.64.<k>.0/24 and 100.127.<k>.0/30


class Registration:
    """A lab's entry under /run/bake-lab/<k>: held by flock while the lab lives, so leftovers are recognisable."""

    def __init__(self, index: int, fd: int):
        self.index = index
        self.fd = fd
        self.dir = net.RUN_DIR / str(index)

    @staticmethod
    def try_take(index: int) -> "Registration | None":
        d = net.RUN_DIR / str(index)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return Registration(index, fd)

    def state_dir(self) -> Path | None:
        f = self.dir / "state_dir"
        return Path(f.read_text()) if f.exists() else None

    def release(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.close(self.fd)


def remove_lab_leftovers(index: int, state_dir: Path | None) -> None:
    """Remove what lab `index` made: processes in its namespaces, mounts, copies, namespaces, links, nft."""
    net.teardown(index)
    if state_dir is not None:
        # Killed container processes release their overlay within moments; umount falls back to lazy.
        time.sleep(0.5)
        rootfs.unmount_all_under(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
    container.remove_cgroups(f"bakelab{index}-")


def cleanup_stale() -> int:
    """Clean every lab whose launcher is gone (its lock is free); live labs are left alone."""
    cleaned = 0
    if not net.RUN_DIR.exists():
        return 0
    for d in sorted(net.RUN_DIR.iterdir()):
        if not d.name.isdigit():
            continue
        reg = Registration.try_take(int(d.name))
        if reg is None:
            continue
        remove_lab_leftovers(reg.index, reg.state_dir())
        reg.release()
        cleaned += 1
    if cleaned:
        print(f"lab: removed the leftovers of {cleaned} stale lab(s)", file=sys.stderr)
    return cleaned


def take_index() -> Registration:
    for index in range(1, MAX_LABS + 1):
        reg = Registration.try_take(index)
        if reg is None:
            continue
        if reg.state_dir() is not None or net.lab_namespaces(index):
            remove_lab_leftovers(index, reg.state_dir())  # a dead lab's leftovers: ours to clear now
        if net.LabNet.index_is_free(index):
            return reg
        reg.release()
    raise SystemExit("lab: no free lab index (are 250 labs running?)")


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    """The options of a lab process (`bake-lab serve`, and `bake-lab up`, which passes them on)."""
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--state-dir", help="where instance roots and baked layers go (default: $LAB_CACHE/labs)")
    parser.add_argument("--cache", default=str(image.cache_dir()), help="the lab cache (image, apt, layers)")
    parser.add_argument("--no-enforce-security-groups", dest="enforce_security_groups", action="store_false",
                        help="open every port: security groups are enforced (ingress and egress, as on AWS) unless "
                             "this is given; the lab says so in its events (also POST /_lab/security-groups)")
    parser.add_argument("--enforce-security-groups", dest="enforce_security_groups", action="store_true",
                        help="the default; accepted so that older command lines still work")
    parser.set_defaults(enforce_security_groups=True)
    parser.add_argument("--verbose", action="store_true", help="debug logging on stderr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bake-lab serve", description=__doc__)
    add_serve_args(parser)
    return parser.parse_args(argv)


def serve(args: argparse.Namespace) -> int:
    """Run one lab until SIGTERM or SIGINT; exits 0 once everything it made is gone."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # AmazonSSMManagedInstanceCore must exist for the workshops' role; moto loads AWS managed policies on request.
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    # The handler only appends: it runs on the main thread between bytecodes, so one that took a lock (as
    # threading.Event.set does) could wait forever for a lock the interrupted main thread holds.
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    cache = Path(args.cache)
    base = image.build(cache)
    if stopping:  # stopped while the image was built: nothing of this lab exists yet
        return 0
    reg = take_index()
    # The pid keeps a state dir apart from a later lab that reuses the index (tests check leftovers by path).
    state_dir = Path(args.state_dir or cache / "labs").resolve() / f"lab{reg.index}-{os.getpid()}"
    (reg.dir / "state_dir").write_text(str(state_dir))
    server = None
    lab = None
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        from .service import LabService
        lab_net = net.LabNet(reg.index)
        lab_net.up()
        service = LabService(lab_net, state_dir, cache, base, args.enforce_security_groups)
        lab = service.lab
        server = service.serve(args.port)
        service.bootstrap()
        if not stopping:
            print(f"AWS_ENDPOINT_URL=http://127.0.0.1:{server.server_port}", flush=True)
            log.info("lab %d ready: state in %s, public range %s", reg.index, state_dir, lab_net.public_net)
        while not stopping:
            time.sleep(STOP_POLL)
        log.info("lab %d stopping (signal %d)", reg.index, stopping[0])
    finally:
        if server is not None:
            server.shutdown()
        if lab is not None:
            lab.imds.stop()
            lab.apt.stop()
            lab.scaling.stop()
            lab.agents.stop()
            lab.front.stop()
            lab.dns.stop()
            lab.destroy_all()
        remove_lab_leftovers(reg.index, state_dir)
        reg.release()
    return 0
