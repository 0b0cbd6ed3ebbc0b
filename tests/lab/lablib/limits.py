"""Name, size and format rules AWS enforces on requests and moto does not: EC2 client tokens and tags, load
balancer and target group names, SSM parameter names and SendCommand's timeouts. Checked before moto acts, so a
refused request changes nothing."""
import re

from moto.core.exceptions import ServiceException

# EC2 "Ensuring idempotency": a client token is a case-sensitive string of up to 64 ASCII characters.
CLIENT_TOKEN_MAX = 64
# EC2 "Tag your resources" / Auto Scaling / ELB tag restrictions: 50 user tags per resource, keys up to 128
# characters, values up to 256, and the `aws:` prefix reserved for AWS.
TAGS_MAX = 50
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
RESERVED_TAG_PREFIX = "aws:"
# Elastic Load Balancing CreateLoadBalancer / CreateTargetGroup: up to 32 alphanumerics or hyphens, not starting
# or ending with a hyphen; a load balancer's name also may not start with "internal-".
ELB_NAME_MAX = 32
ELB_NAME = re.compile(r"^[A-Za-z0-9-]+$")
# Parameter Store "Parameter name requirements": letters, digits, `.`, `-`, `_` and `/` for hierarchies; a
# hierarchy begins with `/` and has at most 15 levels; the name with its full ARN is at most 1011 characters;
# names may not begin with "aws" or "ssm" (moto checks those prefixes already).
SSM_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")
SSM_HIERARCHY_MAX = 15
SSM_NAME_WITH_ARN_MAX = 1011
# SendCommand: TimeoutSeconds (the delivery timeout) is 30 s to 30 days.
SEND_COMMAND_TIMEOUT = (30, 2592000)


class LimitError(ServiceException):
    """A refusal with the code the service uses; the HTTP status is 400 for all of these."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        self.code = code


def client_token(token: str | None) -> None:
    if token is None:
        return
    if len(token) > CLIENT_TOKEN_MAX or not token.isascii():
        raise LimitError("InvalidParameterValue",
                         f"Value ({token}) for parameter clientToken is invalid. A client token must be at most "
                         f"{CLIENT_TOKEN_MAX} ASCII characters, found {len(token)} characters")


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


def elb_name(name: str | None, kind: str) -> None:
    if name is None:
        return
    what = "Load balancer" if kind == "load balancer" else "Target group"
    if len(name) > ELB_NAME_MAX:
        raise LimitError("ValidationError", f"{what} name '{name}' cannot be longer than '{ELB_NAME_MAX}' characters")
    if not ELB_NAME.match(name):
        raise LimitError("ValidationError", f"{what} name '{name}' can only contain characters that are "
                                            "alphanumeric characters or hyphens(-)")
    if name.startswith("-") or name.endswith("-"):
        raise LimitError("ValidationError", f"{what} name '{name}' cannot begin or end with '-'")
    if kind == "load balancer" and name.startswith("internal-"):
        raise LimitError("ValidationError", f"Load balancer name '{name}' cannot begin with 'internal-'")


def ssm_parameter_name(name: str | None, account_id: str, region: str) -> None:
    if not name or name.startswith("arn:"):
        return
    if not SSM_NAME.match(name):
        raise LimitError("ValidationException",
                         "Parameter name: can't contain characters other than letters, numbers and .-_ with / "
                         f"between the levels of a hierarchy, found {name!r}")
    if "/" in name and not name.startswith("/"):
        raise LimitError("ValidationException", 'Parameter name: a name that contains "/" must be fully qualified '
                                                f'and begin with "/", found {name!r}')
    levels = len([p for p in name.split("/") if p])
    if name.startswith("/") and levels > SSM_HIERARCHY_MAX:
        raise LimitError("HierarchyLevelLimitExceededException",
                         f"A hierarchy can have a maximum of {SSM_HIERARCHY_MAX} levels, found {levels}")
    arn = f"arn:aws:ssm:{region}:{account_id}:parameter{'' if name.startswith('/') else '/'}{name}"
    if len(arn) > SSM_NAME_WITH_ARN_MAX:
        raise LimitError("ValidationException",
                         f"Parameter name: the name with its ARN is {len(arn)} characters, at most "
                         f"{SSM_NAME_WITH_ARN_MAX} are allowed")


def send_command_timeout(seconds) -> None:
    if seconds is None:
        return
    low, high = SEND_COMMAND_TIMEOUT
    if not low <= int(seconds) <= high:
        raise LimitError("ValidationException", f"1 validation error detected: Value '{seconds}' at 'timeoutSeconds' "
                                                f"failed to satisfy constraint: Member must be between {low} and {high}")


def _before(cls, name: str, check):
    """Run check(response) before the response method `name` of cls; its LimitError becomes the answer. The
    patch goes on the class that defines the method (EC2Response inherits AmisResponse's and the others'), so
    patches other lab modules make to that class later still run."""
    cls = next(c for c in cls.__mro__ if name in c.__dict__)
    original = getattr(cls, name)

    def patched(self):
        check(self)
        return original(self)

    patched.__wrapped__ = original
    setattr(cls, name, patched)


# EC2 actions bake (or the lab's tests) call that take a ClientToken and/or tags.
EC2_CHECKED = ("run_instances", "create_launch_template", "create_launch_template_version", "create_tags",
               "create_security_group", "create_image", "copy_image", "create_snapshot", "create_volume",
               "create_vpc_endpoint")


def install() -> None:
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.ec2.responses import EC2Response
    from moto.elbv2.responses import ELBV2Response
    from moto.ssm.responses import SimpleSystemManagerResponse

    def ec2(response):
        client_token(response._get_param("ClientToken"))
        for group in query_tags(response.querystring):
            tags(group)

    for action in EC2_CHECKED:
        if hasattr(EC2Response, action):
            _before(EC2Response, action, ec2)

    def elb_tags(response):
        for group in query_tags({k: v for k, v in response.querystring.items() if k.startswith("Tags.")}):
            tags(group, "ValidationError")

    def load_balancer(response):
        elb_name(response._get_param("Name"), "load balancer")
        elb_tags(response)

    def target_group(response):
        elb_name(response._get_param("Name"), "target group")
        elb_tags(response)

    _before(ELBV2Response, "create_load_balancer", load_balancer)
    _before(ELBV2Response, "create_target_group", target_group)
    _before(ELBV2Response, "add_tags", elb_tags)

    def asg_tags(response):
        for group in query_tags({k: v for k, v in response.querystring.items() if k.startswith("Tags.")}):
            tags(group, "ValidationError")

    for action in ("create_auto_scaling_group", "create_or_update_tags"):
        _before(AutoScalingResponse, action, asg_tags)

    def put_parameter(response):
        ssm_parameter_name(response._get_param("Name"), response.current_account, response.region)

    def send_command(response):
        send_command_timeout(response._get_param("TimeoutSeconds"))

    _before(SimpleSystemManagerResponse, "put_parameter", put_parameter)
    _before(SimpleSystemManagerResponse, "send_command", send_command)
