"""SSM's request rules moto does not enforce (parameter names, SendCommand's timeout, parameter labels), checked
before moto acts."""
import re

from moto.ssm import models as ssm_models
from moto.ssm.responses import SimpleSystemManagerResponse

from ..limits import LimitError
from ..patching import before, replace

# Parameter Store "Parameter name requirements": letters, digits, `.`, `-`, `_` and `/` for hierarchies; a
# hierarchy begins with `/` and has at most 15 levels; the name with its full ARN is at most 1011 characters;
# names may not begin with "aws" or "ssm" (moto checks those prefixes already).
SSM_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")
SSM_HIERARCHY_MAX = 15
SSM_NAME_WITH_ARN_MAX = 1011
# LabelParameterVersion: a label may not begin with "aws" or "ssm" in any case (moto refuses only the lower-case
# prefixes); such a label is not attached and is answered in InvalidLabels, not as an error.
LABEL_RESERVED_PREFIXES = ("aws", "ssm")
# SendCommand: TimeoutSeconds (the delivery timeout) is 30 s to 30 days.
SEND_COMMAND_TIMEOUT = (30, 2592000)


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
        raise LimitError("ValidationException",
                         f"1 validation error detected: Value '{seconds}' at 'timeoutSeconds' "
                         f"failed to satisfy constraint: Member must be between {low} and {high}")


def reserved_label(label: str) -> bool:
    return label.lower().startswith(LABEL_RESERVED_PREFIXES)


def install() -> None:
    def put_parameter(response):
        ssm_parameter_name(response._get_param("Name"), response.current_account, response.region)

    def send_command(response):
        send_command_timeout(response._get_param("TimeoutSeconds"))

    def label_parameter_version(original):
        def labelled(backend, name, version, labels):
            reserved = [label for label in labels if reserved_label(label)]
            invalid, version = original(backend, name, version, [label for label in labels if label not in reserved])
            return reserved + [label for label in invalid if label not in reserved], version
        return labelled

    replace(ssm_models.SimpleSystemManagerBackend, "label_parameter_version", label_parameter_version)
    before(SimpleSystemManagerResponse, "put_parameter", put_parameter)
    before(SimpleSystemManagerResponse, "send_command", send_command)
