"""S3 as instances meet it beyond moto's: the SSM agent's Debian package at its documented download URLs, in
buckets of an Amazon-owned account (readable by anyone, listed by no lab user)."""
from pathlib import Path

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
