//! The IAM policy bake needs, as data: every AWS operation bake calls and the IAM actions it needs
//! (with those it implies), each command's grants narrowed by resource and tag condition where
//! AWS's Service Authorization Reference allows it, and the policy document rendered from them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// A command with a policy of its own (`bake iam-policy CMD`); `All` is their union.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Ami,
    Rollout,
    Pipeline,
    Prune,
    Gc,
    All,
}

impl Command {
    /// The commands with policies of their own, without `All`.
    pub const EACH: [Command; 5] = [
        Command::Ami,
        Command::Rollout,
        Command::Pipeline,
        Command::Prune,
        Command::Gc,
    ];
}

/// When a run calls what a grant allows. The policy holds them all (a run cannot know beforehand
/// whether it will fail); the lab test compares a successful run's calls with the `Always` ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// Every successful run of the command.
    Always,
    /// Only when a run fails or is interrupted and cleans up (an image that failed its test,
    /// a security group still referenced), or when there is something old to remove.
    Cleanup,
    /// Builders in a private subnet: the temporary NAT gateway and the SSM endpoints.
    Private,
    /// `[image.X.distribute]`: copies to other regions, sharing, KMS keys.
    Distribute,
    /// Where a stack is already there: a rollout or pipeline changing it, prune reading the
    /// launch templates' versions.
    Update,
    /// With `[store]`: the per-image lease and the bake records, in the store's bucket only.
    Store,
}

/// A condition on a grant: `(operator, key, values)`.
type Condition = (&'static str, &'static str, &'static [&'static str]);

/// Actions allowed together on a resource pattern, under a condition.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub actions: &'static [&'static str],
    /// The resource pattern; `{role}` stands for the role that may be passed.
    pub resource: &'static str,
    pub condition: Option<Condition>,
    pub when: When,
}

const fn grant(actions: &'static [&'static str], when: When) -> Grant {
    Grant {
        actions,
        resource: "*",
        condition: None,
        when,
    }
}

/// ec2:CreateTags only as part of the create calls `actions` (their TagSpecifications).
const fn tag_on_create(actions: &'static [&'static str]) -> Grant {
    Grant {
        actions: &["ec2:CreateTags"],
        resource: "*",
        condition: Some(("StringEquals", "ec2:CreateAction", actions)),
        when: When::Always,
    }
}

/// What every call that starts from an image needs: the base image and the AMIs bake made.
const READ_IMAGES: Grant = grant(&["ec2:DescribeImages", "ssm:GetParameter"], When::Always);

/// `bake ami`: the builder from launch to image, and its cleanup.
const AMI: &[Grant] = &[
    READ_IMAGES,
    grant(
        &[
            "ec2:DescribeSubnets",
            "ec2:DescribeRouteTables",
            "iam:GetInstanceProfile",
            "ec2:CreateSecurityGroup",
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:RunInstances",
            "ec2:DescribeInstances",
            "ssm:DescribeInstanceInformation",
            "ssm:SendCommand",
            "ssm:GetCommandInvocation",
            "ec2:CreateImage",
            "ec2:DeleteSecurityGroup",
        ],
        When::Always,
    ),
    // Tagging on create ("Grant permission to tag Amazon EC2 resources during creation"): the
    // builder, its security group, the image and its snapshots; a private builder's Elastic IP,
    // NAT gateway and endpoints; a distributed image's copies; nothing else.
    tag_on_create(&[
        "RunInstances",
        "CreateSecurityGroup",
        "CreateImage",
        "AllocateAddress",
        "CreateNatGateway",
        "CreateVpcEndpoint",
        "CopyImage",
    ]),
    // Only the builders bake tagged: a run's own, or a killed run's (gc).
    Grant {
        actions: &["ec2:TerminateInstances"],
        resource: "arn:aws:ec2:*:*:instance/*",
        condition: Some(("Null", "aws:ResourceTag/bake:run-id", &["false"])),
        when: When::Always,
    },
    PASS_ROLE,
    grant(
        &[
            "ec2:DeregisterImage",
            "ec2:DeleteSnapshot",
            "ec2:DescribeSnapshots",
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeSecurityGroupRules",
            "ec2:RevokeSecurityGroupIngress",
            "ec2:EnableImageDeprecation",
        ],
        When::Cleanup,
    ),
    grant(
        &[
            "ec2:DescribeAddresses",
            "ec2:AllocateAddress",
            "ec2:ReleaseAddress",
            "ec2:DescribeNatGateways",
            "ec2:CreateNatGateway",
            "ec2:DeleteNatGateway",
            "ec2:CreateRoute",
            "ec2:DeleteRoute",
            "ec2:DescribeVpcEndpoints",
            "ec2:CreateVpcEndpoint",
            "ec2:DeleteVpcEndpoints",
        ],
        When::Private,
    ),
    // The shared NAT gateway and endpoints carry a tag per bake using them (ami/share.rs).
    Grant {
        actions: &["ec2:CreateTags", "ec2:DeleteTags"],
        resource: "arn:aws:ec2:*:*:natgateway/*",
        condition: None,
        when: When::Private,
    },
    Grant {
        actions: &["ec2:CreateTags", "ec2:DeleteTags"],
        resource: "arn:aws:ec2:*:*:vpc-endpoint/*",
        condition: None,
        when: When::Private,
    },
    grant(
        &[
            "ec2:CopyImage",
            "ec2:ModifyImageAttribute",
            "ec2:ModifySnapshotAttribute",
            "kms:DescribeKey",
        ],
        When::Distribute,
    ),
];

/// With `[store]` (`bake ami`, `bake pipeline`): the lease (PutObject with If-None-Match or
/// If-Match, GetObject of the holder, which S3 also needs for a conditional write, a conditional
/// DeleteObject to give it back) and the records (PutObject; GetObject for `bake diff`), under
/// the store's prefix only; ListBucket on the bucket (HeadBucket in `bake validate`, and so that a
/// missing key answers NoSuchKey rather than AccessDenied).
const STORE: &[Grant] = &[
    Grant {
        actions: &["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
        resource: "arn:aws:s3:::{bucket}/{prefix}*",
        condition: None,
        when: When::Store,
    },
    Grant {
        actions: &["s3:ListBucket"],
        resource: "arn:aws:s3:::{bucket}",
        condition: None,
        when: When::Store,
    },
];

/// `iam:PassRole` for the instance profiles' roles, to EC2 only.
const PASS_ROLE: Grant = Grant {
    actions: &["iam:PassRole"],
    resource: "arn:aws:iam::*:role/{role}",
    condition: Some((
        "StringEquals",
        "iam:PassedToService",
        &["ec2.amazonaws.com"],
    )),
    when: When::Always,
};

/// `bake rollout`: the stack (ALB, target group, launch template, group, alarms) and the refresh.
const ROLLOUT: &[Grant] = &[
    grant(&["ec2:DescribeImages"], When::Always),
    // Preflight: the AMI's snapshot keys (the Auto Scaling role must be able to use a customer
    // managed one); a denied read of a key's grants or policy is not judged, only said.
    grant(&["ec2:DescribeSnapshots", "kms:DescribeKey"], When::Always),
    grant(&["kms:ListGrants", "kms:GetKeyPolicy"], When::Distribute),
    grant(
        &[
            "ec2:DescribeSubnets",
            "ec2:DescribeRouteTables",
            "ec2:DescribeVpcs",
            "ec2:DescribeSecurityGroups",
            "ec2:CreateSecurityGroup",
            "ec2:AuthorizeSecurityGroupIngress",
            "iam:GetInstanceProfile",
            "ec2:DescribeLaunchTemplates",
            "ec2:CreateLaunchTemplate",
            "elasticloadbalancing:DescribeLoadBalancers",
            "elasticloadbalancing:CreateLoadBalancer",
            "elasticloadbalancing:DescribeTargetGroups",
            "elasticloadbalancing:CreateTargetGroup",
            "elasticloadbalancing:ModifyTargetGroupAttributes",
            "elasticloadbalancing:DescribeListeners",
            "elasticloadbalancing:CreateListener",
            "elasticloadbalancing:DescribeTargetHealth",
            "elasticloadbalancing:AddTags",
            "autoscaling:DescribeAutoScalingGroups",
            "autoscaling:CreateAutoScalingGroup",
            "autoscaling:CreateOrUpdateTags",
            "autoscaling:DeleteTags",
            "autoscaling:DescribeScalingActivities",
            "autoscaling:DescribePolicies",
            "autoscaling:EnableMetricsCollection",
            "cloudwatch:DescribeAlarms",
            "cloudwatch:PutMetricAlarm",
            "cloudwatch:TagResource",
            // The alarms' bake:run-id comes off once the stack is whole.
            "cloudwatch:UntagResource",
            "elasticloadbalancing:RemoveTags",
            "ec2:DeleteTags",
        ],
        When::Always,
    ),
    tag_on_create(&[
        "CreateSecurityGroup",
        "CreateLaunchTemplate",
        "CreateLaunchTemplateVersion",
        "RunInstances",
    ]),
    // Creating or updating a group with a launch template checks that the caller may launch what
    // it describes ("Control Amazon EC2 launch template usage in Auto Scaling groups"):
    // ec2:RunInstances, iam:PassRole for its profile's role, ec2:CreateTags for its instance tags.
    grant(&["ec2:RunInstances"], When::Always),
    PASS_ROLE,
    grant(
        &[
            "ec2:CreateLaunchTemplateVersion",
            "autoscaling:UpdateAutoScalingGroup",
            "autoscaling:StartInstanceRefresh",
            "autoscaling:DescribeInstanceRefreshes",
            "autoscaling:PutScalingPolicy",
            "ec2:DescribeLaunchTemplateVersions",
            "elasticloadbalancing:DescribeTags",
            "cloudwatch:ListTagsForResource",
            "autoscaling:AttachLoadBalancerTargetGroups",
            "elasticloadbalancing:ModifyTargetGroup",
            "ssm:GetParameter",
        ],
        When::Update,
    ),
    grant(
        &[
            "autoscaling:CancelInstanceRefresh",
            "autoscaling:RollbackInstanceRefresh",
            "autoscaling:DeleteAutoScalingGroup",
            "elasticloadbalancing:DeleteLoadBalancer",
            "elasticloadbalancing:DeleteTargetGroup",
            "ec2:DeleteLaunchTemplate",
            "ec2:DeleteSecurityGroup",
            "ec2:DescribeSecurityGroupRules",
            "ec2:RevokeSecurityGroupIngress",
            "cloudwatch:DeleteAlarms",
        ],
        When::Cleanup,
    ),
];

/// Publishing to Parameter Store (the pipeline): the parameter, its versions and labels.
const PUBLISH: &[Grant] = &[
    grant(
        &[
            "ssm:GetParameter",
            "ssm:PutParameter",
            "ssm:LabelParameterVersion",
        ],
        When::Always,
    ),
    // Read only to explain a label that would not stick.
    grant(&["ssm:GetParameterHistory"], When::Cleanup),
];

/// `bake prune`: what is in use, then old AMIs and their snapshots out.
const PRUNE: &[Grant] = &[
    grant(&["ec2:DescribeLaunchTemplateVersions"], When::Update),
    grant(
        &[
            "ec2:DescribeImages",
            "ec2:DescribeInstances",
            "ec2:DescribeLaunchTemplates",
            "autoscaling:DescribeAutoScalingGroups",
            "ssm:GetParametersByPath",
            // The image's published parameter (`--publish-prefix`), in every region it is in.
            "ssm:GetParameter",
        ],
        When::Always,
    ),
    grant(
        &[
            "ec2:DeregisterImage",
            "ec2:DeleteSnapshot",
            "ec2:DescribeRegions",
        ],
        When::Cleanup,
    ),
];

/// `bake gc`: what killed runs left, found by their `bake:run-id` tag.
const GC: &[Grant] = &[
    grant(
        &[
            "ec2:DescribeInstances",
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeImages",
            "ec2:DescribeSnapshots",
            "ec2:DescribeLaunchTemplates",
            "ec2:DescribeNatGateways",
            "ec2:DescribeVpcEndpoints",
            "ec2:DescribeAddresses",
            "elasticloadbalancing:DescribeLoadBalancers",
            "elasticloadbalancing:DescribeTargetGroups",
            "autoscaling:DescribeAutoScalingGroups",
            "cloudwatch:DescribeAlarms",
        ],
        When::Always,
    ),
    // The tags of load balancers and alarms there are, to find a stack cut short.
    grant(
        &[
            "elasticloadbalancing:DescribeTags",
            "cloudwatch:ListTagsForResource",
        ],
        When::Cleanup,
    ),
    Grant {
        actions: &["ec2:TerminateInstances"],
        resource: "arn:aws:ec2:*:*:instance/*",
        condition: Some(("Null", "aws:ResourceTag/bake:run-id", &["false"])),
        when: When::Cleanup,
    },
    grant(
        &[
            "ec2:DeleteSecurityGroup",
            "ec2:DescribeSecurityGroupRules",
            "ec2:RevokeSecurityGroupIngress",
            "ec2:DeregisterImage",
            "ec2:DeleteSnapshot",
            "ec2:DeleteLaunchTemplate",
            "ec2:DeleteNatGateway",
            "ec2:ReleaseAddress",
            "ec2:DeleteVpcEndpoints",
            "ec2:DeleteRoute",
            "ec2:DeleteTags",
            "elasticloadbalancing:DeleteLoadBalancer",
            "elasticloadbalancing:DeleteTargetGroup",
            "elasticloadbalancing:RemoveTags",
            "autoscaling:DeleteAutoScalingGroup",
            "autoscaling:DeleteTags",
            "cloudwatch:DeleteAlarms",
            "cloudwatch:UntagResource",
        ],
        When::Cleanup,
    ),
];

/// The grants of one command (`All`: every command's).
pub fn grants(command: Command) -> Vec<Grant> {
    match command {
        Command::Ami => [AMI, STORE].concat(),
        Command::Rollout => ROLLOUT.to_vec(),
        Command::Prune => PRUNE.to_vec(),
        Command::Gc => GC.to_vec(),
        Command::Pipeline => [AMI, STORE, ROLLOUT, PUBLISH, PRUNE].concat(),
        Command::All => [AMI, STORE, ROLLOUT, PUBLISH, PRUNE, GC].concat(),
    }
}

/// What a policy is made for: the roles bake may pass, and (with `[store]`) the bucket and
/// prefix of the store.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Role names `iam:PassRole` is narrowed to; empty: any role (still only to EC2).
    pub roles: BTreeSet<String>,
    /// The config's `[store]` bucket and prefix: its S3 statements are narrowed to
    /// `arn:aws:s3:::BUCKET/PREFIX*`; without a store the policy has none.
    pub store: Option<(String, String)>,
}

/// Every action a command may need, by when (for the lab test and `-o json`).
pub fn actions(command: Command, when: Option<When>) -> BTreeSet<&'static str> {
    grants(command)
        .iter()
        .filter(|g| when.is_none_or(|w| g.when == w))
        .flat_map(|g| g.actions.iter().copied())
        .collect()
}

/// The policy document (IAM JSON, Version 2012-10-17): one statement per resource pattern and
/// condition, its actions sorted, each in it once.
pub fn document(command: Command, scope: &Scope) -> Value {
    let mut merged: BTreeMap<(String, String), BTreeSet<&str>> = BTreeMap::new();
    for g in grants(command) {
        if g.when == When::Store {
            let Some((bucket, prefix)) = &scope.store else {
                continue;
            };
            let resource = g
                .resource
                .replace("{bucket}", bucket)
                .replace("{prefix}", prefix);
            merged
                .entry((
                    serde_json::to_string(&[resource]).unwrap_or_default(),
                    String::new(),
                ))
                .or_default()
                .extend(g.actions);
            continue;
        }
        let resources: Vec<String> = if g.resource.contains("{role}") {
            if scope.roles.is_empty() {
                vec![g.resource.replace("{role}", "*")]
            } else {
                scope
                    .roles
                    .iter()
                    .map(|r| g.resource.replace("{role}", r))
                    .collect()
            }
        } else {
            vec![g.resource.to_owned()]
        };
        let condition = g
            .condition
            .map(|(op, key, values)| json!({ op: { key: values } }).to_string())
            .unwrap_or_default();
        let key = (
            serde_json::to_string(&resources).unwrap_or_default(),
            condition,
        );
        merged.entry(key).or_default().extend(g.actions);
    }
    // An action allowed on "*" without condition needs no narrower statement of its own.
    let everywhere = merged
        .get(&("[\"*\"]".to_owned(), String::new()))
        .cloned()
        .unwrap_or_default();
    let mut statements = Vec::new();
    for ((resources, condition), actions) in merged {
        let narrow = resources != "[\"*\"]" || !condition.is_empty();
        let actions: Vec<&str> = actions
            .into_iter()
            .filter(|a| !narrow || !everywhere.contains(a))
            .collect();
        if actions.is_empty() {
            continue;
        }
        let resources: Vec<String> = serde_json::from_str(&resources).unwrap_or_default();
        let mut statement = json!({
            "Sid": sid(&actions, narrow, statements.len()),
            "Effect": "Allow",
            "Action": actions,
            "Resource": if resources.len() == 1 { json!(resources[0]) } else { json!(resources) },
        });
        if !condition.is_empty() {
            statement["Condition"] = serde_json::from_str(&condition).unwrap_or_default();
        }
        statements.push(statement);
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// A statement id (alphanumeric, as IAM allows): what it is about.
fn sid(actions: &[&str], narrow: bool, n: usize) -> String {
    let first = actions[0].split(':').nth(1).unwrap_or("Any");
    if narrow {
        format!("Bake{first}{n}")
    } else {
        format!("BakeCalls{n}")
    }
}

/// Every AWS operation bake calls, by the IAM action named like it (`ec2:RunInstances` for the
/// EC2 client's `run_instances`), then the actions it implies (tagging on create, passing a
/// role). [`UNLIKE_NAMED`] holds the operations whose action has another name.
const OPERATIONS: &[&[&str]] = &[
    &["autoscaling:AttachLoadBalancerTargetGroups"],
    &["autoscaling:CancelInstanceRefresh"],
    // With Tags: autoscaling:CreateOrUpdateTags ("Tag Auto Scaling groups and instances"); with a
    // launch template, what launching from it needs (ec2:RunInstances, iam:PassRole, CreateTags).
    &[
        "autoscaling:CreateAutoScalingGroup",
        "autoscaling:CreateOrUpdateTags",
        "iam:PassRole",
    ],
    &["autoscaling:CreateOrUpdateTags"],
    &["autoscaling:DeleteAutoScalingGroup"],
    &["autoscaling:DeleteTags"],
    &["autoscaling:DescribeAutoScalingGroups"],
    &["autoscaling:DescribeInstanceRefreshes"],
    &["autoscaling:DescribePolicies"],
    &["autoscaling:DescribeScalingActivities"],
    &["autoscaling:EnableMetricsCollection"],
    &["autoscaling:PutScalingPolicy"],
    &["autoscaling:RollbackInstanceRefresh"],
    &["autoscaling:StartInstanceRefresh"],
    &[
        "autoscaling:UpdateAutoScalingGroup",
        "ec2:RunInstances",
        "iam:PassRole",
        "ec2:CreateTags",
    ],
    &["cloudwatch:DeleteAlarms"],
    &["cloudwatch:DescribeAlarms"],
    &["cloudwatch:ListTagsForResource"],
    // With Tags: cloudwatch:TagResource.
    &["cloudwatch:PutMetricAlarm", "cloudwatch:TagResource"],
    &["cloudwatch:UntagResource"],
    // EC2 calls with TagSpecifications also need ec2:CreateTags with ec2:CreateAction.
    &["ec2:AllocateAddress", "ec2:CreateTags"],
    &["ec2:AuthorizeSecurityGroupIngress"],
    &["ec2:CopyImage", "ec2:CreateTags"],
    &["ec2:CreateImage", "ec2:CreateTags"],
    &["ec2:CreateLaunchTemplate", "ec2:CreateTags"],
    &["ec2:CreateLaunchTemplateVersion", "ec2:CreateTags"],
    &["ec2:CreateNatGateway", "ec2:CreateTags"],
    &["ec2:CreateRoute"],
    &["ec2:CreateSecurityGroup", "ec2:CreateTags"],
    &["ec2:CreateTags"],
    &["ec2:CreateVpcEndpoint", "ec2:CreateTags"],
    &["ec2:DeleteLaunchTemplate"],
    &["ec2:DeleteNatGateway"],
    &["ec2:DeleteRoute"],
    &["ec2:DeleteSecurityGroup"],
    &["ec2:DeleteSnapshot"],
    &["ec2:DeleteTags"],
    &["ec2:DeleteVpcEndpoints"],
    &["ec2:DeregisterImage"],
    &["ec2:DescribeAddresses"],
    &["ec2:DescribeImages"],
    &["ec2:DescribeInstances"],
    &["ec2:DescribeLaunchTemplateVersions"],
    &["ec2:DescribeLaunchTemplates"],
    &["ec2:DescribeNatGateways"],
    &["ec2:DescribeRegions"],
    &["ec2:DescribeRouteTables"],
    &["ec2:DescribeSecurityGroupRules"],
    &["ec2:DescribeSecurityGroups"],
    &["ec2:DescribeSnapshots"],
    &["ec2:DescribeSubnets"],
    &["ec2:DescribeVpcEndpoints"],
    &["ec2:DescribeVpcs"],
    &["ec2:EnableImageDeprecation"],
    &["ec2:ModifyImageAttribute"],
    &["ec2:ModifySnapshotAttribute"],
    &["ec2:ReleaseAddress"],
    &["ec2:RevokeSecurityGroupIngress"],
    // With an instance profile: iam:PassRole on its role ("Using an IAM role to grant
    // permissions to applications running on Amazon EC2 instances").
    &["ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"],
    &["ec2:TerminateInstances"],
    // With Tags: elasticloadbalancing:AddTags.
    &["elasticloadbalancing:CreateListener"],
    &[
        "elasticloadbalancing:CreateLoadBalancer",
        "elasticloadbalancing:AddTags",
    ],
    &[
        "elasticloadbalancing:CreateTargetGroup",
        "elasticloadbalancing:AddTags",
    ],
    &["elasticloadbalancing:DeleteLoadBalancer"],
    &["elasticloadbalancing:DeleteTargetGroup"],
    &["elasticloadbalancing:DescribeListeners"],
    &["elasticloadbalancing:DescribeLoadBalancers"],
    &["elasticloadbalancing:DescribeTags"],
    &["elasticloadbalancing:DescribeTargetGroups"],
    &["elasticloadbalancing:DescribeTargetHealth"],
    &["elasticloadbalancing:ModifyTargetGroup"],
    &["elasticloadbalancing:ModifyTargetGroupAttributes"],
    &["elasticloadbalancing:RemoveTags"],
    &["iam:GetInstanceProfile"],
    &["kms:DescribeKey"],
    &["kms:GetKeyPolicy"],
    &["kms:ListGrants"],
    &["s3:DeleteObject"],
    &["s3:GetObject"],
    &["s3:PutObject"],
    &["ssm:DescribeInstanceInformation"],
    &["ssm:GetCommandInvocation"],
    &["ssm:GetParameter"],
    &["ssm:GetParameterHistory"],
    &["ssm:GetParametersByPath"],
    &["ssm:LabelParameterVersion"],
    // bake gives the parameter no Tags (with them, ssm:AddTagsToResource would be needed too).
    &["ssm:PutParameter"],
    &["ssm:SendCommand"],
];

/// The operations whose IAM action is not named like them: `(client, operation, actions)`.
const UNLIKE_NAMED: &[(&str, &str, &[&str])] = &[
    // HeadBucket needs s3:ListBucket (the permissions of HeadBucket in the S3 API Reference).
    ("s3", "head_bucket", &["s3:ListBucket"]),
];

/// Every operation bake calls, `(client, operation, actions)` as the SDK names the client's field
/// and method (`("elb", "create_listener", ..)`), with the IAM actions it needs: its own first.
pub fn operations() -> impl Iterator<Item = (&'static str, String, &'static [&'static str])> {
    let named_like = OPERATIONS.iter().map(|&actions| {
        let (service, action) = actions[0].split_once(':').unwrap_or_default();
        let client = match service {
            "elasticloadbalancing" => "elb",
            other => other,
        };
        (client, snake_case(action), actions)
    });
    let unlike = UNLIKE_NAMED
        .iter()
        .map(|&(client, op, actions)| (client, op.to_owned(), actions));
    named_like.chain(unlike)
}

/// An IAM action's name as the SDK names its operation: `RunInstances` → `run_instances`.
fn snake_case(action: &str) -> String {
    let mut snake = String::with_capacity(action.len() + 8);
    for (i, c) in action.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    snake
}

/// The IAM actions an SDK operation needs, from its error type's name
/// (`aws_sdk_ec2::operation::run_instances::RunInstancesError`): the client's crate and the
/// operation's module. Empty for an operation bake does not know.
pub fn needed_by(error_type: &str) -> &'static [&'static str] {
    let mut parts = error_type.split("::");
    let (Some(krate), Some("operation"), Some(op)) = (parts.next(), parts.next(), parts.next())
    else {
        return &[];
    };
    let client = match krate.strip_prefix("aws_sdk_") {
        Some("elasticloadbalancingv2") => "elb",
        Some(other) => other,
        None => return &[],
    };
    operations()
        .find(|(c, o, _)| *c == client && o == op)
        .map_or(&[], |(_, _, actions)| actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(client, operation)` of every SDK call in src/: a client field (`.ec2`, `ssm_in(..)`)
    /// followed by a method.
    fn calls_in_src() -> BTreeSet<(String, String)> {
        const CLIENTS: &[&str] = &[
            "ec2",
            "ssm",
            "elb",
            "autoscaling",
            "cloudwatch",
            "iam",
            "kms",
            "s3",
        ];
        // Methods of a client that are no operation.
        const NOT_CALLS: &[&str] = &["clone", "config", "is_some", "x"];
        let mut found = BTreeSet::new();
        let mut files = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("iam.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.replace("ssm_in(region)", "ssm");
            let bytes = text.as_bytes();
            for client in CLIENTS {
                for (at, _) in text.match_indices(client) {
                    let before = at.checked_sub(1).map(|i| bytes[i]);
                    if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        continue;
                    }
                    let rest = text[at + client.len()..].trim_start();
                    let Some(rest) = rest.strip_prefix('.') else {
                        continue;
                    };
                    let rest = rest.trim_start();
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if !name.is_empty()
                        && rest[name.len()..].starts_with('(')
                        && !NOT_CALLS.contains(&name.as_str())
                    {
                        found.insert(((*client).to_owned(), name));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn every_operation_in_src_is_listed_and_every_listed_one_is_called() {
        let called = calls_in_src();
        assert!(called.len() > 50, "the scan finds the calls: {called:?}");
        let listed: BTreeSet<(String, String)> =
            operations().map(|(c, o, _)| (c.to_owned(), o)).collect();
        let unlisted: Vec<_> = called.difference(&listed).collect();
        assert!(
            unlisted.is_empty(),
            "calls in src/ without IAM actions in src/iam.rs: {unlisted:?}"
        );
        let stale: Vec<_> = listed.difference(&called).collect();
        assert!(
            stale.is_empty(),
            "listed in src/iam.rs but not called: {stale:?}"
        );
    }

    #[test]
    fn every_action_an_operation_needs_is_in_some_command() {
        let all = actions(Command::All, None);
        for (client, op, needed) in operations() {
            for action in needed {
                assert!(
                    all.contains(action),
                    "{client}.{op} needs {action}, in no command's policy"
                );
            }
        }
    }

    #[test]
    fn every_ec2_call_that_tags_on_create_is_a_create_action_tags_are_allowed_for() {
        let allowed: BTreeSet<&str> = grants(Command::All)
            .iter()
            .filter_map(|g| g.condition)
            .filter(|(_, key, _)| *key == "ec2:CreateAction")
            .flat_map(|(_, _, values)| values.iter().copied())
            .collect();
        for (client, op, actions) in operations() {
            if client != "ec2" || op == "create_tags" || !actions.contains(&"ec2:CreateTags") {
                continue;
            }
            let action = actions[0].trim_start_matches("ec2:");
            assert!(
                allowed.contains(action),
                "CreateTags on {action} is never allowed"
            );
        }
    }

    #[test]
    fn an_operation_is_found_by_its_error_type() {
        assert_eq!(
            needed_by("aws_sdk_ec2::operation::run_instances::RunInstancesError"),
            &["ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"]
        );
        assert_eq!(
            needed_by(
                "aws_sdk_elasticloadbalancingv2::operation::create_listener::CreateListenerError"
            ),
            &["elasticloadbalancing:CreateListener"]
        );
        assert!(needed_by("std::io::Error").is_empty());
    }

    #[test]
    fn terminate_is_narrowed_to_tagged_instances_and_pass_role_to_the_role_and_ec2() {
        let scope = Scope {
            roles: ["BakeBuilder".to_owned()].into(),
            store: None,
        };
        let doc = document(Command::Ami, &scope);
        assert_eq!(doc["Version"], "2012-10-17");
        let statements = doc["Statement"].as_array().unwrap();
        let with = |action: &str| {
            statements
                .iter()
                .filter(|s| s["Action"].as_array().unwrap().iter().any(|a| a == action))
                .collect::<Vec<_>>()
        };
        let terminate = with("ec2:TerminateInstances");
        assert_eq!(terminate.len(), 1, "{terminate:?}");
        assert_eq!(terminate[0]["Resource"], "arn:aws:ec2:*:*:instance/*");
        assert_eq!(
            terminate[0]["Condition"]["Null"]["aws:ResourceTag/bake:run-id"],
            json!(["false"])
        );
        let pass = with("iam:PassRole");
        assert_eq!(pass[0]["Resource"], "arn:aws:iam::*:role/BakeBuilder");
        assert_eq!(
            pass[0]["Condition"]["StringEquals"]["iam:PassedToService"],
            json!(["ec2.amazonaws.com"])
        );
        // CreateTags on any resource only as part of a create call.
        for s in with("ec2:CreateTags") {
            if s["Resource"] == "*" {
                assert!(
                    s["Condition"]["StringEquals"]["ec2:CreateAction"].is_array(),
                    "{s}"
                );
            }
        }
        // Nothing is allowed twice, and no statement is empty.
        let mut seen = BTreeSet::new();
        for s in statements {
            for a in s["Action"].as_array().unwrap() {
                let key = (a.as_str().unwrap().to_owned(), s["Resource"].to_string());
                assert!(seen.insert(key), "{a} twice on one resource");
            }
        }
    }

    /// The recipes in contrib/ run `bake gc` under the pipeline's role before each pipeline: gc
    /// must need nothing that role's policy does not allow, on the same resources and conditions.
    #[test]
    fn gc_needs_nothing_the_pipelines_policy_does_not_allow() {
        let scope = Scope::default();
        let allowed = |command| -> BTreeSet<(String, String, String)> {
            document(command, &scope)["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| {
                    s["Action"].as_array().unwrap().iter().map(|a| {
                        (
                            a.as_str().unwrap().to_owned(),
                            s["Resource"].to_string(),
                            s["Condition"].to_string(),
                        )
                    })
                })
                .collect()
        };
        let pipeline = allowed(Command::Pipeline);
        let anywhere = |action: &str| {
            pipeline.contains(&(action.to_owned(), json!("*").to_string(), "null".to_owned()))
        };
        let missing: Vec<_> = allowed(Command::Gc)
            .into_iter()
            .filter(|g| !pipeline.contains(g) && !anywhere(&g.0))
            .collect();
        assert!(
            missing.is_empty(),
            "gc needs more than the pipeline's policy: {missing:?}"
        );
    }

    #[test]
    fn the_store_gets_s3_statements_on_its_bucket_and_prefix_only() {
        let s3 = |doc: &Value| -> Vec<(String, Value)> {
            doc["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|st| st["Action"].to_string().contains("s3:"))
                .map(|st| (st["Action"].to_string(), st["Resource"].clone()))
                .collect()
        };
        assert!(s3(&document(Command::Ami, &Scope::default())).is_empty());
        let scope = Scope {
            roles: BTreeSet::new(),
            store: Some(("bake-state".to_owned(), "bake/".to_owned())),
        };
        let found = s3(&document(Command::Pipeline, &scope));
        assert_eq!(
            found,
            vec![
                (
                    json!(["s3:ListBucket"]).to_string(),
                    json!("arn:aws:s3:::bake-state")
                ),
                (
                    json!(["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]).to_string(),
                    json!("arn:aws:s3:::bake-state/bake/*")
                ),
            ]
        );
        assert!(s3(&document(Command::Gc, &scope)).is_empty());
    }
}
