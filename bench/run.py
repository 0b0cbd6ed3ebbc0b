"""`make bench`: bake against Packer's amazon-ebs builder on the same job, in one lab with fixed
latencies; prints a table and writes bench/results.json."""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bake_lab.client import LabProcess

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "bake.toml"
BAKE = ROOT / "target" / "debug" / "bake"
RESULTS = ROOT / "bench" / "results.json"
REGION = "ap-northeast-2"
# What the lab waits before each transition: about the fastest EC2 shows for a small image.
LATENCY = {"instance_running": 5, "ssm_online": 5, "image_available": 20, "command": 0}
BAKE_RUNS = 3
PRIVATE_RUNS = 2  # the private bake (SSM health, temporary NAT, endpoints created) beside bench1
# The private bake's own calls: the temporary NAT's (src/ami/egress.rs) and the endpoints'. Calls
# both make (CreateTags, DeleteTags for their user tags; DescribeRouteTables) count in neither.
EGRESS_ACTIONS = ("AllocateAddress", "CreateNatGateway", "DescribeNatGateways", "CreateRoute",
                  "DeleteRoute", "DeleteNatGateway", "ReleaseAddress", "DescribeAddresses")
ENDPOINT_ACTIONS = ("CreateVpcEndpoints", "CreateVpcEndpoint", "DescribeVpcEndpoints",
                    "DeleteVpcEndpoints")
PACKER_RUNS = 2
RUN_TIMEOUT = 600  # one bake or Packer build; each takes well under two minutes here
PROBE_INTERVAL = 0.1  # the bench's own page probe: fine enough to time "page healthy"
PROBE_LIMIT = 180  # the probe gives up after this long (bounded loop)
HEALTH_VERIFY_ACTIONS = ("DescribeInstanceInformation", "SendCommand", "GetCommandInvocation")
# The rollout rows: each of these [rollout.*] is created with bench1's AMI (untimed), then rolled to
# bench2's (timed, under bake's traffic probe). roll1: a group of 1; roll4: of 4, launch before
# terminate (max_healthy 200, the default where max allows); roll4t: of 4 with max_healthy = 100.
ROLLOUTS = ("roll1", "roll4", "roll4t")
ROLLOUT_GOAL = 1.2  # wall(group of 4, max_healthy 200) / wall(group of 1)
# The distribution row: dist1..dist4 (bench1..bench4 with [distribute] regions = [REGION, us-east-1])
# baked and copied in one run, at the lab's own copy latency (image_copy, not overridden here).
DISTRIBUTED = ("dist1", "dist2", "dist3", "dist4")
DISTRIBUTE_GOAL = 1.3  # wall(4 images x 2 regions) / wall(1 image in 1 region)


class Lab(LabProcess):
    """The bench's own lab, on a free port."""

    def call(self, name, body=None):
        return self.request(f"/_lab/{name}", body)

    def lines(self, name, since, until):
        return [r for r in self.get_lines(f"/_lab/{name}") if since <= r["time"] <= until]


ACCESS_KEY = "bench"  # bake and Packer sign with it; counts() tells their calls by it


def env(lab):
    return dict(os.environ, AWS_ENDPOINT_URL=lab.endpoint, AWS_REGION=REGION,
                AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY="bench",
                AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                BAKE_CHECKIP_URL=f"{lab.endpoint}/_lab/checkip", CHECKPOINT_DISABLE="1")


def probe_page(lab, stop, found):
    """Times when each builder's page first answers 200, as the bench itself sees it."""
    deadline = time.monotonic() + PROBE_LIMIT
    while time.monotonic() < deadline and not stop.is_set():
        for c in json.loads(lab.call("containers")):
            ip, iid = c.get("public_ip"), c["instance_id"]
            if not ip or iid in found:
                continue
            try:
                with urllib.request.urlopen(f"http://{ip}/", timeout=0.5) as r:
                    if r.status == 200:
                        found[iid] = time.time()
            except OSError:
                pass
        time.sleep(PROBE_INTERVAL)


def timed_run(lab, argv):
    """Runs a command with the page probe alongside; returns wall time, requests and events."""
    stop, healthy = threading.Event(), {}
    prober = threading.Thread(target=probe_page, args=(lab, stop, healthy), daemon=True)
    start = time.time()
    prober.start()
    result = subprocess.run(argv, env=env(lab), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    end = time.time()
    stop.set()
    prober.join()
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return {"wall": end - start, "requests": lab.lines("requests", start, end),
            "events": lab.lines("events", start, end), "healthy": healthy, "stdout": result.stdout}


def first_after(requests, action, t):
    times = [r["time"] for r in requests if r["action"] == action and r["time"] >= t]
    return min(times) - t if times else None


def lags(run):
    """Per wait: seconds from the lab reaching the state to bake's first call acting on it."""
    out = {}
    reqs, events = run["requests"], run["events"]
    for event, action in (("instance_running", "DescribeInstances"),
                          ("ssm_online", "DescribeInstanceInformation"),
                          ("image_available", "DescribeImages")):
        times = [e["time"] for e in events if e["event"] == event]
        if times:
            out[event] = first_after(reqs, action, times[0])
    online = [e["time"] for e in events if e["event"] == "ssm_online"]
    if run["healthy"] and online:
        ready = max(min(run["healthy"].values()), online[0])
        out["page_healthy"] = first_after(reqs, "SendCommand", ready)
    return out


def counts(run):
    """API calls by action, counting only the tool's own (signed with the bench's key): an instance's
    anonymous download, such as the SSM agent's package from S3, is not a call of the tool."""
    tally = {}
    for r in run["requests"]:
        if r.get("access_key") != ACCESS_KEY:
            continue
        tally[r["action"]] = tally.get(r["action"], 0) + 1
    return dict(sorted(tally.items()))


def packer_template(lab, user_data_file):
    return {"builders": [{
        "type": "amazon-ebs", "region": REGION,
        "custom_endpoint_ec2": lab.endpoint, "skip_region_validation": True,
        "skip_credential_validation": True,
        "source_ami": lab.info["debian_images"][REGION],
        "subnet_id": lab.info["network"]["subnets"]["Public subnet A"],
        "associate_public_ip_address": True, "instance_type": "t3.micro",
        "iam_instance_profile": "SSMInstanceProfile", "user_data_file": str(user_data_file),
        "communicator": "none", "ami_name": "packer-bench-{{timestamp}}",
    }]}


def ensure_packer():
    if shutil.which("packer"):
        return
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "packer"], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def rollouts(lab, bake):
    """The rollout rows: wall time of a rollout of a new AMI to groups of 1 and 4, and what the
    traffic probe saw. Baked here (bench1 and bench2) unless baked already."""
    amis = {}
    for image in ("bench1", "bench2"):
        out = subprocess.run(bake + ["ami", image], env=env(lab), capture_output=True, text=True,
                             timeout=RUN_TIMEOUT)
        if out.returncode != 0:
            raise SystemExit(f"bake ami {image} failed:\n{out.stderr[-3000:]}")
        amis[image] = out.stdout.strip()
    rows = {}
    for name in ROLLOUTS:
        timed_run(lab, bake + ["rollout", name, "--ami", amis["bench1"]])
        run = timed_run(lab, bake + ["-o", "json", "rollout", name, "--ami", amis["bench2"]])
        result = json.loads(run["stdout"])
        rows[name] = {"wall": run["wall"], "probe": result.get("probe"),
                      "calls": sum(counts(run).values())}
    return rows


def copies_made(run):
    """The copies a `bake -o json ami` run reports as made (outcome `copied`)."""
    images = json.loads(run["stdout"])["images"]
    return sum(1 for image in images for copy in image["copies"] if copy["outcome"] == "copied")


def summary(walls):
    return {"median": statistics.median(walls), "min": min(walls), "max": max(walls)}


def main():
    if os.environ.get("BENCH_ONLY") == "rollout":
        return main_rollout()
    if os.environ.get("BENCH_ONLY") == "distribute":
        return main_distribute()
    ensure_packer()
    lab = Lab()
    try:
        lab.call("latency", LATENCY)
        bake = [str(BAKE), "-c", str(CONFIG)]
        rendered = json.loads(subprocess.run(bake + ["-o", "json", "render", "bench1"], check=True,
                                             stdout=subprocess.PIPE, text=True).stdout)
        work = Path(tempfile.mkdtemp(prefix="bake-bench-"))
        (work / "user-data.sh").write_text(rendered["user_data"])
        (work / "packer.json").write_text(json.dumps(packer_template(lab, work / "user-data.sh")))

        bake_runs = [timed_run(lab, bake + ["ami", "bench1", "--force"]) for _ in range(BAKE_RUNS)]
        four = timed_run(lab, bake + ["ami", "bench1", "bench2", "bench3", "bench4", "--force"])
        copy_latency = json.loads(lab.call("latency")).get("image_copy")
        distributed = timed_run(lab, bake + ["-o", "json", "ami", *DISTRIBUTED, "--force"])
        private_runs = [timed_run(lab, bake + ["ami", "private1", "--force"])
                        for _ in range(PRIVATE_RUNS)]
        packer_runs = [timed_run(lab, ["packer", "build", "-machine-readable", str(work / "packer.json")])
                       for _ in range(PACKER_RUNS)]
        rollout_rows = rollouts(lab, bake)
        shutil.rmtree(work)
    finally:
        lab.stop()

    bake_lags = [lags(r) for r in bake_runs]
    worst = {k: max(lag[k] for lag in bake_lags if lag.get(k) is not None) for k in bake_lags[0]}
    bake_calls = [sum(counts(r).values()) for r in bake_runs]
    hv_calls = [sum(n for a, n in counts(r).items() if a in HEALTH_VERIFY_ACTIONS) for r in bake_runs]
    packer_calls = [sum(counts(r).values()) for r in packer_runs]
    bake_wall = summary([r["wall"] for r in bake_runs])
    packer_wall = summary([r["wall"] for r in packer_runs])
    ratio = four["wall"] / bake_wall["median"]
    private_wall = summary([r["wall"] for r in private_runs])
    private_calls = [sum(counts(r).values()) for r in private_runs]
    private_by_action = counts(private_runs[0])
    checks = {
        "detection lag <= 1 s for every wait": all(v <= 1.0 for v in worst.values()),
        "bake wall <= Packer wall (medians)": bake_wall["median"] <= packer_wall["median"],
        "bake calls - health/verify calls <= Packer calls":
            max(b - h for b, h in zip(bake_calls, hv_calls, strict=True)) <= min(packer_calls),
        "wall(4) / wall(1) <= 1.3": ratio <= 1.3,
    }
    distribute, distribute_checks = distribute_row(distributed, copy_latency, bake_wall["median"])
    checks.update(distribute_checks)
    checks.update(rollout_checks(rollout_rows))
    results = {
        "latency": LATENCY,
        "bake": {"runs": BAKE_RUNS, "wall": bake_wall, "calls": bake_calls,
                 "health_verify_calls": hv_calls, "calls_by_action": counts(bake_runs[0]),
                 "detection_lag": bake_lags, "detection_lag_worst": worst},
        "bake_4_images": {"wall": four["wall"], "calls": sum(counts(four).values()),
                          "wall_4_over_1": ratio},
        "bake_4_images_2_regions": distribute,
        "bake_private": {"runs": PRIVATE_RUNS, "wall": private_wall, "calls": private_calls,
                         "egress_calls": sum(n for a, n in private_by_action.items()
                                             if a in EGRESS_ACTIONS),
                         "endpoint_calls": sum(n for a, n in private_by_action.items()
                                               if a in ENDPOINT_ACTIONS),
                         "calls_by_action": private_by_action,
                         "wall_over_public": private_wall["median"] / bake_wall["median"]},
        "packer": {"version": subprocess.run(["packer", "version"], stdout=subprocess.PIPE,
                                             text=True).stdout.split()[1],
                   "runs": PACKER_RUNS, "wall": packer_wall, "calls": packer_calls,
                   "calls_by_action": counts(packer_runs[0])},
        "rollout": rollout_rows,
        "checks": checks,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0 if all(checks.values()) else 1


def rollout_checks(rows):
    four, one, terminate_first = (rows[n]["wall"] for n in ("roll4", "roll1", "roll4t"))
    return {
        f"rollout wall(4, max_healthy 200) / wall(1) <= {ROLLOUT_GOAL}": four / one <= ROLLOUT_GOAL,
        "rollout of 4, max_healthy 200: 0 failed probe requests":
            (rows["roll4"]["probe"] or {}).get("failed") == 0,
        "rollout of 4: max_healthy 200 no slower than 100": four <= terminate_first,
    }


def main_rollout():
    """`BENCH_ONLY=rollout`: the rollout rows alone, merged into bench/results.json."""
    lab = Lab()
    try:
        lab.call("latency", LATENCY)
        rows = rollouts(lab, [str(BAKE), "-c", str(CONFIG)])
    finally:
        lab.stop()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"checks": {}}
    results["rollout"] = rows
    results["checks"] = {k: v for k, v in results.get("checks", {}).items() if not k.startswith("rollout")}
    results["checks"].update(rollout_checks(rows))
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(rollout_table(rows))
    print("\n".join(f"{'ok  ' if ok else 'FAIL'} {name}" for name, ok in results["checks"].items()
                    if name.startswith("rollout")))
    return 0 if all(results["checks"].values()) else 1


def distribute_row(distributed, copy_latency, one):
    """The distribution row and its checks, against `one` (the median wall of 1 image, 1 region)."""
    row = {"wall": distributed["wall"], "image_copy_latency": copy_latency,
           "copies": copies_made(distributed), "calls": sum(counts(distributed).values()),
           "copy_calls": counts(distributed).get("CopyImage", 0), "wall_over_1": distributed["wall"] / one}
    checks = {
        f"wall(4 images x 2 regions) / wall(1 image, 1 region) <= {DISTRIBUTE_GOAL}":
            row["wall_over_1"] <= DISTRIBUTE_GOAL,
        "4 images x 2 regions: every copy made": row["copies"] == len(DISTRIBUTED),
    }
    return row, checks


def main_distribute():
    """`BENCH_ONLY=distribute`: 1 image in 1 region (BAKE_RUNS times) and 4 images x 2 regions in
    one run, merged into bench/results.json."""
    lab = Lab()
    try:
        lab.call("latency", LATENCY)
        bake = [str(BAKE), "-c", str(CONFIG)]
        walls = [timed_run(lab, bake + ["ami", "bench1", "--force"])["wall"] for _ in range(BAKE_RUNS)]
        copy_latency = json.loads(lab.call("latency")).get("image_copy")
        distributed = timed_run(lab, bake + ["-o", "json", "ami", *DISTRIBUTED, "--force"])
    finally:
        lab.stop()
    one = statistics.median(walls)
    row, checks = distribute_row(distributed, copy_latency, one)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"checks": {}}
    results["bake_4_images_2_regions"] = dict(row, one_image_walls=walls)
    results["checks"] = {k: v for k, v in results.get("checks", {}).items() if "2 regions" not in k}
    results["checks"].update(checks)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"1 image, 1 region: {one:.1f} s (median of {BAKE_RUNS}); 4 images x 2 regions (copy latency "
          f"{copy_latency} s): {row['wall']:.1f} s, {row['wall_over_1']:.2f}; {row['copies']} copies")
    print("\n".join(f"{'ok  ' if ok else 'FAIL'} {name}" for name, ok in checks.items()))
    return 0 if all(checks.values()) else 1


def rollout_table(rows):
    def probe(row):
        p = row["probe"] or {}
        if not p:
            return "–"
        return (f"{p['requests']} requests, {p['failed']} failed, p95 {p.get('p95_ms') or 0:.0f} ms, "
                f"max {p.get('max_ms') or 0:.0f} ms")
    one = rows["roll1"]["wall"]
    lines = ["| rollout of a new AMI | wall | against a group of 1 | traffic probe |", "|---|---|---|---|"]
    for name, what in (("roll1", "group of 1"), ("roll4", "group of 4, max_healthy 200 (default)"),
                       ("roll4t", "group of 4, max_healthy 100")):
        row = rows[name]
        lines.append(f"| {what} | {row['wall']:.1f} s | {row['wall'] / one:.2f} | {probe(row)} |")
    return "\n".join(lines)


def table(r):
    b, p, f, v = r["bake"], r["packer"], r["bake_4_images"], r["bake_private"]
    d = r.get("bake_4_images_2_regions")

    def w(s):
        return f"{s['median']:.1f} s ({s['min']:.1f}–{s['max']:.1f})"

    lag = b["detection_lag_worst"]
    rows = [
        "| | bake | Packer " + p["version"] + " |",
        "|---|---|---|",
        f"| wall time, median (min–max) | {w(b['wall'])} | {w(p['wall'])} |",
        f"| API calls per bake | {max(b['calls'])} (of which health/verify {max(b['health_verify_calls'])}) | "
        f"{max(p['calls'])} |",
        f"| detection lag, worst of {b['runs']}: running / SSM online / page healthy / image available | "
        f"{lag.get('instance_running', 0):.2f} / {lag.get('ssm_online', 0):.2f} / "
        f"{lag.get('page_healthy', 0):.2f} / {lag.get('image_available', 0):.2f} s | – |",
        f"| 4 images at once: wall, wall(4)/wall(1) | {f['wall']:.1f} s, {f['wall_4_over_1']:.2f} | – |",
    ] + ([
        f"| 4 images x 2 regions (copy latency {d['image_copy_latency']} s): wall, against 1 image in 1 "
        f"region; copies | {d['wall']:.1f} s, {d['wall_over_1']:.2f}; {d['copies']} ({d['calls']} calls) | – |",
    ] if d else []) + [
        f"| private builder (SSM health, temporary NAT, endpoints created): wall, wall/public; "
        f"API calls | {w(v['wall'])}, {v['wall_over_public']:.2f}; {max(v['calls'])} (NAT "
        f"{v['egress_calls']}, endpoints {v['endpoint_calls']}) against {max(b['calls'])} | – |",
        "",
        "bake calls: " + ", ".join(f"{a} {n}" for a, n in b["calls_by_action"].items()),
        "private bake calls: " + ", ".join(f"{a} {n}" for a, n in v["calls_by_action"].items()),
        "Packer calls: " + ", ".join(f"{a} {n}" for a, n in p["calls_by_action"].items()),
        "",
    ] + ([rollout_table(r["rollout"]), ""] if "rollout" in r else []) + [
        f"{'ok  ' if ok else 'FAIL'} {name}" for name, ok in r["checks"].items()]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
