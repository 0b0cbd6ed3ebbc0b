"""Auto Scaling and load balancing's one background loop: every TICK it follows the load balancers (elb.py),
registers group instances (asg.py), retries refused launches, probes targets, replaces instances found unhealthy,
advances instance refreshes (refresh.py), and at each CloudWatch period publishes the metrics, evaluates the alarms
(cloudwatch/) and lets target tracking policies act on them (tracking.py), all under one lock."""
import logging
import threading
import time

from .asg import Groups
from .cloudwatch import CloudWatch
from .elb import Balancers
from .refresh import Refreshes
from .tracking import Tracking

log = logging.getLogger("lab")

TICK = 0.25  # how often group membership, probes and refreshes are looked at


class Scaling:
    """The lab's Auto Scaling and load-balancing world: its three parts and the loop that drives them."""

    def __init__(self, lab):
        self.lab = lab
        self._lock = threading.RLock()
        self.balancers = Balancers(lab, self._lock)
        self.groups = Groups(lab, self._lock, self.balancers)
        self.refreshes = Refreshes(lab, self._lock, self.groups)
        self.cloudwatch = CloudWatch(lab, self.groups, self.balancers)
        self.tracking = Tracking(lab, self.groups)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scaling", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.balancers.clear()
            self.refreshes.clear()
            self.groups.clear()
            self.cloudwatch.clear()

    def _loop(self) -> None:
        last_probe = 0.0
        while not self._stop.wait(TICK):
            try:
                with self._lock:
                    self.balancers.sync()
                    self.groups.register_targets()
                    self.groups.retry_launches()
                    interval = float(self.lab.latency.get("health_check_interval", 1.0))
                    if time.time() - last_probe >= interval:
                        last_probe = time.time()
                        self.balancers.probe_all()
                        self.groups.replace_unhealthy()
                    self.refreshes.advance_all()
                    self.tracking.act(self.cloudwatch.tick())
            except Exception as e:  # noqa: BLE001 - reported, the loop goes on
                log.exception("scaling loop")
                self.lab.event("error", what="scaling", error=str(e))
