//! The config's types as the file spells them (serde), their defaults, and their JSON Schema
//! (schemars: `bake schema`; each field's doc comment is its description).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

use super::place::Source;

/// bake's config file (bake.toml): images to bake and where to roll them out.
#[derive(Debug, JsonSchema)]
#[schemars(title = "bake.toml", deny_unknown_fields)]
pub struct Config {
    /// Region used when neither `--region` nor the AWS profile sets one.
    pub region: Option<String>,
    /// A directory of the user's own templates; they override or add to the built-in ones.
    #[schemars(with = "Option<PathBuf>")]
    pub templates_dir: Option<Spanned<PathBuf>>,
    /// Images to bake, by name (`[image.NAME]`).
    #[schemars(default)]
    pub image: BTreeMap<String, Image>,
    /// Rollout targets, by name (`[rollout.NAME]`).
    #[schemars(default)]
    pub rollout: BTreeMap<String, Rollout>,
    /// Var names that look like secrets but are not (`public_vars = ["pass_rate"]`): a var whose
    /// name contains a secret word (password, secret, token, key, ...) is refused otherwise.
    #[schemars(default)]
    pub public_vars: Vec<String>,
    /// Where bake keeps what outlives a run (`[store]`): the per-image lease that keeps two
    /// runners from baking the same image at once, and the bake records. Without it, bake uses
    /// a local lock file and keeps no records.
    pub store: Option<Store>,
    /// Where the file was read from, for messages and relative paths.
    #[schemars(skip)]
    pub source: Source,
}

/// One golden image: what to start from, what to run on it, how to check it.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Image {
    /// The AMI the builder starts from: `{ ssm = "..." }`, `{ id = "ami-..." }` or
    /// `{ name = "pattern-*", owners = [...] }`.
    #[schemars(with = "BaseImage")]
    pub base: Spanned<BaseImage>,
    /// Template name: `lamp` reads `templates/lamp.sh.j2`.
    #[schemars(with = "String")]
    pub template: Spanned<String>,
    /// The operating-system family the template installs packages for.
    pub os: Os,
    /// Values the template sees as `vars.NAME`.
    #[schemars(with = "BTreeMap<String, serde_json::Value>", default)]
    pub vars: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// AMI name template; sees `image`, `date`, `time` and `digest`. When not given, its span is
    /// the image's name in the file.
    #[schemars(with = "String", default = "default_ami_name")]
    pub name: Spanned<String>,
    /// Create the image without rebooting the builder (faster, file systems may be inconsistent).
    #[schemars(default)]
    pub no_reboot: bool,
    /// Deprecate the AMI this long after it is baked (`"90d"`). A deprecated AMI no longer counts
    /// as baked, so the next `bake ami` or `bake pipeline` bakes the image afresh (with the
    /// packages of that day) even when its inputs did not change.
    #[schemars(with = "Option<HumanDuration>")]
    pub deprecate_after: Option<Spanned<HumanDuration>>,
    /// The temporary instance the image is baked on (`[image.NAME.builder]`).
    pub builder: Builder,
    /// The HTTP check that says the user data worked (`[image.NAME.health]`).
    #[schemars(default)]
    pub health: Health,
    /// Commands that must pass on the builder before the image is made (`[image.NAME.verify]`).
    #[schemars(default)]
    pub verify: Verify,
    /// The new AMI booted without user data and checked again (`[image.NAME.test]`).
    #[schemars(default)]
    pub test: Test,
    /// Copies to other regions and sharing with other accounts (`[image.NAME.distribute]`).
    #[schemars(default)]
    pub distribute: Distribute,
}

/// The S3 bucket (in the build region) bake keeps its leases and records in (`[store]`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// An existing general purpose bucket bake may read and write under `prefix`; bake never
    /// creates it (`bake validate` checks that it is there).
    #[schemars(with = "String")]
    pub bucket: Spanned<String>,
    /// The key prefix everything bake writes starts with: `PREFIX` `leases/IMAGE`,
    /// `PREFIX` `records/IMAGE/AMI.json`.
    #[serde(default = "default_store_prefix")]
    #[schemars(with = "String", extend("default" = "bake/"))]
    pub prefix: Spanned<String>,
    /// How long a lease lasts without a heartbeat: a run renews it every third of this, and a
    /// crashed holder's lease may be taken over this long after its last renewal.
    #[serde(default = "default_lease_ttl")]
    #[schemars(with = "HumanDuration", extend("default" = "5m"))]
    pub lease_ttl: Spanned<HumanDuration>,
}

impl Store {
    /// The key of the lease of `image`.
    pub fn lease_key(&self, image: &str) -> String {
        format!("{}leases/{image}", self.prefix.get_ref())
    }
}

fn default_store_prefix() -> Spanned<String> {
    Spanned::new(0..0, "bake/".to_owned())
}

/// Five minutes: a heartbeat every 100 s leaves room for two slow renewals, and a crashed
/// holder delays the next runner (cron, hourly or daily) by a few minutes at most.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5 * 60);

fn default_lease_ttl() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration(DEFAULT_LEASE_TTL))
}

/// The AMI name template when `name` is not given.
pub(super) const DEFAULT_AMI_NAME: &str = "{{ image }}-{{ date }}-{{ digest[:12] }}";

/// [`DEFAULT_AMI_NAME`] as the schema's default.
fn default_ami_name() -> String {
    DEFAULT_AMI_NAME.to_owned()
}

/// Where the base AMI comes from: exactly one of `id`, `ssm`, or `name` (+ `owners`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
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
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    /// The builder's instance type.
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    /// The subnet the builder runs in, by id or tags.
    #[schemars(with = "ResourceRef")]
    pub subnet: Spanned<ResourceRef>,
    /// Instance profile with AmazonSSMManagedInstanceCore, for the verification commands.
    #[schemars(with = "String")]
    pub instance_profile: Spanned<String>,
    /// Who may reach the health port: `auto` (this runner's address /32) or a CIDR.
    #[serde(default = "default_allow_cidr")]
    #[schemars(with = "String")]
    pub allow_cidr: Spanned<String>,
    /// The builder's root volume (always encrypted).
    #[serde(default)]
    pub volume: Volume,
    /// How the builder is reached: `public` (a public address, the health port open to
    /// `allow_cidr`) or `private` (no public address, no inbound rule: health runs inside it
    /// through SSM). Not given: inferred at preflight from the subnet's route table (a default
    /// route to an internet gateway is public, anything else private).
    #[schemars(with = "Option<Access>")]
    pub access: Option<Spanned<Access>>,
    /// What a private builder does when its VPC lacks the SSM interface endpoints (`ssm`,
    /// `ssmmessages`, `ec2messages`) and has no NAT route: `require` fails preflight naming
    /// them; `create` makes them for the bake and deletes them after.
    #[serde(default = "default_endpoints")]
    #[schemars(with = "Endpoints")]
    pub endpoints: Spanned<Endpoints>,
    /// Where a private builder's packages come from: `existing` (whatever route the subnet has),
    /// `nat` (a temporary NAT gateway for the bake), `none` (no internet at all).
    #[serde(default = "default_egress")]
    #[schemars(with = "Egress")]
    pub egress: Spanned<Egress>,
    /// The public subnet for `egress = "nat"`'s gateway; by default one of the VPC's subnets
    /// whose route table sends 0.0.0.0/0 to an internet gateway.
    #[schemars(with = "Option<ResourceRef>")]
    pub nat_subnet: Option<Spanned<ResourceRef>>,
}

/// How the builder is reached (`builder.access`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// A public address; the health check comes from the runner through the health port.
    Public,
    /// No public address and no inbound rule; the health check runs on the builder through SSM.
    Private,
}

impl Access {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Private => "private",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do about missing SSM interface endpoints (`builder.endpoints`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Endpoints {
    /// Fail preflight naming the missing endpoints and the VPC.
    Require,
    /// Create the missing endpoints (and their security group) for the bake, delete them after.
    Create,
}

/// A private builder's way to the internet while its user data runs (`builder.egress`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// The subnet's routes as they are.
    Existing,
    /// A temporary NAT gateway (and Elastic IP) and a 0.0.0.0/0 route for the bake.
    Nat,
    /// No internet: the template must not need any.
    None,
}

impl Endpoints {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoints::Require => "require",
            Endpoints::Create => "create",
        }
    }
}

impl Egress {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::Existing => "existing",
            Egress::Nat => "nat",
            Egress::None => "none",
        }
    }
}

fn default_endpoints() -> Spanned<Endpoints> {
    Spanned::new(0..0, Endpoints::Require)
}

fn default_egress() -> Spanned<Egress> {
    Spanned::new(0..0, Egress::Existing)
}

pub(super) fn default_instance_type() -> String {
    "t3.micro".to_owned()
}

fn default_allow_cidr() -> Spanned<String> {
    Spanned::new(0..0, "auto".to_owned())
}

/// The builder's root volume (always encrypted).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Size in GiB.
    pub size: u32,
    /// The EBS volume type (`gp3`, `gp2`, `io1`, ...).
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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRef {
    /// The resource's id (`vpc-…`, `subnet-…`).
    pub id: Option<String>,
    /// Tags the resource carries, all of them (`{ Name = "Public subnet A" }`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag: BTreeMap<String, String>,
}

/// The HTTP check that says the builder's user data worked.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// The page requested.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// The port the server listens on.
    pub port: u16,
    /// The HTTP status the page must answer with.
    pub expect_status: u16,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
    /// How long the builder has to serve the page (and be Online in SSM).
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
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    /// Shell commands run in order; the first that fails fails the bake.
    pub commands: Vec<String>,
    /// How long the commands may take together (default 5m).
    pub timeout: Option<HumanDuration>,
}

/// The test stage: one instance launched from the new AMI with no user data must become healthy
/// and pass the verify commands and these, or the AMI is failed (`[image.NAME.test]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Test {
    /// On by default: `enabled = false` ships the AMI untested.
    pub enabled: bool,
    /// Run on the test instance after the verify commands; each must exit 0.
    pub commands: Vec<String>,
    /// How long the test instance has to become healthy (and Online in SSM).
    pub timeout: HumanDuration,
}

impl Default for Test {
    fn default() -> Self {
        Test {
            enabled: true,
            commands: Vec::new(),
            // The AMI holds the installed server: it only boots (about a minute on EC2, with the
            // SSM agent's registration), so 10 minutes is generous and still ends a bad AMI soon.
            timeout: HumanDuration(Duration::from_secs(10 * 60)),
        }
    }
}

/// Where an image's AMI goes once its test passed (`[image.NAME.distribute]`): copies in other
/// regions, each encrypted with its region's key, and launch permission for other accounts,
/// organizations and organizational units on the image and every copy (with create-volume
/// permission on their snapshots for the accounts).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Distribute {
    /// The regions that get the image; the build region (the run's) always has it, listed or not.
    #[schemars(with = "Vec<String>")]
    pub regions: Vec<Spanned<String>>,
    /// 12-digit account ids given launch permission (and create-volume permission on the
    /// snapshots).
    #[schemars(with = "Vec<String>")]
    pub accounts: Vec<Spanned<String>>,
    /// Organization ARNs (`arn:aws:organizations::ACCOUNT:organization/o-…`) given launch
    /// permission.
    #[schemars(with = "Vec<String>")]
    pub organizations: Vec<Spanned<String>>,
    /// Organizational unit ARNs (`arn:aws:organizations::ACCOUNT:ou/o-…/ou-…`) given launch
    /// permission.
    #[schemars(with = "Vec<String>")]
    pub organizational_units: Vec<Spanned<String>>,
    /// The KMS key of the images: one for every region, or a table of region to key. In the
    /// build region it encrypts the builder's volume, so the image; elsewhere each copy.
    #[schemars(with = "Option<KmsKey>")]
    pub kms_key: Option<Spanned<KmsKey>>,
}

impl Distribute {
    /// Whether other accounts get launch permission (so the keys must be usable by them).
    pub fn shares(&self) -> bool {
        !(self.accounts.is_empty()
            && self.organizations.is_empty()
            && self.organizational_units.is_empty())
    }

    /// The key written for `region`, with its place in the file: the one key, or the table's entry.
    pub fn key_for(&self, region: &str) -> Option<Spanned<String>> {
        let key = self.kms_key.as_ref()?;
        match key.get_ref() {
            KmsKey::All(id) => Some(Spanned::new(key.span(), id.clone())),
            KmsKey::PerRegion(table) => table
                .iter()
                .find(|(r, _)| r.get_ref() == region)
                .map(|(_, k)| k.clone()),
        }
    }
}

/// `kms_key`: a key (`alias/NAME`, a key id or an ARN) for every region, or one per region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsKey {
    All(String),
    PerRegion(BTreeMap<Spanned<String>, Spanned<String>>),
}

impl<'de> Deserialize<'de> for KmsKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = KmsKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key (\"alias/NAME\", a key id or ARN) or a table of region = key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KmsKey, E> {
                Ok(KmsKey::All(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<KmsKey, A::Error> {
                let mut table = BTreeMap::new();
                while let Some((region, key)) = map.next_entry()? {
                    table.insert(region, key);
                }
                Ok(KmsKey::PerRegion(table))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Where and how an image is rolled out: ALB, target group, launch template, ASG.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Rollout {
    /// The `[image.NAME]` whose AMIs this rollout uses.
    #[schemars(with = "String")]
    pub image: Spanned<String>,
    /// The regions it rolls out to, one after another in this order (`region = "us-east-1"` or
    /// a list); not given: the run's region. Each uses the image's copy in that region.
    #[schemars(with = "Option<Regions>")]
    pub region: Option<Spanned<Regions>>,
    /// The VPC of the load balancer and the instances, by id or tags.
    #[schemars(with = "ResourceRef")]
    pub vpc: Spanned<ResourceRef>,
    /// Public subnets for the load balancer (two zones at least).
    #[schemars(with = "Vec<ResourceRef>")]
    pub alb_subnets: Spanned<Vec<ResourceRef>>,
    /// Subnets the Auto Scaling group launches instances in.
    #[schemars(with = "Vec<ResourceRef>")]
    pub instance_subnets: Spanned<Vec<ResourceRef>>,
    /// The launch template's name (made when missing; a version is added per AMI).
    pub launch_template: String,
    /// The Auto Scaling group's name (made when missing).
    pub asg: String,
    /// The Application Load Balancer's name (made when missing).
    pub alb: String,
    /// The target group's name (made when missing).
    pub target_group: String,
    /// The load balancer's security group (HTTP from anywhere); default `<alb>-SG`.
    pub alb_security_group: Option<String>,
    /// The instances' security group (HTTP from the ALB's group only); default `<asg>-Inst-SG`.
    pub instance_security_group: Option<String>,
    /// Who may reach the load balancer's listener; an internet-facing ALB serves everyone.
    #[schemars(with = "String", default = "default_alb_allow_cidr")]
    pub alb_allow_cidr: Spanned<String>,
    /// The listener's port (HTTP).
    #[schemars(default = "default_alb_port")]
    pub alb_port: u16,
    /// The instances' type.
    #[schemars(default = "default_instance_type")]
    pub instance_type: String,
    /// The instances' instance profile; none when not given.
    #[schemars(with = "Option<String>")]
    pub instance_profile: Option<Spanned<String>>,
    /// The group's sizes: `{ min = 2, desired = 2, max = 4 }`.
    #[schemars(with = "Capacity")]
    pub capacity: Spanned<Capacity>,
    /// Target-tracking average CPU utilisation, percent.
    #[schemars(with = "Option<f64>")]
    pub cpu_target: Option<Spanned<f64>>,
    /// The target group's alarms (5xx count, response time) that roll a refresh back.
    #[schemars(with = "Alarms", default = "Alarms::default")]
    pub alarms: Spanned<Alarms>,
    /// The group's high-CPU alarm (seed 002); none when not given.
    #[schemars(with = "Option<CpuAlarm>")]
    pub cpu_alarm: Option<Spanned<CpuAlarm>>,
    /// The instance refresh's preferences and deadline.
    #[schemars(with = "Refresh", default = "Refresh::default")]
    pub refresh: Spanned<Refresh>,
    /// The traffic probe through the load balancer during every refresh.
    #[schemars(with = "TrafficProbe", default = "TrafficProbe::default")]
    pub probe: Spanned<TrafficProbe>,
    /// Tags for the instances (e.g. `Name = "ASG-Web-Instance"`).
    #[schemars(default)]
    pub tags: BTreeMap<String, String>,
}

/// `alb_allow_cidr` when not given (parse.rs writes the same): everyone.
fn default_alb_allow_cidr() -> String {
    "0.0.0.0/0".to_owned()
}

/// `alb_port` when not given (parse.rs writes the same).
fn default_alb_port() -> u16 {
    80
}

impl Rollout {
    /// The regions this rollout rolls out to, in order: its `region`, or `run_region`.
    pub fn regions(&self, run_region: &str) -> Vec<String> {
        match &self.region {
            Some(regions) => regions.get_ref().0.clone(),
            None => vec![run_region.to_owned()],
        }
    }
}

/// One region or a list of them, as `region = "us-east-1"` or `region = ["a", "b"]` is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Regions(pub Vec<String>);

impl<'de> Deserialize<'de> for Regions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrMany;
        impl<'de> serde::de::Visitor<'de> for OneOrMany {
            type Value = Regions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a region (\"us-east-1\") or a list of regions")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Regions, E> {
                Ok(Regions(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Regions, A::Error> {
                let mut out = Vec::new();
                while let Some(region) = seq.next_element::<String>()? {
                    out.push(region);
                }
                Ok(Regions(out))
            }
        }
        d.deserialize_any(OneOrMany)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// The fewest instances the group keeps.
    pub min: u32,
    /// The instances the group runs.
    pub desired: u32,
    /// The most instances the group may run (room above desired lets a refresh launch first).
    pub max: u32,
}

/// The target group's CloudWatch alarms, evaluated over one-minute periods (the load balancer's
/// metrics are published every minute).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Alarms {
    /// 5xx answers from the targets in one minute at which a period counts as failing.
    pub errors: u32,
    /// Average target response time at which a period counts as failing.
    pub latency: HumanDuration,
    /// Consecutive failing periods before the alarm goes to ALARM.
    pub periods: u32,
}

impl Default for Alarms {
    fn default() -> Self {
        Alarms {
            // A few errors in a minute is a blip; five is a pattern worth rolling back for.
            errors: 5,
            // Web pages answer well under a second; two seconds on average is broken.
            latency: HumanDuration(Duration::from_secs(2)),
            // Two minutes in a row: one bad minute during a replacement does not roll back.
            periods: 2,
        }
    }
}

/// The group's high-CPU alarm: average CPUUtilization over five-minute periods (EC2's basic
/// monitoring) at or above `threshold` percent for `periods` periods.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuAlarm {
    /// Average CPU utilisation, percent, at which a period counts as high.
    pub threshold: f64,
    /// Consecutive high five-minute periods before the alarm goes to ALARM.
    #[serde(default = "default_cpu_periods")]
    pub periods: u32,
}

fn default_cpu_periods() -> u32 {
    2
}

/// Instance refresh preferences (StartInstanceRefresh's `Preferences`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Refresh {
    /// Percent of desired capacity that must stay healthy during the refresh; by default 90, or
    /// `max_healthy - 100` when that is more (AWS allows at most 100 between the two).
    pub min_healthy: Option<u8>,
    /// Percent of desired capacity that may be in service or pending while instances are
    /// replaced, 100 to 200: above 100 new instances launch before old ones terminate. By
    /// default 200 where the group's maximum size allows it, else the most it allows
    /// ([`Refresh::healthy_range`]).
    pub max_healthy: Option<u16>,
    /// Time a new instance gets before it counts as healthy; also how long a new instance may
    /// be unhealthy in the target group before the rollout is rolled back.
    pub warmup: HumanDuration,
    /// Percentages of the group replaced at which the refresh pauses for `checkpoint_delay`
    /// (ascending, the last 100): `[25, 100]` is a canary of a quarter of the group.
    pub checkpoints: Vec<u8>,
    /// How long the refresh waits at each checkpoint; AWS's default is one hour.
    pub checkpoint_delay: Option<HumanDuration>,
    /// How long the refresh holds the final state, alarms watched, before it is successful.
    pub bake_time: Option<HumanDuration>,
    /// The whole refresh must finish within this, or it is rolled back.
    pub timeout: HumanDuration,
}

/// AWS's CheckpointDelay when CheckpointPercentages is given without one.
pub const AWS_CHECKPOINT_DELAY: Duration = Duration::from_secs(3600);

impl Refresh {
    /// The (min, max) healthy percentages a refresh of a group with `desired` instances and at
    /// most `max` asks for. Unless given, max healthy is the most up to 200 that keeps
    /// `desired * max_healthy / 100` within the group's maximum size (100 at least), and min
    /// healthy is 90 or `max_healthy - 100`, whichever is more.
    pub fn healthy_range(&self, desired: u32, max: u32) -> (u8, u16) {
        let allowed = if desired == 0 {
            200
        } else {
            (u64::from(max) * 100 / u64::from(desired)).clamp(100, 200) as u16
        };
        let max_healthy = self.max_healthy.unwrap_or_else(|| {
            let beside_min = self.min_healthy.map_or(200, |m| u16::from(m) + 100);
            allowed.min(beside_min)
        });
        let min_healthy = self
            .min_healthy
            .unwrap_or_else(|| max_healthy.saturating_sub(100).max(90) as u8);
        (min_healthy, max_healthy)
    }

    /// The time the refresh spends paused on purpose: each checkpoint but the last (100%, the
    /// end) waits `checkpoint_delay`, then the bake time.
    pub fn planned_pauses(&self) -> Duration {
        let delay = self.checkpoint_delay.map_or(AWS_CHECKPOINT_DELAY, |d| d.0);
        let waits = self.checkpoints.len().saturating_sub(1) as u32;
        delay.saturating_mul(waits) + self.bake_time.map_or(Duration::ZERO, |d| d.0)
    }
}

impl Default for Refresh {
    fn default() -> Self {
        Refresh {
            min_healthy: None,
            max_healthy: None,
            // AWS's default instance warmup for instance refresh is 300 s.
            warmup: HumanDuration(Duration::from_secs(300)),
            checkpoints: Vec::new(),
            checkpoint_delay: None,
            bake_time: None,
            // Two batches of new instances with a 5-minute warmup each take about 15 minutes on
            // AWS; twice that means something is stuck.
            timeout: HumanDuration(Duration::from_secs(30 * 60)),
        }
    }
}

/// The traffic probe during a rollout: `rate` requests a second through the load balancer to
/// `path`, each expected to answer the health check's status (`expect_status`; the body is not
/// checked, as old and new versions both serve); more than `max_errors` failed requests roll the
/// rollout back.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficProbe {
    /// Requests a second.
    pub rate: u32,
    /// The page to request; by default the image's health path.
    pub path: Option<String>,
    /// Failed requests tolerated; one more rolls back. By default 0 when the refresh launches
    /// before it terminates (its max healthy percentage above 100), else none is held: replacing
    /// first drops capacity, so the probe only counts (see [`TrafficProbe::max_errors_for`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<u32>,
    /// A request not answered within this fails; a slower answer counts in the latency only.
    pub timeout: HumanDuration,
}

impl TrafficProbe {
    /// The failed requests a refresh to `max_healthy` percent tolerates: `max_errors` when given;
    /// else 0 when new instances launch before old ones go, and none (`None`) when they cannot:
    /// a group whose maximum is its desired capacity loses an instance's worth of capacity while
    /// each is replaced, and a client may see errors however good the new version is.
    pub fn max_errors_for(&self, max_healthy: u16) -> Option<u32> {
        match self.max_errors {
            Some(n) => Some(n),
            None if max_healthy > 100 => Some(0),
            None => None,
        }
    }
}

impl Default for TrafficProbe {
    fn default() -> Self {
        TrafficProbe {
            // Five a second sees a replaced instance's first bad answers within a second or two
            // while adding no load worth measuring.
            rate: 5,
            path: None,
            max_errors: None,
            // A visitor gives up after seconds, not at the load balancer's 60 s idle timeout;
            // 10 s leaves a slow answer to the latency figures and calls no answer a failure.
            timeout: HumanDuration(Duration::from_secs(10)),
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

/// The schema of a duration: a string humantime reads (checked by bake, not by the schema).
impl JsonSchema for HumanDuration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "examples": ["90s", "15m", "1h 30m", "90d"],
        })
    }
}

/// The schema of `region`: one region or a list of them.
impl JsonSchema for Regions {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Regions".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } },
            ],
        })
    }
}

/// The schema of `kms_key`: one key, or a table of region to key.
impl JsonSchema for KmsKey {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KmsKey".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                { "type": "string" },
                { "type": "object", "additionalProperties": { "type": "string" } },
            ],
        })
    }
}
