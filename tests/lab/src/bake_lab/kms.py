"""KMS keys as EC2 meets them (moto's keys): finding a key by any identifier a client may give, and whether
an account or a service role may use it for encrypted EBS volumes. EC2 (launches, CopyImage) and Auto Scaling
share these checks."""
import fnmatch
import json

from moto.ec2.models.elastic_block_store import EBSBackend
from moto.kms.models import KmsBackend, kms_backends

from .patching import wrap

# What another account needs in a key policy to launch from (or copy) snapshots encrypted with the key
# ("Allow users in other accounts to use a KMS key"; the EBS encryption page lists the same actions).
CROSS_ACCOUNT_ACTIONS = ("kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncryptFrom",
                         "kms:GenerateDataKeyWithoutPlaintext")


def find_key(account: str, region: str, ref: str | None):
    """The key `ref` names (key id, key ARN, alias name or alias ARN) in that account and region, None when there
    is none. A key or alias ARN names its own account and region; `alias/aws/ebs` is made on first use, as the
    AWS managed key for EBS is."""
    if not ref:
        return None
    if ref.startswith("arn:"):
        parts = ref.split(":")
        if len(parts) < 6 or parts[2] != "kms":
            return None
        region, account = parts[3], parts[4]
    backend = kms_backends[account][region]
    try:
        return backend.keys.get(backend.any_id_to_key_id(ref))
    except (KeyError, AttributeError, TypeError):
        return None


def enabled(key) -> bool:
    return key is not None and getattr(key, "key_state", "Enabled") == "Enabled"


def _principals(statement: dict) -> list[str]:
    principal = statement.get("Principal", {})
    if principal == "*":
        return ["*"]
    found = principal.get("AWS", []) if isinstance(principal, dict) else []
    return [found] if isinstance(found, str) else list(found)


def _actions(statement: dict) -> list[str]:
    found = statement.get("Action", [])
    return [found] if isinstance(found, str) else list(found)


def usable_by_account(key, account: str) -> bool:
    """Whether principals of `account` may use the key for EBS: any key of their own account that is enabled;
    another account's customer managed key only if its key policy allows that account (its root, or "*") every
    action in CROSS_ACCOUNT_ACTIONS; an AWS managed key (aws/ebs) of another account never (its policy cannot
    be changed)."""
    if not enabled(key):
        return False
    if key.account_id == account:
        return True
    if key.key_manager != "CUSTOMER":
        return False
    return _policy_allows(key, {"*", account, f"arn:aws:iam::{account}:root"}, CROSS_ACCOUNT_ACTIONS)


def _policy_allows(key, principals: set[str], wanted: tuple[str, ...]) -> bool:
    """Whether the key policy's Allow statements naming one of `principals` give every action in `wanted`
    between them (wildcards such as kms:ReEncrypt* and kms:* count). Conditions are not read."""
    try:
        policy = json.loads(key.policy or "{}")
    except ValueError:
        return False
    statements = policy.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    allowed: set[str] = set()
    for s in statements:
        if s.get("Effect") != "Allow" or not principals & set(_principals(s)):
            continue
        allowed.update(w for w in wanted
                       if any(fnmatch.fnmatchcase(w.lower(), a.lower()) for a in _actions(s)))
    return allowed == set(wanted)


def granted_to(key, principal: str) -> bool:
    """Whether a grant on the key names `principal` (e.g. the Auto Scaling service-linked role) as grantee."""
    return any(principal in g.grantee_principal for g in key.grants.values())


# What the Auto Scaling service-linked role needs of a customer managed key, as the two key policy statements of
# "Required AWS KMS key policy for use with encrypted volumes" give it.
SERVICE_ROLE_ACTIONS = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo",
                        "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey", "kms:CreateGrant")


def policy_allows_role(key, role_arn: str) -> bool:
    """Whether the key policy's Allow statements name `role_arn` and give it every action the role needs
    (SERVICE_ROLE_ACTIONS)."""
    return _policy_allows(key, {role_arn}, SERVICE_ROLE_ACTIONS)


def snapshot_key(snapshot, region: str):
    """The key an encrypted snapshot records (None for an unencrypted one, or one whose key is gone)."""
    if snapshot is None or not snapshot.encrypted or not snapshot.kms_key_id:
        return None
    return find_key(snapshot.ec2_backend.account_id, region, snapshot.kms_key_id)


def install() -> None:
    """The keys behind the reserved aliases (`alias/aws/ebs` and the others), which moto makes on first use as
    customer managed keys, are AWS managed keys: DescribeKey says `KeyManager` AWS, and nothing asks them for a
    grant ("AWS managed keys" in the KMS concepts; the Auto Scaling key policy page needs no grant for them)."""
    def aws_managed(backend, key_id, alias_name):
        if key_id is not None:
            backend.keys[key_id].key_manager = "AWS"

    wrap(KmsBackend, "_generate_default_keys", aws_managed)

    def default_ebs_key(ebs, arn):
        # EC2 makes aws/ebs itself when a volume is encrypted with no key named (moto creates it there as a
        # customer managed key, bypassing the reserved-alias path above).
        key = find_key(ebs.account_id, ebs.region_name, arn)
        if key is not None:
            key.key_manager = "AWS"

    wrap(EBSBackend, "_create_default_encryption_key", default_ebs_key)
