//! The config file (`bake.toml`): its types, parsing with positions, and validation.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

use crate::limits;

/// The whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Region used when neither `--region` nor the AWS profile sets one.
    pub region: Option<String>,
    /// A directory of the user's own templates; they override or add to the built-in ones.
    pub templates_dir: Option<Spanned<PathBuf>>,
    /// Images to bake, by name.
    #[serde(default)]
    pub image: BTreeMap<String, Image>,
    /// Rollout targets, by name.
    #[serde(default)]
    pub rollout: BTreeMap<String, Rollout>,
    /// Where the file was read from, for messages and relative paths.
    #[serde(skip)]
    pub source: Source,
}

/// One golden image: what to start from, what to run on it, how to check it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub base: Spanned<BaseImage>,
    /// Template name: `lamp` reads `templates/lamp.sh.j2`.
    pub template: Spanned<String>,
    pub os: Os,
    /// Values the template sees as `vars.NAME`.
    #[serde(default)]
    pub vars: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// AMI name template; sees `image`, `date`, `time` and `digest`.
    #[serde(default = "default_ami_name")]
    pub name: Spanned<String>,
    /// Create the image without rebooting the builder (faster, file systems may be inconsistent).
    #[serde(default)]
    pub no_reboot: bool,
    /// Deprecate the AMI this long after it is baked (`"90d"`). A deprecated AMI no longer counts
    /// as baked, so the next `bake ami` or `bake pipeline` bakes the image afresh (with the
    /// packages of that day) even when its inputs did not change.
    #[serde(default)]
    pub deprecate_after: Option<Spanned<HumanDuration>>,
    pub builder: Builder,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub verify: Verify,
}

fn default_ami_name() -> Spanned<String> {
    Spanned::new(0..0, "{{ image }}-{{ date }}-{{ digest[:12] }}".to_owned())
}

/// Where the base AMI comes from: exactly one of `id`, `ssm`, or `name` (+ `owners`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BaseImage {
    /// A fixed AMI id.
    pub id: Option<String>,
    /// A public or private SSM parameter holding an AMI id.
    pub ssm: Option<String>,
    /// An AMI name pattern (`*` wildcards); the newest match wins.
    pub name: Option<String>,
    /// Owners to search with `name` (account ids, `self`, `amazon`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
}

/// The operating-system family the template installs packages for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    /// Amazon Linux 2023 (dnf).
    Al2023,
    /// Debian and Ubuntu (apt).
    Debian,
}

impl Os {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Os::Al2023 => "al2023",
            Os::Debian => "debian",
        }
    }
}

impl fmt::Display for Os {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The temporary instance the image is baked on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    pub subnet: Spanned<ResourceRef>,
    /// Instance profile with AmazonSSMManagedInstanceCore, for the verification commands.
    pub instance_profile: Spanned<String>,
    /// Who may reach the health port: `auto` (this runner's address /32) or a CIDR.
    #[serde(default = "default_allow_cidr")]
    pub allow_cidr: Spanned<String>,
    #[serde(default)]
    pub volume: Volume,
}

fn default_instance_type() -> String {
    "t3.micro".to_owned()
}

fn default_allow_cidr() -> Spanned<String> {
    Spanned::new(0..0, "auto".to_owned())
}

/// The builder's root volume (always encrypted).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Size in GiB.
    pub size: u32,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Default for Volume {
    fn default() -> Self {
        Volume {
            size: 8,
            kind: "gp3".to_owned(),
        }
    }
}

/// A resource found by id or by tags.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResourceRef {
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag: BTreeMap<String, String>,
}

/// The HTTP check that says the builder's user data worked.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    pub path: Spanned<String>,
    pub port: u16,
    pub expect_status: u16,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
    pub timeout: HumanDuration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: Spanned::new(0..0, "/".to_owned()),
            port: 80,
            expect_status: 200,
            expect_body: None,
            // Package installs on a fresh builder take minutes; 15m leaves room for slow mirrors.
            timeout: HumanDuration(Duration::from_secs(15 * 60)),
        }
    }
}

/// Commands run on the builder through SSM; all must exit 0.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    pub commands: Vec<String>,
    pub timeout: Option<HumanDuration>,
}

/// Where and how an image is rolled out: ALB, target group, launch template, ASG.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The `[image.NAME]` whose AMIs this rollout uses.
    pub image: Spanned<String>,
    pub vpc: Spanned<ResourceRef>,
    /// Public subnets for the load balancer (two zones at least).
    pub alb_subnets: Spanned<Vec<ResourceRef>>,
    /// Subnets the Auto Scaling group launches instances in.
    pub instance_subnets: Spanned<Vec<ResourceRef>>,
    pub launch_template: String,
    pub asg: String,
    pub alb: String,
    pub target_group: String,
    /// The load balancer's security group (HTTP from anywhere); default `<alb>-SG`.
    pub alb_security_group: Option<String>,
    /// The instances' security group (HTTP from the ALB's group only); default `<asg>-Inst-SG`.
    pub instance_security_group: Option<String>,
    /// Who may reach the load balancer's listener; an internet-facing ALB serves everyone.
    #[serde(default = "default_alb_allow_cidr")]
    pub alb_allow_cidr: Spanned<String>,
    /// The listener's port (HTTP).
    #[serde(default = "default_alb_port")]
    pub alb_port: u16,
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    pub instance_profile: Option<Spanned<String>>,
    pub capacity: Spanned<Capacity>,
    /// Target-tracking average CPU utilisation, percent.
    pub cpu_target: Option<Spanned<f64>>,
    #[serde(default = "default_refresh")]
    pub refresh: Spanned<Refresh>,
    /// Tags for the instances (e.g. `Name = "ASG-Web-Instance"`).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_alb_allow_cidr() -> Spanned<String> {
    Spanned::new(0..0, "0.0.0.0/0".to_owned())
}

fn default_alb_port() -> u16 {
    80
}

fn default_refresh() -> Spanned<Refresh> {
    Spanned::new(0..0, Refresh::default())
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub min: u32,
    pub desired: u32,
    pub max: u32,
}

/// Instance refresh preferences.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Refresh {
    /// Percent of capacity that must stay healthy during the refresh.
    pub min_healthy: u8,
    /// Time a new instance gets before it counts as healthy; also how long a new instance may
    /// be unhealthy in the target group before the rollout is rolled back.
    pub warmup: HumanDuration,
    /// The whole refresh must finish within this, or it is rolled back.
    pub timeout: HumanDuration,
}

impl Default for Refresh {
    fn default() -> Self {
        Refresh {
            min_healthy: 90,
            // AWS's default instance warmup for instance refresh is 300 s.
            warmup: HumanDuration(Duration::from_secs(300)),
            // Two batches of new instances with a 5-minute warmup each take about 15 minutes on
            // AWS; twice that means something is stuck.
            timeout: HumanDuration(Duration::from_secs(30 * 60)),
        }
    }
}

/// A duration written as in `"90s"`, `"15m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write it like \"90s\", \"15m\" or \"1h\""
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// The config file's path and text, for turning byte spans into `file:line:col`.
#[derive(Debug, Default, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// Where a byte offset is, as `path:line:col` (1-based).
    pub fn locate(&self, offset: usize) -> Location {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            path: self.path.clone(),
            line,
            col,
        }
    }

    /// The directory relative paths in the config are resolved against.
    pub fn dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }
}

/// A position in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.col)
    }
}

/// What is wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read the config: {source}", path = path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no [image.{name}] table; images: {known}", path = path.display())]
    UnknownImage {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("{path}: no [rollout.{name}] table; rollouts: {known}", path = path.display())]
    UnknownRollout {
        path: PathBuf,
        name: String,
        known: String,
    },
    /// A problem at a known place in the file.
    #[error("{at}: {message}")]
    At { at: Location, message: String },
    /// A command-line value the config's names cannot be combined with.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

/// EC2 refuses a deprecation time more than 10 years ahead.
const MAX_DEPRECATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Words in a var name that mark it as a secret, with separators removed.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "privatekey",
    "apikey",
];

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, text)
    }

    /// Parses and validates config text that was read from `path`.
    pub fn parse(path: &Path, text: String) -> Result<Config, Error> {
        let source = Source {
            path: path.to_owned(),
            text,
        };
        let mut config: Config = toml::from_str(&source.text).map_err(|e| Error::At {
            at: source.locate(e.span().map_or(0, |s| s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        config.source = source;
        config.validate()?;
        Ok(config)
    }

    /// An error at a span of this file.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> Error {
        Error::At {
            at: self.source.locate(span.start),
            message: message.into(),
        }
    }

    /// The image called `name`, or an error listing the ones there are.
    pub fn image(&self, name: &str) -> Result<&Image, Error> {
        self.image.get(name).ok_or_else(|| Error::UnknownImage {
            path: self.source.path.clone(),
            name: name.to_owned(),
            known: names(self.image.keys()),
        })
    }

    /// The rollout called `name`, or an error listing the ones there are.
    pub fn rollout(&self, name: &str) -> Result<&Rollout, Error> {
        self.rollout.get(name).ok_or_else(|| Error::UnknownRollout {
            path: self.source.path.clone(),
            name: name.to_owned(),
            known: names(self.rollout.keys()),
        })
    }

    /// The directory of the user's own templates, resolved against the config's directory.
    pub fn templates_dir(&self) -> Option<PathBuf> {
        self.templates_dir
            .as_ref()
            .map(|d| self.source.dir().join(d.get_ref()))
    }

    fn validate(&self) -> Result<(), Error> {
        if self.image.is_empty() {
            return Err(self.error_at(0..0, "no [image.NAME] table: there is nothing to bake"));
        }
        for (name, image) in &self.image {
            self.validate_image(name, image)?;
        }
        for (name, rollout) in &self.rollout {
            self.validate_rollout(name, rollout)?;
        }
        self.validate_names()
    }

    /// The names bake derives from the config, against the rules AWS applies to them (see
    /// [`limits`]): the builder's client token and the published parameter from the image name,
    /// the base image's parameter, a rollout's resource names and tags.
    fn validate_names(&self) -> Result<(), Error> {
        let spans: Spans = toml::from_str(&self.source.text).map_err(|e| Error::At {
            at: self.source.locate(e.span().map_or(0, |s| s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        for (key, image) in &spans.image {
            let name = key.get_ref();
            // RunInstances' ClientToken is `<run id>-<image>` (ami::launch).
            let token = format!("{}-{name}", crate::janitor::new_run_id());
            limits::client_token(&token)
                .and_then(|()| limits::ssm_name_part(name))
                .map_err(|rule| {
                    self.error_at(
                        key.span(),
                        format!(
                            "image.{name}: the image name goes into the builder's client token \
                             `<run id>-{name}` and the published parameter `<prefix>/{name}/ami-id`: \
                             {rule}; use at most {} letters, digits and _.-",
                            limits::CLIENT_TOKEN_MAX - (token.len() - name.len())
                        ),
                    )
                })?;
            if let Some(ssm) = image.base.as_ref().and_then(|b| b.get_ref().ssm.as_ref()) {
                limits::ssm_parameter_name(ssm.get_ref()).map_err(|rule| {
                    self.error_at(ssm.span(), format!("image.{name}.base.ssm: {rule}"))
                })?;
            }
        }
        for (name, rollout) in &spans.rollout {
            let field = |f: &str| format!("rollout.{name}.{f}");
            let check = |value: &Option<Spanned<String>>,
                         f: &str,
                         rule: &dyn Fn(&str) -> Result<(), String>|
             -> Result<(), Error> {
                match value {
                    Some(v) => rule(v.get_ref())
                        .map_err(|r| self.error_at(v.span(), format!("{}: {r}", field(f)))),
                    None => Ok(()),
                }
            };
            check(&rollout.alb, "alb", &|n| limits::elb_name(n, true))?;
            check(&rollout.target_group, "target_group", &|n| {
                limits::elb_name(n, false)
            })?;
            check(
                &rollout.launch_template,
                "launch_template",
                &limits::launch_template_name,
            )?;
            check(&rollout.asg, "asg", &|n| {
                limits::group_name(n, "Auto Scaling group")
            })?;
            for f in ["alb_security_group", "instance_security_group"] {
                let value = if f == "alb_security_group" {
                    &rollout.alb_security_group
                } else {
                    &rollout.instance_security_group
                };
                check(value, f, &|n| limits::group_name(n, "security group"))?;
            }
            if let Some(tags) = &rollout.tags {
                // Instances carry bake's rollout tag beside the user's.
                limits::tags(
                    tags.get_ref().iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    1,
                )
                .map_err(|rule| self.error_at(tags.span(), format!("{}: {rule}", field("tags"))))?;
            }
        }
        Ok(())
    }

    fn validate_image(&self, name: &str, image: &Image) -> Result<(), Error> {
        let field = |f: &str| format!("image.{name}.{f}");
        let base = image.base.get_ref();
        let given = [base.id.is_some(), base.ssm.is_some(), base.name.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(self.error_at(
                image.base.span(),
                format!(
                    "{}: give exactly one of `id`, `ssm` or `name` (with `owners`)",
                    field("base")
                ),
            ));
        }
        if base.name.is_some() && base.owners.is_empty() {
            return Err(self.error_at(
                image.base.span(),
                format!(
                    "{}: `name` needs `owners`, e.g. owners = [\"amazon\"]",
                    field("base")
                ),
            ));
        }
        if base.name.is_none() && !base.owners.is_empty() {
            return Err(self.error_at(
                image.base.span(),
                format!("{}: `owners` only goes with `name`", field("base")),
            ));
        }
        for (key, value) in &image.vars {
            let squashed: String = key
                .get_ref()
                .to_ascii_lowercase()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            if let Some(word) = SECRET_WORDS.iter().find(|w| squashed.contains(*w)) {
                return Err(self.error_at(
                    key.span(),
                    format!(
                        "{}: `{}` looks like a secret ({word}); user data is readable by anyone \
                         on the instance and stored in the AMI's launch history: fetch it at boot \
                         from SSM Parameter Store (aws ssm get-parameter --with-decryption) or \
                         Secrets Manager instead",
                        field("vars"),
                        key.get_ref()
                    ),
                ));
            }
            if matches!(
                value.get_ref(),
                toml::Value::Array(_) | toml::Value::Table(_) | toml::Value::Datetime(_)
            ) {
                return Err(self.error_at(
                    value.span(),
                    format!(
                        "{}.{}: expected a string, number or boolean, found {}",
                        field("vars"),
                        key.get_ref(),
                        value.get_ref().type_str()
                    ),
                ));
            }
        }
        self.validate_ref(&image.builder.subnet, &field("builder.subnet"))?;
        let cidr = image.builder.allow_cidr.get_ref();
        if cidr != "auto" && !is_ipv4_cidr(cidr) {
            return Err(self.error_at(
                image.builder.allow_cidr.span(),
                format!(
                    "{}: expected \"auto\" or an IPv4 CIDR like \"203.0.113.7/32\", found {cidr:?}",
                    field("builder.allow_cidr")
                ),
            ));
        }
        if let Some(after) = &image.deprecate_after
            && !(Duration::from_secs(60)..=MAX_DEPRECATION).contains(&after.get_ref().0)
        {
            return Err(self.error_at(
                after.span(),
                format!(
                    "{}: must be between 1 minute and 10 years (EC2's limit), found {}",
                    field("deprecate_after"),
                    humantime::format_duration(after.get_ref().0)
                ),
            ));
        }
        let path = &image.health.path;
        if !path.get_ref().starts_with('/') {
            return Err(self.error_at(
                path.span(),
                format!(
                    "{}: must start with '/', found {:?}",
                    field("health.path"),
                    path.get_ref()
                ),
            ));
        }
        Ok(())
    }

    fn validate_ref(&self, r: &Spanned<ResourceRef>, field: &str) -> Result<(), Error> {
        let inner = r.get_ref();
        if inner.id.is_some() != inner.tag.is_empty() {
            return Err(self.error_at(
                r.span(),
                format!("{field}: give exactly one of `id` or `tag`"),
            ));
        }
        Ok(())
    }

    fn validate_rollout(&self, name: &str, rollout: &Rollout) -> Result<(), Error> {
        let field = |f: &str| format!("rollout.{name}.{f}");
        if !self.image.contains_key(rollout.image.get_ref()) {
            return Err(self.error_at(
                rollout.image.span(),
                format!(
                    "{}: no [image.{}] in this config; images: {}",
                    field("image"),
                    rollout.image.get_ref(),
                    names(self.image.keys())
                ),
            ));
        }
        let c = rollout.capacity.get_ref();
        if !(c.min <= c.desired && c.desired <= c.max) || c.max == 0 {
            return Err(self.error_at(
                rollout.capacity.span(),
                format!(
                    "{}: need min <= desired <= max and max > 0, found min {} desired {} max {}",
                    field("capacity"),
                    c.min,
                    c.desired,
                    c.max
                ),
            ));
        }
        if let Some(cpu) = &rollout.cpu_target
            && !(*cpu.get_ref() > 0.0 && *cpu.get_ref() <= 100.0)
        {
            return Err(self.error_at(
                cpu.span(),
                format!("{}: expected a percentage in (0, 100]", field("cpu_target")),
            ));
        }
        if rollout.refresh.get_ref().min_healthy > 100 {
            return Err(self.error_at(
                rollout.refresh.span(),
                format!(
                    "{}: min_healthy is a percentage, 0 to 100",
                    field("refresh")
                ),
            ));
        }
        if rollout.alb_subnets.get_ref().len() < 2 {
            return Err(self.error_at(
                rollout.alb_subnets.span(),
                format!(
                    "{}: an Application Load Balancer needs subnets in two zones at least",
                    field("alb_subnets")
                ),
            ));
        }
        if rollout.instance_subnets.get_ref().is_empty() {
            return Err(self.error_at(
                rollout.instance_subnets.span(),
                format!("{}: name one subnet at least", field("instance_subnets")),
            ));
        }
        self.validate_ref(&rollout.vpc, &field("vpc"))?;
        if !is_ipv4_cidr(rollout.alb_allow_cidr.get_ref()) {
            return Err(self.error_at(
                rollout.alb_allow_cidr.span(),
                format!(
                    "{}: expected an IPv4 CIDR such as \"0.0.0.0/0\", found {:?}",
                    field("alb_allow_cidr"),
                    rollout.alb_allow_cidr.get_ref()
                ),
            ));
        }
        Ok(())
    }
}

/// The places in the file of what [`Config::validate_names`] checks (serde keeps no span for map
/// keys or plain strings in [`Config`]); everything else is ignored.
#[derive(Deserialize)]
struct Spans {
    #[serde(default)]
    image: BTreeMap<Spanned<String>, ImageSpans>,
    #[serde(default)]
    rollout: BTreeMap<String, RolloutSpans>,
}

#[derive(Deserialize)]
struct ImageSpans {
    base: Option<Spanned<BaseSpans>>,
}

#[derive(Deserialize)]
struct BaseSpans {
    ssm: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RolloutSpans {
    alb: Option<Spanned<String>>,
    target_group: Option<Spanned<String>>,
    launch_template: Option<Spanned<String>>,
    asg: Option<Spanned<String>>,
    alb_security_group: Option<Spanned<String>>,
    instance_security_group: Option<Spanned<String>>,
    tags: Option<Spanned<BTreeMap<String, String>>>,
}

fn names<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = keys.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

fn is_ipv4_cidr(text: &str) -> bool {
    let Some((addr, len)) = text.split_once('/') else {
        return false;
    };
    addr.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
}

impl Error {
    /// Where in the config the error is, when it is at a known place (for `-o json`).
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::At { at, .. } => Some(at),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[image.web]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"
os = "debian"

[image.web.builder]
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"
"#;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("bake.toml"), text.to_owned())
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        let web = &config.image["web"];
        assert_eq!(web.builder.instance_type, "t3.micro");
        assert_eq!(web.builder.allow_cidr.get_ref(), "auto");
        assert_eq!(web.health.port, 80);
        assert_eq!(web.health.timeout.0, Duration::from_secs(900));
        assert_eq!(web.builder.volume.kind, "gp3");
    }

    #[test]
    fn misspelled_field_names_line_column_and_field() {
        let text = MINIMAL.replace("instance_profile", "instnace_profile");
        let msg = error(&text);
        assert!(
            msg.starts_with("bake.toml:9:1: unknown field `instnace_profile`"),
            "{msg}"
        );
        assert!(msg.contains("expected one of"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line_and_expected_type() {
        let text = format!("{MINIMAL}\n[image.web.health]\nport = \"eighty\"\n");
        let msg = error(&text);
        assert!(msg.starts_with("bake.toml:12:8:"), "{msg}");
        assert!(msg.contains("u16"), "{msg}");
    }

    #[test]
    fn bad_duration_names_its_place() {
        let text = format!("{MINIMAL}\n[image.web.health]\ntimeout = \"15 minuets\"\n");
        let msg = error(&text);
        assert!(
            msg.starts_with("bake.toml:12:11: invalid duration"),
            "{msg}"
        );
    }

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
        let rollout = r#"
[rollout.web]
image = "wbe"
vpc = { tag = { Name = "VPC-Lab" } }
alb_subnets = [{ id = "subnet-a" }, { id = "subnet-c" }]
instance_subnets = [{ id = "subnet-b" }]
launch_template = "Web"
asg = "Web-ASG"
alb = "Web-ALB"
target_group = "Web-TG"
capacity = { min = 2, desired = 2, max = 4 }
"#;
        let msg = error(&format!("{MINIMAL}{rollout}"));
        assert!(msg.contains("rollout.web.image: no [image.wbe]"), "{msg}");
        let bad = rollout
            .replace("\"wbe\"", "\"web\"")
            .replace("desired = 2", "desired = 5");
        let msg = error(&format!("{MINIMAL}{bad}"));
        assert!(msg.contains("min <= desired <= max"), "{msg}");
    }

    #[test]
    fn locate_counts_lines_and_columns_from_one() {
        let source = Source {
            path: "x.toml".into(),
            text: "a\nbc\nd".into(),
        };
        assert_eq!(source.locate(0).to_string(), "x.toml:1:1");
        assert_eq!(source.locate(3).to_string(), "x.toml:2:2");
        assert_eq!(source.locate(5).to_string(), "x.toml:3:1");
    }
}
