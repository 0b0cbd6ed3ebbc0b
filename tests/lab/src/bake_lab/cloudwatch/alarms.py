"""CloudWatch alarms that evaluate: every period each metric alarm moto stores is evaluated on the data points in
moto's CloudWatch (the lab's and any PutMetricData), with AWS's rules (Statistic or percentile, Period,
EvaluationPeriods, DatapointsToAlarm, ComparisonOperator, TreatMissingData), and its state, reason and history
change as DescribeAlarms and DescribeAlarmHistory show; a new alarm starts INSUFFICIENT_DATA, an updated one keeps
its state."""
import json
import math
import threading
from datetime import UTC, datetime

from moto.cloudwatch import models as cw_models
from moto.cloudwatch.models import cloudwatch_backends
from moto.cloudwatch.responses import CloudWatchResponse
from moto.core.responses import ActionResult

from ..patching import backends, replace
from .metrics import when

COMPARE = {
    "GreaterThanThreshold": (lambda v, t: v > t, "greater than"),
    "GreaterThanOrEqualToThreshold": (lambda v, t: v >= t, "greater than or equal to"),
    "LessThanThreshold": (lambda v, t: v < t, "less than"),
    "LessThanOrEqualToThreshold": (lambda v, t: v <= t, "less than or equal to"),
}
EPSILON = 1e-3  # seconds
HISTORY_MAX = 1000  # items kept per alarm (AWS keeps 30 days of history; the lab's runs are short)


def _stat(datums: list, statistic: str | None, extended: str | None) -> float | None:
    """One period's statistic over its data points (statistic sets or single values)."""
    if not datums:
        return None
    count = sum(getattr(d, "sample_count", 1) for d in datums)
    total = sum(getattr(d, "sum", None) if hasattr(d, "sum") else d.value for d in datums)
    if extended:
        values = sorted(v for d in datums for v in (getattr(d, "lab_values", None) or
                                                     ([d.value] if hasattr(d, "value") else [])))
        if not values or not extended.startswith("p"):
            return None
        rank = max(0, math.ceil(float(extended[1:]) / 100 * len(values)) - 1)
        return values[min(rank, len(values) - 1)]
    if statistic == "SampleCount":
        return float(count)
    if statistic == "Sum":
        return float(total)
    if statistic == "Minimum":
        return min(getattr(d, "min", None) if hasattr(d, "min") else d.value for d in datums)
    if statistic == "Maximum":
        return max(getattr(d, "max", None) if hasattr(d, "max") else d.value for d in datums)
    return float(total) / count if count else None


def _stamp(dt: datetime) -> str:
    return dt.replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def _short(dt: datetime) -> str:
    return dt.strftime("%d/%m/%y %H:%M:%S")


class Alarms:
    """Alarm evaluation and history for every region's CloudWatch."""

    def __init__(self, lab):
        self.lab = lab
        self._lock = threading.Lock()
        self.history: dict[tuple[str, str], list[dict]] = {}  # (region, alarm name) -> newest last

    def clear(self) -> None:
        with self._lock:
            self.history.clear()

    def record(self, region: str, name: str, kind: str, summary: str, data: dict) -> None:
        item = {"AlarmName": name, "AlarmType": "MetricAlarm", "Timestamp": datetime.now(UTC),
                "HistoryItemType": kind, "HistorySummary": summary, "HistoryData": json.dumps(data)}
        with self._lock:
            items = self.history.setdefault((region, name), [])
            items.append(item)
            del items[:-HISTORY_MAX]

    def describe_history(self, region: str, name: str | None, kind: str | None, start, end, limit: int | None,
                         ascending: bool) -> list[dict]:
        with self._lock:
            items = [i for (r, n), found in self.history.items() if r == region and (name is None or n == name)
                     for i in found]
        items = [i for i in items if (kind is None or i["HistoryItemType"] == kind)
                 and (start is None or i["Timestamp"] >= _aware(start))
                 and (end is None or i["Timestamp"] <= _aware(end))]
        items.sort(key=lambda i: i["Timestamp"], reverse=not ascending)
        return items[:limit or 100]

    def evaluate(self, now: float, scale: float) -> list:
        """Evaluate every metric alarm at `now` (a period's end); returns (region, alarm) of those in ALARM with
        actions enabled."""
        due = []
        for region, backend in backends(cloudwatch_backends):
            data = list(backend.metric_data)
            for alarm in list(backend.alarms.values()):
                if alarm.metric_data_queries or alarm.rule or not alarm.metric_name:
                    continue  # metric math and composite alarms are not evaluated (FIDELITY.md)
                self._evaluate(alarm, data, now, scale)
                if alarm.state_value == "ALARM" and alarm.actions_enabled and alarm.alarm_actions:
                    due.append((region, alarm))
        return due

    def _evaluate(self, alarm, data: list, now: float, scale: float) -> None:
        period = max(float(alarm.period or 60) * scale, 1e-3)
        n = int(alarm.evaluation_periods or 1)
        m = int(alarm.datapoints_to_alarm or n)
        dims = sorted((d.name, d.value) for d in alarm.dimensions)
        mine = [d for d in data if d.namespace == alarm.namespace and d.name == alarm.metric_name
                and sorted((x.name, x.value) for x in d.dimensions) == dims
                and (not alarm.unit or d.unit == alarm.unit)]
        points = []  # newest first: (bucket start, value or None)
        for i in range(n):
            # Periods end at `now` (the end of the period just published); EPSILON keeps a data point stamped at a
            # period's start inside it whatever the rounding of period * scale.
            lo, hi = when(now - (i + 1) * period - EPSILON), when(now - i * period - EPSILON)
            points.append((lo, _stat([d for d in mine if lo <= d.timestamp < hi], alarm.statistic,
                                     alarm.extended_statistic)))
        compare, words = COMPARE.get(alarm.comparison_operator, (None, ""))
        if compare is None:
            return  # anomaly detection bands are not evaluated (FIDELITY.md)
        treat = alarm.treat_missing_data or "missing"
        present = [(t, v) for t, v in points if v is not None]
        missing = n - len(present)
        breaching = sum(1 for _, v in present if compare(v, alarm.threshold))
        if treat == "breaching":
            breaching += missing
        shown = ", ".join(f"{v:g} ({_short(t)})" for t, v in present)
        stat = alarm.extended_statistic or alarm.statistic or "Average"
        if not present and treat == "ignore":
            return
        if not present and treat == "missing":
            new, reason = "INSUFFICIENT_DATA", f"Insufficient Data: {n} datapoint{'s' if n != 1 else ''} " \
                                               f"{'were' if n != 1 else 'was'} unknown."
        elif breaching >= m:
            new = "ALARM"
            reason = (f"Threshold Crossed: {breaching} out of the last {n} datapoints [{shown}] were {words} the "
                      f"threshold ({alarm.threshold:g}) (minimum {m} datapoint{'s' if m != 1 else ''} for "
                      f"{alarm.state_value} -> ALARM transition).")
        else:
            new = "OK"
            ok = len(present) - (breaching - (missing if treat == "breaching" else 0))
            reason = (f"Threshold Crossed: {ok} out of the last {n} datapoints [{shown}] were not {words} the "
                      f"threshold ({alarm.threshold:g}) (minimum 1 datapoint for {alarm.state_value} -> OK "
                      f"transition).")
        if new == alarm.state_value:
            return
        reason_data = {"version": "1.0", "queryDate": _stamp(when(now)), "startDate": _stamp(points[-1][0]),
                       "statistic": stat, "period": int(alarm.period or 60),
                       "recentDatapoints": [v for _, v in reversed(present)], "threshold": alarm.threshold,
                       "evaluatedDatapoints": [{"timestamp": _stamp(t), "value": v} for t, v in present]}
        alarm.update_state(reason, json.dumps(reason_data), new)


def _aware(t) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def install(alarms: Alarms) -> None:
    """Alarm state changes recorded in the history, PutMetricAlarm's first state and kept state, and
    DescribeAlarmHistory."""
    original_update = cw_models.Alarm.update_state

    def update_state(alarm, reason: str, reason_data: str, state_value: str) -> None:
        old = alarm.state_value
        original_update(alarm, reason, reason_data, state_value)
        alarms.record(alarm.region_name, alarm.name, "StateUpdate",
                      f"Alarm updated from {old} to {state_value}",
                      {"version": "1.0", "oldState": {"stateValue": old},
                       "newState": {"stateValue": state_value, "stateReason": reason}})

    cw_models.Alarm.update_state = update_state

    def put_metric_alarm(original):
        def patched(backend, name, *args, **kwargs):
            old = backend.alarms.get(name)
            alarm = original(backend, name, *args, **kwargs)
            if old is not None:
                # "If you are updating an existing alarm, its state is left unchanged."
                for attr in ("state_value", "state_reason", "state_reason_data", "state_updated_timestamp"):
                    setattr(alarm, attr, getattr(old, attr))
                alarm.history = old.history
                alarms.record(backend.region_name, name, "ConfigurationUpdate", f'Alarm "{name}" updated', {})
            else:
                alarm.state_value = "INSUFFICIENT_DATA"
                alarm.state_reason = "Unchecked: Initial alarm creation"
                alarms.record(backend.region_name, name, "ConfigurationUpdate", f'Alarm "{name}" created', {})
            return alarm
        return patched

    replace(cw_models.CloudWatchBackend, "put_metric_alarm", put_metric_alarm)

    def describe_alarm_history(self):
        limit = self._get_param("MaxRecords")
        items = alarms.describe_history(
            self.region, self._get_param("AlarmName"), self._get_param("HistoryItemType"),
            self._get_param("StartDate"), self._get_param("EndDate"), int(limit) if limit else None,
            self._get_param("ScanBy") == "TimestampAscending")
        return ActionResult({"AlarmHistoryItems": items})

    CloudWatchResponse.describe_alarm_history = describe_alarm_history
