"""CloudWatch with real data: an instance's CPU from its container, alarms that evaluate it (OK -> ALARM -> OK, with
history)."""
from datetime import UTC, datetime, timedelta

from conftest import (
    launch,
    run_command,
    wait_for,
    wait_online,
    wait_state,
)

PERIOD = 2  # the lab's default metric_period: one 60-s CloudWatch period lasts 2 s
# An alarm of 2 periods needs 2 data points: a few periods after a change, plus the SSM command's own seconds.
ALARM_WAIT = 40
HEALTHY_WAIT = 90  # boot (~1 s), user data (~1 s), two 1-s probes; 90 s means broken
# The burner: two busy loops (t3.micro has 2 vCPUs) for at most 60 s (stopped earlier by the test), in its own unit.
BURN = "systemd-run --unit=burn timeout 60 sh -c 'while :; do :; done & while :; do :; done'"
LOAD_WORKERS = 8  # concurrent /load requests through the ALB
LOAD_WAIT = 90  # the load stream runs until the group scales out, at most this long (it takes ~20 s here)
SCALE_IN_WAIT = 120  # 15 low periods (30 s), the warm-up (300 s scaled: 10 s), the terminations
# A page whose /load burns a second of CPU before answering, served by systemd socket activation.
LOAD_USER_DATA = r"""#!/bin/bash
set -euo pipefail
cat >/usr/local/sbin/page <<'SH'
#!/bin/bash
read -r method path rest || exit 0
while IFS= read -r line && [ -n "${line%$'\r'}" ]; do :; done
if [ "$path" = /load ]; then timeout 1 sh -c 'while :; do :; done' || true; fi
body="$method $path from $(hostname)"
printf 'HTTP/1.0 200 OK\r\nContent-Length: %s\r\n\r\n%s\n' "$((${#body} + 1))" "$body"
SH
chmod +x /usr/local/sbin/page
printf '[Socket]\nListenStream=80\nAccept=yes\n[Install]\nWantedBy=sockets.target\n' >/etc/systemd/system/page.socket
printf '[Service]\nExecStart=/usr/local/sbin/page\nStandardInput=socket\nStandardOutput=socket\n' \
  >/etc/systemd/system/page@.service
systemctl daemon-reload
systemctl enable --now page.socket
"""


def alarm(cw, name: str) -> dict:
    return cw.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]


def wait_alarm(cw, name: str, state: str, timeout: float = ALARM_WAIT) -> dict:
    return wait_for(f"alarm {name} {state}", lambda: (a := alarm(cw, name))["StateValue"] == state and a, timeout)


def test_instance_cpu_is_published_and_an_alarm_goes_ok_alarm_ok(lab, ec2, ssm, ubuntu_ami):
    cw = lab.client("cloudwatch")
    iid = launch(ec2, ubuntu_ami)
    wait_state(ec2, iid, "running")
    wait_online(ssm, iid)
    dims = [{"Name": "InstanceId", "Value": iid}]
    cw.put_metric_alarm(AlarmName="cw-cpu", Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims,
                        Statistic="Average", Period=60, EvaluationPeriods=2, Threshold=20,
                        ComparisonOperator="GreaterThanThreshold")
    first = alarm(cw, "cw-cpu")
    assert first["StateValue"] == "INSUFFICIENT_DATA", first
    ok = wait_alarm(cw, "cw-cpu", "OK")
    assert "not greater than the threshold (20)" in ok["StateReason"], ok["StateReason"]

    listed = cw.list_metrics(Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims)["Metrics"]
    assert [m["Dimensions"] for m in listed] == [dims], listed

    assert run_command(ssm, iid, [BURN])["Status"] == "Success"
    high = wait_alarm(cw, "cw-cpu", "ALARM")
    assert "were greater than the threshold (20)" in high["StateReason"], high["StateReason"]
    now = datetime.now(UTC)
    stats = cw.get_metric_statistics(Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims,
                                     StartTime=now - timedelta(minutes=5), EndTime=now + timedelta(seconds=1),
                                     Period=60, Statistics=["Maximum", "Minimum"])["Datapoints"]
    assert stats and max(d["Maximum"] for d in stats) > 20, stats
    assert all(0 <= d["Minimum"] <= 100 for d in stats), stats

    assert run_command(ssm, iid, ["systemctl stop burn"])["Status"] == "Success"
    wait_alarm(cw, "cw-cpu", "OK")
    history = cw.describe_alarm_history(AlarmName="cw-cpu", HistoryItemType="StateUpdate")["AlarmHistoryItems"]
    summaries = [h["HistorySummary"] for h in reversed(history)]
    assert summaries[:3] == ["Alarm updated from INSUFFICIENT_DATA to OK", "Alarm updated from OK to ALARM",
                             "Alarm updated from ALARM to OK"], summaries

    # SetAlarmState still works; the next evaluation puts the alarm back where the data says.
    cw.set_alarm_state(AlarmName="cw-cpu", StateValue="ALARM", StateReason="testing")
    assert alarm(cw, "cw-cpu")["StateValue"] == "ALARM"
    wait_alarm(cw, "cw-cpu", "OK", 5 * PERIOD)
    # Updating the alarm keeps its state (PutMetricAlarm on an existing alarm).
    cw.put_metric_alarm(AlarmName="cw-cpu", Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims,
                        Statistic="Average", Period=60, EvaluationPeriods=3, Threshold=25,
                        ComparisonOperator="GreaterThanThreshold")
    assert alarm(cw, "cw-cpu")["StateValue"] == "OK"
    cw.delete_alarms(AlarmNames=["cw-cpu"])
    ec2.terminate_instances(InstanceIds=[iid])

