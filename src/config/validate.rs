//! Validation: every value against the range or shape AWS (or bake) accepts, each problem
//! recorded at its file:line:col so that one run reports them all.

use std::time::Duration;

use super::parse::{Doc, FieldPath, dotted};
use super::place::names;
use super::secrets::secret_word;
use super::types::{Access, Config, Egress, Endpoints, Image, KmsKey, ResourceRef, Rollout};
use crate::limits;

/// Validation: every value against the range or shape AWS (or bake) accepts.
impl Doc<'_> {
    pub(super) fn validate(&self, config: &Config) {
        if let Some(region) = &config.region
            && let Err(rule) = limits::region(region)
        {
            self.fail(&["region"], rule);
        }
        let written = self
            .root
            .get("image")
            .and_then(|i| i.get_ref().as_table())
            .is_some_and(|t| !t.is_empty());
        if !written && self.misspelled("image").is_empty() {
            self.push(
                0..0,
                "no [image.NAME] table: there is nothing to bake".to_owned(),
            );
        }
        for (i, name) in config.public_vars.iter().enumerate() {
            if name.is_empty() {
                self.fail(&["public_vars"], format!("entry {} is empty", i + 1));
            }
        }
        for (name, image) in &config.image {
            self.validate_image(config, name, image);
        }
        for (name, rollout) in &config.rollout {
            self.validate_rollout(config, name, rollout);
        }
        if let Some(store) = &config.store {
            if let Err(rule) = limits::bucket_name(store.bucket.get_ref()) {
                self.fail(&["store", "bucket"], rule);
            }
            if let Err(rule) = limits::store_prefix(store.prefix.get_ref()) {
                self.fail(&["store", "prefix"], rule);
            }
            self.duration(
                &["store", "lease_ttl"],
                store.lease_ttl.get_ref().0,
                &limits::LEASE_TTL,
            );
        }
    }

    /// A duration field against its range; the message quotes the value as written.
    fn duration(
        &self,
        path: FieldPath<'_>,
        value: Duration,
        range: &std::ops::RangeInclusive<Duration>,
    ) {
        if let Err(rule) = limits::duration(value, range) {
            let span = self.span(path);
            let written = self
                .source
                .text
                .get(span.clone())
                .filter(|w| w.starts_with('"') || w.starts_with('\''))
                .map_or_else(
                    || limits::human(value),
                    |w| w.trim_matches(['"', '\'']).to_owned(),
                );
            self.fail(path, format!("{rule}, found {written:?}"));
        }
    }

    fn validate_image(&self, config: &Config, name: &str, image: &Image) {
        let at = |f: &[&'static str]| -> Vec<String> {
            let mut p = vec!["image".to_owned(), name.to_owned()];
            p.extend(f.iter().map(|s| (*s).to_owned()));
            p
        };
        let fail = |f: &[&'static str], message: String| {
            let p = at(f);
            let refs: Vec<&str> = p.iter().map(String::as_str).collect();
            self.fail(&refs, message);
        };
        let duration = |f: &[&'static str], value: Duration, range| {
            let p = at(f);
            let refs: Vec<&str> = p.iter().map(String::as_str).collect();
            self.duration(&refs, value, range);
        };
        self.image_name(name);
        // Base image.
        let base = image.base.get_ref();
        let given = [base.id.is_some(), base.ssm.is_some(), base.name.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            fail(
                &["base"],
                "give exactly one of `id`, `ssm` or `name` (with `owners`)".to_owned(),
            );
        } else if base.name.is_some() && base.owners.is_empty() {
            fail(
                &["base"],
                "`name` needs `owners`, e.g. owners = [\"amazon\"]".to_owned(),
            );
        } else if base.name.is_none() && !base.owners.is_empty() {
            fail(&["base"], "`owners` only goes with `name`".to_owned());
        }
        if let Some(id) = &base.id
            && !resource_id(id, "ami")
        {
            fail(
                &["base", "id"],
                format!(
                    "an AMI id is `ami-` and letters or digits, like \"ami-0123456789abcdef0\"; found {id:?}"
                ),
            );
        }
        if let Some(ssm) = &base.ssm
            && let Err(rule) = limits::ssm_parameter_name(ssm)
        {
            fail(&["base", "ssm"], rule);
        }
        if base.name.as_deref() == Some("") {
            fail(
                &["base", "name"],
                "is empty; give an AMI name pattern such as \"debian-12-amd64-*\"".to_owned(),
            );
        }
        for owner in &base.owners {
            let known = ["self", "amazon", "aws-marketplace", "aws-backup-vault"];
            let account = owner.len() == 12 && owner.bytes().all(|b| b.is_ascii_digit());
            if !account && !known.contains(&owner.as_str()) {
                fail(
                    &["base", "owners"],
                    format!(
                        "an owner is a 12-digit account id, `self`, `amazon`, `aws-marketplace` or `aws-backup-vault`; found {owner:?}"
                    ),
                );
            }
        }
        if image.template.get_ref().trim().is_empty() {
            fail(
                &["template"],
                "is empty; name a template, like \"nginx\"".to_owned(),
            );
        }
        // Vars.
        for (key, value) in &image.vars {
            let var = key.get_ref();
            if var.is_empty() || var.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.push(
                    key.span(),
                    format!(
                        "{}: a var name is one or more characters without spaces; found {var:?}",
                        dotted(&["image", name, "vars"])
                    ),
                );
                continue;
            }
            if !config.public_vars.iter().any(|p| p == var)
                && let Some(word) = secret_word(var)
            {
                self.push(
                    key.span(),
                    format!(
                        "{}: `{var}` looks like a secret ({word}); user data is readable by anyone \
                         on the instance and stored in the AMI's launch history: fetch it at boot \
                         from SSM Parameter Store (aws ssm get-parameter --with-decryption) or \
                         Secrets Manager instead; if it is not a secret, list it in `public_vars`",
                        dotted(&["image", name, "vars"])
                    ),
                );
            }
            if matches!(
                value.get_ref(),
                toml::Value::Array(_) | toml::Value::Table(_) | toml::Value::Datetime(_)
            ) {
                self.push(
                    value.span(),
                    format!(
                        "{}: expected a string, number or boolean, found {}",
                        dotted(&["image", name, "vars", var]),
                        value.get_ref().type_str()
                    ),
                );
            }
        }
        if let Err(rule) = limits::ami_name_literals(image.name.get_ref()) {
            fail(&["name"], rule);
        }
        if let Some(after) = &image.deprecate_after {
            duration(
                &["deprecate_after"],
                after.get_ref().0,
                &limits::DEPRECATE_AFTER,
            );
        }
        // Builder.
        let builder = &image.builder;
        if let Err(rule) = limits::instance_type(&builder.instance_type) {
            fail(&["builder", "instance_type"], rule);
        }
        self.selector(
            &at(&["builder", "subnet"]),
            builder.subnet.get_ref(),
            "subnet",
        );
        if let Err(rule) = limits::instance_profile_name(builder.instance_profile.get_ref()) {
            fail(&["builder", "instance_profile"], rule);
        }
        let cidr = builder.allow_cidr.get_ref();
        if cidr != "auto"
            && let Err(rule) = limits::ipv4_cidr(cidr)
        {
            fail(
                &["builder", "allow_cidr"],
                format!("expected \"auto\" or an IPv4 CIDR: {rule}"),
            );
        }
        if let Err(rule) = limits::root_volume(&builder.volume.kind, builder.volume.size) {
            let field: &[&'static str] =
                if rule.starts_with(&builder.volume.kind) && rule.contains("GiB") {
                    &["builder", "volume", "size"]
                } else {
                    &["builder", "volume", "type"]
                };
            fail(field, rule);
        }
        self.builder_access(name, image);
        // Health.
        let health = &image.health;
        if let Err(rule) = limits::url_path(health.path.get_ref()) {
            fail(&["health", "path"], rule);
        }
        if health.port == 0 {
            fail(
                &["health", "port"],
                "a port is 1 to 65535; found 0".to_owned(),
            );
        }
        if !(200..=499).contains(&health.expect_status) {
            fail(
                &["health", "expect_status"],
                format!(
                    "an expected status is 200 to 499 (it is also the target group's success code, \
                     which Application Load Balancers take from 200 to 499); found {}",
                    health.expect_status
                ),
            );
        }
        duration(
            &["health", "timeout"],
            health.timeout.0,
            &limits::HEALTH_TIMEOUT,
        );
        // Verify.
        for (i, command) in image.verify.commands.iter().enumerate() {
            if command.trim().is_empty() {
                fail(
                    &["verify", "commands"],
                    format!("command {} is empty", i + 1),
                );
            }
        }
        if let Some(timeout) = &image.verify.timeout {
            duration(&["verify", "timeout"], timeout.0, &limits::VERIFY_TIMEOUT);
        }
        // Test.
        for (i, command) in image.test.commands.iter().enumerate() {
            if command.trim().is_empty() {
                fail(&["test", "commands"], format!("command {} is empty", i + 1));
            }
        }
        duration(
            &["test", "timeout"],
            image.test.timeout.0,
            &limits::HEALTH_TIMEOUT,
        );
        self.distribute(name, image);
    }

    /// `[image.NAME.distribute]`: regions, accounts, organization and OU ARNs in AWS's shapes, each
    /// at its place; a per-region key table names exactly the listed regions; and sharing needs a
    /// key the other accounts can be allowed to use (never an AWS managed one such as
    /// `alias/aws/ebs`, whose policy no one can change).
    fn distribute(&self, name: &str, image: &Image) {
        let d = &image.distribute;
        let at = |f: &str| dotted(&["image", name, "distribute", f]);
        let fail = |span: std::ops::Range<usize>, f: &str, rule: String| {
            self.push(span, format!("{}: {rule}", at(f)));
        };
        let seen = listed_once(&d.regions, limits::region, |span, rule| {
            fail(span, "regions", rule);
        });
        let lists: [(&str, &Vec<toml::Spanned<String>>, Check); 3] = [
            ("accounts", &d.accounts, limits::account_id),
            ("organizations", &d.organizations, limits::organization_arn),
            (
                "organizational_units",
                &d.organizational_units,
                limits::organizational_unit_arn,
            ),
        ];
        for (field, values, check) in lists {
            listed_once(values, check, |span, rule| fail(span, field, rule));
        }
        // Each key written, with the region it is for (None: every region).
        let keys: Vec<(Option<&str>, toml::Spanned<String>)> = match d.kms_key.as_ref() {
            None => Vec::new(),
            Some(key) => match key.get_ref() {
                KmsKey::All(id) => vec![(None, toml::Spanned::new(key.span(), id.clone()))],
                KmsKey::PerRegion(table) => table
                    .iter()
                    .map(|(r, k)| (Some(r.get_ref().as_str()), k.clone()))
                    .collect(),
            },
        };
        if let Some(KmsKey::PerRegion(table)) = d.kms_key.as_ref().map(|k| k.get_ref()) {
            for region in table.keys() {
                if !seen.contains(region.get_ref().as_str()) {
                    fail(
                        region.span(),
                        "kms_key",
                        format!(
                            "{} is not in `regions` ({}); a per-region key goes with a listed \
                             region",
                            region.get_ref(),
                            names(
                                seen.iter()
                                    .map(|r| (*r).to_owned())
                                    .collect::<Vec<_>>()
                                    .iter()
                            )
                        ),
                    );
                }
            }
            for region in &d.regions {
                if !table.keys().any(|r| r.get_ref() == region.get_ref()) {
                    fail(
                        region.span(),
                        "regions",
                        format!(
                            "{} has no key in the kms_key table; give every listed region its \
                             key (or one kms_key for all)",
                            region.get_ref()
                        ),
                    );
                }
            }
        }
        for (region, key) in &keys {
            match limits::kms_key(key.get_ref()) {
                Err(rule) => fail(key.span(), "kms_key", rule),
                Ok(Some(arn_region)) => {
                    // A key lives in one region: CopyImage takes only a key of the copy's region.
                    let wrong = match region {
                        Some(region) => *region != arn_region,
                        None => d.regions.iter().any(|r| r.get_ref() != arn_region),
                    };
                    if wrong {
                        fail(
                            key.span(),
                            "kms_key",
                            format!(
                                "the ARN names a key in {arn_region}, but a key is used only in \
                                 its own region{}; use \"alias/NAME\" (an alias of that name in \
                                 each region) or a table of region = key",
                                region
                                    .map_or(String::new(), |r| format!(" and this one is for {r}"))
                            ),
                        );
                    }
                }
                Ok(None) => {}
            }
        }
        if d.shares() {
            let reason = "AWS managed keys cannot be shared: their policy is AWS's and allows \
                          only this account, so the other accounts could not launch the image \
                          or copy; use a customer managed key whose policy allows them";
            let to = || {
                let mut who: Vec<&str> = Vec::new();
                for (field, values) in [
                    ("accounts", &d.accounts),
                    ("organizations", &d.organizations),
                    ("organizational_units", &d.organizational_units),
                ] {
                    if !values.is_empty() {
                        who.push(field);
                    }
                }
                who.join(" and ")
            };
            if keys.is_empty() {
                let span = self.key_span(&["image", name, "distribute"]);
                fail(
                    span,
                    "kms_key",
                    format!(
                        "sharing with {} needs kms_key: without one the images are encrypted \
                         with the default key alias/aws/ebs, and {reason}",
                        to()
                    ),
                );
            }
            for (_, key) in &keys {
                if limits::aws_managed_key(key.get_ref()) {
                    fail(
                        key.span(),
                        "kms_key",
                        format!(
                            "{} cannot be used while sharing with {}: {reason}",
                            key.get_ref(),
                            to()
                        ),
                    );
                }
            }
        }
    }

    /// `access`, `endpoints`, `egress` and `nat_subnet` together: what only a private builder
    /// uses is refused on a public one, and `nat_subnet` only goes with `egress = "nat"`. With
    /// `access` not given these are checked at preflight, once the route table says which it is.
    fn builder_access(&self, name: &str, image: &Image) {
        let builder = &image.builder;
        let at = |f: &'static str| ["image", name, "builder", f];
        let public = builder
            .access
            .as_ref()
            .is_some_and(|a| *a.get_ref() == Access::Public);
        if public && *builder.endpoints.get_ref() == Endpoints::Create {
            self.fail(
                &at("endpoints"),
                "`create` is for a private builder: a public one reaches SSM through its internet \
                 gateway; drop it or set access = \"private\""
                    .to_owned(),
            );
        }
        if public && *builder.egress.get_ref() != Egress::Existing {
            self.fail(
                &at("egress"),
                format!(
                    "`{}` is for a private builder: a public one reaches the internet through its \
                     internet gateway; drop it or set access = \"private\"",
                    builder.egress.get_ref().as_str()
                ),
            );
        }
        if let Some(nat_subnet) = &builder.nat_subnet {
            let path: Vec<String> = at("nat_subnet").iter().map(|s| (*s).to_owned()).collect();
            self.selector(&path, nat_subnet.get_ref(), "subnet");
            if *builder.egress.get_ref() != Egress::Nat {
                self.fail(
                    &at("nat_subnet"),
                    "only goes with egress = \"nat\" (it is where the temporary NAT gateway goes)"
                        .to_owned(),
                );
            }
        }
    }

    /// The image's name, which goes into the builder's client token and the published parameter.
    fn image_name(&self, name: &str) {
        // RunInstances' ClientToken is `<run id>-<image>` (ami::launch).
        let token = format!("{RUN_ID_EXAMPLE}-{name}");
        if let Err(rule) = limits::client_token(&token).and_then(|()| limits::ssm_name_part(name)) {
            self.push(
                self.key_span(&["image", name]),
                format!(
                    "{}: the image name goes into the builder's client token \
                     `<run id>-{name}` and the published parameter `<prefix>/{name}/ami-id`: \
                     {rule}; use at most {} letters, digits and _.-",
                    dotted(&["image", name]),
                    limits::CLIENT_TOKEN_MAX - (token.len() - name.len())
                ),
            );
        }
    }

    /// A resource chosen by id or by tags (`{ id = "subnet-…" }` or `{ tag = { Name = "…" } }`).
    /// `[rollout.NAME.refresh]` and `probe`: StartInstanceRefresh's rules for its preferences
    /// (RefreshPreferences: MinHealthyPercentage 0-100, MaxHealthyPercentage 100-200 and at most
    /// 100 above the minimum, CheckpointPercentages ascending and ending at 100, CheckpointDelay
    /// only with them, CheckpointDelay and BakeTime 0-172,800 s), and bake's: the group's maximum
    /// size holds `max_healthy` percent of desired, and the timeout outlasts the planned pauses.
    fn validate_refresh(&self, name: &str, rollout: &Rollout) {
        let path = |f: &[&str]| -> Vec<String> {
            let mut p = vec!["rollout".to_owned(), name.to_owned()];
            p.extend(f.iter().map(|s| (*s).to_owned()));
            p
        };
        let fail = |f: &[&str], message: String| self.fail(&at_refs(&path(f)), message);
        let refresh = rollout.refresh.get_ref();
        if let Some(min) = refresh.min_healthy
            && min > 100
        {
            fail(
                &["refresh", "min_healthy"],
                format!("a percentage, 0 to 100; found {min}"),
            );
        }
        if let Some(max) = refresh.max_healthy {
            if !limits::MAX_HEALTHY.contains(&max) {
                fail(
                    &["refresh", "max_healthy"],
                    format!("a percentage, 100 to 200; found {max}"),
                );
            } else if let Some(min) = refresh.min_healthy
                && max > u16::from(min) + 100
            {
                fail(
                    &["refresh", "max_healthy"],
                    format!(
                        "at most 100 above min_healthy (AWS's rule); found max_healthy {max} \
                         with min_healthy {min}"
                    ),
                );
            } else {
                let c = rollout.capacity.get_ref();
                let most = u64::from(c.desired) * u64::from(max) / 100;
                if most > u64::from(c.max) {
                    fail(
                        &["refresh", "max_healthy"],
                        format!(
                            "{max}% of the desired {} is {most} instances, more than \
                             capacity.max {}; raise capacity.max or lower max_healthy",
                            c.desired, c.max
                        ),
                    );
                }
            }
        }
        let checkpoints = &refresh.checkpoints;
        if let Some(bad) = checkpoints.iter().find(|p| !(1..=100).contains(*p)) {
            fail(
                &["refresh", "checkpoints"],
                format!("each checkpoint is a percentage, 1 to 100; found {bad}"),
            );
        } else if checkpoints.windows(2).any(|w| w[0] >= w[1]) {
            fail(
                &["refresh", "checkpoints"],
                format!("checkpoints must be ascending, each once; found {checkpoints:?}"),
            );
        } else if checkpoints.last().is_some_and(|last| *last != 100) {
            fail(
                &["refresh", "checkpoints"],
                format!(
                    "the last checkpoint must be 100, so that the refresh replaces every \
                     instance; found {checkpoints:?}"
                ),
            );
        }
        if let Some(delay) = refresh.checkpoint_delay {
            if checkpoints.is_empty() {
                fail(
                    &["refresh", "checkpoint_delay"],
                    "only goes with checkpoints, e.g. checkpoints = [25, 100]".to_owned(),
                );
            }
            self.duration(
                &at_refs(&path(&["refresh", "checkpoint_delay"])),
                delay.0,
                &limits::REFRESH_PAUSE,
            );
        }
        if let Some(bake_time) = refresh.bake_time {
            self.duration(
                &at_refs(&path(&["refresh", "bake_time"])),
                bake_time.0,
                &limits::REFRESH_PAUSE,
            );
        }
        let pauses = refresh.planned_pauses();
        let in_range = |d: Option<crate::config::HumanDuration>| {
            d.is_none_or(|d| limits::duration(d.0, &limits::REFRESH_PAUSE).is_ok())
        };
        if limits::duration(refresh.timeout.0, &limits::REFRESH_TIMEOUT).is_ok()
            && in_range(refresh.checkpoint_delay)
            && in_range(refresh.bake_time)
            && pauses >= refresh.timeout.0
        {
            fail(
                &["refresh", "timeout"],
                format!(
                    "the checkpoints' delays and the bake time alone take {}, as long as the \
                     timeout {}; raise the timeout",
                    limits::human(pauses),
                    limits::human(refresh.timeout.0)
                ),
            );
        }
        let probe = rollout.probe.get_ref();
        if !limits::PROBE_RATE.contains(&probe.rate) {
            fail(
                &["probe", "rate"],
                format!(
                    "requests a second, {} to {}; found {}",
                    limits::PROBE_RATE.start(),
                    limits::PROBE_RATE.end(),
                    probe.rate
                ),
            );
        }
        if let Some(page) = &probe.path
            && let Err(rule) = limits::url_path(page)
        {
            fail(&["probe", "path"], rule);
        }
        self.duration(
            &at_refs(&path(&["probe", "timeout"])),
            probe.timeout.0,
            &limits::PROBE_TIMEOUT,
        );
    }

    fn selector(&self, path: &[String], r: &ResourceRef, kind: &str) {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        match (&r.id, r.tag.is_empty()) {
            (Some(_), false) | (None, true) => {
                let found = if r.id.is_none() {
                    "an empty selector"
                } else {
                    "both"
                };
                self.fail(
                    &refs,
                    format!(
                        "give exactly one of `id` (\"{kind}-…\") or a non-empty `tag` table; found {found}"
                    ),
                );
            }
            (Some(id), true) => {
                if !resource_id(id, kind) {
                    self.fail(
                        &refs,
                        format!("a {kind} id is `{kind}-` and letters or digits; found {id:?}"),
                    );
                }
            }
            (None, false) => {
                for (key, value) in &r.tag {
                    if key.is_empty() || key.chars().count() > limits::TAG_KEY_MAX {
                        self.fail(
                            &refs,
                            format!(
                                "tag keys are 1 to {} characters; found {key:?}",
                                limits::TAG_KEY_MAX
                            ),
                        );
                    } else if value.chars().count() > limits::TAG_VALUE_MAX {
                        self.fail(
                            &refs,
                            format!(
                                "tag values are at most {} characters; the value of `{key}` has {}",
                                limits::TAG_VALUE_MAX,
                                value.chars().count()
                            ),
                        );
                    }
                }
            }
        }
    }

    /// `[rollout.NAME] region`: one region or a list, each a region code once; with the build
    /// region in the file (`region`), each one the image is baked or copied in.
    fn rollout_regions(&self, config: &Config, name: &str, rollout: &Rollout, regions: &[String]) {
        let path = ["rollout", name, "region"];
        if regions.is_empty() {
            self.fail(&path, "an empty list: name one region at least, or leave `region` out for the run's region");
            return;
        }
        let mut shaped = true;
        for (i, region) in regions.iter().enumerate() {
            if let Err(rule) = limits::region(region) {
                self.fail(&path, rule);
                shaped = false;
            } else if regions[..i].contains(region) {
                self.fail(
                    &path,
                    format!("{region} is listed twice: a rollout rolls out to each region once"),
                );
                shaped = false;
            }
        }
        if !shaped || !config.image.contains_key(rollout.image.get_ref()) {
            return;
        }
        if let Some(build) = &config.region
            && let Some(message) = config.region_missing(name, rollout, build)
        {
            self.push(self.span(&path), message);
        }
    }

    fn validate_rollout(&self, config: &Config, name: &str, rollout: &Rollout) {
        let at = |f: &[&str]| -> Vec<String> {
            let mut p = vec!["rollout".to_owned(), name.to_owned()];
            p.extend(f.iter().map(|s| (*s).to_owned()));
            p
        };
        let fail = |f: &[&str], message: String| {
            let p = at(f);
            let refs: Vec<&str> = p.iter().map(String::as_str).collect();
            self.fail(&refs, message);
        };
        let image = rollout.image.get_ref();
        let misspelt = self.misspelled("image").iter().any(|n| n == image);
        if !config.image.contains_key(image)
            && !misspelt
            && self
                .root
                .get("image")
                .and_then(|i| i.get_ref().as_table())
                .is_none_or(|t| !t.contains_key(image.as_str()))
        {
            fail(
                &["image"],
                format!(
                    "no [image.{image}] in this config; images: {}",
                    names(config.image.keys())
                ),
            );
        }
        if let Some(regions) = &rollout.region {
            self.rollout_regions(config, name, rollout, &regions.get_ref().0);
        }
        let c = rollout.capacity.get_ref();
        if c.max > limits::CAPACITY_MAX {
            fail(
                &["capacity", "max"],
                format!(
                    "Auto Scaling takes at most {} instances; found {}",
                    limits::CAPACITY_MAX,
                    c.max
                ),
            );
        } else if !(c.min <= c.desired && c.desired <= c.max) || c.max == 0 {
            fail(
                &["capacity"],
                format!(
                    "need min <= desired <= max and max > 0, found min {} desired {} max {}",
                    c.min, c.desired, c.max
                ),
            );
        }
        if let Some(cpu) = &rollout.cpu_target
            && !(*cpu.get_ref() > 0.0 && *cpu.get_ref() <= 100.0)
        {
            fail(
                &["cpu_target"],
                format!("expected a percentage in (0, 100], found {}", cpu.get_ref()),
            );
        }
        self.validate_refresh(name, rollout);
        let alarms = rollout.alarms.get_ref();
        if alarms.errors == 0 {
            fail(
                &["alarms", "errors"],
                "at least 1 (a threshold of 0 would be in ALARM whenever the load balancer \
                 reports)"
                    .to_owned(),
            );
        }
        if let Err(rule) = limits::alarm_periods(alarms.periods, limits::ALARM_PERIOD_TARGETS) {
            fail(&["alarms", "periods"], rule);
        }
        self.duration(
            &at_refs(&at(&["alarms", "latency"])),
            alarms.latency.0,
            &limits::ALARM_LATENCY,
        );
        if let Some(cpu) = &rollout.cpu_alarm {
            let cpu = cpu.get_ref();
            if !(cpu.threshold > 0.0 && cpu.threshold <= 100.0) {
                fail(
                    &["cpu_alarm", "threshold"],
                    format!("expected a percentage in (0, 100], found {}", cpu.threshold),
                );
            }
            if let Err(rule) = limits::alarm_periods(cpu.periods, limits::ALARM_PERIOD_CPU) {
                fail(&["cpu_alarm", "periods"], rule);
            }
        }
        let refresh = rollout.refresh.get_ref();
        self.duration(
            &at_refs(&at(&["refresh", "warmup"])),
            refresh.warmup.0,
            &limits::REFRESH_WARMUP,
        );
        self.duration(
            &at_refs(&at(&["refresh", "timeout"])),
            refresh.timeout.0,
            &limits::REFRESH_TIMEOUT,
        );
        if rollout.alb_subnets.get_ref().len() < 2 {
            fail(
                &["alb_subnets"],
                "an Application Load Balancer needs subnets in two zones at least".to_owned(),
            );
        }
        for subnet in rollout.alb_subnets.get_ref() {
            self.selector(&at(&["alb_subnets"]), subnet, "subnet");
        }
        if rollout.instance_subnets.get_ref().is_empty() {
            fail(&["instance_subnets"], "name one subnet at least".to_owned());
        }
        for subnet in rollout.instance_subnets.get_ref() {
            self.selector(&at(&["instance_subnets"]), subnet, "subnet");
        }
        self.selector(&at(&["vpc"]), rollout.vpc.get_ref(), "vpc");
        if let Err(rule) = limits::ipv4_cidr(rollout.alb_allow_cidr.get_ref()) {
            fail(&["alb_allow_cidr"], rule);
        }
        if rollout.alb_port == 0 {
            fail(&["alb_port"], "a port is 1 to 65535; found 0".to_owned());
        }
        if let Err(rule) = limits::instance_type(&rollout.instance_type) {
            fail(&["instance_type"], rule);
        }
        if let Some(profile) = &rollout.instance_profile
            && let Err(rule) = limits::instance_profile_name(profile.get_ref())
        {
            fail(&["instance_profile"], rule);
        }
        // Names AWS applies its rules to (see [`limits`]).
        let checks: [(&str, Option<&String>, &NameRule); 6] = [
            ("alb", Some(&rollout.alb), &|n| limits::elb_name(n, true)),
            ("target_group", Some(&rollout.target_group), &|n| {
                limits::elb_name(n, false)
            }),
            (
                "launch_template",
                Some(&rollout.launch_template),
                &limits::launch_template_name,
            ),
            ("asg", Some(&rollout.asg), &|n| {
                limits::group_name(n, "Auto Scaling group")
            }),
            (
                "alb_security_group",
                rollout.alb_security_group.as_ref(),
                &|n| limits::group_name(n, "security group"),
            ),
            (
                "instance_security_group",
                rollout.instance_security_group.as_ref(),
                &|n| limits::group_name(n, "security group"),
            ),
        ];
        for (field, value, rule) in checks {
            if let Some(value) = value
                && let Err(r) = rule(value)
            {
                fail(&[field], r);
            }
        }
        // Instances carry bake's rollout tag beside the user's.
        if let Err(rule) = limits::tags(
            rollout.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            1,
        ) {
            fail(&["tags"], rule);
        }
    }
}

/// A shape check of one listed value, answering the rule it breaks.
type Check = fn(&str) -> Result<(), String>;

/// Checks each of `values` with `check` and that none is listed twice, each problem told to
/// `fail` at the value's place; answers the values that pass, once each.
fn listed_once(
    values: &[toml::Spanned<String>],
    check: Check,
    fail: impl Fn(std::ops::Range<usize>, String),
) -> std::collections::BTreeSet<&str> {
    let mut seen = std::collections::BTreeSet::new();
    for value in values {
        if let Err(rule) = check(value.get_ref()) {
            fail(value.span(), rule);
        } else if !seen.insert(value.get_ref().as_str()) {
            fail(value.span(), format!("{} is listed twice", value.get_ref()));
        }
    }
    seen
}

/// A run id as the janitor writes them (`<yyyymmdd>t<hhmmss>-<6 hex digits>`): what the client
/// token check needs is its length, which tests/config.rs holds to the janitor's.
const RUN_ID_EXAMPLE: &str = "20250101t000000-000000";

/// A rule for a name, answering with the rule when the name breaks it.
type NameRule = dyn Fn(&str) -> Result<(), String>;

fn at_refs(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

/// `kind-` and one or more ASCII letters or digits (`subnet-0123abcd`, `ami-…`, `vpc-…`).
fn resource_id(id: &str, kind: &str) -> bool {
    id.strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::{Access, Egress, Endpoints};

    #[test]
    fn secret_looking_var_is_refused_with_advice() {
        for name in [
            "db_password",
            "API_TOKEN",
            "client-secret",
            "tls_private_key",
        ] {
            let text = MINIMAL.replace(
                "os = \"debian\"",
                &format!("os = \"debian\"\nvars = {{ {name} = \"hunter2\" }}"),
            );
            let msg = error(&text);
            assert!(msg.starts_with("bake.toml:6:10:"), "{name}: {msg}");
            assert!(msg.contains("SSM Parameter Store"), "{msg}");
        }
    }

    #[test]
    fn base_needs_exactly_one_source() {
        let text = MINIMAL.replace(
            "base = { ssm",
            "base = { id = \"ami-0123456789abcdef0\", ssm",
        );
        assert!(error(&text).contains("exactly one of `id`, `ssm` or `name`"));
    }

    #[test]
    fn private_builder_fields_parse_with_their_defaults() {
        let web = &parse(MINIMAL).unwrap().image["web"];
        assert!(web.builder.access.is_none());
        assert_eq!(*web.builder.endpoints.get_ref(), Endpoints::Require);
        assert_eq!(*web.builder.egress.get_ref(), Egress::Existing);
        assert!(web.builder.nat_subnet.is_none());
        let text = MINIMAL.replace(
            "instance_profile = ",
            "access = \"private\"\nendpoints = \"create\"\negress = \"nat\"\n\
             nat_subnet = { tag = { Name = \"Public subnet A\" } }\ninstance_profile = ",
        );
        let web = &parse(&text).unwrap().image["web"];
        assert_eq!(
            web.builder.access.as_ref().map(|a| *a.get_ref()),
            Some(Access::Private)
        );
        assert_eq!(*web.builder.endpoints.get_ref(), Endpoints::Create);
        assert_eq!(*web.builder.egress.get_ref(), Egress::Nat);
        assert!(web.builder.nat_subnet.is_some());
    }

    #[test]
    fn private_only_fields_are_refused_on_a_public_builder_each_at_its_place() {
        let text = MINIMAL.replace(
            "instance_profile = ",
            "access = \"public\"\nendpoints = \"create\"\negress = \"nat\"\n\
             nat_subnet = { id = \"vpc-1\" }\ninstance_profile = ",
        );
        let problems = problems(&text);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].starts_with(
                "bake.toml:10:13: image.web.builder.endpoints: `create` is for a private builder"
            ),
            "{problems:#?}"
        );
        assert!(
            problems[1].starts_with(
                "bake.toml:11:10: image.web.builder.egress: `nat` is for a private builder"
            ),
            "{problems:#?}"
        );
        assert!(
            problems[2].starts_with("bake.toml:12:14: image.web.builder.nat_subnet: a subnet id"),
            "{problems:#?}"
        );
        let lone = MINIMAL.replace(
            "instance_profile = ",
            "nat_subnet = { id = \"subnet-1\" }\ninstance_profile = ",
        );
        let msg = error(&lone);
        assert!(
            msg.starts_with(
                "bake.toml:9:14: image.web.builder.nat_subnet: only goes with egress = \"nat\""
            ),
            "{msg}"
        );
        for (field, value) in [
            ("access", "hidden"),
            ("endpoints", "maybe"),
            ("egress", "nats"),
        ] {
            let bad = MINIMAL.replace(
                "instance_profile = ",
                &format!("{field} = \"{value}\"\ninstance_profile = "),
            );
            let msg = error(&bad);
            assert!(msg.starts_with("bake.toml:9:"), "{field}: {msg}");
            assert!(
                msg.contains(&format!("unknown variant `{value}`")),
                "{field}: {msg}"
            );
        }
    }

    #[test]
    fn allow_cidr_must_be_auto_or_cidr() {
        let text = MINIMAL.replace(
            "instance_profile = ",
            "allow_cidr = \"everyone\"\ninstance_profile = ",
        );
        let msg = error(&text);
        assert!(msg.starts_with("bake.toml:9:14:"), "{msg}");
    }

    #[test]
    fn rollout_must_name_an_existing_image_and_sane_capacity() {
        let misnamed = ROLLOUT.replace("image = \"web\"", "image = \"wbe\"");
        assert_error(
            &format!("{MINIMAL}{misnamed}"),
            "rollout.web.image: no [image.wbe]",
        );
        let bad = ROLLOUT.replace("desired = 1", "desired = 5");
        assert_error(&format!("{MINIMAL}{bad}"), "min <= desired <= max");
    }

    #[test]
    fn every_problem_is_reported_in_one_run_each_at_its_place() {
        let text = format!(
            "region = \"mars-1\"\n{MINIMAL}\n[image.web.health]\nport = 0\nexpect_status = 999\n\
             timeout = \"0s\"\n{}",
            ROLLOUT.replace("max = 2", "max = 4294967295")
        );
        let all = problems(&text);
        let expected = [
            "bake.toml:1:10: region: ",
            "bake.toml:13:8: image.web.health.port: a port is 1 to 65535; found 0",
            "bake.toml:14:17: image.web.health.expect_status: ",
            "bake.toml:15:11: image.web.health.timeout: must be between 10 seconds and 12 hours, found \"0s\"",
            "rollout.web.capacity.max: Auto Scaling takes at most",
        ];
        assert_eq!(all.len(), 5, "{all:#?}");
        for (got, want) in all.iter().zip(expected) {
            assert!(got.contains(want), "{got} does not contain {want}");
        }
        assert!(
            all[4].contains("4294967295") && all[4].contains("2147483647"),
            "{all:#?}"
        );
        // The whole error prints one problem per line.
        let msg = error(&text);
        assert_eq!(msg.lines().count(), 5, "{msg}");
    }

    #[test]
    fn the_test_table_is_on_by_default_and_checked_at_its_line() {
        let config = Config::parse(Path::new("bake.toml"), MINIMAL.to_owned()).unwrap();
        let test = &config.image["web"].test;
        assert!(test.enabled && test.commands.is_empty());
        assert_eq!(test.timeout.0, std::time::Duration::from_secs(600));
        let text =
            format!("{MINIMAL}[image.web.test]\nenabled = false\ncommands = [\"true\", \" \"]\n");
        let line = text.lines().count();
        assert_error(
            &text,
            &format!("bake.toml:{line}:12: image.web.test.commands: command 2 is empty"),
        );
        let msg = error(&format!("{MINIMAL}[image.web.test]\nenable = false\n"));
        assert!(
            msg.contains("unknown field `enable`") && msg.contains("image.web.test"),
            "{msg}"
        );
    }

    #[test]
    fn distribute_reads_regions_accounts_and_keys_with_their_places() {
        let text = format!(
            "{MINIMAL}[image.web.distribute]\nregions = [\"ap-northeast-2\", \"us-east-1\"]\n\
             accounts = [\"111122223333\"]\nkms_key = {{ ap-northeast-2 = \"alias/bake\", us-east-1 = \"alias/bake-use1\" }}\n"
        );
        let config = parse(&text).unwrap();
        let d = &config.image["web"].distribute;
        assert!(d.shares());
        assert_eq!(d.regions.len(), 2);
        let key = d.key_for("us-east-1").unwrap();
        assert_eq!(key.get_ref(), "alias/bake-use1");
        let line = text.lines().count();
        assert_eq!(config.source.locate(key.span().start).line, line);
        assert!(d.key_for("eu-west-1").is_none());
        // One key for every region; nothing to distribute by default.
        let one = parse(&format!(
            "{MINIMAL}[image.web.distribute]\nregions = [\"us-east-1\"]\nkms_key = \"alias/bake\"\n"
        ))
        .unwrap();
        assert_eq!(
            one.image["web"]
                .distribute
                .key_for("eu-west-1")
                .unwrap()
                .get_ref(),
            "alias/bake"
        );
        let none = parse(MINIMAL).unwrap();
        assert!(none.image["web"].distribute.regions.is_empty());
        assert!(!none.image["web"].distribute.shares());
    }

    #[test]
    fn distribute_shapes_are_refused_each_at_its_place() {
        let text = format!(
            "{MINIMAL}[image.web.distribute]\n\
             regions = [\"us-east-1\", \"mars-1\", \"us-east-1\"]\n\
             accounts = [\"1111\"]\n\
             organizations = [\"o-abc\"]\n\
             organizational_units = [\"arn:aws:organizations::111122223333:ou/o-a1b2c3d4e5\"]\n\
             kms_key = \"alias/bake\"\n"
        );
        let first = MINIMAL.lines().count() + 2;
        let all = problems(&text);
        let expect = [
            format!("bake.toml:{first}:25: image.web.distribute.regions: a region code"),
            format!(
                "bake.toml:{first}:35: image.web.distribute.regions: us-east-1 is listed twice"
            ),
            format!(
                "bake.toml:{}:13: image.web.distribute.accounts: an account id is 12 digits",
                first + 1
            ),
            format!(
                "bake.toml:{}:18: image.web.distribute.organizations: an organization ARN",
                first + 2
            ),
            format!(
                "bake.toml:{}:25: image.web.distribute.organizational_units: an organizational unit ARN",
                first + 3
            ),
        ];
        assert_eq!(all.len(), expect.len(), "{all:#?}");
        for (got, want) in all.iter().zip(&expect) {
            assert!(got.starts_with(want.as_str()), "{got}\nwanted {want}");
        }
    }

    #[test]
    fn a_key_table_names_exactly_the_listed_regions_and_an_arn_stays_in_its_region() {
        let text = format!(
            "{MINIMAL}[image.web.distribute]\nregions = [\"us-east-1\", \"eu-west-1\"]\n\
             kms_key = {{ us-east-1 = \"alias/a\", ap-south-1 = \"alias/b\" }}\n"
        );
        let line = MINIMAL.lines().count() + 2;
        let all = problems(&text);
        assert_eq!(all.len(), 2, "{all:#?}");
        assert!(
            all[0].starts_with(&format!(
                "bake.toml:{line}:25: image.web.distribute.regions: eu-west-1 has no key"
            )),
            "{all:#?}"
        );
        assert!(
            all[1].starts_with(&format!(
                "bake.toml:{}:36: image.web.distribute.kms_key: ap-south-1 is not in `regions`",
                line + 1
            )),
            "{all:#?}"
        );
        let arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_error(
            &format!(
                "{MINIMAL}[image.web.distribute]\nregions = [\"us-east-1\", \"eu-west-1\"]\nkms_key = \"{arn}\"\n"
            ),
            "the ARN names a key in us-east-1, but a key is used only in its own region",
        );
        assert_error(
            &format!(
                "{MINIMAL}[image.web.distribute]\nregions = [\"eu-west-1\"]\nkms_key = {{ eu-west-1 = \"{arn}\" }}\n"
            ),
            "this one is for eu-west-1",
        );
        assert_error(
            &format!("{MINIMAL}[image.web.distribute]\nkms_key = \"bake\"\n"),
            "image.web.distribute.kms_key: a KMS key is",
        );
    }

    #[test]
    fn sharing_refuses_no_key_and_the_aws_managed_default_key_with_the_reason() {
        let text = format!(
            "{MINIMAL}[image.web.distribute]\nregions = [\"us-east-1\"]\naccounts = [\"111122223333\"]\n"
        );
        let msg = error(&text);
        let line = MINIMAL.lines().count() + 1;
        assert!(
            msg.starts_with(&format!("bake.toml:{line}:12: image.web.distribute.kms_key: sharing with accounts needs kms_key")),
            "{msg}"
        );
        assert!(msg.contains("AWS managed keys cannot be shared"), "{msg}");
        let text = format!("{text}kms_key = \"alias/aws/ebs\"\n");
        let msg = error(&text);
        assert!(
            msg.starts_with(&format!(
                "bake.toml:{}:11: image.web.distribute.kms_key: alias/aws/ebs cannot be used while sharing with accounts: AWS managed keys cannot be shared",
                line + 3
            )),
            "{msg}"
        );
        assert!(msg.contains("the other accounts could not launch"), "{msg}");
        let per_region = format!(
            "{MINIMAL}[image.web.distribute]\nregions = [\"us-east-1\"]\n\
             organizations = [\"arn:aws:organizations::111122223333:organization/o-a1b2c3d4e5\"]\n\
             kms_key = {{ us-east-1 = \"arn:aws:kms:us-east-1:111122223333:alias/aws/ebs\" }}\n"
        );
        assert_error(&per_region, "while sharing with organizations");
        // The default key without sharing is fine: the images stay in this account.
        parse(&format!(
            "{MINIMAL}[image.web.distribute]\nregions = [\"us-east-1\"]\nkms_key = \"alias/aws/ebs\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn the_store_reads_with_its_defaults_and_is_checked_at_its_lines() {
        let config = parse(&format!("{MINIMAL}[store]\nbucket = \"bake-state\"\n")).unwrap();
        let store = config.store.unwrap();
        assert_eq!(store.bucket.get_ref(), "bake-state");
        assert_eq!(store.prefix.get_ref(), "bake/");
        assert_eq!(
            store.lease_ttl.get_ref().0,
            crate::config::DEFAULT_LEASE_TTL
        );
        assert_eq!(store.lease_key("web"), "bake/leases/web");
        assert!(parse(MINIMAL).unwrap().store.is_none());
        let line = MINIMAL.lines().count() + 1;
        let msg = error(&format!(
            "{MINIMAL}[store]\nbucket = \"Bake_State\"\nprefix = \"/bake\"\nlease_ttl = \"5s\"\n"
        ));
        for (offset, field) in [(1, "bucket"), (2, "prefix"), (3, "lease_ttl")] {
            assert!(
                msg.contains(&format!("bake.toml:{}:", line + offset)),
                "{field}: {msg}"
            );
            assert!(msg.contains(&format!("store.{field}: ")), "{msg}");
        }
        assert!(msg.contains("between 15 seconds and 1 hour"), "{msg}");
        assert_error(&format!("{MINIMAL}[store]\nprefix = \"bake/\"\n"), "bucket");
        assert_error(
            &format!("{MINIMAL}[store]\nbuckett = \"bake-state\"\n"),
            "unknown field `buckett`",
        );
        assert_error(
            &format!("{MINIMAL}[stroe]\nbucket = \"bake-state\"\n"),
            "`store`",
        );
    }

    #[test]
    fn huge_and_zero_durations_are_refused_at_every_duration_field() {
        for (lines, field) in [
            (
                "[image.web.health]\ntimeout = \"300000000000y\"",
                "image.web.health.timeout",
            ),
            (
                "[image.web.verify]\ntimeout = \"300000000000y\"",
                "image.web.verify.timeout",
            ),
            (
                "[image.web.verify]\ntimeout = \"0s\"",
                "image.web.verify.timeout",
            ),
            (
                "[image.web.health]\ntimeout = \"9s\"",
                "image.web.health.timeout",
            ),
            (
                "[image.web.test]\ntimeout = \"9s\"",
                "image.web.test.timeout",
            ),
        ] {
            assert_error(
                &format!("{MINIMAL}{lines}\n"),
                &format!("{field}: must be between"),
            );
        }
        assert_error(
            &with_image("deprecate_after = \"300000000000y\""),
            "image.web.deprecate_after: must be between 1 minute and 10 years",
        );
        assert_error(
            &with_image("deprecate_after = \"0s\""),
            "image.web.deprecate_after",
        );
        for (refresh, field) in [
            ("{ timeout = \"300000000000y\" }", "timeout"),
            ("{ timeout = \"0s\" }", "timeout"),
            ("{ warmup = \"3601s\" }", "warmup"),
        ] {
            assert_error(
                &format!("{MINIMAL}{ROLLOUT}refresh = {refresh}\n"),
                &format!("rollout.web.refresh.{field}: must be between"),
            );
        }
        // The ends of the ranges are accepted.
        parse(&format!(
            "{MINIMAL}{ROLLOUT}refresh = {{ warmup = \"0s\", timeout = \"48h\" }}\n\
             [image.web.health]\ntimeout = \"12h\"\n[image.web.verify]\ntimeout = \"1s\"\n"
        ))
        .unwrap();
        parse(&with_image("deprecate_after = \"10y\"")).unwrap();
        parse(&with_image("deprecate_after = \"1m\"")).unwrap();
        assert!(error(&with_image("deprecate_after = \"11y\"")).contains("10 years"));
    }

    #[test]
    fn volumes_ports_and_status_codes_stay_inside_aws_ranges() {
        let volume = |v: &str| {
            MINIMAL.replace(
                "instance_profile = ",
                &format!("volume = {v}\ninstance_profile = "),
            )
        };
        let msg = error(&volume("{ size = 0, type = \"gp3\" }"));
        assert!(
            msg.contains("bake.toml:9:")
                && msg.contains(
                    "image.web.builder.volume.size: gp3 volumes are 1 to 16384 GiB; found 0"
                ),
            "{msg}"
        );
        assert_error(
            &volume("{ size = 8, type = \"floppy\" }"),
            "image.web.builder.volume.type: unknown EBS volume type `floppy`",
        );
        assert_error(
            &volume("{ size = 4294967295, type = \"gp3\" }"),
            "image.web.builder.volume.size",
        );
        assert_error(
            &volume("{ size = -1, type = \"gp3\" }"),
            "image.web.builder.volume",
        );
        parse(&volume("{ size = 65536, type = \"io2\" }")).unwrap();
        assert_error(
            &format!("{MINIMAL}{ROLLOUT}alb_port = 0\n"),
            "rollout.web.alb_port: a port is 1 to 65535",
        );
        for status in [0, 199, 500, 999] {
            assert_error(
                &format!("{MINIMAL}[image.web.health]\nexpect_status = {status}\n"),
                "image.web.health.expect_status: an expected status is 200 to 499",
            );
        }
        parse(&format!(
            "{MINIMAL}[image.web.health]\nexpect_status = 499\nport = 65535\n"
        ))
        .unwrap();
    }

    #[test]
    fn capacity_stays_inside_auto_scalings_integers_and_consistent() {
        assert_error(
            &format!(
                "{MINIMAL}{}",
                ROLLOUT.replace("max = 2", "max = 4294967295")
            ),
            "rollout.web.capacity.max: Auto Scaling takes at most 2147483647",
        );
        assert_error(
            &format!(
                "{MINIMAL}{}",
                ROLLOUT
                    .replace("max = 2", "max = 0")
                    .replace("min = 1, desired = 1", "min = 0, desired = 0")
            ),
            "rollout.web.capacity: need min <= desired <= max and max > 0",
        );
        parse(&format!(
            "{MINIMAL}{}",
            ROLLOUT.replace("max = 2", "max = 2147483647")
        ))
        .unwrap();
    }

    #[test]
    fn cidrs_ids_selectors_regions_and_instance_types_have_aws_shapes() {
        let cidr = |c: &str| {
            MINIMAL.replace(
                "instance_profile = ",
                &format!("allow_cidr = \"{c}\"\ninstance_profile = "),
            )
        };
        assert!(error(&cidr("10.0.0.1/8")).contains("host bits"));
        assert!(error(&cidr("10.0.0.0/+8")).contains("image.web.builder.allow_cidr"));
        parse(&cidr("10.0.0.0/8")).unwrap();
        let msg = error(&format!(
            "{MINIMAL}{ROLLOUT}alb_allow_cidr = \"0.0.0.1/0\"\n"
        ));
        assert!(
            msg.contains("rollout.web.alb_allow_cidr: ") && msg.contains("host bits"),
            "{msg}"
        );
        let msg =
            error(&MINIMAL.replace("{ tag = { Name = \"Public subnet A\" } }", "{ tag = {} }"));
        assert!(
            msg.contains("bake.toml:8:10: image.web.builder.subnet: give exactly one of"),
            "{msg}"
        );
        let msg = error(&MINIMAL.replace("{ tag = { Name = \"Public subnet A\" } }", "{}"));
        assert!(
            msg.contains("image.web.builder.subnet: ") && msg.contains("empty selector"),
            "{msg}"
        );
        assert_error(
            &MINIMAL.replace(
                "{ tag = { Name = \"Public subnet A\" } }",
                "{ tag = { \"\" = \"x\" } }",
            ),
            "image.web.builder.subnet: tag keys are 1 to 128",
        );
        assert_error(
            &MINIMAL.replace(
                "{ tag = { Name = \"Public subnet A\" } }",
                "{ id = \"sg-1\" }",
            ),
            "a subnet id is `subnet-`",
        );
        assert_error(
            &format!("{MINIMAL}{}", ROLLOUT.replace("vpc-0123", "")),
            "rollout.web.vpc: a vpc id",
        );
        assert_error(
            &format!(
                "{MINIMAL}{}",
                ROLLOUT.replace(
                    "[{ id = \"subnet-a\" }, { id = \"subnet-c\" }]",
                    "[{ id = \"subnet-a\" }, {}]"
                )
            ),
            "rollout.web.alb_subnets: ",
        );
        let msg = error(&format!("region = \"moon-base\"\n{MINIMAL}"));
        assert!(
            msg.starts_with("bake.toml:1:10: region: a region code"),
            "{msg}"
        );
        assert_error(
            &MINIMAL.replace(
                "instance_profile = ",
                "instance_type = \"huge\"\ninstance_profile = ",
            ),
            "image.web.builder.instance_type: an instance type is `family.size`",
        );
        assert_error(
            &format!("{MINIMAL}{ROLLOUT}instance_type = \"T3.Micro\"\n"),
            "rollout.web.instance_type",
        );
        assert_error(
            &MINIMAL.replace("\"SSMInstanceProfile\"", "\"\""),
            "image.web.builder.instance_profile: instance profile names are 1 to 128",
        );
        assert_error(
            &MINIMAL.replace(
                "base = { ssm = \"/aws/service/debian/release/bookworm/latest/amd64\" }",
                "base = { id = \"\" }",
            ),
            "image.web.base.id: an AMI id",
        );
        assert_error(
            &MINIMAL.replace("template = \"nginx\"", "template = \"\""),
            "image.web.template: is empty",
        );
    }

    #[test]
    fn names_keys_and_tags_must_be_non_empty_and_inside_aws_rules() {
        let msg = error(&with_image("vars = { \"\" = \"x\" }"));
        assert!(
            msg.starts_with("bake.toml:6:10: image.web.vars: a var name is one or more characters"),
            "{msg}"
        );
        assert_error(
            &format!("{MINIMAL}{ROLLOUT}tags = {{ \"\" = \"x\" }}\n"),
            "rollout.web.tags: tag keys are 1 to 128",
        );
        assert_error(
            &format!(
                "{MINIMAL}{}",
                ROLLOUT.replace("asg = \"Web-ASG\"", "asg = \"\"")
            ),
            "rollout.web.asg: Auto Scaling group names are 1 to 255",
        );
        let msg = error(&with_image("name = \"web:{{ date }}\""));
        assert!(
            msg.contains("bake.toml:6:8: image.web.name: AMI names allow") && msg.contains("':'"),
            "{msg}"
        );
        let msg = error(
            &MINIMAL
                .replace("[image.web]", "[image.\"\"]")
                .replace("[image.web.builder]", "[image.\"\".builder]"),
        );
        assert!(
            msg.starts_with("bake.toml:2:8: image.\"\": the image name"),
            "{msg}"
        );
    }

    #[test]
    fn health_path_must_be_an_absolute_url_path_without_dot_segments() {
        for path in ["/../../../etc/passwd", "health", "/a b", "/x/%2e%2e/y"] {
            let msg = error(&format!("{MINIMAL}[image.web.health]\npath = \"{path}\"\n"));
            assert!(
                msg.starts_with("bake.toml:11:8: image.web.health.path: "),
                "{path}: {msg}"
            );
        }
        parse(&format!(
            "{MINIMAL}[image.web.health]\npath = \"/healthz\"\n"
        ))
        .unwrap();
    }

    /// The line `{MINIMAL}{ROLLOUT}` ends on: the next line is where a test appends one.
    fn next_line() -> usize {
        format!("{MINIMAL}{ROLLOUT}").lines().count() + 1
    }

    #[test]
    fn refresh_preferences_follow_aws_rules_each_at_its_place() {
        let at = next_line();
        let cases = [
            (
                "refresh = { max_healthy = 99 }",
                27,
                "rollout.web.refresh.max_healthy: a percentage, 100 to 200; found 99",
            ),
            (
                "refresh = { max_healthy = 201 }",
                27,
                "rollout.web.refresh.max_healthy: a percentage, 100 to 200",
            ),
            (
                "refresh = { min_healthy = 90, max_healthy = 200 }",
                45,
                "rollout.web.refresh.max_healthy: at most 100 above min_healthy (AWS's rule); found max_healthy 200 with min_healthy 90",
            ),
            (
                "refresh = { min_healthy = 101 }",
                27,
                "rollout.web.refresh.min_healthy: a percentage, 0 to 100; found 101",
            ),
            (
                "refresh = { checkpoints = [25, 50], checkpoint_delay = \"1m\" }",
                27,
                "rollout.web.refresh.checkpoints: the last checkpoint must be 100",
            ),
            (
                "refresh = { checkpoints = [50, 25, 100], checkpoint_delay = \"1m\" }",
                27,
                "rollout.web.refresh.checkpoints: checkpoints must be ascending",
            ),
            (
                "refresh = { checkpoints = [0, 100], checkpoint_delay = \"1m\" }",
                27,
                "rollout.web.refresh.checkpoints: each checkpoint is a percentage, 1 to 100; found 0",
            ),
            (
                "refresh = { checkpoint_delay = \"1m\" }",
                32,
                "rollout.web.refresh.checkpoint_delay: only goes with checkpoints",
            ),
            (
                "refresh = { checkpoints = [25, 100], checkpoint_delay = \"49h\" }",
                57,
                "rollout.web.refresh.checkpoint_delay: must be between 0 seconds and 2 days, found \"49h\"",
            ),
            (
                "refresh = { bake_time = \"3d\" }",
                25,
                "rollout.web.refresh.bake_time: must be between",
            ),
            (
                "refresh = { checkpoints = [25, 100], timeout = \"30m\" }",
                48,
                "rollout.web.refresh.timeout: the checkpoints' delays and the bake time alone take 1 hour, as long as the timeout 30 minutes",
            ),
            (
                "probe = { rate = 0 }",
                18,
                "rollout.web.probe.rate: requests a second, 1 to 100; found 0",
            ),
            ("probe = { path = \"x\" }", 18, "rollout.web.probe.path: "),
            (
                "probe = { rate = 5, paht = \"/\" }",
                21,
                "unknown field `paht`",
            ),
        ];
        for (line, column, want) in cases {
            let msg = error(&format!("{MINIMAL}{ROLLOUT}{line}\n"));
            let place = format!("bake.toml:{at}:{column}: ");
            assert!(msg.starts_with(&place), "{line}: want {place}, got {msg}");
            assert!(msg.contains(want), "{line}: want {want:?}, got {msg}");
        }
        // capacity.max 2 holds 200% of desired 1; 4 instances of desired 2 do not fit in 3.
        parse(&format!(
            "{MINIMAL}{ROLLOUT}refresh = {{ max_healthy = 200, min_healthy = 100 }}\n"
        ))
        .unwrap();
        let tight = ROLLOUT.replace("desired = 1, max = 2", "desired = 2, max = 3");
        assert_error(
            &format!("{MINIMAL}{tight}refresh = {{ max_healthy = 200 }}\n"),
            "rollout.web.refresh.max_healthy: 200% of the desired 2 is 4 instances, more than capacity.max 3",
        );
        // A canary with room for its pauses, and every preference at once.
        parse(&format!(
            "{MINIMAL}{ROLLOUT}refresh = {{ checkpoints = [25, 100], checkpoint_delay = \"2m\", \
             bake_time = \"1m\", timeout = \"10m\" }}\nprobe = {{ rate = 10, path = \"/\", max_errors = 3 }}\n"
        ))
        .unwrap();
    }

    #[test]
    fn the_default_healthy_range_launches_before_terminating_where_max_size_allows() {
        use crate::config::Refresh;
        let defaults = Refresh::default();
        // Room for twice the desired: launch all replacements first, keep everything healthy.
        assert_eq!(defaults.healthy_range(2, 4), (100, 200));
        assert_eq!(defaults.healthy_range(4, 8), (100, 200));
        // Room for one more of four: 125%, and min stays 90.
        assert_eq!(defaults.healthy_range(4, 5), (90, 125));
        // No room: terminate first as before.
        assert_eq!(defaults.healthy_range(4, 4), (90, 100));
        assert_eq!(defaults.healthy_range(0, 0), (100, 200));
        // A given minimum bounds the default maximum (AWS: at most 100 apart), and the reverse.
        let min50 = Refresh {
            min_healthy: Some(50),
            ..Refresh::default()
        };
        assert_eq!(min50.healthy_range(2, 4), (50, 150));
        let max150 = Refresh {
            max_healthy: Some(150),
            ..Refresh::default()
        };
        assert_eq!(max150.healthy_range(2, 4), (90, 150));
        let canary = Refresh {
            checkpoints: vec![25, 100],
            ..Refresh::default()
        };
        assert_eq!(
            canary.planned_pauses(),
            std::time::Duration::from_secs(3600)
        );
    }
}
