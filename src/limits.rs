//! The names, shapes, numbers and durations AWS accepts for what bake sends, checked before any
//! call: EC2 client tokens, load balancer, target group, launch template, Auto Scaling group and
//! instance profile names, SSM parameter names, tags, AMI names, regions, instance types, CIDRs,
//! root volumes and the timeouts bake passes on. Each check answers with the rule it enforces.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

/// EC2 "Ensuring idempotency": a client token is up to 64 ASCII characters.
pub const CLIENT_TOKEN_MAX: usize = 64;
/// CreateLoadBalancer / CreateTargetGroup: at most 32 alphanumerics or hyphens.
pub const ELB_NAME_MAX: usize = 32;
/// CreateLaunchTemplate: 3 to 128 characters of `[a-zA-Z0-9().\-/_]`.
pub const LAUNCH_TEMPLATE_NAME: std::ops::RangeInclusive<usize> = 3..=128;
/// CreateAutoScalingGroup and CreateSecurityGroup: at most 255 characters.
pub const GROUP_NAME_MAX: usize = 255;
/// Parameter Store: a hierarchy has at most 15 levels.
pub const SSM_LEVELS_MAX: usize = 15;
/// Parameter Store: the name with its ARN (`arn:aws:ssm:REGION:ACCOUNT:parameter`, up to about 60
/// characters) is at most 1011 characters; bake keeps names to 1011 - 64.
pub const SSM_NAME_MAX: usize = 1011 - 64;
/// Tags on EC2, Auto Scaling and ELB resources: 50 per resource, keys up to 128 characters,
/// values up to 256, the `aws:` prefix reserved.
pub const TAGS_MAX: usize = 50;
pub const TAG_KEY_MAX: usize = 128;
pub const TAG_VALUE_MAX: usize = 256;

/// The load balancer's metrics are published every minute: the target group's alarms look at
/// one-minute periods (CloudWatch's `Period`, seconds).
pub const ALARM_PERIOD_TARGETS: i32 = 60;
/// EC2's basic monitoring publishes CPUUtilization every five minutes: the CPU alarm's period.
pub const ALARM_PERIOD_CPU: i32 = 300;
/// PutMetricAlarm: for periods of a minute or more, `EvaluationPeriods` × `Period` is at most one
/// day (86,400 s), and `EvaluationPeriods` at least 1.
pub const ALARM_SPAN_MAX_SECONDS: u32 = 86_400;
/// The response-time alarm's threshold: 1 ms to an hour (the load balancer's idle timeout is at
/// most 4,000 s; an hour on average is never a working page).
pub const ALARM_LATENCY: RangeInclusive<Duration> = Duration::from_millis(1)..=secs(3600);

/// `Ok` when `ok`, else the rule broken as `why` writes it.
fn rule(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(why()) }
}

/// `periods` evaluation periods of `period` seconds, as PutMetricAlarm accepts them.
pub fn alarm_periods(periods: u32, period: i32) -> Result<(), String> {
    let most = ALARM_SPAN_MAX_SECONDS / period.unsigned_abs();
    rule((1..=most).contains(&periods), || {
        format!(
            "1 to {most} periods of {period} s (CloudWatch evaluates at most a day), found {periods}"
        )
    })
}

/// How long the builder's health check may take: at least 10 s (a first probe needs a booted
/// builder), at most 12 h (a bake that takes longer is stuck, and its builder costs money).
pub const HEALTH_TIMEOUT: RangeInclusive<Duration> = secs(10)..=secs(12 * 3600);
/// The verify commands' timeout, passed to AWS-RunShellScript as `executionTimeout`: 1 to 172,800
/// seconds (48 h), as that document allows.
pub const VERIFY_TIMEOUT: RangeInclusive<Duration> = secs(1)..=secs(172_800);
/// A new instance's warm-up in a rollout: the instance refresh's `InstanceWarmup` and the group's
/// health-check grace period; 0 to 3,600 s, as Auto Scaling's default instance warm-up allows.
pub const REFRESH_WARMUP: RangeInclusive<Duration> = secs(0)..=secs(3600);
/// How long a whole instance refresh may take before bake rolls it back: 1 minute to 48 h (Auto
/// Scaling's own longest refresh wait, `CheckpointDelay` and `BakeTime`, is 172,800 s).
pub const REFRESH_TIMEOUT: RangeInclusive<Duration> = secs(60)..=secs(172_800);
/// An instance refresh's `CheckpointDelay` and `BakeTime`: 0 to 172,800 s (RefreshPreferences).
pub const REFRESH_PAUSE: RangeInclusive<Duration> = secs(0)..=secs(172_800);
/// An instance refresh's `MaxHealthyPercentage`: 100 to 200 (RefreshPreferences).
pub const MAX_HEALTHY: RangeInclusive<u16> = 100..=200;
/// The traffic probe's requests a second: one at least, and few enough that the probe stays a
/// probe, not a load test.
pub const PROBE_RATE: RangeInclusive<u32> = 1..=100;
/// The traffic probe's timeout per request: 1 s to the load balancer's default idle timeout, 60 s.
pub const PROBE_TIMEOUT: RangeInclusive<Duration> = secs(1)..=secs(60);
/// A year as bake's durations count it (`"1y"`): 365.25 days, as the duration parser (humantime)
/// counts it, so that `"10y"` is exactly [`DEPRECATE_AFTER`]'s end.
pub const YEAR: Duration = secs(31_557_600);
/// When an AMI is deprecated: EC2 refuses a deprecation time in the past or more than 10 years
/// ahead; bake asks for 1 minute to 10 years of 365.25 days.
pub const DEPRECATE_AFTER: RangeInclusive<Duration> = secs(60)..=secs(10 * 31_557_600);
/// Auto Scaling's MinSize, MaxSize and DesiredCapacity are 32-bit signed integers.
pub const CAPACITY_MAX: u32 = i32::MAX as u32;
/// IAM instance profile names: 1 to 128 of letters, digits and `+=,.@_-`.
pub const INSTANCE_PROFILE_NAME_MAX: usize = 128;
/// An ALB target group's health-check path: 1 to 1,024 characters.
pub const HEALTH_PATH_MAX: usize = 1024;

/// A store lease's time to live (`store.lease_ttl`): 15 s to 1 h. The holder renews every third
/// of it, so 15 s is a renewal every 5 s, and S3's `Last-Modified` and `Date`, which expiry is
/// judged by, count whole seconds: below 15 s their rounding is a large share of the lease.
/// Above an hour, a crashed runner holds an image longer than an hourly cron's period.
pub const LEASE_TTL: RangeInclusive<Duration> = secs(15)..=secs(3600);
/// S3 object keys are at most 1,024 bytes; bake's keys under the prefix (`records/IMAGE/AMI.json`,
/// `leases/IMAGE`) take at most a few hundred, so the prefix may take 512.
pub const STORE_PREFIX_MAX: usize = 512;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A duration against its range, with the rule in words.
pub fn duration(value: Duration, range: &RangeInclusive<Duration>) -> Result<(), String> {
    rule(range.contains(&value), || {
        format!(
            "must be between {} and {}",
            human(*range.start()),
            human(*range.end())
        )
    })
}

/// A duration in words, in the largest unit that divides it (`12 hours`, `10 years`, `0 seconds`).
pub fn human(d: Duration) -> String {
    let units = [
        (YEAR.as_secs(), "year"),
        (24 * 3600, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let secs = d.as_secs();
    if secs == 0 || d.subsec_nanos() != 0 {
        return if secs == 0 && d.subsec_nanos() == 0 {
            "0 seconds".to_owned()
        } else {
            humantime::format_duration(d).to_string()
        };
    }
    let (size, unit) = units
        .iter()
        .find(|(size, _)| secs.is_multiple_of(*size))
        .copied()
        .unwrap_or((1, "second"));
    let n = secs / size;
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The EBS volume types EC2 offers, with the sizes (GiB) each accepts, and whether it can be a
/// root (boot) volume: st1 and sc1 cannot. (CreateVolume, RunInstances' `Ebs.VolumeSize`.)
pub const VOLUME_TYPES: &[(&str, RangeInclusive<u32>, bool)] = &[
    ("gp3", 1..=16_384, true),
    ("gp2", 1..=16_384, true),
    ("io1", 4..=16_384, true),
    ("io2", 4..=65_536, true),
    ("st1", 125..=16_384, false),
    ("sc1", 125..=16_384, false),
    ("standard", 1..=1_024, true),
];

/// The builder's root volume: a type EC2 offers that can boot, of a size that type accepts.
pub fn root_volume(kind: &str, size: u32) -> Result<(), String> {
    let known = VOLUME_TYPES
        .iter()
        .map(|(k, ..)| *k)
        .collect::<Vec<_>>()
        .join(", ");
    let Some((_, sizes, boots)) = VOLUME_TYPES.iter().find(|(k, ..)| *k == kind) else {
        return Err(format!(
            "unknown EBS volume type `{kind}`; EC2 offers {known}"
        ));
    };
    if !boots {
        return Err(format!(
            "{kind} volumes cannot be root (boot) volumes; use gp3, gp2, io1, io2 or standard"
        ));
    }
    if !sizes.contains(&size) {
        return Err(format!(
            "{kind} volumes are {} to {} GiB; found {size}",
            sizes.start(),
            sizes.end()
        ));
    }
    Ok(())
}

/// A region code: `ap-northeast-2`, `us-gov-west-1`, `us-isob-east-1`
/// (`^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]+$`).
pub fn region(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('-').collect();
    let lower = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let ok = match parts.as_slice() {
        [geo, rest @ .., place, number] if rest.len() <= 1 => {
            geo.len() == 2
                && lower(geo)
                && rest
                    .iter()
                    .all(|p| *p == "gov" || (p.starts_with("iso") && lower(p)))
                && lower(place)
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    };
    rule(ok, || {
        format!("a region code looks like `ap-northeast-2` or `us-gov-west-1`; `{name}` does not")
    })
}

/// A 12-digit AWS account id (ModifyImageAttribute's `UserId`).
pub fn account_id(id: &str) -> Result<(), String> {
    rule(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()),
        || format!("an account id is 12 digits, like \"111122223333\"; found {id:?}"),
    )
}

/// `arn:PARTITION:organizations::ACCOUNT:` and the rest, or None.
fn organizations_arn(arn: &str) -> Option<&str> {
    let rest = ["aws", "aws-cn", "aws-us-gov"]
        .iter()
        .find_map(|p| arn.strip_prefix(&format!("arn:{p}:organizations::")))?;
    let (account, rest) = rest.split_once(':')?;
    account_id(account).ok()?;
    Some(rest)
}

/// `prefix` and then `lengths.0..=lengths.1` lower-case letters or digits.
fn id_part(part: &str, prefix: &str, lengths: (usize, usize)) -> bool {
    part.strip_prefix(prefix).is_some_and(|id| {
        (lengths.0..=lengths.1).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// An organization's ARN as LaunchPermission's `OrganizationArn` takes it.
pub fn organization_arn(arn: &str) -> Result<(), String> {
    let ok = organizations_arn(arn)
        .and_then(|rest| rest.strip_prefix("organization/"))
        .is_some_and(|id| id_part(id, "o-", (10, 32)));
    rule(ok, || {
        format!(
            "an organization ARN looks like \"arn:aws:organizations::111122223333:organization/o-exampleorgid\"; found {arn:?}"
        )
    })
}

/// An organizational unit's ARN as LaunchPermission's `OrganizationalUnitArn` takes it.
pub fn organizational_unit_arn(arn: &str) -> Result<(), String> {
    let ok = organizations_arn(arn)
        .and_then(|rest| rest.strip_prefix("ou/"))
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(org, ou)| {
            id_part(org, "o-", (10, 32))
                && ou
                    .strip_prefix("ou-")
                    .and_then(|s| s.split_once('-'))
                    .is_some_and(|(root, unit)| {
                        id_part(root, "", (4, 32)) && id_part(unit, "", (8, 32))
                    })
        });
    rule(ok, || {
        format!(
            "an organizational unit ARN looks like \"arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-exam-ple12345\"; found {arn:?}"
        )
    })
}

/// A KMS key as EC2's `KmsKeyId` takes it: `alias/NAME`, a key id (a UUID, or `mrk-` and 32 hex
/// digits for a multi-Region key), or a key or alias ARN. Answers the region an ARN names.
pub fn kms_key(key: &str) -> Result<Option<&str>, String> {
    let alias = |name: &str| {
        !name.is_empty()
            && name.len() <= 250
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
    };
    let key_id = |id: &str| {
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        let uuid = id.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && hex(&id.replace('-', ""));
        let mrk = id
            .strip_prefix("mrk-")
            .is_some_and(|h| h.len() == 32 && hex(h));
        uuid || mrk
    };
    let shape = if let Some(name) = key.strip_prefix("alias/") {
        alias(name).then_some(None)
    } else if let Some(rest) = key.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        match parts.as_slice() {
            [partition, "kms", region, account, resource]
                if partition.starts_with("aws")
                    && self::region(region).is_ok()
                    && account_id(account).is_ok() =>
            {
                let ok = match resource.split_once('/') {
                    Some(("key", id)) => key_id(id),
                    Some(("alias", name)) => alias(name),
                    _ => false,
                };
                ok.then_some(Some(*region))
            }
            _ => None,
        }
    } else {
        key_id(key).then_some(None)
    };
    shape.ok_or_else(|| {
        format!(
            "a KMS key is \"alias/NAME\", a key id or a key or alias ARN \
             (\"arn:aws:kms:REGION:ACCOUNT:key/ID\"); found {key:?}"
        )
    })
}

/// Whether `key` names an AWS managed key (`alias/aws/...`, such as EBS's default
/// `alias/aws/ebs`): its policy is AWS's, so no other account can ever be allowed to use it.
pub fn aws_managed_key(key: &str) -> bool {
    let alias = key.rsplit_once(':').map_or(key, |(_, resource)| resource);
    alias.starts_with("alias/aws/")
}

/// An EC2 instance type: `family.size` in lower case, as in `t3.micro`, `m7i-flex.large`,
/// `u-6tb1.metal`.
pub fn instance_type(name: &str) -> Result<(), String> {
    let word = |w: &str| {
        !w.is_empty()
            && w.split('-').all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    };
    let ok = name.len() <= 64
        && match name.split_once('.') {
            Some((family, size)) => {
                word(family) && word(size) && family.starts_with(|c: char| c.is_ascii_lowercase())
            }
            None => false,
        };
    rule(ok, || {
        format!("an instance type is `family.size` in lower case, like `t3.micro`; `{name}` is not")
    })
}

/// An IPv4 CIDR block as security group rules take it: a network address (no host bits set)
/// and a prefix length of 0 to 32 written in plain digits.
pub fn ipv4_cidr(text: &str) -> Result<(), String> {
    let shape = || format!("expected an IPv4 CIDR like \"203.0.113.0/24\", found {text:?}");
    let Some((addr, len)) = text.split_once('/') else {
        return Err(shape());
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| shape())?;
    if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(shape());
    }
    let len: u32 = len.parse().map_err(|_| shape())?;
    if len > 32 {
        return Err(format!(
            "an IPv4 prefix length is 0 to 32; found /{len} in {text:?}"
        ));
    }
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    let network = Ipv4Addr::from(u32::from(addr) & mask);
    if network != addr {
        return Err(format!(
            "{text:?} has host bits set (AWS refuses it); the network is \"{network}/{len}\""
        ));
    }
    Ok(())
}

/// An IAM instance profile's name.
pub fn instance_profile_name(name: &str) -> Result<(), String> {
    let ok = (1..=INSTANCE_PROFILE_NAME_MAX).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    rule(ok, || {
        format!(
            "instance profile names are 1 to {INSTANCE_PROFILE_NAME_MAX} letters, digits and \
             +=,.@_-; found `{name}`"
        )
    })
}

/// Characters EC2 allows in AMI names besides letters and digits.
pub const AMI_NAME_CHARS: &str = "()[] ./-'@_";

/// Literal text of an AMI name template (outside `{{ }}`, `{% %}` and `{# #}`): characters EC2
/// refuses in AMI names.
pub fn ami_name_literals(template: &str) -> Result<(), String> {
    let mut rest = template;
    let mut bad = Vec::new();
    while !rest.is_empty() {
        let open = ["{{", "{%", "{#"]
            .iter()
            .filter_map(|o| rest.find(o).map(|i| (i, *o)))
            .min();
        let (literal, after) = match open {
            Some((i, o)) => {
                let close = match o {
                    "{{" => "}}",
                    "{%" => "%}",
                    _ => "#}",
                };
                let tail = &rest[i + 2..];
                let end = tail.find(close).map_or(tail.len(), |j| j + 2);
                (&rest[..i], &tail[end..])
            }
            None => (rest, ""),
        };
        for c in literal.chars() {
            if !(c.is_ascii_alphanumeric() || AMI_NAME_CHARS.contains(c) || bad.contains(&c)) {
                bad.push(c);
            }
        }
        rest = after;
    }
    if bad.is_empty() {
        Ok(())
    } else {
        let list: Vec<String> = bad.iter().map(|c| format!("{c:?}")).collect();
        Err(format!(
            "AMI names allow letters, digits and {AMI_NAME_CHARS}; {template:?} has {}",
            list.join(", ")
        ))
    }
}

/// An ALB health check's and the builder's page path: an absolute URL path (RFC 3986 path
/// characters or `%XX` escapes), at most 1,024 characters, with no `.` or `..` segment (also when
/// escaped) and no escaped `/`, `\` or NUL.
pub fn url_path(path: &str) -> Result<(), String> {
    let rule = "an absolute URL path: '/' then letters, digits, -._~!$&'()*+,;=:@/ or %XX \
                escapes, no `.` or `..` segments";
    if !path.starts_with('/') {
        return Err(format!("must be {rule}; {path:?} does not start with '/'"));
    }
    if path.len() > HEALTH_PATH_MAX {
        return Err(format!(
            "is at most {HEALTH_PATH_MAX} characters (the target group's limit); found {}",
            path.len()
        ));
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = path
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex.filter(|_| bytes[i + 1].is_ascii_hexdigit()) else {
                return Err(format!(
                    "must be {rule}; {path:?} has a '%' that is not an escape"
                ));
            };
            if matches!(byte, b'/' | b'\\' | 0) {
                return Err(format!(
                    "must be {rule}; {path:?} escapes {:?}, which would change the path",
                    byte as char
                ));
            }
            decoded.push(byte);
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        if !allowed {
            let c = path[i..].chars().next().unwrap_or('?');
            return Err(format!("must be {rule}; {path:?} has {c:?}"));
        }
        decoded.push(b);
        i += 1;
    }
    let dotted = decoded
        .split(|b| *b == b'/')
        .any(|segment| segment == b"." || segment == b"..");
    if dotted {
        return Err(format!(
            "must be {rule}; {path:?} has a `.` or `..` segment"
        ));
    }
    Ok(())
}

/// An EC2 client token.
pub fn client_token(token: &str) -> Result<(), String> {
    if !token.is_ascii() {
        return Err(format!(
            "EC2 client tokens are ASCII only, and `{token}` is not"
        ));
    }
    if token.len() > CLIENT_TOKEN_MAX {
        return Err(format!(
            "EC2 client tokens are at most {CLIENT_TOKEN_MAX} characters, `{token}` has {}",
            token.len()
        ));
    }
    Ok(())
}

/// A load balancer's (`load_balancer`) or target group's name.
pub fn elb_name(name: &str, load_balancer: bool) -> Result<(), String> {
    let what = if load_balancer {
        "load balancer"
    } else {
        "target group"
    };
    let rule = format!(
        "{what} names are 1 to {ELB_NAME_MAX} letters, digits or hyphens, not starting or ending \
         with a hyphen{}",
        if load_balancer {
            ", and not starting with `internal-`"
        } else {
            ""
        }
    );
    let bad = name.is_empty()
        || name.len() > ELB_NAME_MAX
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        || name.starts_with('-')
        || name.ends_with('-')
        || (load_balancer && name.starts_with("internal-"));
    if bad {
        Err(format!(
            "{rule}; found `{name}` ({} characters)",
            name.chars().count()
        ))
    } else {
        Ok(())
    }
}

/// A launch template's name.
pub fn launch_template_name(name: &str) -> Result<(), String> {
    let ok = LAUNCH_TEMPLATE_NAME.contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "().-/_".contains(c));
    rule(ok, || {
        format!(
            "launch template names are {} to {} characters of letters, digits and ().-/_; found `{name}`",
            LAUNCH_TEMPLATE_NAME.start(),
            LAUNCH_TEMPLATE_NAME.end()
        )
    })
}

/// An Auto Scaling group's or security group's name.
pub fn group_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > GROUP_NAME_MAX {
        return Err(format!(
            "{what} names are 1 to {GROUP_NAME_MAX} characters; found {}",
            name.chars().count()
        ));
    }
    if what == "security group" && name.to_ascii_lowercase().starts_with("sg-") {
        return Err(format!(
            "security group names cannot start with `sg-`; found `{name}`"
        ));
    }
    Ok(())
}

/// A general purpose S3 bucket name, by S3's bucket naming rules.
pub fn bucket_name(name: &str) -> Result<(), String> {
    let rule = |why: &str| Err(format!("S3 bucket names {why}; found `{name}`"));
    if !(3..=63).contains(&name.len()) {
        return rule("are 3 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return rule("are lowercase letters, digits, dots and hyphens");
    }
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge(name.as_bytes()[0]) || !edge(name.as_bytes()[name.len() - 1]) {
        return rule("begin and end with a letter or digit");
    }
    if name.contains("..") {
        return rule("contain no two adjacent dots");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return rule("are not IP addresses");
    }
    for prefix in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if name.starts_with(prefix) {
            return rule(&format!("do not start with `{prefix}`"));
        }
    }
    for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if name.ends_with(suffix) {
            return rule(&format!("do not end with `{suffix}`"));
        }
    }
    Ok(())
}

/// The store's key prefix: empty, or S3's safe key characters (letters, digits, `!-_.*'()/`)
/// ending in `/`, without a leading `/` or an empty level.
pub fn store_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    if prefix.len() > STORE_PREFIX_MAX {
        return Err(format!(
            "the store prefix is at most {STORE_PREFIX_MAX} bytes; found {}",
            prefix.len()
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!-_.*'()/".contains(*c)))
    {
        return Err(format!(
            "the store prefix is letters, digits and S3's safe characters !-_.*'()/; `{c}` is not              (in `{prefix}`)"
        ));
    }
    if !prefix.ends_with('/') || prefix.starts_with('/') || prefix.contains("//") {
        return Err(format!(
            "the store prefix is folder names each followed by `/` (\"bake/\", \"team/bake/\"),              without a leading `/` or an empty folder; found `{prefix}`"
        ));
    }
    Ok(())
}

/// One level of an SSM parameter hierarchy (what bake puts between slashes).
pub fn ssm_name_part(part: &str) -> Result<(), String> {
    if !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "SSM parameter names are letters, digits and _.- between slashes; `{part}` is not"
        ))
    }
}

/// An SSM parameter name (or ARN, taken as it is).
pub fn ssm_parameter_name(name: &str) -> Result<(), String> {
    if name.starts_with("arn:") {
        return Ok(());
    }
    if name.contains('/') && !name.starts_with('/') {
        return Err(format!(
            "an SSM parameter name with a hierarchy starts with `/`; found `{name}`"
        ));
    }
    let levels: Vec<&str> = name.trim_start_matches('/').split('/').collect();
    for level in &levels {
        ssm_name_part(level).map_err(|e| format!("{e} (in `{name}`)"))?;
    }
    if levels.len() > SSM_LEVELS_MAX {
        return Err(format!(
            "SSM parameter hierarchies have at most {SSM_LEVELS_MAX} levels; `{name}` has {}",
            levels.len()
        ));
    }
    if name.len() > SSM_NAME_MAX {
        return Err(format!(
            "SSM parameter names are at most {SSM_NAME_MAX} characters here (1011 with the ARN); \
             found {}",
            name.len()
        ));
    }
    Ok(())
}

/// One resource's tags; `reserved` is how many more bake adds itself.
pub fn tags<'a>(
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    reserved: usize,
) -> Result<(), String> {
    let mut count = reserved;
    for (key, value) in tags {
        count += 1;
        if key.is_empty() || key.chars().count() > TAG_KEY_MAX {
            return Err(format!(
                "tag keys are 1 to {TAG_KEY_MAX} characters; `{key}` has {}",
                key.chars().count()
            ));
        }
        if value.chars().count() > TAG_VALUE_MAX {
            return Err(format!(
                "tag values are at most {TAG_VALUE_MAX} characters; the value of `{key}` has {}",
                value.chars().count()
            ));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(format!(
                "tag keys starting with `aws:` are reserved for AWS; found `{key}`"
            ));
        }
    }
    if count > TAGS_MAX {
        return Err(format!(
            "a resource has at most {TAGS_MAX} tags, and bake adds {reserved} of its own; found {}",
            count - reserved
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `check` accepts every one of `ok` and refuses every one of `bad`.
    fn sorts<T: std::fmt::Debug>(
        check: impl Fn(&str) -> Result<T, String>,
        ok: &[&str],
        bad: &[&str],
    ) {
        for ok in ok {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in bad {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_tokens_are_64_ascii_characters_at_most() {
        assert!(client_token(&"t".repeat(64)).is_ok());
        assert!(client_token(&"t".repeat(65)).unwrap_err().contains("64"));
        assert!(client_token("jeton-é").is_err());
    }

    #[test]
    fn elb_names_follow_the_rules() {
        assert!(elb_name(&"a".repeat(32), true).is_ok());
        for bad in ["", "-web", "web-", "web_1", "internal-web"] {
            assert!(elb_name(bad, true).is_err(), "{bad}");
        }
        assert!(elb_name(&"a".repeat(33), false).is_err());
        assert!(elb_name("internal-web", false).is_ok());
    }

    #[test]
    fn ssm_names_follow_the_rules() {
        sorts(
            ssm_parameter_name,
            &["/bake/web_app-1.2/ami-id", "plain"],
            &["bake/web", "/bake/web app"],
        );
        let deep: String = (0..16).map(|i| format!("/l{i}")).collect();
        assert!(ssm_parameter_name(&deep).unwrap_err().contains("15"));
        assert!(ssm_parameter_name(&deep[..deep.rfind('/').unwrap()]).is_ok());
    }

    #[test]
    fn tags_follow_the_rules() {
        let fine = [("Name", "web")];
        assert!(tags(fine, 1).is_ok());
        let many: Vec<(String, String)> = (0..50).map(|i| (format!("k{i}"), "v".into())).collect();
        let refs = many.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert!(tags(refs.clone(), 0).is_ok());
        assert!(tags(refs, 1).unwrap_err().contains("50"));
        assert!(tags([("aws:x", "v")], 0).is_err());
        let long = "k".repeat(129);
        assert!(tags([(long.as_str(), "v")], 0).is_err());
        let value = "v".repeat(257);
        assert!(tags([("k", value.as_str())], 0).is_err());
    }

    #[test]
    fn root_volumes_follow_ec2s_types_and_sizes() {
        assert!(root_volume("gp3", 8).is_ok());
        assert!(root_volume("io2", 65_536).is_ok());
        assert!(root_volume("standard", 1_024).is_ok());
        assert!(
            root_volume("gp3", 0)
                .unwrap_err()
                .contains("1 to 16384 GiB")
        );
        assert!(root_volume("gp2", 16_385).is_err());
        assert!(root_volume("io1", 3).unwrap_err().contains("4 to 16384"));
        assert!(root_volume("standard", 1_025).is_err());
        assert!(root_volume("st1", 500).unwrap_err().contains("boot"));
        assert!(root_volume("floppy", 8).unwrap_err().contains("gp3, gp2"));
        assert!(root_volume("GP3", 8).is_err());
    }

    #[test]
    fn accounts_organizations_units_and_keys_have_aws_shapes() {
        sorts(
            account_id,
            &["111122223333"],
            &["11112222333", "1111222233334", "11112222333x", ""],
        );
        sorts(
            organization_arn,
            &["arn:aws:organizations::111122223333:organization/o-a1b2c3d4e5"],
            &[
                "o-a1b2c3d4e5",
                "arn:aws:organizations::1111:organization/o-a1b2c3d4e5",
                "arn:aws:organizations::111122223333:organization/o-short",
                "arn:aws:organizations::111122223333:ou/o-a1b2c3d4e5/ou-ab12-abcd1234",
            ],
        );
        assert!(
            organizational_unit_arn(
                "arn:aws:organizations::111122223333:ou/o-a1b2c3d4e5/ou-ab12-abcd1234"
            )
            .is_ok()
        );
        assert!(
            organizational_unit_arn(
                "arn:aws:organizations::111122223333:organization/o-a1b2c3d4e5"
            )
            .is_err()
        );
        assert!(
            organizational_unit_arn("arn:aws:organizations::111122223333:ou/o-a1b2c3d4e5/ou-ab12")
                .is_err()
        );
        assert_eq!(kms_key("alias/bake"), Ok(None));
        assert_eq!(kms_key("1234abcd-12ab-34cd-56ef-1234567890ab"), Ok(None));
        assert_eq!(kms_key("mrk-1234abcd12ab34cd56ef1234567890ab"), Ok(None));
        assert_eq!(
            kms_key("arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
            Ok(Some("us-east-1"))
        );
        assert_eq!(
            kms_key("arn:aws:kms:us-east-1:111122223333:alias/bake"),
            Ok(Some("us-east-1"))
        );
        for bad in [
            "",
            "alias/",
            "bake",
            "1234",
            "arn:aws:kms:us-east-1:1111:key/x",
            "alias/a b",
        ] {
            assert!(kms_key(bad).is_err(), "{bad}");
        }
        assert!(aws_managed_key("alias/aws/ebs"));
        assert!(aws_managed_key(
            "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs"
        ));
        assert!(!aws_managed_key("alias/bake"));
        assert!(!aws_managed_key("alias/awsome"));
    }

    #[test]
    fn bucket_names_and_store_prefixes_follow_s3s_rules() {
        for good in ["bake-state", "a.b-c", "abc", &"a".repeat(63)] {
            bucket_name(good).unwrap();
        }
        for (bad, rule) in [
            ("ab", "3 to 63"),
            ("Bake", "lowercase"),
            ("bake_state", "lowercase"),
            ("-bake", "begin and end"),
            ("bake.", "begin and end"),
            ("a..b", "adjacent dots"),
            ("192.168.5.4", "IP addresses"),
            ("xn--bake", "`xn--`"),
            ("sthree-bake", "`sthree-`"),
            ("bake-s3alias", "`-s3alias`"),
            ("bake--x-s3", "`--x-s3`"),
        ] {
            let e = bucket_name(bad).unwrap_err();
            assert!(e.contains(rule), "{bad}: {e}");
        }
        sorts(
            store_prefix,
            &["", "bake/", "team-a/bake/"],
            &["bake", "/bake/", "a//b/", "a b/", "caf\u{e9}/"],
        );
        assert!(store_prefix(&format!("{}/", "a".repeat(600))).is_err());
    }

    #[test]
    fn regions_have_aws_shape() {
        sorts(
            region,
            &[
                "ap-northeast-2",
                "us-east-1",
                "us-gov-west-1",
                "us-isob-east-1",
                "eu-central-2",
            ],
            &[
                "",
                "mars-1",
                "AP-northeast-2",
                "us-east",
                "us-east-1a",
                "us--east-1",
                "useast-1",
                "us-foo-east-1",
            ],
        );
    }

    #[test]
    fn instance_types_are_family_dot_size() {
        sorts(
            instance_type,
            &[
                "t3.micro",
                "m7i-flex.large",
                "u-6tb1.metal",
                "c6gn.16xlarge",
                "mac2-m2pro.metal",
            ],
            &[
                "",
                "t3micro",
                "T3.micro",
                ".micro",
                "t3.",
                "t3..micro",
                "t3.micro.x",
                "3t.micro",
                "t3.mi cro",
            ],
        );
    }

    #[test]
    fn cidrs_carry_no_host_bits_and_plain_lengths() {
        sorts(
            ipv4_cidr,
            &[
                "0.0.0.0/0",
                "10.0.0.0/8",
                "203.0.113.7/32",
                "192.168.1.0/24",
            ],
            &[
                "10.0.0.0/+8",
                "10.0.0.0/33",
                "10.0.0.0",
                "10.0.0.0/",
                "300.0.0.0/8",
                "10.0.0.0/008",
                "everyone",
            ],
        );
        assert!(
            ipv4_cidr("10.0.0.1/8")
                .unwrap_err()
                .contains("\"10.0.0.0/8\"")
        );
    }

    #[test]
    fn health_paths_are_absolute_url_paths_without_dot_segments() {
        sorts(
            url_path,
            &[
                "/",
                "/health",
                "/a/b.html",
                "/%7Euser/",
                "/status;v=1",
                "/.well-known/x",
            ],
            &[
                "health",
                "/../etc/passwd",
                "/a/./b",
                "/a/%2e%2E/b",
                "/a%2fb",
                "/a b",
                "/a?x=1",
                "/é",
                "/%zz",
                "/%",
                "/a\"b",
            ],
        );
        assert!(url_path(&format!("/{}", "a".repeat(1024))).is_err());
    }

    #[test]
    fn ami_name_literals_are_checked_outside_template_tags() {
        assert!(ami_name_literals("{{ image }}-{{ date }}-{{ digest[:12] }}").is_ok());
        assert!(ami_name_literals("web (v1) [x] @me's/build_1.0").is_ok());
        assert!(ami_name_literals("{{ 'a:b' }}-web").is_ok());
        assert!(
            ami_name_literals("web:{{ date }}")
                .unwrap_err()
                .contains("':'")
        );
        assert!(
            ami_name_literals("{% if x %}a*b{% endif %}")
                .unwrap_err()
                .contains("'*'")
        );
    }

    #[test]
    fn instance_profile_names_follow_iam() {
        sorts(
            instance_profile_name,
            &["SSMInstanceProfile", "a+=,.@_-1"],
            &["", "my profile"],
        );
        assert!(instance_profile_name(&"p".repeat(129)).is_err());
    }

    #[test]
    fn durations_are_checked_against_ranges_named_in_words() {
        let err = duration(Duration::ZERO, &HEALTH_TIMEOUT).unwrap_err();
        assert_eq!(err, "must be between 10 seconds and 12 hours");
        assert!(duration(secs(10), &HEALTH_TIMEOUT).is_ok());
        assert!(duration(secs(12 * 3600 + 1), &HEALTH_TIMEOUT).is_err());
        assert!(duration(Duration::ZERO, &REFRESH_WARMUP).is_ok());
        assert!(duration(secs(3601), &REFRESH_WARMUP).is_err());
        assert_eq!(human(*DEPRECATE_AFTER.end()), "10 years");
        assert_eq!(human(secs(60)), "1 minute");
    }

    #[test]
    fn the_parser_and_the_deprecation_check_agree_on_the_year() {
        let ten = humantime::parse_duration("10y").unwrap();
        assert_eq!(ten, *DEPRECATE_AFTER.end());
        assert_eq!(humantime::parse_duration("1y").unwrap(), YEAR);
        assert!(duration(ten, &DEPRECATE_AFTER).is_ok());
        let more = humantime::parse_duration("10y 1s").unwrap();
        assert!(duration(more, &DEPRECATE_AFTER).is_err());
    }
}
