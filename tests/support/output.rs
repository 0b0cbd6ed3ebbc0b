//! What a finished command printed: its stdout (trimmed, as one value or lines) and its stderr.

#![allow(dead_code)]

use std::process::Output;

/// The command's stdout, trimmed: an AMI id, a JSON document or lines of a table.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The command's stderr as printed (progress, warnings, the error paragraph).
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
