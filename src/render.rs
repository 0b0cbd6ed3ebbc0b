//! User data: the minijinja environment over templates/, shell quoting, the size limit and the digest.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

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

/// The templates that ship inside the binary, by loader name.
const BUILTIN: &[(&str, &str)] = &[
    ("lamp.sh.j2", include_str!("../templates/lamp.sh.j2")),
    ("nginx.sh.j2", include_str!("../templates/nginx.sh.j2")),
    (
        "partials/common.sh.j2",
        include_str!("../templates/partials/common.sh.j2"),
    ),
    (
        "partials/ready.sh.j2",
        include_str!("../templates/partials/ready.sh.j2"),
    ),
];

const TEMPLATE_SUFFIX: &str = ".sh.j2";
const SHELL: AutoEscape = AutoEscape::Custom("shell");

/// Why user data could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{at}: image.{image}.template: no template {name:?} {looked}")]
    MissingTemplate {
        at: Location,
        image: String,
        name: String,
        /// Where bake looked and what it found there.
        looked: String,
    },
    /// An error inside a template: undefined value, syntax error, bad filter.
    #[error("{file}:{line}: {message} (rendering image.{image} of {config})")]
    Template {
        file: String,
        line: usize,
        message: String,
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
}

/// Renders images' user data from the built-in templates and the user's templates_dir.
pub struct Renderer {
    env: Environment<'static>,
    user_dir: Option<PathBuf>,
    config_path: PathBuf,
}

impl Renderer {
    /// A renderer for the templates `config` can see.
    pub fn new(config: &Config) -> Renderer {
        let user_dir = config.templates_dir();
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(TEMPLATE_SUFFIX) {
                SHELL
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(shell_formatter);
        let dir = user_dir.clone();
        env.set_loader(move |name| load(dir.as_deref(), name));
        Renderer {
            env,
            user_dir,
            config_path: config.source.path.clone(),
        }
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
        // Two passes: the script holds its own digest, so the digest covers the script without it.
        let first = template
            .render(&context)
            .map_err(|e| self.template_error(&e, name))?;
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
        context.digest = &digest;
        let script = template
            .render(&context)
            .map_err(|e| self.template_error(&e, name))?;
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
        let rendered = self
            .env
            .render_str(image.name.get_ref(), context)
            .map_err(|e| fail(format!("{e:#}")))?;
        check_ami_name(&rendered).map_err(fail)?;
        Ok(rendered)
    }

    fn template_error(&self, e: &minijinja::Error, image: &str) -> Error {
        let name = e.name().unwrap_or("?").to_owned();
        let source = self
            .env
            .get_template(&name)
            .ok()
            .map(|t| t.source().to_owned());
        let expr = e
            .range()
            .and_then(|r| source.as_deref().and_then(|s| s.get(r)))
            .map(str::trim);
        let message = match (e.kind(), expr) {
            (ErrorKind::UndefinedError, Some(expr)) => {
                format!("undefined value `{expr}` (set it in vars, or use `| default(...)`)")
            }
            _ => e
                .detail()
                .map_or_else(|| e.kind().to_string(), str::to_owned),
        };
        Error::Template {
            file: self.origin(&name),
            line: e.line().unwrap_or(0),
            message,
            image: image.to_owned(),
            config: self.config_path.display().to_string(),
        }
    }

    /// Where a template comes from, as a user would look for it.
    fn origin(&self, name: &str) -> String {
        match &self.user_dir {
            Some(dir) if dir.join(name).is_file() => dir.join(name).display().to_string(),
            _ => format!("templates/{name} (built in)"),
        }
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

/// Loads a template from the user's directory first, then from the built-in set.
fn load(user_dir: Option<&Path>, name: &str) -> Result<Option<String>, minijinja::Error> {
    if name.split('/').any(|part| part == ".." || part.is_empty()) {
        return Ok(None);
    }
    if let Some(dir) = user_dir {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(text) => return Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("cannot read template {}: {e}", dir.join(name).display()),
                ));
            }
        }
    }
    Ok(BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| (*text).to_owned()))
}

/// Writes values into shell templates as single shell words; `| safe` marks trusted raw text.
fn shell_formatter(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if state.auto_escape() != SHELL || value.is_safe() {
        return minijinja::escape_formatter(out, state, value);
    }
    let text = value.to_string();
    let quoted = shlex::try_quote(&text).map_err(|e| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("cannot quote {text:?} for the shell: {e}"),
        )
    })?;
    out.write_str(&quoted).map_err(minijinja::Error::from)
}

fn digest(inputs: &DigestInputs<'_>) -> String {
    let json = serde_json::to_vec(inputs).expect("digest inputs serialize to JSON");
    Sha256::digest(json)
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
            Error::MissingTemplate { at, .. }
            | Error::TooLarge { at, .. }
            | Error::AmiName { at, .. } => {
                Some((at.path.display().to_string(), at.line, Some(at.col)))
            }
            Error::Template { file, line, .. } => Some((file.clone(), *line, None)),
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

    fn digest_of(text: &str) -> String {
        let config = Config::parse(Path::new("bake.toml"), text.to_owned()).unwrap();
        let renderer = Renderer::new(&config);
        renderer
            .render(&config, "web", &config.image["web"])
            .unwrap()
            .digest
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

    #[test]
    fn script_ends_by_writing_its_digest_to_the_marker() {
        let config = Config::parse(Path::new("bake.toml"), CONFIG.to_owned()).unwrap();
        let rendered = Renderer::new(&config)
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
    fn ami_names_follow_ec2_rules() {
        assert!(check_ami_name("web-20261122-0123abcd").is_ok());
        assert!(check_ami_name("ab").is_err());
        assert!(check_ami_name("web:1").unwrap_err().contains("':'"));
        assert!(check_ami_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn ami_name_template_sees_date_and_digest() {
        let config = Config::parse(Path::new("bake.toml"), CONFIG.to_owned()).unwrap();
        let renderer = Renderer::new(&config);
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
