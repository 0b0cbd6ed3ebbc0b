//! User data: the minijinja environment over templates/, bounded rendering, shell quoting and its
//! check, the size limit, the digest and AMI names.

mod lint;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::config::{BaseImage, Config, Health, Image, Location, Os, Verify, Volume};

/// EC2 accepts at most 16 KB of user data, counted before base64 encoding.
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// Where the rendered script writes the digest as its very last step.
pub const READY_MARKER: &str = "/var/lib/bake/ready";
/// Where the rendered script reports the line that failed.
pub const FAILED_MARKER: &str = "/var/lib/bake/failed";

/// The templates that ship inside the binary, by loader name (`partials/common.sh.j2`): every
/// file under templates/, listed by build.rs, so a template is built in by being there.
const BUILTIN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_templates.rs"));

const TEMPLATE_SUFFIX: &str = ".sh.j2";
const SHELL: AutoEscape = AutoEscape::Custom("shell");

pub use lint::OPT_OUT as QUOTE_CHECK_OPT_OUT;

/// Template instructions one render may execute (minijinja's fuel). The built-in templates take
/// under 1% of it; a loop that goes on past this is taken for a runaway.
pub const FUEL: u64 = 1_000_000;
/// How deep includes and macro calls may nest (minijinja counts an include as 10 levels).
pub const RECURSION_LIMIT: usize = 200;
/// Rendering stops when user data grows past this: 64 times what EC2 accepts, so a template that
/// would write gigabytes fails at once instead of exhausting memory.
pub const RENDER_CAP: usize = 64 * USER_DATA_LIMIT;
/// Rendering an AMI name stops past this; EC2 allows 128 characters.
pub const AMI_NAME_CAP: usize = 1024;

/// Why user data could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{at}: templates_dir: {path} {why}")]
    TemplatesDir {
        at: Location,
        path: String,
        why: String,
    },
    #[error("{at}: image.{image}.template: no template {name:?} {looked}")]
    MissingTemplate {
        at: Location,
        image: String,
        name: String,
        /// Where bake looked and what it found there.
        looked: String,
    },
    /// An error inside a template: undefined value, syntax error, bad filter, a value placed
    /// where its quoting does not hold, a runaway loop, recursion or output.
    #[error("{file}:{line}: {message} (rendering image.{image} of {config})")]
    Template {
        file: String,
        line: usize,
        message: String,
        image: String,
        config: String,
    },
    #[error("{file}: cannot read this template: {why}{from} (rendering image.{image} of {config})")]
    ReadTemplate {
        file: String,
        why: String,
        /// ` (included from FILE:LINE)`, or empty.
        from: String,
        image: String,
        config: String,
    },
    #[error(
        "{at}: image.{image}: user data is {raw} bytes, and still {compressed} bytes \
         gzip-compressed; EC2 accepts {USER_DATA_LIMIT} bytes at most. Move large files out of \
         the template (download them at boot)"
    )]
    TooLarge {
        at: Location,
        image: String,
        raw: usize,
        compressed: usize,
    },
    #[error("{at}: image.{image}.name: {message}")]
    AmiName {
        at: Location,
        image: String,
        message: String,
    },
}

/// A problem the loader found in a template file, carried through minijinja's error chain.
#[derive(Debug, thiserror::Error)]
enum LoadProblem {
    #[error("cannot read {file}: {why}")]
    Read { file: String, why: String },
    #[error("{file}:{line}: {message}")]
    Unsafe {
        file: String,
        line: usize,
        message: String,
    },
}

/// The output budget of the render on this thread: how much it wrote, its cap, and how much it
/// had produced when it passed the cap.
#[derive(Clone, Copy, Default)]
struct Budget {
    written: usize,
    cap: usize,
    stopped_at: Option<usize>,
}

thread_local! {
    /// Set up by [`Capped`], which counts what the render writes; the formatters read it to stop
    /// the render at the first value past the cap, before quoting or copying a huge value.
    static BUDGET: Cell<Budget> = const {
        Cell::new(Budget { written: 0, cap: 0, stopped_at: None })
    };
}

/// The detail of the error that stops a render past its cap (replaced by bake's own message).
const OVER_CAP_DETAIL: &str = "output cap reached";

/// Collects rendered output up to `cap` and drops the rest, so memory stays bounded; the render
/// stops at its next value (see [`spend`]) or when its fuel runs out.
struct Capped {
    text: Vec<u8>,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        BUDGET.set(Budget {
            cap,
            ..Budget::default()
        });
        Capped { text: Vec::new() }
    }

    /// How much the template had produced when it passed the cap, if it did.
    fn stopped_at(&self) -> Option<usize> {
        BUDGET.get().stopped_at
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if spend(buf.len()).is_ok() {
            self.text.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts `len` more bytes of output; an error (which stops the render) once past the cap.
fn spend(len: usize) -> Result<(), minijinja::Error> {
    let mut budget = BUDGET.get();
    if budget.stopped_at.is_none() {
        let total = budget.written.saturating_add(len);
        if total <= budget.cap {
            budget.written = total;
            BUDGET.set(budget);
            return Ok(());
        }
        budget.stopped_at = Some(total);
        BUDGET.set(budget);
    }
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        OVER_CAP_DETAIL,
    ))
}

/// Stops the render once its output passed the cap (checked after each value is written).
fn stop_past_cap() -> Result<(), minijinja::Error> {
    match BUDGET.get().stopped_at {
        Some(_) => spend(0),
        None => Ok(()),
    }
}

/// The AMI-name formatter: values as they are, and the output cap.
fn name_formatter(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &Value,
) -> Result<(), minijinja::Error> {
    minijinja::escape_formatter(out, state, value)?;
    stop_past_cap()
}

/// What the template sees. Typed, so a template can only use what exists.
#[derive(Serialize)]
struct Context<'a> {
    /// The image's name in the config.
    image: &'a str,
    /// The template's name (`lamp`).
    template: &'a str,
    os: Os,
    /// The user's `vars`.
    vars: BTreeMap<&'a str, &'a toml::Value>,
    health: &'a Health,
    /// The digest of every input; empty in the first of the two passes.
    digest: &'a str,
    /// Path of the readiness marker.
    ready_marker: &'static str,
    /// Path of the failure marker.
    failed_marker: &'static str,
    /// bake's version, for the log line at the top.
    bake_version: &'static str,
}

/// Everything that determines an image, hashed into its digest.
#[derive(Serialize)]
struct DigestInputs<'a> {
    /// The user data rendered with an empty digest.
    user_data: &'a str,
    template: &'a str,
    os: Os,
    base: &'a BaseImage,
    instance_type: &'a str,
    volume: &'a Volume,
    verify: &'a Verify,
    health: &'a Health,
}

/// Rendered user data, ready for RunInstances.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The script as text.
    pub script: String,
    /// What EC2 receives (before base64): the script, or its gzip when the script is over the limit.
    pub payload: Vec<u8>,
    /// Whether `payload` is gzip-compressed.
    pub compressed: bool,
    /// sha256 (hex) over every input of the image.
    pub digest: String,
    /// A short digest of each input the whole digest covers, to say which one changed.
    pub inputs: Inputs,
}

/// The inputs of an image's digest, by name, as [`Inputs`] keys them: the user data (rendered
/// with an empty digest), the template (its name and the os it renders for), the base image as
/// configured, the builder (instance type and volume), verify and health. The resolved base AMI
/// is not here: it is compared by id (tag `bake:base-ami`).
pub const INPUT_NAMES: [&str; 6] = [
    "user-data",
    "template",
    "base",
    "builder",
    "verify",
    "health",
];

/// How many hex digits of an input's sha256 are kept: 48 bits tell a change apart with a
/// collision chance of 2^-48, and six of them fit one tag value (256 characters) with room.
pub const INPUT_DIGEST_LEN: usize = 12;

/// A short digest (first [`INPUT_DIGEST_LEN`] hex digits of sha256) per input of an image, keyed
/// by [`INPUT_NAMES`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Inputs(pub BTreeMap<String, String>);

impl Inputs {
    /// One line for the AMI's `bake:inputs` tag: `base=… builder=… …` (names sorted).
    pub fn to_tag(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Reads a `bake:inputs` tag value; parts that are not `name=digest` are left out.
    pub fn from_tag(value: &str) -> Inputs {
        Inputs(
            value
                .split_whitespace()
                .filter_map(|part| part.split_once('='))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The inputs whose digests differ from `before`'s, in [`INPUT_NAMES`] order; an input
    /// `before` does not know (an older bake's tag) is not counted as changed.
    pub fn changed_since(&self, before: &Inputs) -> Vec<&'static str> {
        INPUT_NAMES
            .into_iter()
            .filter(|name| match (self.0.get(*name), before.0.get(*name)) {
                (Some(now), Some(then)) => now != then,
                _ => false,
            })
            .collect()
    }
}

/// Renders images' user data from the built-in templates and the user's templates_dir.
pub struct Renderer {
    env: Environment<'static>,
    /// AMI name templates: the same bounds, no loader, no shell quoting.
    names: Environment<'static>,
    user_dir: Option<PathBuf>,
    config_path: PathBuf,
}

/// Templates whose values sit in a quoted heredoc, with the first such line: their values must
/// be one line (shared by the loader, which finds them, and the formatter, which enforces it).
type HeredocValues = Arc<Mutex<HashMap<String, usize>>>;

impl Renderer {
    /// A renderer for the templates `config` can see; a `templates_dir` that is not a directory
    /// is an error at its place in the config.
    pub fn new(config: &Config) -> Result<Renderer, Error> {
        let user_dir = config.templates_dir();
        if let (Some(dir), Some(spanned)) = (&user_dir, &config.templates_dir) {
            let why = match std::fs::metadata(dir) {
                Ok(meta) if meta.is_dir() => None,
                Ok(_) => Some("is not a directory".to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                    "does not exist (relative paths are from the config's directory, {})",
                    config.source.dir().display()
                )),
                Err(e) => Some(format!("cannot be read: {e}")),
            };
            if let Some(why) = why {
                return Err(Error::TemplatesDir {
                    at: config.source.locate(spanned.span().start),
                    path: dir.display().to_string(),
                    why,
                });
            }
        }
        let mut env = bounded_env();
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Every template here becomes part of a user-data script, whatever its file is named.
        env.set_auto_escape_callback(|_| SHELL);
        let heredoc_values = HeredocValues::default();
        let seen = Arc::clone(&heredoc_values);
        env.set_formatter(move |out, state, value| shell_formatter(out, state, value, &seen));
        let dir = user_dir.clone();
        let found = Arc::clone(&heredoc_values);
        env.set_loader(move |name| load(dir.as_deref(), name, &found));
        Ok(Renderer {
            env,
            names: {
                let mut names = bounded_env();
                names.set_formatter(name_formatter);
                names
            },
            user_dir,
            config_path: config.source.path.clone(),
        })
    }

    /// Renders `name`'s user data and computes its digest.
    pub fn render(&self, config: &Config, name: &str, image: &Image) -> Result<Rendered, Error> {
        let template_name = image.template.get_ref();
        let file = format!("{template_name}{TEMPLATE_SUFFIX}");
        let known_name = template_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let template = match self.env.get_template(&file) {
            Ok(t) if known_name => t,
            Err(e) if e.kind() != ErrorKind::TemplateNotFound => {
                return Err(self.template_error(&e, name));
            }
            Ok(_) | Err(_) => {
                let at = config.source.locate(image.template.span().start);
                return Err(Error::MissingTemplate {
                    at,
                    image: name.to_owned(),
                    name: template_name.clone(),
                    looked: format!(
                        "(looked for {file} in {}); templates: {}",
                        self.searched(),
                        self.available().join(", ")
                    ),
                });
            }
        };
        let mut context = Context {
            image: name,
            template: template_name,
            os: image.os,
            vars: image
                .vars
                .iter()
                .map(|(k, v)| (k.get_ref().as_str(), v.get_ref()))
                .collect(),
            health: &image.health,
            digest: "",
            ready_marker: READY_MARKER,
            failed_marker: FAILED_MARKER,
            bake_version: env!("CARGO_PKG_VERSION"),
        };
        let run = |context: &Context<'_>| -> Result<String, Error> {
            let mut out = Capped::new(RENDER_CAP);
            let result = template.render_captured_to(context, &mut out);
            match (out.stopped_at(), result) {
                (Some(produced), result) => {
                    let message = format!(
                        "user data grew past {RENDER_CAP} bytes while rendering (stopped at \
                         {produced} bytes; EC2 accepts {USER_DATA_LIMIT}): a loop that writes \
                         without end, or a huge value?"
                    );
                    Err(match result {
                        Err(e) => self.located(innermost(&e), name, message),
                        Ok(_) => Error::Template {
                            file: self.origin(&file),
                            line: 0,
                            message,
                            image: name.to_owned(),
                            config: self.config_path.display().to_string(),
                        },
                    })
                }
                (None, Ok(_)) => Ok(String::from_utf8(out.text).expect("minijinja writes UTF-8")),
                (None, Err(e)) => Err(self.template_error(&e, name)),
            }
        };
        // Two passes: the script holds its own digest, so the digest covers the script without it.
        let first = run(&context)?;
        let digest = digest(&DigestInputs {
            user_data: &first,
            template: template_name,
            os: image.os,
            base: image.base.get_ref(),
            instance_type: &image.builder.instance_type,
            volume: &image.builder.volume,
            verify: &image.verify,
            health: &image.health,
        });
        let inputs = Inputs(
            INPUT_NAMES
                .into_iter()
                .zip([
                    short(&first),
                    short(&(template_name, image.os)),
                    short(image.base.get_ref()),
                    short(&(&image.builder.instance_type, &image.builder.volume)),
                    short(&image.verify),
                    short(&image.health),
                ])
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        );
        context.digest = &digest;
        let script = run(&context)?;
        let (payload, compressed) = fit(&script).map_err(|compressed| Error::TooLarge {
            at: config.source.locate(image.template.span().start),
            image: name.to_owned(),
            raw: script.len(),
            compressed,
        })?;
        Ok(Rendered {
            script,
            payload,
            compressed,
            digest,
            inputs,
        })
    }

    /// The AMI name for an image from its `name` template, checked against EC2's rules.
    pub fn ami_name(
        &self,
        config: &Config,
        name: &str,
        image: &Image,
        digest: &str,
        now: std::time::SystemTime,
    ) -> Result<String, Error> {
        let stamp = humantime::format_rfc3339_seconds(now).to_string();
        let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
        let (date, time) = digits.split_at(8);
        let context =
            minijinja::context! { image => name, date => date, time => time, digest => digest };
        let fail = |message: String| Error::AmiName {
            at: config.source.locate(image.name.span().start),
            image: name.to_owned(),
            message,
        };
        let source = image.name.get_ref();
        let mut out = Capped::new(AMI_NAME_CAP);
        let result = self
            .names
            .template_from_str(source)
            .and_then(|t| t.render_captured_to(context, &mut out).map(|_| ()));
        let rendered = match (out.stopped_at(), result) {
            (Some(produced), _) => {
                return Err(fail(format!(
                    "the name template wrote more than {AMI_NAME_CAP} bytes (stopped at \
                     {produced}); AMI names are 3 to 128 characters"
                )));
            }
            (None, Ok(())) => String::from_utf8(out.text).expect("minijinja writes UTF-8"),
            (None, Err(e)) if e.kind() == ErrorKind::UndefinedError => {
                let expr = e.range().and_then(|r| source.get(r)).map(str::trim);
                return Err(fail(format!(
                    "undefined value{} in the name template {source:?}; it sees image, date, \
                     time and digest",
                    expr.map(|x| format!(" `{x}`")).unwrap_or_default()
                )));
            }
            (None, Err(e)) => {
                return Err(fail(format!(
                    "in the name template {source:?}: {}",
                    describe(&e)
                )));
            }
        };
        check_ami_name(&rendered).map_err(fail)?;
        Ok(rendered)
    }

    /// A template error as a user reads it: the file and line where it happened (inside an
    /// include, not at the include), what went wrong, and no minijinja internals.
    fn template_error(&self, e: &minijinja::Error, image: &str) -> Error {
        let chain = chain(e);
        if let Some(problem) = chain.iter().find_map(|c| c.downcast_ref::<LoadProblem>()) {
            return match problem {
                LoadProblem::Read { file, why } => Error::ReadTemplate {
                    file: file.clone(),
                    why: why.clone(),
                    from: e
                        .name()
                        .zip(e.line())
                        .map(|(n, l)| format!(" (included from {}:{l})", self.origin(n)))
                        .unwrap_or_default(),
                    image: image.to_owned(),
                    config: self.config_path.display().to_string(),
                },
                LoadProblem::Unsafe {
                    file,
                    line,
                    message,
                } => Error::Template {
                    file: file.clone(),
                    line: *line,
                    message: message.clone(),
                    image: image.to_owned(),
                    config: self.config_path.display().to_string(),
                },
            };
        }
        // Includes nest their errors; the innermost template error says where it happened.
        let includes: Vec<&minijinja::Error> = chain
            .iter()
            .filter_map(|c| c.downcast_ref::<minijinja::Error>())
            .collect();
        let inner = includes
            .iter()
            .rev()
            .find(|x| x.kind() != ErrorKind::BadInclude && x.name().is_some())
            .copied()
            .unwrap_or(e);
        if inner.detail() == Some("recursion limit exceeded")
            && let Some(message) = self.include_cycle(&includes)
        {
            return self.located(e, image, message);
        }
        let source = inner
            .name()
            .and_then(|n| self.env.get_template(n).ok())
            .map(|t| t.source().to_owned());
        let expr = inner
            .range()
            .and_then(|r| source.as_deref().and_then(|s| s.get(r)))
            .map(str::trim);
        let mut message = match (inner.kind(), expr) {
            (ErrorKind::UndefinedError, Some(expr)) => {
                format!("undefined value `{expr}` (set it in vars, or use `| default(...)`)")
            }
            _ => describe(inner),
        };
        if !std::ptr::eq(inner, e)
            && let (Some(name), Some(line)) = (e.name(), e.line())
        {
            let _ = write!(message, " (included from {}:{line})", self.origin(name));
        }
        self.located(inner, image, message)
    }

    /// `message` at the template and line of `e`.
    fn located(&self, e: &minijinja::Error, image: &str, message: String) -> Error {
        Error::Template {
            file: self.origin(e.name().unwrap_or("?")),
            line: e.line().unwrap_or(0),
            message,
            image: image.to_owned(),
            config: self.config_path.display().to_string(),
        }
    }

    /// When nested include errors show a template including itself, directly or through others:
    /// the cycle, as `a:3 includes b, b:2 includes a`.
    fn include_cycle(&self, includes: &[&minijinja::Error]) -> Option<String> {
        let steps: Vec<(&str, usize)> = includes
            .iter()
            .filter(|x| x.kind() == ErrorKind::BadInclude)
            .filter_map(|x| x.name().zip(x.line()))
            .collect();
        let first = steps.first()?;
        let again = steps.iter().skip(1).position(|s| s.0 == first.0)? + 1;
        let cycle = &steps[..again];
        if cycle.len() == 1 {
            return Some(format!(
                "this template includes itself ({}), which never ends",
                first.0
            ));
        }
        let path: Vec<String> = cycle
            .iter()
            .enumerate()
            .map(|(i, (name, line))| {
                let next = cycle[(i + 1) % cycle.len()].0;
                format!("{}:{line} includes {next}", self.origin(name))
            })
            .collect();
        Some(format!(
            "include cycle, which never ends: {}",
            path.join(", ")
        ))
    }

    /// Where a template comes from, as a user would look for it.
    fn origin(&self, name: &str) -> String {
        origin(self.user_dir.as_deref(), name)
    }

    fn searched(&self) -> String {
        match &self.user_dir {
            Some(dir) => format!("{} and the built-in templates", dir.display()),
            None => "the built-in templates".to_owned(),
        }
    }

    /// Names of the templates a config can use.
    pub fn available(&self) -> Vec<String> {
        let mut names: Vec<String> = BUILTIN
            .iter()
            .filter(|(n, _)| !n.contains('/'))
            .map(|(n, _)| n.trim_end_matches(TEMPLATE_SUFFIX).to_owned())
            .collect();
        if let Some(Ok(entries)) = self.user_dir.as_ref().map(std::fs::read_dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if let Some(stem) = file.strip_suffix(TEMPLATE_SUFFIX) {
                    names.push(stem.to_owned());
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

/// An environment whose renders are bounded: fuel, recursion depth, strict undefined values.
fn bounded_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env
}

/// The innermost template error under `e` (inside includes), or `e`.
fn innermost(e: &minijinja::Error) -> &minijinja::Error {
    let mut inner = e;
    while let Some(next) = std::error::Error::source(inner)
        .and_then(|s| s.downcast_ref::<minijinja::Error>())
        .filter(|n| n.name().is_some())
    {
        inner = next;
    }
    inner
}

/// `e` and every error under it.
fn chain<'a>(e: &'a minijinja::Error) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut all: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    while let Some(next) = all.last().and_then(|x| x.source()) {
        all.push(next);
    }
    all
}

/// What went wrong, in words (minijinja's detail, or its kind), with bake's bounds named.
fn describe(e: &minijinja::Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::OutOfFuel, _) => format!(
            "the template ran more than {FUEL} steps: a loop that never ends, or one far too long"
        ),
        (_, Some("recursion limit exceeded")) => format!(
            "macros or includes nest deeper than {RECURSION_LIMIT} levels: one that calls itself \
             without end?"
        ),
        (_, Some(detail)) => detail.to_owned(),
        (kind, None) => kind.to_string(),
    }
}

/// Where a template comes from, as a user would look for it.
fn origin(user_dir: Option<&Path>, name: &str) -> String {
    match user_dir {
        Some(dir) if dir.join(name).is_file() => dir.join(name).display().to_string(),
        _ => format!("templates/{name} (built in)"),
    }
}

/// Loads a template from the user's directory first, then from the built-in set, and checks
/// where it places values (see [`lint`]).
fn load(
    user_dir: Option<&Path>,
    name: &str,
    heredoc_values: &HeredocValues,
) -> Result<Option<String>, minijinja::Error> {
    if name.split('/').any(|part| part == ".." || part.is_empty()) {
        return Ok(None);
    }
    let mut text = None;
    if let Some(dir) = user_dir {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => text = Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let problem = LoadProblem::Read {
                    file: path.display().to_string(),
                    why: e.to_string(),
                };
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    problem.to_string(),
                )
                .with_source(problem));
            }
        }
    }
    let Some(text) = text.or_else(|| {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| (*text).to_owned())
    }) else {
        return Ok(None);
    };
    match lint::check(&text) {
        Ok(placed) => {
            if let Some(line) = placed.in_quoted_heredoc {
                heredoc_values
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.to_owned(), line);
            }
            Ok(Some(text))
        }
        Err(found) => {
            let problem = LoadProblem::Unsafe {
                file: origin(user_dir, name),
                line: found.line,
                message: found.to_string(),
            };
            Err(
                minijinja::Error::new(ErrorKind::InvalidOperation, problem.to_string())
                    .with_source(problem),
            )
        }
    }
}

/// Writes values into shell templates as single shell words; `| safe` marks trusted raw text.
/// In a template that places values inside a quoted heredoc, a value must be one line.
fn shell_formatter(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &Value,
    heredoc_values: &HeredocValues,
) -> Result<(), minijinja::Error> {
    if state.auto_escape() != SHELL || value.is_safe() {
        return minijinja::escape_formatter(out, state, value);
    }
    // A value that cannot fit stops the render before it is copied or quoted.
    let len = value.as_str().map_or(0, str::len);
    let left = BUDGET.with(|b| {
        let b = b.get();
        b.cap.saturating_sub(b.written)
    });
    if len > left {
        return spend(len);
    }
    let text = value.to_string();
    if text.contains(['\n', '\r']) {
        let heredoc_line = heredoc_values
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(state.name())
            .copied();
        if let Some(line) = heredoc_line {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "the value {text:?} has a line break, and this template places values inside \
                     a quoted heredoc (line {line}), which a line of the value could end; values \
                     of this template must be one line"
                ),
            ));
        }
    }
    let quoted = shlex::try_quote(&text).map_err(|e| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("cannot quote {text:?} for the shell: {e}"),
        )
    })?;
    out.write_str(&quoted).map_err(minijinja::Error::from)?;
    stop_past_cap()
}

fn digest(inputs: &DigestInputs<'_>) -> String {
    sha256_hex(&serde_json::to_vec(inputs).expect("digest inputs serialize to JSON"))
}

/// One input's short digest: the first [`INPUT_DIGEST_LEN`] hex digits of its JSON's sha256.
fn short(input: &impl Serialize) -> String {
    let mut hex = sha256_hex(&serde_json::to_vec(input).expect("inputs serialize to JSON"));
    hex.truncate(INPUT_DIGEST_LEN);
    hex
}

/// sha256 of `bytes` in lower-case hex.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The payload for EC2: the script when it fits, else its gzip; Err(gzip size) when neither fits.
fn fit(script: &str) -> Result<(Vec<u8>, bool), usize> {
    if script.len() <= USER_DATA_LIMIT {
        return Ok((script.as_bytes().to_vec(), false));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(script.as_bytes())
        .expect("writing to a Vec cannot fail");
    let packed = gz.finish().expect("writing to a Vec cannot fail");
    if packed.len() <= USER_DATA_LIMIT {
        Ok((packed, true))
    } else {
        Err(packed.len())
    }
}

/// EC2's rules for image names: 3 to 128 of letters, digits and `()[] ./-'@_`.
fn check_ami_name(name: &str) -> Result<(), String> {
    if !(3..=128).contains(&name.len()) {
        return Err(format!(
            "AMI names are 3 to 128 characters; {name:?} has {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(*c)))
    {
        return Err(format!(
            "{name:?} has {bad:?}; AMI names allow letters, digits and ()[] ./-'@_"
        ));
    }
    Ok(())
}

impl Error {
    /// Where the error is, for `-o json`: file, line and column (a template's error has no
    /// column).
    pub fn location(&self) -> Option<(String, usize, Option<usize>)> {
        match self {
            Error::TemplatesDir { at, .. }
            | Error::MissingTemplate { at, .. }
            | Error::TooLarge { at, .. }
            | Error::AmiName { at, .. } => {
                Some((at.path.display().to_string(), at.line, Some(at.col)))
            }
            Error::Template { file, line, .. } => Some((file.clone(), *line, None)),
            // A file that cannot be read has no line; its message names it.
            Error::ReadTemplate { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    const CONFIG: &str = r#"
[image.web]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"
os = "debian"
vars = { title = "Hello", message = "from bake", app_url = "https://example.com/a.zip" }

[image.web.builder]
instance_type = "t3.micro"
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"

[image.web.health]
path = "/"
expect_body = "Hello"

[image.web.verify]
commands = ["systemctl is-active nginx"]
"#;

    /// The image `web` of config `text`, rendered.
    fn rendered(text: &str) -> Rendered {
        let config = Config::parse(Path::new("bake.toml"), text.to_owned()).unwrap();
        let renderer = Renderer::new(&config).unwrap();
        renderer
            .render(&config, "web", &config.image["web"])
            .unwrap()
    }

    fn digest_of(text: &str) -> String {
        rendered(text).digest
    }

    #[test]
    fn digest_is_stable_for_the_same_inputs() {
        assert_eq!(digest_of(CONFIG), digest_of(CONFIG));
        assert_eq!(digest_of(CONFIG).len(), 64);
    }

    /// Asserts that replacing `from` by `to` in the test config changes the image's digest.
    fn assert_digest_changes(from: &str, to: &str) {
        let changed = CONFIG.replacen(from, to, 1);
        assert_ne!(changed, CONFIG, "the replacement of {from:?} did not apply");
        assert_ne!(digest_of(&changed), digest_of(CONFIG), "{from:?} -> {to:?}");
    }

    /// One test per input that determines the image, so a failure names the input.
    macro_rules! digest_changes_with {
        ($($name:ident: $from:expr => $to:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_digest_changes($from, $to);
            }
        )*};
    }

    digest_changes_with! {
        digest_changes_with_a_var: "message = \"from bake\"" => "message = \"from cron\"";
        digest_changes_with_the_template: "template = \"nginx\"" => "template = \"lamp\"";
        digest_changes_with_the_os: "os = \"debian\"" => "os = \"al2023\"";
        digest_changes_with_the_base_image: "bookworm/latest" => "trixie/latest";
        digest_changes_with_the_instance_type: "\"t3.micro\"" => "\"t3.small\"";
        digest_changes_with_the_volume:
            "instance_profile = \"SSMInstanceProfile\""
            => "instance_profile = \"SSMInstanceProfile\"\nvolume = { size = 16, type = \"gp3\" }";
        digest_changes_with_a_verify_command: "is-active nginx" => "is-enabled nginx";
        digest_changes_with_the_health_path: "path = \"/\"" => "path = \"/healthz\"";
        digest_changes_with_the_health_body: "expect_body = \"Hello\"" => "expect_body = \"Hi\"";
        digest_changes_with_the_health_port: "path = \"/\"" => "path = \"/\"\nport = 8080";
        digest_changes_with_the_expected_status: "path = \"/\"" => "path = \"/\"\nexpect_status = 204";
    }

    fn inputs_of(text: &str) -> Inputs {
        rendered(text).inputs
    }

    #[test]
    fn each_input_has_its_digest_and_a_change_names_the_input() {
        let before = inputs_of(CONFIG);
        assert_eq!(before.0.len(), INPUT_NAMES.len());
        assert!(before.0.values().all(|d| d.len() == INPUT_DIGEST_LEN));
        assert_eq!(Inputs::from_tag(&before.to_tag()), before);
        assert!(before.to_tag().len() <= 256, "one EC2 tag value");
        for (from, to, changed) in [
            (
                "message = \"from bake\"",
                "message = \"from cron\"",
                vec!["user-data"],
            ),
            (
                "template = \"nginx\"",
                "template = \"lamp\"",
                vec!["user-data", "template"],
            ),
            ("bookworm/latest", "trixie/latest", vec!["base"]),
            ("\"t3.micro\"", "\"t3.small\"", vec!["builder"]),
            ("is-active nginx", "is-enabled nginx", vec!["verify"]),
            (
                "expect_body = \"Hello\"",
                "expect_body = \"Hi\"",
                vec!["health"],
            ),
        ] {
            let after = inputs_of(&CONFIG.replacen(from, to, 1));
            assert_eq!(after.changed_since(&before), changed, "{from} -> {to}");
        }
        // An older AMI's tag without some inputs: only those it has are compared.
        let older = Inputs::from_tag("verify=000000000000 junk");
        assert_eq!(before.changed_since(&older), ["verify"]);
    }

    #[test]
    fn script_ends_by_writing_its_digest_to_the_marker() {
        let config = Config::parse(Path::new("bake.toml"), CONFIG.to_owned()).unwrap();
        let rendered = Renderer::new(&config)
            .unwrap()
            .render(&config, "web", &config.image["web"])
            .unwrap();
        let tail: Vec<&str> = rendered.script.lines().rev().take(6).collect();
        assert!(
            tail.iter()
                .any(|l| l.contains(&rendered.digest) && l.contains("printf")),
            "{tail:?}"
        );
        assert!(rendered.script.contains(READY_MARKER));
    }

    #[test]
    fn small_scripts_go_as_is_and_large_ones_gzip_round_trip() {
        let small = "#!/bin/bash\necho hi\n";
        assert_eq!(fit(small).unwrap(), (small.as_bytes().to_vec(), false));
        let large: String = (0..3000).map(|i| format!("echo line {i}\n")).collect();
        assert!(large.len() > USER_DATA_LIMIT);
        let (packed, compressed) = fit(&large).unwrap();
        assert!(compressed && packed.len() <= USER_DATA_LIMIT);
        let mut unpacked = String::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_string(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, large);
    }

    #[test]
    fn built_in_templates_render_on_a_hundredth_of_the_fuel() {
        for (template, os) in [("nginx", "debian"), ("lamp", "al2023")] {
            let text = CONFIG
                .replace(
                    "template = \"nginx\"",
                    &format!("template = \"{template}\""),
                )
                .replace("os = \"debian\"", &format!("os = \"{os}\""));
            let config = Config::parse(Path::new("bake.toml"), text).unwrap();
            let mut renderer = Renderer::new(&config).unwrap();
            renderer.env.set_fuel(Some(FUEL / 100));
            let rendered = renderer.render(&config, "web", &config.image["web"]);
            assert!(rendered.is_ok(), "{template}: {:?}", rendered.err());
        }
    }

    #[test]
    fn every_file_under_templates_is_built_in_with_its_text() {
        fn walk(dir: &Path, root: &Path, found: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let file = path.file_name().unwrap().to_str().unwrap();
                if file.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    walk(&path, root, found);
                } else {
                    let name = path.strip_prefix(root).unwrap().to_str().unwrap();
                    let text = std::fs::read_to_string(&path).unwrap();
                    found.push((name.replace('\\', "/"), text));
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let mut built_in: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect();
        built_in.sort();
        let names = |list: &[(String, String)]| -> Vec<String> {
            list.iter().map(|(n, _)| n.clone()).collect()
        };
        assert_eq!(names(&built_in), names(&on_disk));
        assert!(
            built_in == on_disk,
            "a built-in template's text differs from its file"
        );
        // The ones a config can name: the top-level templates, not the partials.
        let config = Config::parse(Path::new("bake.toml"), CONFIG.to_owned()).unwrap();
        let available = Renderer::new(&config).unwrap().available();
        let top: Vec<String> = on_disk
            .iter()
            .filter(|(n, _)| !n.contains('/'))
            .filter_map(|(n, _)| n.strip_suffix(TEMPLATE_SUFFIX).map(str::to_owned))
            .collect();
        assert_eq!(available, top);
        assert!(top.contains(&"nginx".to_owned()) && top.contains(&"lamp".to_owned()));
    }

    #[test]
    fn ami_names_follow_ec2_rules() {
        assert!(check_ami_name("web-20261122-0123abcd").is_ok());
        assert!(check_ami_name("ab").is_err());
        assert!(check_ami_name("web:1").unwrap_err().contains("':'"));
        assert!(check_ami_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn ami_name_template_sees_date_and_digest() {
        let config = Config::parse(Path::new("bake.toml"), CONFIG.to_owned()).unwrap();
        let renderer = Renderer::new(&config).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let name = renderer
            .ami_name(
                &config,
                "web",
                &config.image["web"],
                "abcdef0123456789",
                when,
            )
            .unwrap();
        assert_eq!(name, "web-20261118-abcdef012345");
    }
}
