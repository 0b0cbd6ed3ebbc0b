//! Results on stdout (text or JSON) and notes on stderr.

use std::fmt::Display;
use std::io::Write;

use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// One JSON object per command.
    Json,
}

/// Prints a result: its text (`Display`) for people, or one JSON object (`Serialize`).
pub fn print<T: Display + Serialize>(format: Format, value: &T) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Text => write!(out, "{value}")?,
        Format::Json => {
            serde_json::to_writer(&mut out, value)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

/// A note for the person at the terminal; never part of the result.
pub fn note(message: &str) {
    eprintln!("{message}");
}

/// One image's progress on stderr: a spinner on a terminal, one line per step otherwise.
#[derive(Clone)]
pub struct Progress {
    bar: indicatif::ProgressBar,
    prefix: String,
}

impl Progress {
    /// A spinner for `prefix` (an image name) under `multi`.
    pub fn new(multi: &indicatif::MultiProgress, prefix: &str) -> Progress {
        let bar = multi.add(indicatif::ProgressBar::new_spinner());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                .expect("valid progress template"),
        );
        bar.set_prefix(prefix.to_owned());
        // A tick every 100 ms keeps the spinner and elapsed time moving between updates.
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Progress {
            bar,
            prefix: prefix.to_owned(),
        }
    }

    /// A new step; logged as a line when stderr is not a terminal.
    pub fn step(&self, message: impl Into<String>) {
        let message = message.into();
        if self.bar.is_hidden() {
            eprintln!("{}: {message}", self.prefix);
        }
        self.bar.set_message(message);
    }

    /// The latest observation within a step (last HTTP answer, state); not logged as a line.
    pub fn detail(&self, step: &str, seen: &str) {
        self.bar.set_message(format!("{step} (last: {seen})"));
    }

    /// Ends the spinner with a final line.
    pub fn finish(&self, message: impl Into<String>) {
        let message = message.into();
        if self.bar.is_hidden() {
            eprintln!("{}: {message}", self.prefix);
        }
        self.bar.finish_with_message(message);
    }
}

/// What a test's tracing subscriber wrote (`.with_writer(move || captured.clone())`), to read back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
