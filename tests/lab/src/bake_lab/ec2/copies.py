"""CopyImage as EC2 documents it (moto copies only the name and description): ClientToken idempotence,
CopyImageTags and TagSpecifications, encryption with a KMS key of the destination Region (authenticated
asynchronously: a key that is not usable fails the copy), and the lab's per-region copy latency and forced
failures (lab.py runs the copy)."""
import threading

from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ec2.responses.amis import AmisResponse

from .. import kms
from ..lab import Lab

# EC2's StateReason for a copy whose KMS key is missing, disabled or not usable by the copying account (the
# code EC2 uses for instances whose volumes meet such a key, "Client.InvalidKMSKey.InvalidState").
KMS_INVALID = ("Client.InvalidKMSKey.InvalidState", "The KMS key provided is in an incorrect state")

_lock = threading.Lock()
_tokens: dict[tuple[str, str, str], str] = {}  # (account, region, ClientToken) -> ImageId


def clear() -> None:
    with _lock:
        _tokens.clear()


def _true(value) -> bool:
    return str(value).lower() == "true"


def install(lab: Lab) -> None:
    original = AmisResponse.copy_image

    def copy_image(self):
        account, region = self.current_account, self.region
        token = self._get_param("ClientToken")
        if token:
            with _lock:
                known = _tokens.get((account, region, token))
            if known is not None:  # the same request again: the same image, nothing new is made
                return ActionResult({"ImageId": known})
        source_id, source_region = self._get_param("SourceImageId"), self._get_param("SourceRegion")
        source = ec2_backends[account][source_region].describe_images(ami_ids=[source_id])[0]
        result = original(self)  # moto makes the image (names refused, consistency window) in this region
        ami = self.ec2_backend.amis[result.result["ImageId"]]
        if token:
            with _lock:
                _tokens[(account, region, token)] = ami.id
        if _true(self._get_param("CopyImageTags")):  # user-defined tags only; aws: tags are never copied
            user = {t["key"]: t["value"] for t in source.get_tags() if not t["key"].startswith("aws:")}
            if user:
                self.ec2_backend.create_tags([ami.id], user)
        # TagSpecifications are applied after CopyImageTags, so their values win for the same key.
        specs = self._parse_tag_specification()
        if specs.get("image"):
            self.ec2_backend.create_tags([ami.id], specs["image"])
        if specs.get("snapshot"):
            self.ec2_backend.create_tags([ami.ebs_snapshot.id], specs["snapshot"])
        failure = None
        source_snapshot = getattr(source, "ebs_snapshot", None)
        encrypted = _true(self._get_param("Encrypted")) or bool(getattr(source_snapshot, "encrypted", False))
        if encrypted:
            ref = self._get_param("KmsKeyId") or (
                source_snapshot.kms_key_id if getattr(source_snapshot, "encrypted", False) and source_region == region
                else "alias/aws/ebs")
            key = kms.find_key(account, region, ref)
            ami.ebs_snapshot.encrypted = True
            ami.ebs_snapshot.kms_key_id = key.arn if key is not None else ref
            if key is None or key.region != region or not kms.usable_by_account(key, account):
                failure = KMS_INVALID
        lab.copy_image(source_region, source_id, region, ami, failure)
        return result

    AmisResponse.copy_image = copy_image
