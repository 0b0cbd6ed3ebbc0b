//! Places in the config file: its path and text ([`Source`]), a `file:line:col` ([`Location`]),
//! and the [`Error`] that points at them.

use std::fmt;
use std::path::{Path, PathBuf};

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
    pub(super) fn from_list(mut errors: Vec<Error>) -> Error {
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

/// `a, b, c` or `none`: what there is, for a message about what is not.
pub(super) fn names<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = keys.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}
