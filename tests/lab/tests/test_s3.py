"""S3 conditional writes and deletes as S3 documents them: If-None-Match: * creates only, If-Match: ETAG replaces
or deletes only the object read, 412 otherwise, and of two conditional requests racing on a key one is answered
409 ConditionalRequestConflict. Each test makes its own bucket (the lab makes none a client expects)."""
import threading
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import botocore.exceptions
import pytest

from conftest import REGION


@pytest.fixture
def bucket(lab):
    s3 = lab.client("s3", settle=False)
    name = f"lab-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    yield s3, name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def error(call) -> tuple[int, str]:
    """The HTTP status and code of a call that must fail."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]


def test_if_none_match_creates_only_and_if_match_replaces_only_what_was_read(bucket):
    s3, name = bucket
    first = s3.put_object(Bucket=name, Key="lease", Body=b"a", IfNoneMatch="*")["ETag"]
    assert error(lambda: s3.put_object(Bucket=name, Key="lease", Body=b"b", IfNoneMatch="*")) == \
        (412, "PreconditionFailed")
    second = s3.put_object(Bucket=name, Key="lease", Body=b"b", IfMatch=first)["ETag"]
    assert second != first
    assert error(lambda: s3.put_object(Bucket=name, Key="lease", Body=b"c", IfMatch=first)) == \
        (412, "PreconditionFailed")
    assert s3.get_object(Bucket=name, Key="lease")["Body"].read() == b"b"
    assert error(lambda: s3.put_object(Bucket=name, Key="none", Body=b"c", IfMatch=first))[0] == 404


def test_a_conditional_delete_removes_only_the_object_read(bucket):
    s3, name = bucket
    etag = s3.put_object(Bucket=name, Key="lease", Body=b"a")["ETag"]
    assert error(lambda: s3.delete_object(Bucket=name, Key="lease", IfMatch='"0123"')) == \
        (412, "PreconditionFailed")
    s3.delete_object(Bucket=name, Key="lease", IfMatch=etag)
    assert error(lambda: s3.get_object(Bucket=name, Key="lease")) == (404, "NoSuchKey")


def test_two_conditional_writes_racing_on_a_key_one_wins_the_other_gets_409(lab, bucket):
    s3, name = bucket
    lab.post("/_lab/latency", {"s3_conditional_write": 1.0})
    try:
        answers: list[tuple[int, str]] = []
        start = threading.Barrier(2)

        def put(body: bytes):
            start.wait()
            try:
                s3.put_object(Bucket=name, Key="lease", Body=body, IfNoneMatch="*")
                answers.append((200, "OK"))
            except botocore.exceptions.ClientError as e:
                answers.append((e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]))

        threads = [threading.Thread(target=put, args=(b,)) for b in (b"one", b"two")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(answers) == [(200, "OK"), (409, "ConditionalRequestConflict")]
        # The loser's retry finds the key taken.
        assert error(lambda: s3.put_object(Bucket=name, Key="lease", Body=b"x", IfNoneMatch="*")) == \
            (412, "PreconditionFailed")
    finally:
        lab.post("/_lab/latency", {"s3_conditional_write": 0.05})


def test_an_answer_carries_s3s_clock_and_the_objects_whole_second_time(bucket):
    s3, name = bucket
    s3.put_object(Bucket=name, Key="lease", Body=b"a")
    got = s3.get_object(Bucket=name, Key="lease")
    date = parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
    modified = got["LastModified"]
    assert abs((date - modified).total_seconds()) < 5
    assert abs((datetime.now(UTC) - date).total_seconds()) < 5
