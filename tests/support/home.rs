//! bake as on a machine of its own: nothing from this machine's environment, HOME (and the
//! working directory) a test's directory, dummy static keys; no lab.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

/// `bake ARGS` with HOME and the working directory at `home`, no AWS variable but dummy static
/// keys, and no stdin; the caller adds what its case needs (e.g. `AWS_ENDPOINT_URL`).
pub fn bake_at_home(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bake"));
    command
        .args(args)
        .current_dir(home)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .stdin(Stdio::null());
    command
}
