//! The config file (`bake.toml`): its types, parsing with positions, and validation against the
//! ranges and shapes AWS accepts, reporting every problem found, each at its file:line:col.
//!
//! - `types`: the types as the file spells them, and their defaults;
//! - `parse`: reading the TOML with positions into those types;
//! - `validate`: the checks, every problem at its place;
//! - `secrets`: var names that look like secrets.
//!
//! This module holds the public API: [`Config::load`], the lookups, the [`Error`] and the places
//! ([`Source`], [`Location`]) it points at.

mod parse;
mod secrets;
mod types;
mod validate;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

pub use secrets::{SECRET_WORDS, secret_word};
pub use types::{
    BaseImage, Builder, Capacity, Config, Health, HumanDuration, Image, Os, Refresh, ResourceRef,
    Rollout, Verify, Volume,
};

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

    /// Where in the config the error is, when it is at a known place (for `-o json`).
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::At { at, .. } => Some(at),
            _ => None,
        }
    }
}

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
        let doc = parse::Doc::new(&source, root.get_ref());
        let (mut config, complete) = doc.config();
        doc.validate(&config);
        let errors = doc.into_errors();
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

/// `a, b, c` or `none`: what there is, for a message about what is not.
fn names<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = keys.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// What the tests of this module's parts share: a minimal config and ways to read its errors.
#[cfg(test)]
mod testing {
    pub use std::path::Path;

    pub use super::*;

    pub const MINIMAL: &str = r#"
[image.web]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"
os = "debian"

[image.web.builder]
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"
"#;

    pub fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("bake.toml"), text.to_owned())
    }

    pub fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// MINIMAL with `lines` added under `[image.web]`'s header line set.
    pub fn with_image(lines: &str) -> String {
        MINIMAL.replace("os = \"debian\"", &format!("os = \"debian\"\n{lines}"))
    }

    pub const ROLLOUT: &str = r#"
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

    pub fn problems(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
