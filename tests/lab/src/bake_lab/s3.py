"""S3 as instances meet it beyond moto's: the SSM agent's Debian package at its documented download URLs, in
buckets of an Amazon-owned account (readable by anyone, listed by no lab user); and conditional writes and deletes
(If-None-Match / If-Match) as S3 documents them: atomic, one of two racing on a key answered 409
ConditionalRequestConflict."""
import threading
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

AWS_DOWNLOADS_ACCOUNT = "137112412989"  # an Amazon-owned account (it publishes Amazon Linux): holds the agent's buckets


def agent_objects(regions_: list[str]) -> list[tuple[str, str, str]]:
    """(bucket region, bucket, key) of every documented download location of the agent's Debian package."""
    key = "latest/debian_amd64/amazon-ssm-agent.deb"
    return ([("us-east-1", "ec2-downloads-windows", f"SSMAgent/{key}")]
            + [(r, f"amazon-ssm-{r}", key) for r in regions_])


def publish_agent(deb: Path, regions_: list[str]) -> None:
    """Put the agent's .deb at its documented URLs: objects in buckets of an AWS-owned account, so they
    are readable (anonymous GET) but never listed among the lab user's own buckets."""
    from moto.s3.models import get_canned_acl, s3_backends
    data = deb.read_bytes()
    for region, bucket, key in agent_objects(regions_):
        backend = s3_backends[AWS_DOWNLOADS_ACCOUNT]["aws"]
        if bucket not in backend.buckets:
            backend.create_bucket(bucket, region)
        backend.put_object(bucket, key, data)
        # moto, as S3, refuses anonymous GETs otherwise
        backend.put_object_acl(bucket, key, get_canned_acl("public-read"))


CONFLICT_MESSAGE = ("A conflicting conditional operation is currently in progress against this resource. "
                    "Please try again.")


class ConditionalWrites:
    """PutObject and DeleteObject with If-None-Match or If-Match, as S3 documents them ("How to prevent object
    overwrites with conditional writes", "How to perform conditional deletes"). moto checks the condition and
    then writes, with nothing between the two, so of two requests racing in its threaded server both may pass
    the check and both succeed. Here one conditional request per key runs at a time: a second one arriving
    meanwhile is answered 409 ConditionalRequestConflict, to be retried, as S3 answers a conflicting concurrent
    operation. Each takes the lab's `s3_conditional_write` latency (S3's own write latency), so racing writers do
    overlap."""

    def __init__(self, lab):
        self.lab = lab
        self._lock = threading.Lock()
        self._busy: set[tuple[str, str]] = set()

    def install(self) -> None:
        from moto.s3.responses import S3Response
        for name in ("put_object", "delete_object"):
            self._wrap(S3Response, name)

    def _wrap(self, cls, name: str) -> None:
        original = getattr(cls, name)
        guard = self

        def patched(response):
            if not (response.headers.get("If-None-Match") or response.headers.get("If-Match")):
                return original(response)
            key = (response.bucket_name, response.parse_key_name())
            with guard._lock:
                if key in guard._busy:
                    return conflict(key[1])
                guard._busy.add(key)
            try:
                time.sleep(guard.lab.latency.get("s3_conditional_write", 0.0))
                return original(response)
            finally:
                with guard._lock:
                    guard._busy.discard(key)

        patched.__wrapped__ = original
        setattr(cls, name, patched)


def conflict(key: str):
    """S3's 409 ConditionalRequestConflict for `key`, as its REST error XML."""
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>ConditionalRequestConflict</Code><Message>{escape(CONFLICT_MESSAGE)}</Message>"
            f"<Key>{escape(key)}</Key><RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>")
    return 409, {"Content-Type": "application/xml"}, body
