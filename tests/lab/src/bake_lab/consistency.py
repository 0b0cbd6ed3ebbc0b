"""Eventual consistency and teardown lags: the windows in which AWS documents that a new or released resource
is not yet what the last call made it, applied to the API calls of clients (never to the lab's own).

This module holds the windows and what is inside them; each service's patches that apply them live with
that service (ec2/consistency.py, ssm/consistency.py, elb.py) and patches.py installs them in order."""
import threading
import time

# Seconds each window lasts by default. AWS documents "a few seconds" to minutes; the lab keeps them short so the
# tests that meet them stay fast, long enough that a client which does not ride them out fails every time.
DEFAULT_WINDOWS = {
    "instance": 3.0,          # a new instance id unknown to Describe/Terminate/CreateTags, absent from tag filters
    "security_group": 3.0,    # a new group unknown to Authorize*/RunInstances/DescribeSecurityGroups/CreateTags
    "image": 1.0,             # a new AMI unknown to DescribeImages (and pending at least a moment after)
    "invocation": 0.5,        # a new command's invocation answers InvocationDoesNotExist
    "snapshot_release": 3.0,  # a deregistered AMI's snapshots answer InvalidSnapshot.InUse
    "load_balancer_release": 10.0,  # a deleted ALB's target groups/security groups stay in use (ENIs linger)
    "instance_release": 3.0,  # a terminated instance's network interface holds its security groups
}

# On EC2 an AMI is pending for minutes, far longer than it is unknown: the lab keeps a new AMI pending at least
# this long after its window, so a client that waited for it to be known sees it pending first.
PENDING_AFTER_KNOWN = 4.0

_request = threading.local()  # the action of the client request this thread serves (None: the lab's own call)


def serving(action: str | None) -> None:
    """Called by the control layer for every request: which client action this thread now serves."""
    _request.action = action


def serving_one_of(*actions: str) -> bool:
    """Whether this thread serves a client's call of one of these actions."""
    return getattr(_request, "action", None) in actions


class Consistency:
    """The windows and what is inside them: new ids (id -> born, kind) and released ones (id -> until, owner)."""

    def __init__(self):
        self.enabled = True
        self.windows = dict(DEFAULT_WINDOWS)
        self.lock = threading.Lock()
        self.born: dict[str, tuple[float, str]] = {}
        self.snapshots: dict[str, tuple[float, str]] = {}      # snapshot -> (released at, the AMI it was in)
        self.balancer_parts: dict[str, tuple[float, str]] = {}  # target group arn / sg id -> (deleted at, LB arn)
        self.terminated: dict[str, tuple[float, list[str]]] = {}  # instance -> (terminated at, its group ids)

    def settings(self) -> dict:
        return {"enabled": self.enabled, "windows": dict(self.windows)}

    def set(self, body: dict) -> dict:
        """`{"enabled": bool, "windows": {name: seconds}}`, either part optional."""
        windows = body.get("windows") or {}
        for name, value in windows.items():
            if name not in DEFAULT_WINDOWS:
                raise ValueError(f"unknown consistency window {name!r}; known: {', '.join(DEFAULT_WINDOWS)}")
            if float(value) < 0:
                raise ValueError(f"consistency window {name} must not be negative")
        if "enabled" in body:
            self.enabled = bool(body["enabled"])
        for name, value in windows.items():
            self.windows[name] = float(value)
        return self.settings()

    def reset(self) -> None:
        with self.lock:
            self.enabled = True
            self.windows = dict(DEFAULT_WINDOWS)
            self.born.clear()
            self.snapshots.clear()
            self.balancer_parts.clear()
            self.terminated.clear()

    def created(self, kind: str, resource_id: str, at: float | None = None) -> None:
        """The id is new from `at` (default now) for its kind's window."""
        if not self.enabled:
            return
        with self.lock:
            self.born[resource_id] = (time.time() if at is None else at, kind)

    def new(self, resource_id: str) -> bool:
        """Whether the id is still inside its creation window."""
        born = self.born.get(resource_id)
        return self.enabled and born is not None and time.time() < born[0] + self.windows[born[1]]

    def _within(self, table: dict, key: str, window: str) -> str | None:
        entry = table.get(key)
        if self.enabled and entry is not None and time.time() < entry[0] + self.windows[window]:
            return entry[1]
        return None

    def snapshot_held(self, snapshot_id: str) -> str | None:
        return self._within(self.snapshots, snapshot_id, "snapshot_release")

    def balancer_holds(self, resource_id: str) -> str | None:
        return self._within(self.balancer_parts, resource_id, "load_balancer_release")


def install(lab) -> Consistency:
    """The lab's windows (`lab.consistency`); a new AMI stays pending a while after it becomes known."""
    c = lab.consistency = Consistency()
    sleep_until = lab.sleep_until

    def image_pending_while_unknown(start: float, transition: str) -> None:
        sleep_until(start, transition)
        if transition == "image_available" and c.enabled:
            remaining = start + c.windows["image"] + PENDING_AFTER_KNOWN - time.time()
            if remaining > 0:
                time.sleep(remaining)

    lab.sleep_until = image_pending_while_unknown
    return c
