"""EC2 as moto lacks it: the patches that hand instances and images to the lab (run, start, stop, reboot,
terminate, CreateImage and CopyImage, deprecation, deregistration), each instance's public address from the
lab's range; security groups, NAT gateways and interface endpoints install theirs from here."""
import copy
import datetime
import threading

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import EC2Backend, elastic_network_interfaces
from moto.ec2.models.amis import Ami
from moto.ec2.models.instances import Instance
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.launch_templates import LaunchTemplates

from .. import kms
from ..lab import Lab
from ..limits import LimitError
from ..patching import replace, wrap
from . import copies, endpoints, natgw, secgroups, sharing

# The StateReason EC2 gives an instance whose encrypted volume's KMS key the launching account may not use.
KMS_LAUNCH_REFUSED = ("Client.InternalError", "Client error on launch")

_request = threading.local()  # request parameters moto's backend signatures drop (CreateImage's NoReboot)


def _terminate_once(original):
    """TerminateInstances is idempotent: terminating an instance that is shutting down or terminated succeeds
    and changes nothing (TerminateInstances: "if you terminate an instance more than once, each call
    succeeds"); moto would delete its network interfaces again and answer InvalidNetworkInterfaceID.NotFound."""
    def patched(instance):
        if instance._state.name in ("shutting-down", "terminated"):
            return copy.copy(instance._state)
        return original(instance)
    return patched


# DescribeLaunchTemplates: MaxResults "can be between 1 and 200"; NextToken asks for the next page.
LAUNCH_TEMPLATES_PAGE_MAX = 200


def _page_launch_templates(original):
    """DescribeLaunchTemplates answers a page of MaxResults templates and a NextToken while more remain, and every
    template without MaxResults (moto cuts the answer at 15 with no token, so a caller never sees the rest)."""
    def patched(self):
        limit = self._get_param("MaxResults")
        token = self._get_param("NextToken")
        if limit is not None and not 1 <= int(limit) <= LAUNCH_TEMPLATES_PAGE_MAX:
            raise LimitError("InvalidParameterValue",
                             f"Value ( {limit} ) for parameter maxResults is invalid. Expecting a value between 1 "
                             f"and {LAUNCH_TEMPLATES_PAGE_MAX}.")
        if token is not None and not str(token).isdigit():
            # Error codes for the Amazon EC2 API: InvalidPaginationToken, "The specified pagination token is not valid".
            raise LimitError("InvalidPaginationToken", "The specified pagination token is not valid or is expired.")
        moto_int_param = type(self)._get_int_param

        def every_template(name, if_none=None):  # moto's own cut at MaxResults never applies
            return 10**9 if name == "MaxResults" else moto_int_param(self, name, if_none)

        self._get_int_param = every_template
        try:
            answer = original(self).result
        finally:
            del self._get_int_param
        start = int(token or 0)
        end = len(answer["LaunchTemplates"]) if limit is None else start + int(limit)
        page = answer["LaunchTemplates"][start:end]
        result = {"LaunchTemplates": page}
        if end < len(answer["LaunchTemplates"]):
            result["NextToken"] = str(end)
        return ActionResult(result)
    return patched


def take_root_volume(backend, ami, instance_id: str) -> None:
    """CreateImage snapshots the instance's own root volume: the snapshot has that volume's size and type, and an
    encrypted volume gives a snapshot encrypted with the same KMS key (moto snapshots a fresh unencrypted 15 GiB
    volume instead)."""
    instance = backend.get_instance(instance_id)
    # moto attaches a default root volume at /dev/sda1 whatever the image's root device name.
    root = instance.block_device_mapping.get(instance.root_device_name) or instance.block_device_mapping.get(
        "/dev/sda1")
    if root is None:
        return
    volume = backend.get_volume(root.volume_id)
    snapshot = ami.ebs_snapshot
    snapshot.volume = volume
    snapshot.lab_delete_on_termination = bool(root.delete_on_termination)
    snapshot.encrypted = bool(volume.encrypted)
    # An encrypted volume made without a key id used the account's default EBS key, AWS managed aws/ebs; the
    # snapshot records the key's ARN.
    ref = volume.kms_key_id or ("alias/aws/ebs" if volume.encrypted else None)
    key = kms.find_key(backend.account_id, backend.region_name, ref)
    snapshot.kms_key_id = key.arn if key is not None else ref


def install(lab: Lab) -> None:
    elastic_network_interfaces.random_public_ip = lab.net.allocate_public_ip

    def after_run(backend, reservation, *a, **kw):
        for instance in reservation.instances:
            image = sharing.find_image(backend.region_name, instance.image_id)
            key = kms.snapshot_key(getattr(image, "ebs_snapshot", None), backend.region_name)
            encrypted = getattr(getattr(image, "ebs_snapshot", None), "encrypted", False)
            if encrypted and (key is None or not kms.usable_by_account(key, backend.account_id)):
                # EC2 accepts the launch; the volume cannot be made with a key the account may not use, so the
                # instance goes pending -> terminated ("Client.InternalError: Client error on launch").
                lab.refuse_launch(instance, backend.region_name, *KMS_LAUNCH_REFUSED)
            else:
                lab.launch(instance, backend.region_name)

    def after_start(backend, pairs, *a, **kw):
        for instance, previous in pairs:
            if previous.name == "stopped":
                lab.start(instance.id)
            elif previous.name != "running":
                instance._state.name, instance._state.code = previous.name, previous.code

    def after_stop(backend, pairs, *a, **kw):
        for instance, previous in pairs:
            if previous.name in ("pending", "running"):
                lab.stop(instance.id)
            else:
                instance._state.name, instance._state.code = previous.name, previous.code

    def after_terminate(backend, pairs, *a, **kw):
        for instance, previous in pairs:
            if previous.name not in ("shutting-down", "terminated"):
                lab.terminate(instance.id)
            else:
                instance._state.name, instance._state.code = previous.name, previous.code

    def after_reboot(backend, instances, *a, **kw):
        for instance in instances:
            lab.reboot(instance.id)

    wrap(EC2Backend, "run_instances", after_run)
    wrap(EC2Backend, "start_instances", after_start)
    wrap(EC2Backend, "stop_instances", after_stop)
    wrap(EC2Backend, "terminate_instances", after_terminate)
    replace(Instance, "terminate", _terminate_once)
    wrap(EC2Backend, "reboot_instances", after_reboot)

    def refuse_taken_name(backend, name) -> None:
        """AMI names are unique per account and Region (CreateImage, CopyImage and RegisterImage, Name): a taken
        name answers InvalidAMIName.Duplicate ("Error codes for the Amazon EC2 API"); a deregistered AMI frees it."""
        taken = next((a.id for a in backend.amis.values()
                      if name is not None and a.name == name and a.owner_id == backend.account_id
                      and getattr(a, "state", "available") != "deregistered"), None)
        if taken is not None:
            raise EC2ClientError("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {taken}")

    original_copy = EC2Backend.copy_image
    original_register = EC2Backend.register_image

    def copy_image(backend, source_image_id, source_region, name=None, description=None):
        refuse_taken_name(backend, name)
        return original_copy(backend, source_image_id, source_region, name, description)

    def register_image(backend, name=None, description=None):
        refuse_taken_name(backend, name)
        return original_register(backend, name, description)

    EC2Backend.copy_image = copy_image
    EC2Backend.register_image = register_image

    original_create_image = EC2Backend.create_image

    def create_image(backend, instance_id, name, description, tag_specifications):
        if instance_id not in lab.instances:
            raise EC2ClientError("IncorrectInstanceState",
                                   f"The instance '{instance_id}' is not in a state from which it can be imaged.")
        refuse_taken_name(backend, name)
        snapshot_tags = [t for spec in tag_specifications if spec.get("ResourceType") == "snapshot"
                         for t in spec.get("Tags", [])]
        others = [spec for spec in tag_specifications if spec.get("ResourceType") != "snapshot"]
        ami = original_create_image(backend, instance_id, name, description, others)
        take_root_volume(backend, ami, instance_id)
        for tag in snapshot_tags:
            ami.ebs_snapshot.add_tag(tag["Key"], tag["Value"])
        lab.create_image(ami, instance_id, backend.region_name, getattr(_request, "no_reboot", False))
        return ami

    EC2Backend.create_image = create_image

    def block_device_mappings(ami):
        # DescribeImages shows each mapping's snapshot with the size, type and encryption of the volume it was
        # taken from (moto answers a 15 GiB unencrypted "standard" volume for every image).
        snapshot = ami.ebs_snapshot
        volume = getattr(snapshot, "volume", None)
        return [{"DeviceName": ami.root_device_name,
                 "Ebs": {"SnapshotId": snapshot.id, "VolumeSize": getattr(volume, "size", 15),
                         "DeleteOnTermination": getattr(snapshot, "lab_delete_on_termination", False),
                         "VolumeType": getattr(volume, "volume_type", None) or "standard",
                         "Encrypted": bool(snapshot.encrypted)}}]

    Ami.block_device_mappings = property(block_device_mappings)

    response_create_image = AmisResponse.create_image

    def create_image_response(self):
        _request.no_reboot = str(self._get_param("NoReboot", False)).lower() == "true"
        return response_create_image(self)

    AmisResponse.create_image = create_image_response

    def enable_image_deprecation(self):
        # EC2 keeps whole minutes (seconds round to the nearest) and answers it as DeprecationTime.
        ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
        at = self._get_param("DeprecateAt")  # moto parses the timestamp
        if isinstance(at, str):
            at = datetime.datetime.fromisoformat(at.replace("Z", "+00:00"))
        if at.tzinfo is None:
            at = at.replace(tzinfo=datetime.UTC)
        at = (at + datetime.timedelta(seconds=30)).replace(second=0, microsecond=0)
        ami.deprecation_time = at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return ActionResult({"Return": True})

    def disable_image_deprecation(self):
        ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
        ami.deprecation_time = None
        return ActionResult({"Return": True})

    replace(LaunchTemplates, "describe_launch_templates", _page_launch_templates)
    AmisResponse.enable_image_deprecation = enable_image_deprecation
    AmisResponse.disable_image_deprecation = disable_image_deprecation

    def after_deregister(backend, result, ami_id, *a, **kw):
        lab.layers.forget_image(backend.region_name, ami_id)

    def after_delete_snapshot(backend, snapshot, snapshot_id, *a, **kw):
        lab.snapshot_deleted(backend.region_name, snapshot_id)

    secgroups.install(lab)
    natgw.install(lab)
    endpoints.install(lab)
    wrap(EC2Backend, "deregister_image", after_deregister)
    wrap(EC2Backend, "delete_snapshot", after_delete_snapshot)

    copies.install(lab)
    sharing.install()
