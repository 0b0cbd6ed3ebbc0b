"""`make demo`: bake the Debian nginx example in the running lab, roll it out to an Auto Scaling
group behind the load balancer, and print the page as the load balancer serves it."""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "nginx-debian.toml"
REGION = "ap-northeast-2"
PAGE_TIMEOUT = 60  # the rollout ends with healthy targets; a minute covers a slow machine
REQUESTS = 4  # enough to see the load balancer spread requests over both instances


def main() -> int:
    endpoint = sys.argv[1]
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_REGION=REGION,
               AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo",
               BAKE_CHECKIP_URL=f"{endpoint}/_lab/checkip")
    bake = str(ROOT / "target" / "debug" / "bake")
    config = str(EXAMPLE.relative_to(ROOT))

    step(f"bake ami web  (config {config}, lab at {endpoint})")
    baked = run_json([bake, "-c", config, "-o", "json", "ami", "web"], env)
    if baked is None:
        return 1
    image = baked["images"][0]
    skipped = " (already baked: same inputs)" if image["skipped"] else ""
    step(f"baked {image['ami_id']} {image['ami_name']}{skipped}, digest {image['digest'][:12]}")

    step("bake rollout web  (Web-ALB -> Web-TG -> Web-ASG on the private subnets)")
    rolled = run_json([bake, "-c", config, "-o", "json", "rollout", "web"], env)
    if rolled is None:
        return 1
    changed = f"version {rolled['version']}" if rolled["changed"] else "unchanged, already serving it"
    step(f"Web-ASG runs {rolled['ami_id']} (launch template {rolled['launch_template']} {changed})")

    url = rolled["url"]
    for n in range(REQUESTS):
        step(f"GET {url}  (request {n + 1} of {REQUESTS}, through the load balancer)")
        page = fetch(url)
        served_by = re.search(r"i-[0-9a-f]+", page)
        print(page.strip())
        print(f"    served by {served_by.group(0) if served_by else 'an instance'}")
    step("the lab keeps running: `make lab-down` stops it and removes everything it made")
    return 0


def run_json(command: list[str], env: dict) -> dict | None:
    result = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        print(f"{' '.join(command[1:])} failed with exit code {result.returncode}", file=sys.stderr)
        return None
    return json.loads(result.stdout)


def fetch(url: str) -> str:
    deadline = time.monotonic() + PAGE_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return response.read().decode()
        except OSError as e:
            last = str(e)
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {PAGE_TIMEOUT} s: {last}")


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
