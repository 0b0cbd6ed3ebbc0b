"""Every change the lab makes to moto, installed in one order: each service's behaviour (ec2, ssm), the request
rules AWS enforces (limits), eventual consistency, then Auto Scaling, load balancing, instance refresh, CloudWatch
alarms and target tracking.

A later patch of the same method wraps an earlier one, so the order is part of the behaviour: the rules refuse
a request before anything acts, and the consistency windows apply before (and on top of) the lab's own patches."""
from . import asg, consistency, elb, kms, refresh, s3, tracking
from .cloudwatch import alarms
from .ec2 import consistency as ec2_consistency
from .ec2 import limits as ec2_limits
from .ec2 import patches as ec2_patches
from .ssm import consistency as ssm_consistency
from .ssm import limits as ssm_limits
from .ssm import patches as ssm_patches


def install(lab) -> None:
    """Patch moto for `lab`, whose `scaling` (scaling.py) is already made."""
    ec2_patches.install(lab)
    ssm_patches.install(lab)
    kms.install()
    s3.ConditionalWrites(lab).install()

    ec2_limits.install()
    elb.install_limits()
    asg.install_limits()
    ssm_limits.install()

    c = consistency.install(lab)
    ec2_consistency.install(lab, c)
    ssm_consistency.install(c)
    elb.install_consistency(c)

    asg.install(lab.scaling.groups)
    elb.install(lab.scaling.balancers)
    refresh.install(lab.scaling.refreshes)
    alarms.install(lab.scaling.cloudwatch.alarms)
    tracking.install(lab.scaling.tracking)
