"""EC2's request rules moto does not enforce (client tokens, tags on every create call and CreateTags, the Elastic
IP quota), checked before moto acts."""
from moto.ec2.responses import EC2Response

from ..limits import LimitError, query_tags, tags
from ..patching import before

# EC2 "Ensuring idempotency": a client token is a case-sensitive string of up to 64 ASCII characters.
CLIENT_TOKEN_MAX = 64


def client_token(token: str | None) -> None:
    if token is None:
        return
    if len(token) > CLIENT_TOKEN_MAX or not token.isascii():
        raise LimitError("InvalidParameterValue",
                         f"Value ({token}) for parameter clientToken is invalid. A client token must be at most "
                         f"{CLIENT_TOKEN_MAX} ASCII characters, found {len(token)} characters")


# Elastic IP addresses per Region, the default quota ("Elastic IP address quota", VPC user guide): AllocateAddress
# past it answers AddressLimitExceeded.
ADDRESSES_MAX = 5


def address_quota(response) -> None:
    if len(response.ec2_backend.addresses) >= ADDRESSES_MAX:
        raise LimitError("AddressLimitExceeded", "The maximum number of addresses has been reached.")


# EC2 actions bake (or the lab's tests) call that take a ClientToken and/or tags.
EC2_CHECKED = ("run_instances", "create_launch_template", "create_launch_template_version", "create_tags",
               "create_security_group", "create_image", "copy_image", "create_snapshot", "create_volume",
               "create_vpc_endpoint", "create_nat_gateway", "allocate_address")


def install() -> None:
    def ec2(response):
        client_token(response._get_param("ClientToken"))
        for group in query_tags(response.querystring):
            tags(group)

    for action in EC2_CHECKED:
        if hasattr(EC2Response, action):
            before(EC2Response, action, ec2)
    before(EC2Response, "allocate_address", address_quota)
