"""CloudWatch where moto only stores: metrics with real data (metrics.py), alarms that evaluate (alarms.py), and
the period that drives both (one AWS minute lasts `metric_period` lab seconds)."""
import time

from .alarms import Alarms
from .metrics import Publisher

AWS_PERIOD = 60.0  # the AWS period the lab's `metric_period` stands for (1-minute metrics)


def scale(lab) -> float:
    """Lab seconds per AWS second: every Period, cooldown and warm-up a client writes is multiplied by this."""
    return float(lab.latency.get("metric_period", 2.0)) / AWS_PERIOD


class CloudWatch:
    """Publishes each period's metrics, then evaluates every alarm on them (called from the scaling loop)."""

    def __init__(self, lab, groups, balancers):
        self.lab = lab
        self.publisher = Publisher(lab, groups, balancers)
        self.alarms = Alarms(lab)
        self._next = 0.0  # when the current period ends

    def clear(self) -> None:
        self.publisher.clear()
        self.alarms.clear()
        self._next = 0.0

    def tick(self) -> list:
        """At each period's end: publish it, evaluate the alarms; returns the alarms' (region, alarm) in ALARM
        whose actions are due (Auto Scaling actions are invoked every period the alarm stays in ALARM)."""
        now = time.time()
        period = float(self.lab.latency.get("metric_period", 2.0))
        if self._next == 0.0:
            self._next = now + period
            self.publisher.sample(now)
            return []
        if now < self._next:
            return []
        start, end = self._next - period, self._next
        self.publisher.publish(start, end)
        self._next = end + period if now < end + period else now + period
        return self.alarms.evaluate(end, scale(self.lab))
