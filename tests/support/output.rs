//! What a finished command printed: its stdout (trimmed, or as JSON lines) and its stderr.

#![allow(dead_code)]

use std::process::Output;

use serde_json::Value;

/// The command's stdout, trimmed: an AMI id, a JSON document or lines of a table.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The command's stderr as printed (progress, warnings, the error paragraph).
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command succeeded; on failure the message is everything it printed.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// The command's stdout as JSON lines, one value a line (a pipeline's `-o json` events).
pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
