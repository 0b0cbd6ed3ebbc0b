"""Sharing AMIs across accounts as EC2 does (moto keeps each account's images to itself): launch permissions for
accounts, everyone, organizations and organizational units decide who finds an image by id, who lists it with
ExecutableUsers, and who launches it; the lab's record of which organization and OUs an account belongs to."""
import threading

from moto.ec2.exceptions import InvalidAMIIdError
from moto.ec2.models import EC2Backend, ec2_backends
from moto.ec2.utils import generic_filter

from ..patching import backends, replace

_lock = threading.Lock()
# account id -> {"organization": ARN, "organizational_units": [ARN, ...]}: the lab's stand-in for AWS
# Organizations membership (set with POST /_lab/accounts; reset clears it).
_membership: dict[str, dict] = {}


def set_accounts(body: dict) -> dict:
    """Replace the membership table: {"111122223333": {"organization": "arn:aws:organizations::…:organization/o-…",
    "organizational_units": ["arn:aws:organizations::…:ou/o-…/ou-…"]}, ...}."""
    found = {}
    for account, entry in body.items():
        if not (isinstance(account, str) and len(account) == 12 and account.isdigit()):
            raise ValueError(f"account {account!r} must be 12 digits")
        org = entry.get("organization")
        ous = entry.get("organizational_units", [])
        if org is not None and ":organization/o-" not in str(org):
            raise ValueError(f"organization of {account} must be an organization ARN, got {org!r}")
        if not isinstance(ous, list) or any(":ou/o-" not in str(o) for o in ous):
            raise ValueError(f"organizational_units of {account} must be a list of OU ARNs")
        found[account] = {"organization": org, "organizational_units": [str(o) for o in ous]}
    with _lock:
        _membership.clear()
        _membership.update(found)
    return accounts()


def accounts() -> dict:
    with _lock:
        return {a: dict(e) for a, e in _membership.items()}


def clear() -> None:
    with _lock:
        _membership.clear()


def explicitly_shared(ami, account: str) -> bool:
    """A launch permission names the account, its organization or one of its OUs."""
    member = _membership.get(account, {})
    for lp in ami.launch_permissions:
        if lp.get("UserId") == account:
            return True
        if lp.get("OrganizationArn") and lp["OrganizationArn"] == member.get("organization"):
            return True
        if lp.get("OrganizationalUnitArn") and lp["OrganizationalUnitArn"] in member.get("organizational_units", []):
            return True
    return False


def can_launch(ami, account: str) -> bool:
    """EC2's rule: the owner, everyone for a public image, and those its launch permissions name."""
    return ami.ec2_backend.account_id == account or ami.is_public or explicitly_shared(ami, account)


def _others(backend, owned: bool = True) -> list:
    """Images other accounts hold in the same region; with `owned` only those the account owns (moto's catalogue
    of public images is in every account already, and the lab's base images are published by their owners)."""
    mine = backend.account_id
    return [a for region, b in backends(ec2_backends) if region == backend.region_name and b.account_id != mine
            for a in list(b.amis.values()) if not owned or a.owner_id == b.account_id]


def find_image(region: str, image_id: str):
    """An image by id in whichever account holds it in `region` (None when none does)."""
    for r, b in backends(ec2_backends):
        if r == region and image_id in b.amis:
            return b.amis[image_id]
    return None


def install() -> None:
    def describe_images(original):
        def patched(backend, ami_ids=None, filters=None, exec_users=None, owners=None):
            account = backend.account_id
            if ami_ids:
                try:
                    found = original(backend, ami_ids, filters, exec_users, owners)
                except InvalidAMIIdError:
                    found = []
                have = {a.id for a in found}
                shared = {a.id: a for a in _others(backend, owned=False) if a.id in ami_ids and a.id not in have
                          and can_launch(a, account)}
                if not found and not shared:
                    raise InvalidAMIIdError(ami_ids)
                return found + list(shared.values())
            images = original(backend, None, None, None, None)
            have = {a.id for a in images}
            images += [a for a in _others(backend) if a.id not in have and explicitly_shared(a, account)]
            if exec_users:
                users = {account if u == "self" else u for u in exec_users}
                images = [a for a in images if ("all" in users and a.is_public)
                          or any(u != "all" and explicitly_shared(a, u) for u in users)]
            if owners:
                wanted = {account if o == "self" else o for o in owners}
                images = [a for a in images if a.owner_id in wanted or a.owner_alias in wanted]
            if filters:
                images = generic_filter(filters, images)
            return images
        return patched

    def run_instances(original):
        def patched(backend, image_id, *args, **kwargs):
            # moto launches any id; EC2 answers InvalidAMIID.NotFound for an image of another account that does
            # not let this one launch it (ids no account holds stay moto's: they boot the base image).
            if image_id and image_id not in backend.amis:
                other = find_image(backend.region_name, image_id)
                if other is not None and not can_launch(other, backend.account_id):
                    raise InvalidAMIIdError([image_id])
            return original(backend, image_id, *args, **kwargs)
        return patched

    replace(EC2Backend, "describe_images", describe_images)
    replace(EC2Backend, "run_instances", run_instances)
