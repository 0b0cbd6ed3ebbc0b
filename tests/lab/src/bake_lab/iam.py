"""IAM enforced for one test user: requests signed with that user's access key are evaluated against its identity
policy (actions, resource ARNs, the condition keys below) before moto sees them, with the actions a call implies
(tag on create, passing a role), denied in each service's documented error shape, and every evaluation recorded.
Every other key is served as before (the lab checks no policy for them)."""
import fnmatch
import json
import secrets
import threading
import uuid
from urllib.parse import parse_qs

from moto.ec2.models import ec2_backends
from moto.iam.models import iam_backends

from .patching import ACCOUNT

# The test user's access key starts with AKIA like an IAM user's ("Understanding unique ID prefixes", IAM User
# Guide); moto serves it from its default account, as every other key.
KEY_PREFIX = "AKIALABIAM"

# Tagging on create: these EC2 calls with a TagSpecification also need ec2:CreateTags, evaluated with
# ec2:CreateAction set to the call ("Grant permission to tag Amazon EC2 resources during creation", EC2 User Guide).
EC2_TAG_ON_CREATE = {
    "RunInstances", "CreateImage", "CopyImage", "CreateSecurityGroup", "CreateLaunchTemplate",
    "CreateLaunchTemplateVersion", "CreateNatGateway", "AllocateAddress", "CreateVpcEndpoint",
}
# Other services' tag-on-create: ELB's CreateLoadBalancer / CreateTargetGroup with Tags also need
# elasticloadbalancing:AddTags ("Tag your Application Load Balancer", and "Actions, resources, and condition keys for
# Elastic Load Balancing V2": AddTags is a dependent action of the two); Auto Scaling's CreateAutoScalingGroup with
# Tags needs autoscaling:CreateOrUpdateTags ("Tag Auto Scaling groups and instances": "you must have permission
# to tag"); CloudWatch's PutMetricAlarm with Tags needs cloudwatch:TagResource; SSM's PutParameter with Tags needs
# ssm:AddTagsToResource (both dependent actions in their services' authorization reference).
TAGGED_CREATE = {
    ("elasticloadbalancing", "CreateLoadBalancer"): "elasticloadbalancing:AddTags",
    ("elasticloadbalancing", "CreateTargetGroup"): "elasticloadbalancing:AddTags",
    ("autoscaling", "CreateAutoScalingGroup"): "autoscaling:CreateOrUpdateTags",
    ("monitoring", "PutMetricAlarm"): "cloudwatch:TagResource",
    ("ssm", "PutParameter"): "ssm:AddTagsToResource",
}
# A request's signing name and the service prefix of its IAM actions, where they differ.
PREFIX = {"monitoring": "cloudwatch"}
# EC2 resource types of a TagSpecification and the ARN resource type AWS evaluates for them.
EC2_ARN_TYPE = {"instance": "instance", "volume": "volume", "image": "image", "snapshot": "snapshot",
                "security-group": "security-group", "launch-template": "launch-template",
                "network-interface": "network-interface", "natgateway": "natgateway",
                "elastic-ip": "elastic-ip", "vpc-endpoint": "vpc-endpoint"}


class Enforcer:
    """The one enforced user (`POST /_lab/iam-user {"name", "policy"}`) and what its requests were judged
    (`GET /_lab/iam`: one line per evaluated action)."""

    def __init__(self, xmlns: dict):
        self.xmlns = xmlns
        self.lock = threading.Lock()
        self.user: dict | None = None
        self.records: list[dict] = []

    def set_user(self, body: dict) -> dict:
        policy = body["policy"]
        if isinstance(policy, str):
            policy = json.loads(policy)
        if policy.get("Version") != "2012-10-17" or not isinstance(policy.get("Statement"), list):
            raise ValueError("policy: a document with Version 2012-10-17 and a Statement list")
        name = body.get("name", "bake-test")
        key = KEY_PREFIX + secrets.token_hex(5).upper()
        with self.lock:
            self.user = {"name": name, "key": key, "policy": policy,
                         "arn": f"arn:aws:iam::{ACCOUNT}:user/{name}"}
            self.records.clear()
        return {"access_key_id": key, "secret_access_key": secrets.token_hex(20), "arn": self.user["arn"]}

    def clear(self) -> None:
        with self.lock:
            self.user = None
            self.records.clear()

    def dump(self) -> str:
        with self.lock:
            return "".join(json.dumps(r) + "\n" for r in self.records)

    def enforced(self, key: str) -> bool:
        user = self.user
        return user is not None and key == user["key"]

    def check(self, environ, req: dict, body: bytes):
        """None when every action the request needs is allowed; else the deny answer (status, headers, body)."""
        user = self.user
        needs = required(environ, req, body)
        denied = None
        for action, resources, context in needs:
            allowed = evaluate(user["policy"], action, resources, context)
            with self.lock:
                self.records.append({"call": f"{req['service']}:{req['action']}", "action": action,
                                     "resources": resources, "allowed": allowed, "region": req["region"]})
            if not allowed and denied is None:
                denied = (action, resources[0])
        if denied is None:
            return None
        return deny(req, user["arn"], *denied, xmlns=self.xmlns.get(req["service"], ""))


def required(environ, req: dict, body: bytes) -> list[tuple[str, list[str], dict]]:
    """The actions a request needs, each with the resource ARNs and condition keys AWS evaluates it with."""
    service, action, region = req["service"], req["action"], req["region"]
    params = _params(environ, req, body)
    prefix = PREFIX.get(service, service)
    if service == "s3":
        return [_s3(environ, region)]
    main = (f"{prefix}:{action}", ["*"], {})
    needs = [main]
    if service == "ec2":
        needs = [_ec2(action, params, region)]
        specs = _tag_specs(params)
        if action in EC2_TAG_ON_CREATE and specs:
            arns = [f"arn:aws:ec2:{region}:{ACCOUNT}:{EC2_ARN_TYPE.get(t, t)}/*" for t in specs]
            needs.append(("ec2:CreateTags", arns, {"ec2:CreateAction": action}))
        if action == "RunInstances":
            role = _profile_role(params)
            if role:
                needs.append(("iam:PassRole", [role], {"iam:PassedToService": "ec2.amazonaws.com"}))
    elif (service, action) in TAGGED_CREATE and _has_tags(params):
        needs.append((TAGGED_CREATE[(service, action)], ["*"], {}))
    if service == "autoscaling" and action in ("CreateAutoScalingGroup", "UpdateAutoScalingGroup"):
        needs.extend(_launch_template(params, region))
    return needs


def _launch_template(params: dict, region: str) -> list[tuple[str, list[str], dict]]:
    """A group created or updated with a launch template: EC2 Auto Scaling checks that the caller may launch what
    it describes — ec2:RunInstances ("Control Amazon EC2 launch template usage in Auto Scaling groups":
    "ec2:RunInstances [is] checked when an Auto Scaling group is created or updated using a launch template"),
    iam:PassRole for its instance profile's role, ec2:CreateTags for its tag specifications."""
    tid = params.get("LaunchTemplate.LaunchTemplateId")
    name = params.get("LaunchTemplate.LaunchTemplateName")
    if not tid and not name:
        return []
    backend = ec2_backends[ACCOUNT][region]
    try:
        template = backend.get_launch_template(tid) if tid else backend.get_launch_template_by_name(name)
        data = template.get_version(params.get("LaunchTemplate.Version", "$Default")).data
    except Exception:  # an unknown template or version: Auto Scaling itself answers it
        return []
    needs = [("ec2:RunInstances", ["*"], {})]
    profile = data.get("IamInstanceProfile") or {}
    role = _profile_role({"IamInstanceProfile.Name": profile.get("Name"),
                          "IamInstanceProfile.Arn": profile.get("Arn")})
    if role:
        needs.append(("iam:PassRole", [role], {"iam:PassedToService": "ec2.amazonaws.com"}))
    if data.get("TagSpecification") or data.get("TagSpecifications"):
        needs.append(("ec2:CreateTags", [f"arn:aws:ec2:{region}:{ACCOUNT}:instance/*"],
                      {"ec2:CreateAction": "RunInstances"}))
    return needs


def _params(environ, req: dict, body: bytes) -> dict:
    if req["json"]:
        try:
            return json.loads(body or b"{}")
        except ValueError:
            return {}
    params = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        params.update({k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()})
    return params


def _tag_specs(params: dict) -> list[str]:
    return [v for k, v in params.items() if k.startswith("TagSpecification.") and k.endswith(".ResourceType")]


def _has_tags(params: dict) -> bool:
    if isinstance(params.get("Tags"), list):
        return bool(params["Tags"])
    return any(k.startswith("Tags.member.") for k in params)


def _ec2(action: str, params: dict, region: str) -> tuple[str, list[str], dict]:
    """EC2 actions the lab evaluates at resource level: TerminateInstances on each instance's ARN with
    aws:ResourceTag/KEY of its tags ("Actions, resources, and condition keys for Amazon EC2": TerminateInstances,
    resource type instance, condition key aws:ResourceTag/${TagKey}). Every other EC2 action on "*"."""
    if action != "TerminateInstances":
        return f"ec2:{action}", ["*"], {}
    backend = ec2_backends[ACCOUNT][region]
    ids = [v for k, v in sorted(params.items()) if k.startswith("InstanceId.")]
    context: dict = {}
    for tags in (backend.tags.get(i, {}) for i in ids):
        # Every instance must carry the tag for the condition to hold on all of them: a key missing on one instance
        # is missing for the request.
        for k, v in tags.items():
            context.setdefault(f"aws:ResourceTag/{k}", v)
    for i in ids:
        for key in list(context):
            if key[len("aws:ResourceTag/"):] not in backend.tags.get(i, {}):
                context.pop(key)
    arns = [f"arn:aws:ec2:{region}:{ACCOUNT}:instance/{i}" for i in ids] or ["*"]
    return "ec2:TerminateInstances", arns, context


def _profile_role(params: dict) -> str | None:
    """The ARN of the role the instance profile of a RunInstances request holds ("Using an IAM role to grant
    permissions to applications running on Amazon EC2 instances": launching with a profile needs iam:PassRole on
    its role)."""
    name = params.get("IamInstanceProfile.Name")
    arn = params.get("IamInstanceProfile.Arn")
    if not name and not arn:
        return None
    backend = iam_backends[ACCOUNT]["aws"]
    try:
        profile = backend.get_instance_profile(name) if name else backend.get_instance_profile_by_arn(arn)
    except Exception:  # an unknown profile: EC2 itself answers it
        return None
    return profile.roles[0].arn if profile.roles else None


def _s3(environ, region: str) -> tuple[str, list[str], dict]:
    """S3's action from the method and path (path-style, the lab's addressing), on the object's or bucket's ARN."""
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "/").lstrip("/")
    bucket, _, key = path.partition("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if key:
        action = {"GET": "GetObject", "HEAD": "GetObject", "PUT": "PutObject", "DELETE": "DeleteObject"}.get(
            method, "PutObject")
        return f"s3:{action}", [f"arn:aws:s3:::{bucket}/{key}"], {}
    if method in ("GET", "HEAD") and ("list-type" in query or not query):
        # HeadBucket and ListObjects(V2) both need s3:ListBucket on the bucket.
        return "s3:ListBucket", [f"arn:aws:s3:::{bucket}"], {}
    return f"s3:{method.title()}Bucket", [f"arn:aws:s3:::{bucket}"], {}


def evaluate(policy: dict, action: str, resources: list[str], context: dict) -> bool:
    """IAM's evaluation of one identity policy ("Policy evaluation logic", IAM User Guide): an explicit Deny
    that applies wins, else the request is allowed when every resource is allowed by some Allow, else denied."""
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    for resource in resources:
        if any(s.get("Effect") == "Deny" and _applies(s, action, resource, context) for s in statements):
            return False
    return all(any(s.get("Effect") == "Allow" and _applies(s, action, resource, context) for s in statements)
               for resource in resources)


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _like(pattern: str, value: str) -> bool:
    """IAM's wildcards: * any run of characters, ? one; case-insensitive for actions, as AWS matches them."""
    return fnmatch.fnmatchcase(value, pattern)


def _applies(statement: dict, action: str, resource: str, context: dict) -> bool:
    if "Action" in statement:
        if not any(_like(a.lower(), action.lower()) for a in _listed(statement["Action"])):
            return False
    elif "NotAction" in statement:
        if any(_like(a.lower(), action.lower()) for a in _listed(statement["NotAction"])):
            return False
    if "Resource" in statement:
        # A request evaluated on "*" (an action without resource-level permissions) matches only Resource "*".
        if not any(r == "*" or (resource != "*" and _like(r, resource)) for r in _listed(statement["Resource"])):
            return False
    elif "NotResource" in statement:
        if any(_like(r, resource) for r in _listed(statement["NotResource"])):
            return False
    return all(_condition(op, keys, context) for op, keys in statement.get("Condition", {}).items())


def _condition(op: str, keys: dict, context: dict) -> bool:
    """The condition operators bake's policy uses ("IAM JSON policy elements: Condition operators"): StringEquals,
    StringLike, ArnLike, ArnEquals, Null, Bool. An operator the lab does not know makes the statement not apply."""
    for key, wanted in keys.items():
        present = key in context
        value = context.get(key)
        if op == "Null":
            if str(_listed(wanted)[0]).lower() != ("false" if present else "true"):
                return False
        elif not present:
            return False
        elif op in ("StringEquals", "ArnEquals", "Bool"):
            if not any(str(value) == str(w) for w in _listed(wanted)):
                return False
        elif op in ("StringLike", "ArnLike"):
            if not any(_like(str(w), str(value)) for w in _listed(wanted)):
                return False
        else:
            return False
    return True


def deny(req: dict, user_arn: str, action: str, resource: str, xmlns: str) -> tuple[str, list, bytes]:
    """A denial as each service answers it: EC2 UnauthorizedOperation (HTTP 403) with an encoded authorization
    message ("Error codes for the Amazon EC2 API"; here the encoding is base64-free JSON text, readable as
    DecodeAuthorizationMessage would give it); the query services AccessDenied (HTTP 403, their ErrorResponse);
    the JSON services AccessDeniedException (HTTP 400); S3 AccessDenied (HTTP 403, its Error document)."""
    rid = str(uuid.uuid4())
    on = resource if resource != "*" else "*"
    text = (f"User: {user_arn} is not authorized to perform: {action} on resource: {on} "
            f"because no identity-based policy allows the {action} action")
    if req["service"] == "ec2":
        encoded = json.dumps({"allowed": False, "explicitDeny": False, "context": {
            "principal": {"arn": user_arn}, "action": action, "resource": on}})
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>UnauthorizedOperation'
                f"</Code><Message>You are not authorized to perform this operation. User: {user_arn} is not "
                f"authorized to perform: {action} on resource: {on} because no identity-based policy allows the "
                f"{action} action. Encoded authorization failure message: {_xml(encoded)}</Message></Error>"
                f"</Errors><RequestID>{rid}</RequestID></Response>")
        return "403 Forbidden", [("Content-Type", "text/xml;charset=UTF-8")], body.encode()
    if req["json"]:
        body = json.dumps({"__type": "AccessDeniedException", "message": text})
        return "400 Bad Request", [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", rid),
                                   ("x-amzn-ErrorType", "AccessDeniedException")], body.encode()
    if req["service"] == "s3":
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>{_xml(text)}'
                f"</Message><RequestId>{rid}</RequestId></Error>")
        return "403 Forbidden", [("Content-Type", "application/xml"), ("x-amz-request-id", rid)], body.encode()
    body = (f'<ErrorResponse xmlns="{xmlns}"><Error><Type>Sender</Type><Code>AccessDenied</Code>'
            f"<Message>{_xml(text)}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>")
    return "403 Forbidden", [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)], body.encode()


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
