"""Name, size and format rules AWS enforces on requests and moto does not: the refusal, and the tag rules EC2,
ELB and Auto Scaling share. Each service's own rules and the checks that run them before moto acts (so a refused
request changes nothing) live with that service: ec2/limits.py, elb.py, asg.py, ssm/limits.py."""
import re

from moto.core.exceptions import ServiceException

# EC2 "Tag your resources" / Auto Scaling / ELB tag restrictions: 50 user tags per resource, keys up to 128
# characters, values up to 256, and the `aws:` prefix reserved for AWS.
TAGS_MAX = 50
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
RESERVED_TAG_PREFIX = "aws:"


class LimitError(ServiceException):
    """A refusal with the code the service uses; the HTTP status is 400 for all of these."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        self.code = code


def tags(pairs: list[tuple[str, str | None]], code_for_reserved: str = "InvalidParameterValue") -> None:
    """One resource's tags as (key, value) pairs."""
    if len(pairs) > TAGS_MAX:
        raise LimitError("TagLimitExceeded", f"The maximum number of tags for a resource is {TAGS_MAX}, "
                                             f"found {len(pairs)}")
    for key, value in pairs:
        if len(key) > TAG_KEY_MAX or len(key) == 0:
            raise LimitError("InvalidParameterValue",
                             f"Tag key '{key[:40]}...' must be 1 to {TAG_KEY_MAX} characters, found {len(key)}")
        if value is not None and len(value) > TAG_VALUE_MAX:
            raise LimitError("InvalidParameterValue",
                             f"Tag value for key '{key}' exceeds the maximum length of {TAG_VALUE_MAX} characters "
                             f"(found {len(value)})")
        if key.lower().startswith(RESERVED_TAG_PREFIX):
            raise LimitError(code_for_reserved,
                             f"Value ( {key} ) for parameter key is invalid. Tag keys starting with 'aws:' are "
                             "reserved for internal use")


def query_tags(querystring: dict) -> list[list[tuple[str, str | None]]]:
    """Every tag set of a query request: EC2's `Tag.N.*`, `TagSpecification.N.Tag.M.*` and the launch template
    data's `LaunchTemplateData.TagSpecification.N.Tag.M.*`, ELB's and Auto Scaling's `Tags.member.N.*`, grouped
    by the resource they tag."""
    groups: dict[str, dict[str, list]] = {}
    for name, values in querystring.items():
        m = re.match(r"^(.*?)Tags?\.(?:member\.)?(\d+)\.(Key|Value)$", name)
        if m:
            entry = groups.setdefault(m.group(1), {}).setdefault(m.group(2), [None, None])
            entry[0 if m.group(3) == "Key" else 1] = values[0] if values else ""
    return [[(k or "", v) for k, v in group.values()] for group in groups.values()]
