"""Talking to a lab from Python: a client for a running lab's API and control endpoints, and a lab process
of one's own on a free port (the lab's tests, the benchmark and `bake-lab` use them)."""
import copy
import json
import signal
import subprocess
import sys
import time
import urllib.request

import boto3
import botocore.exceptions
from botocore.config import Config

REGION = "ap-northeast-2"
# Accounts a test can act as (LabClient.as_account): the lab's own is moto's default; B is the one images are
# shared with, C one nothing is shared with.
HOME_ACCOUNT = "123456789012"
ACCOUNT_B = "111122223333"
ACCOUNT_C = "444455556666"
START_TIMEOUT = 300  # a first start may build the base image (about a minute here) before serving


class LabClient:
    """Talks to a running lab: SDK clients and the control endpoints."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.info = self.get_json("/_lab/info")

    def client(self, service: str, region: str = REGION, retries: dict | None = None, settle: bool = True):
        """An SDK client. With `settle` it rides out eventual consistency as AWS tells clients to: an answer
        that a resource created moments ago does not exist yet, or one deleted moments ago is still in use, is asked
        again (every 0.1 s, for up to 30 s)."""
        config = Config(retries=retries or {"mode": "standard", "max_attempts": 3})
        client = boto3.client(service, endpoint_url=self.endpoint, region_name=region, config=config,
                              aws_access_key_id="AKIDLABTEST", aws_secret_access_key="secret")
        if settle:
            client._make_api_call = _settling(client._make_api_call)
        return client

    def as_account(self, account: str, service: str, region: str = REGION, settle: bool = True):
        """An SDK client acting as another account, as on AWS: credentials from STS AssumeRole into a role of
        that account (moto serves every call signed with them from that account; the role need not exist)."""
        sts = self.client("sts", region, settle=False)
        creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/lab-cross-account",
                                RoleSessionName="lab")["Credentials"]
        config = Config(retries={"mode": "standard", "max_attempts": 3})
        client = boto3.client(service, endpoint_url=self.endpoint, region_name=region, config=config,
                              aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                              aws_session_token=creds["SessionToken"])
        if settle:
            client._make_api_call = _settling(client._make_api_call)
        return client

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


# The answers AWS documents as "not yet" right after a create, and as "still in use" for a while after a delete
# (see FIDELITY.md, eventual consistency and teardown lags).
SETTLE_CODES = {"InvalidInstanceID.NotFound", "InvalidGroup.NotFound", "InvalidAMIID.NotFound",
                "InvocationDoesNotExist", "InvalidSnapshot.InUse", "ResourceInUse", "DependencyViolation"}
SETTLE_INTERVAL = 0.1  # short, so that a test still sees the states that follow a window (a command's Pending)
SETTLE_WITHIN = 30  # seconds: above the lab's longest window (a load balancer's release, 10 s)


def _settling(make_api_call):
    """Repeat a call (each time with the SDK's full retry budget for throttling) while it answers one of
    SETTLE_CODES, until SETTLE_WITHIN has passed."""
    def call(operation_name, api_params):
        deadline = time.monotonic() + SETTLE_WITHIN
        while True:
            try:
                # A copy each time: botocore's handlers change the parameters in place (UserData is
                # base64-encoded), and a repeated call must send what the caller gave.
                return make_api_call(operation_name, copy.deepcopy(api_params))
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") not in SETTLE_CODES or time.monotonic() > deadline:
                    raise
            time.sleep(SETTLE_INTERVAL)
    return call


class LabProcess(LabClient):
    """A lab of one's own: `bake-lab serve` on a free port, as a subprocess."""

    def __init__(self, extra_args=()):
        self.proc = subprocess.Popen([sys.executable, "-m", "bake_lab", "serve", "--port", "0", *extra_args],
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
