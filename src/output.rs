//! Results on stdout (text or JSON) and notes on stderr.

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

/// Prints a command's result: `text` for people, `json` as one JSON object.
pub fn result<T: Serialize>(format: Format, text: &str, json: &T) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Text => out.write_all(text.as_bytes())?,
        Format::Json => {
            serde_json::to_writer(&mut out, json)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

/// A note for the person at the terminal; never part of the result.
pub fn note(message: &str) {
    eprintln!("{message}");
}
