"""The WSGI layer in front of moto: /_lab control endpoints, fault injection and the request log."""
import io
import json
import random
import re
import threading
import time
import uuid
from urllib.parse import parse_qs

from moto.iam.models import get_account_id_from

from . import consistency, iam
from .ec2 import sharing

INTERNAL_KEY = "LABINTERNAL"  # access key of the lab's own bootstrap calls: never faulted, never logged
_CREDENTIAL = re.compile(r"Credential=([^/]+)/[^/]+/([^/]+)/([^/]+)/")
_QUERY_XMLNS = {
    "iam": "https://iam.amazonaws.com/doc/2010-05-08/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
    "autoscaling": "http://autoscaling.amazonaws.com/doc/2011-01-01/",
    "elasticloadbalancing": "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/",
}


def describe_request(environ) -> dict:
    """Service, action, region and access key of an AWS API request (reads and restores the body)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    m = _CREDENTIAL.search(auth)
    key, region, service = (m.group(1), m.group(2), m.group(3)) if m else ("", "", "")
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    action = target.split(".")[-1] if target else ""
    if not action:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        params = parse_qs(environ.get("QUERY_STRING", ""))
        if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            params.update(parse_qs(body.decode(errors="replace")))
        action = (params.get("Action") or [""])[0]
    return {"service": service, "action": action, "region": region, "key": key, "json": bool(target)}


def fault_response(req: dict, kind: str) -> tuple[str, list, bytes]:
    """An error in the protocol's own format, so SDK retry classifiers recognise it."""
    rid = str(uuid.uuid4())
    throttle = kind == "throttle"
    if kind == "lost":
        return _internal_error(req, rid)
    if req["json"]:
        code = "ThrottlingException" if throttle else "ServiceUnavailable"
        body = json.dumps({"__type": code, "message": "Rate exceeded" if throttle else "Service Unavailable"})
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", rid),
                   ("x-amzn-ErrorType", code)]
        return ("400 Bad Request" if throttle else "503 Service Unavailable"), headers, body.encode()
    if req["service"] == "ec2":
        code = "RequestLimitExceeded" if throttle else "Unavailable"
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
                f"<Message>{'Request limit exceeded.' if throttle else 'The service is unavailable.'}</Message>"
                f"</Error></Errors><RequestID>{rid}</RequestID></Response>")
        return "503 Service Unavailable", [("Content-Type", "text/xml;charset=UTF-8")], body.encode()
    code = "Throttling" if throttle else "ServiceUnavailable"
    xmlns = _QUERY_XMLNS.get(req["service"], "")
    body = (f'<ErrorResponse xmlns="{xmlns}"><Error><Type>{"Sender" if throttle else "Receiver"}</Type>'
            f"<Code>{code}</Code><Message>{'Rate exceeded' if throttle else 'Service Unavailable'}</Message>"
            f"</Error><RequestId>{rid}</RequestId></ErrorResponse>")
    return ("400 Bad Request" if throttle else "503 Service Unavailable"), \
        [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)], body.encode()


def _internal_error(req: dict, rid: str) -> tuple[str, list, bytes]:
    """HTTP 500 InternalError, which AWS documents as retryable and which leaves the caller not knowing whether the
    request took effect ("Ensuring idempotency in Amazon EC2 API requests")."""
    if req["json"]:
        body = json.dumps({"__type": "InternalServerError", "message": "An internal error has occurred"})
        return "500 Internal Server Error", [("Content-Type", "application/x-amz-json-1.1"),
                                             ("x-amzn-RequestId", rid),
                                             ("x-amzn-ErrorType", "InternalServerError")], body.encode()
    if req["service"] == "ec2":
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>InternalError</Code>'
                f"<Message>An internal error has occurred</Message></Error></Errors><RequestID>{rid}</RequestID>"
                f"</Response>")
        return "500 Internal Server Error", [("Content-Type", "text/xml;charset=UTF-8")], body.encode()
    xmlns = _QUERY_XMLNS.get(req["service"], "")
    body = (f'<ErrorResponse xmlns="{xmlns}"><Error><Type>Receiver</Type><Code>InternalFailure</Code>'
            f"<Message>An internal error has occurred</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>")
    return "500 Internal Server Error", [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)], body.encode()


# Calls a throttle burst refuses: AWS throttles per account and region in token buckets, and the describe/get/list
# ("non-mutating") calls share the tightest bucket.
BURST_PREFIXES = ("Describe", "Get", "List")


class Faults:
    """Injected faults: one rule (`{"rate", "kind", "services", "actions"}`) or several
    (`{"rules": [...]}`); a request gets the first rule whose filters match and whose dice hit.
    Kind `burst` (`{"kind": "burst", "duration": N, "every": M, "offset": O, "services": [...]}`) throttles every
    describe/get/list call of its services for N seconds every M seconds, the first burst O seconds after it is
    set (0 by default); it rolls no dice. Kind `lost` lets the request take effect and then answers HTTP 500
    InternalError instead of its success, as when an answer is lost on the way back: the caller's retry meets what
    the first attempt made. Error answers pass through unchanged."""

    def __init__(self):
        self.config = {"rate": 0.0}
        self.rules: list[dict] = []
        self.rng = random.Random()

    @staticmethod
    def _rule(config: dict) -> dict:
        kind = config.get("kind", "throttle")
        common = {"kind": kind, "services": list(config.get("services") or []),
                  "actions": list(config.get("actions") or [])}
        if kind == "burst":
            duration, every = float(config.get("duration", 0)), float(config.get("every", 0))
            offset = float(config.get("offset", 0))
            if not 0 < duration <= every or offset < 0:
                raise ValueError("a burst needs 0 < duration <= every (seconds) and offset >= 0")
            return {**common, "rate": 1.0, "duration": duration, "every": every, "offset": offset,
                    "since": time.time()}
        rate = float(config.get("rate", 0))
        if not 0 <= rate <= 1 or kind not in ("throttle", "5xx", "lost"):
            raise ValueError("rate must be within [0, 1] and kind one of throttle, 5xx, lost, burst")
        return {**common, "rate": rate}

    @staticmethod
    def _bursting(rule: dict, req: dict) -> bool:
        if not req["action"].startswith(BURST_PREFIXES):
            return False
        elapsed = time.time() - rule["since"] - rule["offset"]
        return elapsed >= 0 and elapsed % rule["every"] < rule["duration"]

    def set(self, config: dict) -> None:
        if "rules" in config:
            rules = [self._rule(r) for r in config["rules"]]
            self.config = {"rules": rules}
        else:
            rules = [self._rule(config)]
            self.config = rules[0]
        self.rules = [r for r in rules if r["rate"] > 0]
        self.rng = random.Random(config.get("seed"))

    def pick(self, req: dict) -> str | None:
        for c in self.rules:
            if c["services"] and req["service"] not in c["services"]:
                continue
            if c["actions"] and req["action"] not in c["actions"]:
                continue
            if c["kind"] == "burst":
                if self._bursting(c, req):
                    return "throttle"
                continue
            if self.rng.random() < c["rate"]:
                return c["kind"]
        return None


class ControlApp:
    """Wraps moto's WSGI app; `lab_api` (the LabService) answers the control endpoints."""

    def __init__(self, moto_app, lab_api):
        self.moto_app = moto_app
        self.api = lab_api
        self.faults = Faults()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.iam = iam.Enforcer(_QUERY_XMLNS)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
        self.iam.clear()
        self.faults.set({"rate": 0})
        self.api.lab.consistency.reset()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_lab/"):
            return self._control(environ, start_response, path[len("/_lab/"):])
        req = describe_request(environ)
        if req["key"] == INTERNAL_KEY:
            consistency.serving(None)
            return self.moto_app(environ, start_response)
        consistency.serving(req["action"])
        started = time.time()
        if self.iam.enforced(req["key"]):
            denied = self._authorize(environ, req)
            if denied:
                status, headers, body = denied
                start_response(status, headers + [("Content-Length", str(len(body)))])
                consistency.serving(None)
                self._log(req, started, int(status.split()[0]), None)
                return [body]
        fault = self.faults.pick(req)
        if fault == "lost":
            return self._lose_answer(environ, start_response, req, started)
        if fault:
            status, headers, body = fault_response(req, fault)
            start_response(status, headers + [("Content-Length", str(len(body)))])
            self._log(req, started, int(status.split()[0]), fault)
            return [body]
        seen = {}

        def recording_start(status, headers, exc_info=None):
            seen["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        try:
            return self.moto_app(environ, recording_start)
        finally:
            consistency.serving(None)
            self._log(req, started, seen.get("status", 500), None)

    def _authorize(self, environ, req: dict):
        """The enforced user's request judged by its policy (reads and restores the body): None or the denial."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        return self.iam.check(environ, req, body)

    def _lose_answer(self, environ, start_response, req: dict, started: float):
        """Runs the request; a success is replaced by a 500, an error answer is passed on as it is."""
        seen: dict = {}

        def capture(status, headers, exc_info=None):
            seen["status"], seen["headers"] = status, headers
            return lambda _data: None

        try:
            body = b"".join(self.moto_app(environ, capture))
        finally:
            consistency.serving(None)
        code = int(seen.get("status", "500").split()[0])
        if code >= 400:
            start_response(seen["status"], seen["headers"])
            self._log(req, started, code, None)
            return [body]
        status, headers, body = fault_response(req, "lost")
        start_response(status, headers + [("Content-Length", str(len(body)))])
        self._log(req, started, int(status.split()[0]), "lost")
        return [body]

    def _log(self, req: dict, started: float, status: int, fault: str | None) -> None:
        entry = {"time": started, "service": req["service"], "action": req["action"], "region": req["region"],
                 "access_key": req["key"], "account": _account_of(req["key"]), "status": status,
                 "fault": fault is not None, "fault_kind": fault,
                 "duration": round(time.time() - started, 6)}
        with self.lock:
            self.requests.append(entry)

    def _control(self, environ, start_response, name: str):
        method = environ.get("REQUEST_METHOD", "GET")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
            status, payload = self._dispatch(method, name, body)
        except (ValueError, TypeError, KeyError) as e:
            status, payload = 400, {"error": str(e)}
        if isinstance(payload, (dict, list)):
            data, ctype = json.dumps(payload).encode(), "application/json"
        else:
            data, ctype = payload.encode(), ("application/x-ndjson" if name in ("requests", "events", "iam")
                                             else "text/plain")
        start_response(f"{status} {'OK' if status == 200 else 'Error'}",
                       [("Content-Type", ctype), ("Content-Length", str(len(data)))])
        return [data]

    def _dispatch(self, method: str, name: str, body):
        api = self.api
        if (method, name) == ("POST", "reset"):
            api.reset()
            self.clear()
            return 200, {"reset": True}
        if (method, name) == ("POST", "latency"):
            return 200, api.set_latency(body)
        if name == "latency":
            return 200, api.latency
        if (method, name) == ("POST", "faults"):
            self.faults.set(body)
            return 200, self.faults.config
        if name == "faults":
            return 200, self.faults.config
        if (method, name) == ("POST", "consistency"):
            return 200, api.lab.consistency.set(body)
        if name == "consistency":
            return 200, api.lab.consistency.settings()
        if (method, name) == ("POST", "capacity"):
            return 200, api.lab.scaling.groups.set_capacity(body)
        if name == "capacity":
            return 200, api.lab.scaling.groups.capacity()
        if (method, name) == ("POST", "security-groups"):
            return 200, api.set_security_groups(body)
        if name == "security-groups":
            return 200, api.security_groups()
        if (method, name) == ("POST", "copy-failures"):
            return 200, api.lab.set_copy_failures(body)
        if name == "copy-failures":
            return 200, dict(api.lab.copy_failures)
        if (method, name) == ("POST", "accounts"):
            return 200, sharing.set_accounts(body)
        if name == "accounts":
            return 200, sharing.accounts()
        if (method, name) == ("POST", "iam-user"):
            return 200, self.iam.set_user(body)
        if name == "iam":
            return 200, self.iam.dump()
        if name == "checkip":
            return 200, api.checkip() + "\n"
        if name == "requests":
            with self.lock:
                return 200, "".join(json.dumps(r) + "\n" for r in self.requests)
        if name == "events":
            return 200, "".join(json.dumps(e) + "\n" for e in list(api.events))
        if name == "containers":
            return 200, api.containers()
        if name == "info":
            return 200, api.info()
        return 404, {"error": f"no lab endpoint {method} /_lab/{name}"}


def _account_of(access_key: str | None) -> str:
    """The account moto serves a request signed with this key from: STS AssumeRole credentials belong to the
    role's account, any other key to moto's default account."""
    return get_account_id_from(access_key or "")
