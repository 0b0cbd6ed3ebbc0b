"""Talking to a lab from Python: a client for a running lab's API and control endpoints, and a
launcher subprocess on a free port (used by the lab's tests and by the benchmark)."""
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

HERE = Path(__file__).resolve().parent.parent
REGION = "ap-northeast-2"
START_TIMEOUT = 300  # a first start may build the base image (about a minute here) before serving


class LabClient:
    """Talks to a running lab: SDK clients and the control endpoints."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.info = self.get_json("/_lab/info")

    def client(self, service: str, region: str = REGION, retries: dict | None = None):
        config = Config(retries=retries or {"mode": "standard", "max_attempts": 3})
        return boto3.client(service, endpoint_url=self.endpoint, region_name=region, config=config,
                            aws_access_key_id="AKIDLABTEST", aws_secret_access_key="secret")

    def request(self, path: str, body=None, method=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method or ("POST" if data else "GET"))
        with urllib.request.urlopen(req, timeout=120) as resp:  # reset tears containers down: allow 120 s
            return resp.read().decode()

    def get_json(self, path: str):
        return json.loads(self.request(path))

    def get_lines(self, path: str) -> list[dict]:
        return [json.loads(line) for line in self.request(path).splitlines() if line]

    def post(self, path: str, body: dict | None = None):
        return json.loads(self.request(path, body if body is not None else {}, "POST"))


class LabProcess(LabClient):
    """A launcher subprocess on a free port."""

    def __init__(self, extra_args=()):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "launcher.py"), "--port", "0", *extra_args],
                                     stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while time.monotonic() < deadline and not line.startswith("AWS_ENDPOINT_URL="):
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"lab exited with {self.proc.returncode} before it was ready")
        super().__init__(line.strip().split("=", 1)[1])

    def stop(self, sig=signal.SIGTERM, timeout=120) -> int:
        """Stop the launcher; 120 s covers tearing down every container it still runs."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)
