//! The config file (`bake.toml`): its types, parsing with positions, and validation against the
//! ranges and shapes AWS accepts, reporting every problem found, each at its file:line:col.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::limits;

/// The whole config file.
#[derive(Debug)]
pub struct Config {
    /// Region used when neither `--region` nor the AWS profile sets one.
    pub region: Option<String>,
    /// A directory of the user's own templates; they override or add to the built-in ones.
    pub templates_dir: Option<Spanned<PathBuf>>,
    /// Images to bake, by name.
    pub image: BTreeMap<String, Image>,
    /// Rollout targets, by name.
    pub rollout: BTreeMap<String, Rollout>,
    /// Var names that look like secrets but are not (`public_vars = ["pass_rate"]`); see
    /// [`SECRET_WORDS`].
    pub public_vars: Vec<String>,
    /// Where the file was read from, for messages and relative paths.
    pub source: Source,
}

/// One golden image: what to start from, what to run on it, how to check it.
#[derive(Debug)]
pub struct Image {
    pub base: Spanned<BaseImage>,
    /// Template name: `lamp` reads `templates/lamp.sh.j2`.
    pub template: Spanned<String>,
    pub os: Os,
    /// Values the template sees as `vars.NAME`.
    pub vars: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// AMI name template; sees `image`, `date`, `time` and `digest`. When not given, its span is
    /// the image's name in the file.
    pub name: Spanned<String>,
    /// Create the image without rebooting the builder (faster, file systems may be inconsistent).
    pub no_reboot: bool,
    /// Deprecate the AMI this long after it is baked (`"90d"`). A deprecated AMI no longer counts
    /// as baked, so the next `bake ami` or `bake pipeline` bakes the image afresh (with the
    /// packages of that day) even when its inputs did not change.
    pub deprecate_after: Option<Spanned<HumanDuration>>,
    pub builder: Builder,
    pub health: Health,
    pub verify: Verify,
}

/// The AMI name template when `name` is not given.
const DEFAULT_AMI_NAME: &str = "{{ image }}-{{ date }}-{{ digest[:12] }}";

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
#[derive(Debug)]
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
    pub alb_allow_cidr: Spanned<String>,
    /// The listener's port (HTTP).
    pub alb_port: u16,
    pub instance_type: String,
    pub instance_profile: Option<Spanned<String>>,
    pub capacity: Spanned<Capacity>,
    /// Target-tracking average CPU utilisation, percent.
    pub cpu_target: Option<Spanned<f64>>,
    pub refresh: Spanned<Refresh>,
    /// Tags for the instances (e.g. `Name = "ASG-Web-Instance"`).
    pub tags: BTreeMap<String, String>,
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
    /// Several problems, in the order of the file, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    List(Vec<Error>),
}

impl Error {
    /// One error as it is, several as a [`Error::List`] sorted by place in the file.
    fn from_list(mut errors: Vec<Error>) -> Error {
        errors.sort_by_key(|e| match e {
            Error::At { at, .. } => (at.line, at.col),
            _ => (0, 0),
        });
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            Error::List(errors)
        }
    }

    /// Each single problem (a [`Error::List`] flattened).
    pub fn problems(&self) -> Vec<&Error> {
        match self {
            Error::List(list) => list.iter().flat_map(Error::problems).collect(),
            other => vec![other],
        }
    }
}

/// Words that mark a var name as a secret when they are one of its parts, or several adjacent
/// parts run together (parts are split at `_`, `-`, other punctuation, case changes and digits,
/// after look-alike letters are folded to their Latin ones): `db_pass`, `apiKey`,
/// `AWS_ACCESS_KEY_ID` and `tls_private_key` match; `secretary_name` and `tokenizer_model` do
/// not. A name that only looks secret goes into the top-level `public_vars` list.
pub const SECRET_WORDS: &[&str] = &[
    "password",
    "passwords",
    "passwd",
    "pass",
    "pwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "tokens",
    "credential",
    "credentials",
    "creds",
    "privatekey",
    "accesskey",
    "secretkey",
    "apikey",
    "sshkey",
    "signingkey",
    "encryptionkey",
    "sessionkey",
    "masterkey",
];

/// The known top-level keys.
const TOP_KEYS: &[&str] = &["region", "templates_dir", "image", "rollout", "public_vars"];
const IMAGE_KEYS: &[&str] = &[
    "base",
    "template",
    "os",
    "vars",
    "name",
    "no_reboot",
    "deprecate_after",
    "builder",
    "health",
    "verify",
];
const ROLLOUT_KEYS: &[&str] = &[
    "image",
    "vpc",
    "alb_subnets",
    "instance_subnets",
    "launch_template",
    "asg",
    "alb",
    "target_group",
    "alb_security_group",
    "instance_security_group",
    "alb_allow_cidr",
    "alb_port",
    "instance_type",
    "instance_profile",
    "capacity",
    "cpu_target",
    "refresh",
    "tags",
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

    /// Parses and validates config text that was read from `path`; the error holds every
    /// problem found (a [`Error::List`] when there are several).
    pub fn parse(path: &Path, text: String) -> Result<Config, Error> {
        let source = Source {
            path: path.to_owned(),
            text,
        };
        let (root, syntax) = DeTable::parse_recoverable(&source.text);
        if !syntax.is_empty() {
            let errors = syntax
                .iter()
                .map(|e| Error::At {
                    at: source.locate(e.span().map_or(0, |s| s.start)),
                    message: e.message().trim_end().to_owned(),
                })
                .collect();
            return Err(Error::from_list(errors));
        }
        let doc = Doc {
            source: &source,
            root: root.get_ref(),
            errors: std::cell::RefCell::new(Vec::new()),
        };
        let (mut config, complete) = doc.config();
        doc.validate(&config);
        let errors = doc.errors.into_inner();
        if complete && errors.is_empty() {
            config.source = source;
            Ok(config)
        } else {
            Err(Error::from_list(errors))
        }
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
}

/// The parsed file with its positions, and the problems found so far.
struct Doc<'a> {
    source: &'a Source,
    root: &'a DeTable<'a>,
    errors: std::cell::RefCell<Vec<Error>>,
}

/// A place in the file by field path (`["image", "web", "health", "port"]`).
type FieldPath<'p> = &'p [&'p str];

impl<'a> Doc<'a> {
    fn push(&self, span: Range<usize>, message: String) {
        self.errors.borrow_mut().push(Error::At {
            at: self.source.locate(span.start),
            message,
        });
    }

    /// An error about the field at `path`: `path: message`, at the field's value, or (when the
    /// field is not in the file) at the nearest enclosing name that is.
    fn fail(&self, path: FieldPath<'_>, message: impl fmt::Display) {
        self.push(self.span(path), format!("{}: {message}", dotted(path)));
    }

    /// The value span of `path`, or the key span of its nearest ancestor in the file.
    fn span(&self, path: FieldPath<'_>) -> Range<usize> {
        let mut table = self.root;
        let mut best = 0..0;
        for (i, key) in path.iter().enumerate() {
            let Some((k, v)) = table.get_key_value(*key) else {
                return best;
            };
            if i + 1 == path.len() {
                return v.span();
            }
            best = k.span();
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return v.span(),
            }
        }
        best
    }

    /// The key span of `path` (its name in the file), or the nearest ancestor's.
    fn key_span(&self, path: FieldPath<'_>) -> Range<usize> {
        let mut table = self.root;
        let mut best = 0..0;
        for key in path {
            let Some((k, v)) = table.get_key_value(*key) else {
                break;
            };
            best = k.span();
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => break,
            }
        }
        best
    }

    /// The field path of the innermost value at `span` (for serde's messages, which name none).
    fn path_at(&self, span: &Range<usize>, mut path: Vec<String>) -> String {
        let mut table = self.root;
        let mut value: Option<&DeValue> = None;
        for key in &path {
            value = table.get(key.as_str()).map(|v| v.get_ref());
            match value {
                Some(DeValue::Table(t)) => table = t,
                _ => break,
            }
        }
        if value.is_some_and(|v| !matches!(v, DeValue::Table(_))) {
            return dotted(&path);
        }
        'down: loop {
            for (k, v) in table.iter() {
                let inside = |r: Range<usize>| r.start <= span.start && span.end <= r.end;
                if inside(k.span()) {
                    path.push(k.get_ref().to_string());
                    break 'down;
                }
                if inside(v.span()) {
                    path.push(k.get_ref().to_string());
                    match v.get_ref() {
                        DeValue::Table(t) => {
                            table = t;
                            continue 'down;
                        }
                        _ => break 'down,
                    }
                }
            }
            break;
        }
        dotted(&path)
    }

    /// Deserializes the value at `table[key]` (reached by `path`): `None` when it is absent,
    /// `Some(None)` when it is there but wrong (the error is recorded).
    fn field<T: DeserializeOwned>(
        &self,
        table: &DeTable<'a>,
        path: &[&str],
        key: &str,
    ) -> Option<Option<T>> {
        let value = table.get(key)?;
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(Some(v)),
            Err(e) => {
                let span = e.span().unwrap_or_else(|| value.span());
                let mut owned: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
                owned.push(key.to_owned());
                let field = self.path_at(&span, owned);
                self.push(span, format!("{} (in `{field}`)", plain(e.message())));
                Some(None)
            }
        }
    }

    /// Keys of `table` (at `path`) that are not in `known`.
    fn unknown_keys(&self, table: &DeTable<'a>, path: &[&str], known: &[&str]) {
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = match closest(name, known) {
                Some(k) => format!("; did you mean `{k}`?"),
                None => String::new(),
            };
            let what = if value.get_ref().is_table() {
                "table"
            } else {
                "field"
            };
            let place = if path.is_empty() {
                String::new()
            } else {
                format!(" in `{}`", dotted(path))
            };
            let expected = known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let message = match closest(name, known) {
                Some(k) if path.is_empty() && what == "table" => {
                    format!("unknown table `{name}`, expected `{k}`")
                }
                _ => format!("unknown {what} `{name}`{place}, expected one of {expected}{hint}"),
            };
            self.push(key.span(), message);
        }
    }

    /// The names under top-level tables that look like misspellings of `table`.
    fn misspelled(&self, table: &str) -> Vec<String> {
        self.root
            .iter()
            .filter(|(k, v)| {
                let name = k.get_ref().as_ref();
                name != table
                    && !TOP_KEYS.contains(&name)
                    && closest(name, TOP_KEYS) == Some(table)
                    && v.get_ref().is_table()
            })
            .flat_map(|(_, v)| {
                v.get_ref()
                    .as_table()
                    .map(|t| {
                        t.keys()
                            .map(|k| k.get_ref().to_string())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Builds the config from the file, recording every problem: what could be read, and whether
    /// all of it could (a table that could not be read is left out, so the rest is still checked).
    fn config(&self) -> (Config, bool) {
        self.unknown_keys(self.root, &[], TOP_KEYS);
        let mut ok = true;
        let region: Option<Spanned<String>> = self.optional(self.root, &[], "region", &mut ok);
        let templates_dir = self.optional(self.root, &[], "templates_dir", &mut ok);
        let public_vars: Vec<String> = self
            .optional(self.root, &[], "public_vars", &mut ok)
            .unwrap_or_default();
        let image = self.tables("image", |name, t| self.image(name, t), &mut ok);
        let rollout = self.tables("rollout", |name, t| self.rollout(name, t), &mut ok);
        if let Some(region) = &region
            && let Err(rule) = limits::region(region.get_ref())
        {
            self.fail(&["region"], rule);
        }
        let config = Config {
            region: region.map(Spanned::into_inner),
            templates_dir,
            image,
            rollout,
            public_vars,
            source: Source::default(),
        };
        (config, ok)
    }

    /// Each `[kind.NAME]` table built by `build`, leaving out those that could not be (then `ok`
    /// turns false).
    fn tables<T>(
        &self,
        kind: &str,
        build: impl Fn(&str, &DeTable<'a>) -> Option<T>,
        ok: &mut bool,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        let Some(value) = self.root.get(kind) else {
            return out;
        };
        let Some(table) = value.get_ref().as_table() else {
            self.push(
                value.span(),
                format!(
                    "{kind}: expected [{kind}.NAME] tables, found {}",
                    value.get_ref().type_str()
                ),
            );
            *ok = false;
            return out;
        };
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            let Some(inner) = value.get_ref().as_table() else {
                self.push(
                    value.span(),
                    format!(
                        "{}: expected a table, found {}",
                        dotted(&[kind, name]),
                        value.get_ref().type_str()
                    ),
                );
                *ok = false;
                continue;
            };
            match build(name, inner) {
                Some(v) => {
                    out.insert(name.to_owned(), v);
                }
                None => *ok = false,
            }
        }
        out
    }

    /// An optional field: `None` when absent or wrong (then `ok` turns false).
    fn optional<T: DeserializeOwned>(
        &self,
        table: &DeTable<'a>,
        path: &[&str],
        key: &str,
        ok: &mut bool,
    ) -> Option<T> {
        match self.field(table, path, key) {
            Some(Some(v)) => Some(v),
            Some(None) => {
                *ok = false;
                None
            }
            None => None,
        }
    }

    /// A required field: absent is an error at the table's name, unless the table is only there
    /// because a misspelt table (`[images.web]`) beside it was meant.
    fn required<T: DeserializeOwned>(
        &self,
        table: &DeTable<'a>,
        path: &[&str],
        key: &str,
        explained: bool,
    ) -> Option<T> {
        match self.field(table, path, key) {
            Some(v) => v,
            None => {
                let misspelt = table.keys().any(|k| {
                    let name = k.get_ref().as_ref();
                    name != key && closest(name, &[key]).is_some()
                });
                if !explained && !misspelt {
                    self.push(
                        self.key_span(path),
                        format!("{}: missing field `{key}`", dotted(path)),
                    );
                }
                None
            }
        }
    }

    fn image(&self, name: &str, t: &DeTable<'a>) -> Option<Image> {
        let path = ["image", name];
        self.unknown_keys(t, &path, IMAGE_KEYS);
        let explained = self.misspelled("image").iter().any(|n| n == name);
        let here = self.key_span(&path);
        let mut ok = true;
        let base = self.required(t, &path, "base", explained);
        let template = self.required(t, &path, "template", explained);
        let os = self.required(t, &path, "os", explained);
        let builder: Option<Builder> = self.required(t, &path, "builder", explained);
        let vars = self.optional(t, &path, "vars", &mut ok).unwrap_or_default();
        let ami_name = self
            .optional(t, &path, "name", &mut ok)
            .unwrap_or_else(|| Spanned::new(here.clone(), DEFAULT_AMI_NAME.to_owned()));
        let no_reboot = self
            .optional(t, &path, "no_reboot", &mut ok)
            .unwrap_or(false);
        let deprecate_after = self.optional(t, &path, "deprecate_after", &mut ok);
        let health: Option<Health> = self.optional(t, &path, "health", &mut ok);
        let verify = self
            .optional(t, &path, "verify", &mut ok)
            .unwrap_or_default();
        let mut builder = builder?;
        if builder.allow_cidr.span() == (0..0) {
            let at = self.key_span(&["image", name, "builder"]);
            builder.allow_cidr = Spanned::new(at, builder.allow_cidr.into_inner());
        }
        let mut health = health.unwrap_or_default();
        if health.path.span() == (0..0) {
            let at = self.key_span(&["image", name, "health"]);
            health.path = Spanned::new(at, health.path.into_inner());
        }
        let image = Image {
            base: base?,
            template: template?,
            os: os?,
            vars,
            name: ami_name,
            no_reboot,
            deprecate_after,
            builder,
            health,
            verify,
        };
        ok.then_some(image)
    }

    fn rollout(&self, name: &str, t: &DeTable<'a>) -> Option<Rollout> {
        let path = ["rollout", name];
        self.unknown_keys(t, &path, ROLLOUT_KEYS);
        let explained = self.misspelled("rollout").iter().any(|n| n == name);
        let here = self.key_span(&path);
        let image = self.required(t, &path, "image", explained);
        let vpc = self.required(t, &path, "vpc", explained);
        let alb_subnets = self.required(t, &path, "alb_subnets", explained);
        let instance_subnets = self.required(t, &path, "instance_subnets", explained);
        let launch_template = self.required(t, &path, "launch_template", explained);
        let asg = self.required(t, &path, "asg", explained);
        let alb = self.required(t, &path, "alb", explained);
        let target_group = self.required(t, &path, "target_group", explained);
        let capacity = self.required(t, &path, "capacity", explained);
        let mut ok = true;
        let alb_security_group = self.optional(t, &path, "alb_security_group", &mut ok);
        let instance_security_group = self.optional(t, &path, "instance_security_group", &mut ok);
        let alb_allow_cidr = self
            .optional(t, &path, "alb_allow_cidr", &mut ok)
            .unwrap_or_else(|| Spanned::new(here.clone(), "0.0.0.0/0".to_owned()));
        let alb_port = self.optional(t, &path, "alb_port", &mut ok).unwrap_or(80);
        let instance_type = self
            .optional(t, &path, "instance_type", &mut ok)
            .unwrap_or_else(default_instance_type);
        let instance_profile = self.optional(t, &path, "instance_profile", &mut ok);
        let cpu_target = self.optional(t, &path, "cpu_target", &mut ok);
        let refresh = self
            .optional(t, &path, "refresh", &mut ok)
            .unwrap_or_else(|| Spanned::new(here.clone(), Refresh::default()));
        let tags = self.optional(t, &path, "tags", &mut ok).unwrap_or_default();
        let rollout = Rollout {
            image: image?,
            vpc: vpc?,
            alb_subnets: alb_subnets?,
            instance_subnets: instance_subnets?,
            launch_template: launch_template?,
            asg: asg?,
            alb: alb?,
            target_group: target_group?,
            alb_security_group,
            instance_security_group,
            alb_allow_cidr,
            alb_port,
            instance_type,
            instance_profile,
            capacity: capacity?,
            cpu_target,
            refresh,
            tags,
        };
        ok.then_some(rollout)
    }
}

/// Validation: every value against the range or shape AWS (or bake) accepts.
impl Doc<'_> {
    fn validate(&self, config: &Config) {
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
    }

    /// The image's name, which goes into the builder's client token and the published parameter.
    fn image_name(&self, name: &str) {
        // RunInstances' ClientToken is `<run id>-<image>` (ami::launch).
        let token = format!("{}-{name}", crate::janitor::new_run_id());
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
        let refresh = rollout.refresh.get_ref();
        if refresh.min_healthy > 100 {
            fail(
                &["refresh", "min_healthy"],
                format!("a percentage, 0 to 100; found {}", refresh.min_healthy),
            );
        }
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

/// A deserializer's message without Rust's names for the types: "expected struct Builder" reads
/// "expected a table".
fn plain(message: &str) -> String {
    let mut out = message.trim_end().to_owned();
    for kind in ["struct ", "enum "] {
        while let Some(i) = out.find(&format!("expected {kind}")) {
            let name_start = i + "expected ".len() + kind.len();
            let name_end = out[name_start..]
                .find(|c: char| !c.is_alphanumeric() && c != '_')
                .map_or(out.len(), |j| name_start + j);
            let what = if kind == "struct " {
                "a table"
            } else {
                "one of the listed values"
            };
            out.replace_range(i..name_end, &format!("expected {what}"));
        }
    }
    out
}

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

/// `a.b."c d"`, for messages: names that are not bare TOML keys are quoted.
fn dotted<S: AsRef<str>>(path: &[S]) -> String {
    path.iter()
        .map(|p| {
            let p = p.as_ref();
            let bare = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if bare { p.to_owned() } else { format!("{p:?}") }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The known name `name` most likely stands for: the same in another case or number, or at most
/// two edits away.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = name.to_lowercase();
    let singular = lower.strip_suffix('s').unwrap_or(&lower);
    known
        .iter()
        .map(|k| (*k, edit_distance(singular, k).min(edit_distance(&lower, k))))
        .filter(|(k, d)| *d <= 2 && *d < k.len())
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// The secret word (from [`SECRET_WORDS`]) a var name is made of, if any. Parts are split at
/// punctuation, case changes and letter/digit boundaries, folded to lower case and to their
/// Unicode confusable skeleton (so Cyrillic `а` or fullwidth `ｐ` count as `a` and `p`), then
/// each run of up to four adjacent parts is compared with the words.
pub fn secret_word(name: &str) -> Option<&'static str> {
    let fold = |s: &str| -> String {
        unicode_security::skeleton(&s.to_lowercase())
            .collect::<String>()
            .to_lowercase()
    };
    let parts: Vec<String> = name_parts(name).iter().map(|p| fold(p)).collect();
    let words: Vec<(String, &'static str)> = SECRET_WORDS.iter().map(|w| (fold(w), *w)).collect();
    for start in 0..parts.len() {
        let mut run = String::new();
        for part in parts.iter().skip(start).take(4) {
            run.push_str(part);
            if let Some((_, word)) = words.iter().find(|(w, _)| *w == run) {
                return Some(word);
            }
        }
    }
    None
}

/// `dbPassword2_API-key` → `db`, `Password`, `2`, `API`, `key`.
fn name_parts(name: &str) -> Vec<String> {
    let folded: String = name
        .chars()
        .map(|c| match c {
            // Fullwidth forms of ASCII, so that case and digits split them as ASCII.
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            c => c,
        })
        .collect();
    let mut parts = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = folded.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                parts.push(std::mem::take(&mut current));
            }
            continue;
        }
        if let Some(&prev) = current.chars().last().as_ref() {
            let next = chars.get(i + 1).copied();
            let boundary = (prev.is_numeric() != c.is_numeric())
                || (prev.is_lowercase() && c.is_uppercase())
                || (prev.is_uppercase()
                    && c.is_uppercase()
                    && next.is_some_and(char::is_lowercase));
            if boundary {
                parts.push(std::mem::take(&mut current));
            }
        }
        current.push(c);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

fn names<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = keys.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
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

    /// MINIMAL with `lines` added under `[image.web]`'s header line set.
    fn with_image(lines: &str) -> String {
        MINIMAL.replace("os = \"debian\"", &format!("os = \"debian\"\n{lines}"))
    }

    const ROLLOUT: &str = r#"
[rollout.web]
image = "web"
vpc = { id = "vpc-0123" }
alb_subnets = [{ id = "subnet-a" }, { id = "subnet-c" }]
instance_subnets = [{ tag = { Name = "Private subnet A" } }]
launch_template = "Web"
asg = "Web-ASG"
alb = "Web-ALB"
target_group = "Web-TG"
capacity = { min = 1, desired = 1, max = 2 }
"#;

    fn problems(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
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
        ] {
            let msg = error(&format!("{MINIMAL}{lines}\n"));
            assert!(msg.contains(&format!("{field}: must be between")), "{msg}");
        }
        let msg = error(&with_image("deprecate_after = \"300000000000y\""));
        assert!(
            msg.contains("image.web.deprecate_after: must be between 1 minute and 10 years"),
            "{msg}"
        );
        let msg = error(&with_image("deprecate_after = \"0s\""));
        assert!(msg.contains("image.web.deprecate_after"), "{msg}");
        for (refresh, field) in [
            ("{ timeout = \"300000000000y\" }", "timeout"),
            ("{ timeout = \"0s\" }", "timeout"),
            ("{ warmup = \"3601s\" }", "warmup"),
        ] {
            let msg = error(&format!("{MINIMAL}{ROLLOUT}refresh = {refresh}\n"));
            assert!(
                msg.contains(&format!("rollout.web.refresh.{field}: must be between")),
                "{msg}"
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
        let msg = error(&volume("{ size = 8, type = \"floppy\" }"));
        assert!(
            msg.contains("image.web.builder.volume.type: unknown EBS volume type `floppy`"),
            "{msg}"
        );
        let msg = error(&volume("{ size = 4294967295, type = \"gp3\" }"));
        assert!(msg.contains("image.web.builder.volume.size"), "{msg}");
        let msg = error(&volume("{ size = -1, type = \"gp3\" }"));
        assert!(msg.contains("image.web.builder.volume"), "{msg}");
        parse(&volume("{ size = 65536, type = \"io2\" }")).unwrap();
        let msg = error(&format!("{MINIMAL}{ROLLOUT}alb_port = 0\n"));
        assert!(
            msg.contains("rollout.web.alb_port: a port is 1 to 65535"),
            "{msg}"
        );
        for status in [0, 199, 500, 999] {
            let msg = error(&format!(
                "{MINIMAL}[image.web.health]\nexpect_status = {status}\n"
            ));
            assert!(
                msg.contains("image.web.health.expect_status: an expected status is 200 to 499"),
                "{msg}"
            );
        }
        parse(&format!(
            "{MINIMAL}[image.web.health]\nexpect_status = 499\nport = 65535\n"
        ))
        .unwrap();
    }

    #[test]
    fn capacity_stays_inside_auto_scalings_integers_and_consistent() {
        let msg = error(&format!(
            "{MINIMAL}{}",
            ROLLOUT.replace("max = 2", "max = 4294967295")
        ));
        assert!(
            msg.contains("rollout.web.capacity.max: Auto Scaling takes at most 2147483647"),
            "{msg}"
        );
        let msg = error(&format!(
            "{MINIMAL}{}",
            ROLLOUT
                .replace("max = 2", "max = 0")
                .replace("min = 1, desired = 1", "min = 0, desired = 0")
        ));
        assert!(
            msg.contains("rollout.web.capacity: need min <= desired <= max and max > 0"),
            "{msg}"
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
        let msg = error(&MINIMAL.replace(
            "{ tag = { Name = \"Public subnet A\" } }",
            "{ tag = { \"\" = \"x\" } }",
        ));
        assert!(
            msg.contains("image.web.builder.subnet: tag keys are 1 to 128"),
            "{msg}"
        );
        let msg = error(&MINIMAL.replace(
            "{ tag = { Name = \"Public subnet A\" } }",
            "{ id = \"sg-1\" }",
        ));
        assert!(msg.contains("a subnet id is `subnet-`"), "{msg}");
        let msg = error(&format!("{MINIMAL}{}", ROLLOUT.replace("vpc-0123", "")));
        assert!(msg.contains("rollout.web.vpc: a vpc id"), "{msg}");
        let msg = error(&format!(
            "{MINIMAL}{}",
            ROLLOUT.replace(
                "[{ id = \"subnet-a\" }, { id = \"subnet-c\" }]",
                "[{ id = \"subnet-a\" }, {}]"
            )
        ));
        assert!(msg.contains("rollout.web.alb_subnets: "), "{msg}");
        let msg = error(&format!("region = \"moon-base\"\n{MINIMAL}"));
        assert!(
            msg.starts_with("bake.toml:1:10: region: a region code"),
            "{msg}"
        );
        let msg = error(&MINIMAL.replace(
            "instance_profile = ",
            "instance_type = \"huge\"\ninstance_profile = ",
        ));
        assert!(
            msg.contains("image.web.builder.instance_type: an instance type is `family.size`"),
            "{msg}"
        );
        let msg = error(&format!("{MINIMAL}{ROLLOUT}instance_type = \"T3.Micro\"\n"));
        assert!(msg.contains("rollout.web.instance_type"), "{msg}");
        let msg = error(&MINIMAL.replace("\"SSMInstanceProfile\"", "\"\""));
        assert!(
            msg.contains("image.web.builder.instance_profile: instance profile names are 1 to 128"),
            "{msg}"
        );
        let msg = error(&MINIMAL.replace(
            "base = { ssm = \"/aws/service/debian/release/bookworm/latest/amd64\" }",
            "base = { id = \"\" }",
        ));
        assert!(msg.contains("image.web.base.id: an AMI id"), "{msg}");
        let msg = error(&MINIMAL.replace("template = \"nginx\"", "template = \"\""));
        assert!(msg.contains("image.web.template: is empty"), "{msg}");
    }

    #[test]
    fn names_keys_and_tags_must_be_non_empty_and_inside_aws_rules() {
        let msg = error(&with_image("vars = { \"\" = \"x\" }"));
        assert!(
            msg.starts_with("bake.toml:6:10: image.web.vars: a var name is one or more characters"),
            "{msg}"
        );
        let msg = error(&format!("{MINIMAL}{ROLLOUT}tags = {{ \"\" = \"x\" }}\n"));
        assert!(
            msg.contains("rollout.web.tags: tag keys are 1 to 128"),
            "{msg}"
        );
        let msg = error(&format!(
            "{MINIMAL}{}",
            ROLLOUT.replace("asg = \"Web-ASG\"", "asg = \"\"")
        ));
        assert!(
            msg.contains("rollout.web.asg: Auto Scaling group names are 1 to 255"),
            "{msg}"
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
    fn a_misspelt_table_is_named_at_its_line_and_nothing_else_is_reported() {
        let text = MINIMAL.replace("[image.web]", "[images.web]");
        let all = problems(&text);
        assert_eq!(
            all,
            ["bake.toml:2:2: unknown table `images`, expected `image`"],
            "{all:#?}"
        );
        let all = problems(&format!(
            "{MINIMAL}{}",
            ROLLOUT.replace("[rollout.web]", "[rollouts.web]")
        ));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(
            all[0].contains("unknown table `rollouts`, expected `rollout`"),
            "{all:#?}"
        );
        // A misspelt field is named, and not reported again as missing.
        let all = problems(&MINIMAL.replace("template =", "templat ="));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(
            all[0].starts_with("bake.toml:4:1: unknown field `templat` in `image.web`")
                && all[0].contains("did you mean `template`?"),
            "{all:#?}"
        );
        // A field that really is missing is reported at the image's name.
        let msg = error(&MINIMAL.replace("template = \"nginx\"\n", ""));
        assert_eq!(msg, "bake.toml:2:8: image.web: missing field `template`");
    }

    #[test]
    fn a_bad_image_key_is_reported_at_the_key_not_the_top_of_the_file() {
        let text = MINIMAL
            .replace("[image.web]", "[image.\"web app\"]")
            .replace("[image.web.builder]", "[image.\"web app\".builder]");
        let msg = error(&text);
        assert!(
            msg.starts_with("bake.toml:2:8: image.\"web app\": the image name"),
            "{msg}"
        );
        let msg = error("[image.web]\nbase = 5\n");
        assert!(!msg.contains("bake.toml:1:1"), "{msg}");
        assert!(
            msg.contains(
                "bake.toml:2:8: invalid type: integer `5`, expected a table (in `image.web.base`)"
            ),
            "{msg}"
        );
        assert!(!msg.contains("struct"), "{msg}");
    }

    #[test]
    fn secret_names_are_matched_on_parts_after_folding_look_alikes() {
        for name in [
            "db_pass",
            "pwd",
            "passphrase",
            "credentials",
            "aws_access_key_id",
            "AWS_SECRET_ACCESS_KEY",
            "ssh_key",
            "sshKey",
            "apiKey",
            "GITHUB_TOKEN",
            "dbPassword2",
            "passw0rd",
            "d\u{0430}tabase_p\u{0430}ssword", // Cyrillic а
            "\u{FF50}\u{FF57}\u{FF44}",        // fullwidth ｐｗｄ
            "db\u{0420}ass",                   // Cyrillic Р as a capital
        ] {
            assert!(secret_word(name).is_some(), "{name} should look secret");
        }
        for name in [
            "secretary_name",
            "tokenizer_model",
            "passenger_count",
            "compass",
            "app",
            "title",
            "keynote",
        ] {
            assert!(secret_word(name).is_none(), "{name} should not look secret");
        }
        let text = with_image("vars = { secretary_name = \"Ann\", tokenizer_model = \"bpe\" }");
        parse(&text).unwrap();
        let text = with_image("vars = { pass_rate = \"90\" }");
        assert!(error(&text).contains("list it in `public_vars`"));
        parse(&format!("public_vars = [\"pass_rate\"]\n{text}")).unwrap();
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
}
