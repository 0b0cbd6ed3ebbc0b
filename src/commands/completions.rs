//! `bake completions SHELL` and `bake man`: the shell completion script (clap_complete's dynamic
//! engine, which asks bake itself for image and rollout names from the config) and the man page
//! (clap_mangen), both printed on stdout.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use clap_complete::env::Shells;

use crate::Error;

/// The environment variable through which a shell asks bake for completions (the script sets it
/// to the shell's name). Not clap's default `COMPLETE`: that name is too common to claim.
pub const COMPLETE_VAR: &str = "BAKE_COMPLETE";

/// Print the completion script for SHELL; source it (bash: `source <(bake completions bash)`),
/// or install it where the shell looks (`make install` does). Image and rollout names complete
/// from the config (`-c`/`--config` on the line being completed, `$BAKE_CONFIG`, or bake.toml).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
    /// The program the script runs to ask for completions: `bake` as found on PATH when the
    /// completion runs, or a path.
    #[arg(long, default_value = "bake")]
    pub completer: String,
}

/// The shells bake writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

impl Shell {
    fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
            Shell::Powershell => "powershell",
        }
    }
}

/// Print the man page (roff) on stdout: `bake man > bake.1; man ./bake.1`; or write bake.1 and a
/// page per subcommand (bake-ami.1, ..., which bake.1 refers to) into a directory.
#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Write bake.1 and every subcommand's page (bake-SUBCOMMAND.1) into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

impl Args {
    pub fn run(&self) -> Result<(), Error> {
        let shells = Shells::builtins();
        let shell = shells
            .completer(self.shell.name())
            .expect("every Shell is one of clap_complete's built-in shells");
        let mut script = Vec::new();
        shell.write_registration(COMPLETE_VAR, "bake", "bake", &self.completer, &mut script)?;
        let mut out = std::io::stdout().lock();
        out.write_all(&script)?;
        out.flush()?;
        Ok(())
    }
}

impl ManArgs {
    /// Prints the page of `command` (the whole command line, `Cli::command()`), or writes its
    /// pages into `--dir`.
    pub fn run(&self, command: clap::Command) -> Result<(), Error> {
        if let Some(dir) = &self.dir {
            return Ok(clap_mangen::generate_to(command, dir)?);
        }
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        let mut out = std::io::stdout().lock();
        out.write_all(&page)?;
        out.flush()?;
        Ok(())
    }
}

/// Completes `[image.NAME]` names from the config (`default_config` when the line names none
/// and `BAKE_CONFIG` is not set).
pub fn image_names(default_config: &'static str) -> ArgValueCandidates {
    ArgValueCandidates::new(move || names("image", default_config))
}

/// Completes `[rollout.NAME]` names from the config, as [`image_names`].
pub fn rollout_names(default_config: &'static str) -> ArgValueCandidates {
    ArgValueCandidates::new(move || names("rollout", default_config))
}

/// The names of the `[kind.NAME]` tables of the config the command line being completed reads,
/// each with a short help (an image's template and os, a rollout's image and group). Read
/// leniently: a config with mistakes elsewhere still completes its names; an unreadable one
/// completes none.
fn names(kind: &str, default_config: &str) -> Vec<CompletionCandidate> {
    let words: Vec<OsString> = std::env::args_os().collect();
    let path = config_path(&words, default_config);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let Some(toml::Value::Table(tables)) = table.get(kind) else {
        return Vec::new();
    };
    tables
        .iter()
        .map(|(name, value)| {
            let text = |key: &str| value.get(key).and_then(toml::Value::as_str);
            let help = match kind {
                "image" => match (text("template"), text("os")) {
                    (Some(t), Some(os)) => Some(format!("{t} on {os}")),
                    _ => None,
                },
                _ => match (text("image"), text("asg")) {
                    (Some(image), Some(asg)) => Some(format!("image {image} to {asg}")),
                    _ => None,
                },
            };
            CompletionCandidate::new(name).help(help.map(Into::into))
        })
        .collect()
}

/// The config a completion is for: `-c`/`--config` among the words being completed (after the
/// `--` the script passes them behind), else `$BAKE_CONFIG`, else bake.toml.
fn config_path(args: &[OsString], default_config: &str) -> PathBuf {
    let words: Vec<String> = args
        .iter()
        .skip_while(|a| *a != "--")
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut found = None;
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        if word == "-c" || word == "--config" {
            found = words.get(i + 1).cloned();
            i += 1;
        } else if let Some(value) = word.strip_prefix("--config=") {
            found = Some(value.to_owned());
        } else if let Some(value) = word.strip_prefix("-c").filter(|v| !v.is_empty()) {
            found = Some(value.trim_start_matches('=').to_owned());
        }
        i += 1;
    }
    found
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("BAKE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default_config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(words: &[&str]) -> PathBuf {
        let args: Vec<OsString> = words.iter().map(OsString::from).collect();
        config_path(&args, "bake.toml")
    }

    #[test]
    fn the_config_is_read_from_the_line_being_completed() {
        assert_eq!(
            path(&["bake", "--", "bake", "-c", "a.toml", "ami", ""]),
            PathBuf::from("a.toml")
        );
        assert_eq!(
            path(&["bake", "--", "bake", "--config=b.toml", "ami"]),
            PathBuf::from("b.toml")
        );
        assert_eq!(
            path(&["bake", "--", "bake", "-cc.toml", "ami"]),
            PathBuf::from("c.toml")
        );
        assert_eq!(
            path(&["bake", "--", "bake", "--config", "d.toml", "ami"]),
            PathBuf::from("d.toml")
        );
        // Words before the `--` are the completer's own, not the line's.
        if std::env::var_os("BAKE_CONFIG").is_none() {
            assert_eq!(
                path(&["bake", "-c", "x.toml", "--", "bake", "ami"]),
                PathBuf::from("bake.toml")
            );
        }
    }
}
