//! Verify: the readiness marker and the verify commands, run on the builder through SSM.

use std::time::Duration;

use aws_sdk_ssm::types::CommandInvocationStatus;
use tokio::time::Instant;

use crate::aws::{self, CallError, Clients};
use crate::config::Os;
use crate::output::Progress;
use crate::poll::{self, Check, PollError, Schedule};
use crate::render::{FAILED_MARKER, READY_MARKER};

/// A short command finishes within a second or two of delivery: look after 0.8 s and every
/// 0.8 s for half a minute, then growing to 5 s for long ones.
const COMMAND_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(800))
    .first_after(Duration::from_millis(800))
    .dense_for(Duration::from_secs(30))
    .growing(1.3, Duration::from_secs(5));

/// Verification waits for the user data to finish, then runs the commands; 10 minutes unless
/// the config says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long the verify commands may take: the config's `timeout`, else [`DEFAULT_TIMEOUT`].
pub fn timeout_of(verify: &crate::config::Verify) -> Duration {
    verify.timeout.as_ref().map_or(DEFAULT_TIMEOUT, |t| t.0)
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "verify command `{command}` on builder {instance_id} exited {exit_code}\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    )]
    CommandFailed {
        instance_id: String,
        command: String,
        exit_code: i32,
        stdout: String,
        stderr: String,
    },
    #[error("verification on builder {instance_id} ended {status}: {detail}")]
    Aborted {
        instance_id: String,
        status: String,
        detail: String,
    },
    #[error("verification on builder {instance_id} did not finish within {waited:?} ({last})")]
    TimedOut {
        instance_id: String,
        waited: Duration,
        last: String,
    },
    #[error("reading the package manifest on builder {instance_id} failed: {why}")]
    Manifest { instance_id: String, why: String },
    #[error(transparent)]
    Api(#[from] CallError),
}

/// SSM keeps the first 24,000 characters of a command's stdout and the first 8,000 of its stderr
/// (GetCommandInvocation). The script's own lines stay far inside both: a step's output is kept
/// in a file on the builder and only the failing step's last bytes are printed, after the line
/// that names it. Of a failing step's stdout, the last this many bytes are shown: a screenful,
/// well inside 24,000 with every step's marker before it.
const STEP_STDOUT_TAIL: usize = 6_000;
/// Of a failing step's (or the user data's) stderr, the last this many bytes: well inside SSM's
/// 8,000 characters with the failure line before it.
const STEP_STDERR_TAIL: usize = 6_000;
/// A step's marker shows at most this much of its command: enough to recognise it; bake names the
/// whole command from the step number.
const MARKER_COMMAND: usize = 80;

/// The script SSM runs, in POSIX sh (the agent runs it with `sh`, dash on Debian): wait until
/// the user data has finished (or `wait` passes), check its marker holds `digest`, then run each
/// command, stopping at the first that fails with its exit code.
///
/// What it prints fits SSM's output limits whatever the commands print: stdout has one marker
/// line per step (`bake-verify: step N: ...`), stderr starts with the failure line
/// (`bake-verify: step N failed with exit code C`); then come the failing step's last bytes of
/// output. [`failure`] reads the step from these lines.
pub fn script(digest: &str, commands: &[String], wait: Duration) -> String {
    let q = |s: &str| shlex::try_quote(s).map_or_else(|_| "''".into(), |c| c.into_owned());
    let mut lines = vec![
        format!("ready={} failed={}", q(READY_MARKER), q(FAILED_MARKER)),
        "log=/var/log/bake-userdata.log".into(),
        "work=$(mktemp -d) || exit 93".into(),
        "trap 'rm -rf \"$work\"' EXIT".into(),
        // bash runs the commands where there is one (they were written for it); sh otherwise.
        "if command -v bash >/dev/null 2>&1; then shell=bash; else shell='sh'; fi".into(),
        format!("deadline=$(( $(date +%s) + {} ))", wait.as_secs()),
        // A builder from an image bake made already holds that bake's marker: wait for this
        // digest, which the user data writes last.
        format!(
            "until [ \"$(cat \"$ready\" 2>/dev/null)\" = {} ] || [ -e \"$failed\" ]; do",
            q(digest)
        ),
        "  if [ \"$(date +%s)\" -ge \"$deadline\" ]; then".into(),
        "    [ -s \"$ready\" ] && break".into(),
        "    echo \"bake-verify: user data did not finish: no $ready\" >&2".into(),
        format!("    tail -n 20 \"$log\" 2>/dev/null | tail -c {STEP_STDERR_TAIL} >&2"),
        "    exit 90".into(),
        "  fi".into(),
        "  sleep 1".into(),
        "done".into(),
        "if [ -e \"$failed\" ]; then".into(),
        "  echo \"bake-verify: user data failed: $(head -c 500 \"$failed\")\" >&2".into(),
        format!("  tail -n 20 \"$log\" 2>/dev/null | tail -c {STEP_STDERR_TAIL} >&2"),
        "  exit 91".into(),
        "fi".into(),
        format!("if [ \"$(cat \"$ready\")\" != {} ]; then", q(digest)),
        format!(
            "  echo \"bake-verify: $ready holds $(head -c 200 \"$ready\"), expected {digest}\" >&2"
        ),
        "  exit 92".into(),
        "fi".into(),
        "echo 'bake-verify: step 0: user data finished, digest matches'".into(),
        // step N COMMAND: runs it with its output in files; on failure prints the failure line
        // first on stderr, then the last bytes of what it wrote, and exits with its code.
        "step() {".into(),
        "  n=$1; shift".into(),
        "  \"$shell\" -c \"$1\" >\"$work/out\" 2>\"$work/err\" </dev/null".into(),
        "  rc=$?".into(),
        "  [ \"$rc\" -eq 0 ] && return 0".into(),
        "  echo \"bake-verify: step $n failed with exit code $rc\" >&2".into(),
        "  echo \"bake-verify: step $n failed with exit code $rc; its output ends:\"".into(),
        format!("  tail -c {STEP_STDOUT_TAIL} \"$work/out\""),
        format!("  tail -c {STEP_STDERR_TAIL} \"$work/err\" >&2"),
        "  exit \"$rc\"".into(),
        "}".into(),
    ];
    for (i, command) in commands.iter().enumerate() {
        let n = i + 1;
        let shown: String = command.chars().take(MARKER_COMMAND).collect();
        let shown = shown.replace('\n', " ");
        let ellipsis = if command.chars().count() > MARKER_COMMAND {
            "..."
        } else {
            ""
        };
        lines.push(format!(
            "echo {}",
            q(&format!("bake-verify: step {n}: {shown}{ellipsis}"))
        ));
        lines.push(format!("step {n} {}", q(command)));
    }
    lines.push(format!(
        "echo 'bake-verify: all {} steps passed'",
        commands.len()
    ));
    lines.join("\n")
}

/// Runs the verification on the builder and waits for its result.
pub async fn run(
    clients: &Clients,
    instance_id: &str,
    digest: &str,
    commands: &[String],
    timeout: Duration,
    progress: &Progress,
) -> Result<(), Error> {
    let step = format!("verifying ({} commands)", commands.len());
    progress.step(step.clone());
    let started = Instant::now();
    let script = Script {
        instance_id,
        what: "verify",
        sending: "send the verify command".into(),
        script: script(digest, commands, timeout),
        execution_timeout: timeout.as_secs(),
    };
    let outcome = run_script(
        clients,
        script,
        &step,
        // The command's own timeout plus a minute for delivery and reporting.
        |sent| poll::deadline_after(sent, timeout.saturating_add(Duration::from_secs(60))),
        COMMAND_SCHEDULE,
        |seen| progress.detail(&step, seen),
    )
    .await?;
    match outcome {
        Ok(_) => Ok(()),
        Err(Ended::Failed(out)) => Err(failure(instance_id, commands, &out)),
        Err(Ended::TimedOut { last }) => Err(Error::TimedOut {
            instance_id: instance_id.to_owned(),
            waited: started.elapsed(),
            last,
        }),
    }
}

/// The manifest is read in pages of this many characters: with its header line well inside the
/// 24,000 characters of stdout SSM keeps (GetCommandInvocation's StandardOutputContent).
pub const MANIFEST_PAGE: usize = 20_000;
/// At most this many pages (20 MB of base64, over 100,000 packages gzip-compressed): a manifest
/// longer than that is not a package list.
const MANIFEST_PAGES: usize = 1_000;
/// Listing the packages takes a second or two; a page is one `tail | head`.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the builder keeps the compressed manifest between pages: /run is a tmpfs, so nothing of
/// it ends up in the image even when a page is the last thing the run does.
const MANIFEST_FILE: &str = "/run/bake-manifest.b64";

/// The package list of the image's os, one `NAME<TAB>VERSION` per line: installed packages only
/// (dpkg also lists removed ones whose config files stay).
fn package_list(os: Os) -> &'static str {
    match os {
        Os::Debian => {
            "dpkg-query -W -f='${Status}\\t${binary:Package}\\t${Version}\\n' \
             | awk -F '\\t' '$1 == \"install ok installed\" { print $2 \"\\t\" $3 }'"
        }
        Os::Al2023 => "rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\n'",
    }
}

/// The first manifest script: lists the packages, gzips and base64-encodes them into
/// [`MANIFEST_FILE`], prints `bake-manifest: SIZE` and the first page.
pub fn manifest_script(os: Os) -> String {
    manifest_script_at(os, MANIFEST_FILE)
}

/// [`manifest_script`] keeping the manifest in `file`.
fn manifest_script_at(os: Os, file: &str) -> String {
    [
        "set -e".to_owned(),
        "umask 077".to_owned(),
        format!("f={file}"),
        format!("{{ {}; }} > \"$f.txt\"", package_list(os)),
        "gzip -9c < \"$f.txt\" | base64 | tr -d '\\n' > \"$f\"".to_owned(),
        "rm -f \"$f.txt\"".to_owned(),
        "echo \"bake-manifest: $(wc -c < \"$f\" | tr -d ' ')\"".to_owned(),
        format!("head -c {MANIFEST_PAGE} \"$f\""),
    ]
    .join("\n")
}

/// A later page of the manifest in `file`, from character `offset`; the last page removes the
/// file.
fn page_script(file: &str, offset: usize, last: bool) -> String {
    let mut lines = vec![
        format!("f={file}"),
        format!("tail -c +{} \"$f\" | head -c {MANIFEST_PAGE}", offset + 1),
    ];
    if last {
        lines.push("rm -f \"$f\"".to_owned());
    }
    lines.join("\n")
}

/// Reads the installed packages on the builder through SSM (`dpkg-query -W` or `rpm -qa`, by the
/// image's os): name -> version. The list travels gzip-compressed and base64-encoded, in pages
/// of [`MANIFEST_PAGE`] characters when it is longer, since SSM keeps only the first 24,000
/// characters of a command's output.
pub async fn manifest(
    clients: &Clients,
    instance_id: &str,
    os: Os,
    progress: &Progress,
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let step = "reading the package manifest".to_owned();
    progress.step(step.clone());
    let fail = |why: String| Error::Manifest {
        instance_id: instance_id.to_owned(),
        why,
    };
    let first =
        manifest_command(clients, instance_id, manifest_script(os), &step, progress).await?;
    let (size, pages, page) = first_page(&first).map_err(fail)?;
    let mut encoded = page.trim_end().to_owned();
    for n in 1..pages {
        let script = page_script(MANIFEST_FILE, n * MANIFEST_PAGE, n + 1 == pages);
        progress.step(format!("{step} (page {} of {pages})", n + 1));
        let next = manifest_command(clients, instance_id, script, &step, progress).await?;
        encoded.push_str(next.trim_end());
    }
    let packages = manifest_of(&encoded, size).map_err(fail)?;
    if packages.is_empty() {
        return Err(fail(format!(
            "the package list is empty (`{}`)",
            package_list(os)
        )));
    }
    Ok(packages)
}

/// The first manifest command's output: the size of the whole (base64 characters), how many
/// pages it takes, and the first page.
fn first_page(first: &str) -> Result<(usize, usize, &str), String> {
    let (header, page) = first
        .split_once('\n')
        .ok_or_else(|| format!("no header line in {:?}", head(first)))?;
    let size: usize = header
        .strip_prefix("bake-manifest: ")
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("unexpected header {:?}", head(header)))?;
    let pages = size.div_ceil(MANIFEST_PAGE);
    if pages > MANIFEST_PAGES {
        return Err(format!(
            "{size} characters compressed: more than {MANIFEST_PAGES} pages of {MANIFEST_PAGE}"
        ));
    }
    Ok((size, pages, page))
}

/// The packages from the whole base64 text, which must be `size` characters long.
fn manifest_of(
    encoded: &str,
    size: usize,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    if encoded.len() != size {
        return Err(format!(
            "read {} of {size} characters (SSM cut the output?)",
            encoded.len()
        ));
    }
    Ok(crate::records::parse_manifest(&decode(encoded)?))
}

/// The first characters of `text`, for an error.
fn head(text: &str) -> String {
    text.chars().take(200).collect()
}

/// base64, then gzip: the manifest as text.
fn decode(encoded: &str) -> Result<String, String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let gz = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .take(crate::records::MANIFEST_CAP as u64)
        .read_to_string(&mut text)
        .map_err(|e| format!("not a gzip-compressed text: {e}"))?;
    Ok(text)
}

/// One manifest command: its stdout, or an error with its stderr.
async fn manifest_command(
    clients: &Clients,
    instance_id: &str,
    script: String,
    step: &str,
    progress: &Progress,
) -> Result<String, Error> {
    let script = Script {
        instance_id,
        what: "manifest",
        sending: format!("send the manifest command to builder {instance_id}"),
        script,
        execution_timeout: MANIFEST_TIMEOUT.as_secs(),
    };
    let outcome = run_script(
        clients,
        script,
        step,
        |sent| {
            poll::deadline_after(
                sent,
                MANIFEST_TIMEOUT.saturating_add(Duration::from_secs(60)),
            )
        },
        COMMAND_SCHEDULE,
        |seen| progress.detail(step, seen),
    )
    .await?;
    match outcome {
        Ok(out) => Ok(out.standard_output_content().unwrap_or_default().to_owned()),
        Err(Ended::Failed(out)) => Err(Error::Manifest {
            instance_id: instance_id.to_owned(),
            why: format!(
                "{} (exit {}): {}",
                out.status().map_or("Failed", |s| s.as_str()),
                out.response_code(),
                head(out.standard_error_content().unwrap_or_default())
            ),
        }),
        Err(Ended::TimedOut { last }) => Err(Error::Manifest {
            instance_id: instance_id.to_owned(),
            why: format!("no answer within {MANIFEST_TIMEOUT:?} ({last})"),
        }),
    }
}

/// One shell script for a builder, run through SSM's AWS-RunShellScript.
pub(super) struct Script<'a> {
    pub instance_id: &'a str,
    /// What it is: its comment is `bake WHAT`; errors reading it name it.
    pub what: &'a str,
    /// What sending it is, for errors ("send the verify command").
    pub sending: String,
    pub script: String,
    /// SSM's executionTimeout in seconds: the agent stops the script after it.
    pub execution_timeout: u64,
}

/// How a script that did not succeed ended.
pub(super) enum Ended {
    /// Its invocation ended otherwise (failed, cancelled, timed out on the builder).
    Failed(Box<InvocationOutput>),
    /// The wait's deadline passed; the invocation's last status.
    TimedOut { last: String },
}

/// Sends `script` (one SendCommand) and waits for its invocation: read at once, asked again
/// while SSM does not know it yet, then on `schedule` until `deadline(sent)`, `sent` being when
/// SendCommand answered. Errors are the calls that failed.
pub(super) async fn run_script(
    clients: &Clients,
    script: Script<'_>,
    step: &str,
    deadline: impl FnOnce(Instant) -> Instant,
    schedule: Schedule,
    seen: impl FnMut(&str),
) -> Result<Result<Box<InvocationOutput>, Ended>, CallError> {
    let instance_id = script.instance_id;
    let request = clients
        .ssm
        .send_command()
        .instance_ids(instance_id)
        .document_name("AWS-RunShellScript")
        .comment(format!("bake {}", script.what))
        .parameters("commands", vec![script.script])
        .parameters(
            "executionTimeout",
            vec![script.execution_timeout.to_string()],
        );
    let sending = script.sending;
    let sent = clients
        .call(|| request.clone().send())
        .or_fail(|| sending)
        .await?;
    let command_id = sent
        .command()
        .and_then(|c| c.command_id())
        .unwrap_or_default()
        .to_owned();
    let deadline = deadline(Instant::now());
    let invocation = || {
        clients
            .ssm
            .get_command_invocation()
            .command_id(&command_id)
            .instance_id(instance_id)
            .send()
    };
    let reading = || {
        format!(
            "read {} command {command_id} on builder {instance_id}",
            script.what
        )
    };
    // Right after SendCommand the invocation may not exist yet (InvocationDoesNotExist).
    let first = clients
        .call(invocation)
        .settle(&aws::NEW_INVOCATION)
        .or_fail(reading)
        .await?;
    let result = match classify(Ok(first)) {
        Check::Ready(out) => Ok(out),
        Check::Failed(out) => Err(PollError::Failed(out)),
        Check::Pending(_) => {
            poll::until(step, deadline, schedule, seen, || async {
                classify(invocation().await)
            })
            .await
        }
    };
    match result {
        Ok(out) => Ok(Ok(out)),
        Err(PollError::Failed(Ok(out))) => Ok(Err(Ended::Failed(Box::new(out)))),
        Err(PollError::Failed(Err(message))) => Err(clients.failed(reading(), message)),
        Err(PollError::TimedOut { last }) => Ok(Err(Ended::TimedOut { last })),
    }
}

pub(super) type InvocationOutput =
    aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput;
pub(super) type InvocationError = aws_sdk_ssm::error::SdkError<
    aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationError,
    aws_sdk_ssm::config::http::HttpResponse,
>;

/// What one GetCommandInvocation answer means for the wait: done (its output), still running, or
/// over. A throttle or 5xx answer is a reason to look again, not a failure.
pub(super) fn classify(
    answer: Result<InvocationOutput, InvocationError>,
) -> Check<Box<InvocationOutput>, Result<InvocationOutput, String>> {
    match answer {
        Ok(out) => match out.status() {
            Some(CommandInvocationStatus::Success) => Check::Ready(Box::new(out)),
            Some(
                CommandInvocationStatus::Pending
                | CommandInvocationStatus::InProgress
                | CommandInvocationStatus::Delayed
                | CommandInvocationStatus::Cancelling,
            )
            | None => Check::Pending(out.status().map_or("Pending", |s| s.as_str()).to_owned()),
            Some(_) => Check::Failed(Ok(out)),
        },
        Err(e) if aws::transient(&e) => {
            Check::Pending(format!("{} (asking again)", aws::describe(&e)))
        }
        Err(e) => Check::Failed(Err(aws::describe(&e))),
    }
}

/// Names the failed step: the failure line at the start of stderr, else the last step marker on
/// stdout (a step killed by the execution timeout printed no failure line). Both survive SSM's
/// truncation, which keeps the first characters of each stream.
fn failure(instance_id: &str, commands: &[String], out: &InvocationOutput) -> Error {
    let stdout = out.standard_output_content().unwrap_or_default().to_owned();
    let stderr = out.standard_error_content().unwrap_or_default().to_owned();
    let status = out.status().map_or("Failed", |s| s.as_str()).to_owned();
    if out.status() != Some(&CommandInvocationStatus::Failed)
        || out.status_details() == Some("Undeliverable")
        || out.status_details() == Some("Terminated")
    {
        let mut detail = out.status_details().unwrap_or_default().to_owned();
        if let Some(step) = failed_step(&stdout, &stderr)
            && step > 0
        {
            let command = commands.get(step - 1).map_or("", String::as_str);
            detail = format!("{detail} during step {step} `{command}`");
        }
        return Error::Aborted {
            instance_id: instance_id.to_owned(),
            status,
            detail,
        };
    }
    let step = failed_step(&stdout, &stderr).unwrap_or(0);
    let command = match step {
        0 => format!("readiness check of {READY_MARKER}"),
        n => commands.get(n - 1).cloned().unwrap_or_default(),
    };
    Error::CommandFailed {
        instance_id: instance_id.to_owned(),
        command,
        exit_code: out.response_code(),
        stdout,
        stderr,
    }
}

/// The step the script was at when it stopped, from its own lines.
fn failed_step(stdout: &str, stderr: &str) -> Option<usize> {
    let number = |rest: &str| {
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<usize>()
            .ok()
    };
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("bake-verify: step "))
        .find(|l| l.contains(" failed with exit code "))
        .and_then(number)
        .or_else(|| {
            stdout
                .lines()
                .rev()
                .filter_map(|l| l.strip_prefix("bake-verify: step "))
                .find_map(number)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};
    use std::process::Command;

    /// GetCommandInvocation's limits: the first 24,000 characters of stdout, 8,000 of stderr.
    const SSM_STDOUT: usize = 24_000;
    const SSM_STDERR: usize = 8_000;

    /// The shell the SSM agent runs scripts with on Debian: dash (POSIX sh, no bash features).
    fn posix_sh() -> &'static str {
        if Command::new("dash").arg("-c").arg("true").status().is_ok() {
            "dash"
        } else {
            "sh"
        }
    }

    fn run_script(
        dir: &std::path::Path,
        marker: Option<&str>,
        commands: &[&str],
    ) -> (i32, String, String) {
        let commands: Vec<String> = commands.iter().map(|c| (*c).to_owned()).collect();
        let text = script("d1g3st", &commands, Duration::from_secs(2))
            .replace(READY_MARKER, &dir.join("ready").display().to_string())
            .replace(FAILED_MARKER, &dir.join("failed").display().to_string());
        if let Some(m) = marker {
            std::fs::write(dir.join("ready"), m).unwrap();
        }
        let out = Command::new(posix_sh())
            .arg("-c")
            .arg(text)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What GetCommandInvocation answers for a failed run: each stream cut as SSM cuts it.
    fn answer(code: i32, stdout: &str, stderr: &str) -> InvocationOutput {
        InvocationOutput::builder()
            .status(CommandInvocationStatus::Failed)
            .status_details("Failed")
            .response_code(code)
            .standard_output_content(stdout.chars().take(SSM_STDOUT).collect::<String>())
            .standard_error_content(stderr.chars().take(SSM_STDERR).collect::<String>())
            .build()
    }

    /// Runs a manifest script with `sh`, its stdout cut as SSM cuts it.
    fn ssm_stdout(script: &str) -> String {
        let out = Command::new(posix_sh())
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .take(SSM_STDOUT)
            .collect()
    }

    #[test]
    fn the_manifest_lists_this_machines_packages_and_fits_ssms_output() {
        if Command::new("dpkg-query")
            .arg("--version")
            .output()
            .is_err()
        {
            return; // not a Debian machine: the lab test reads a Debian builder's
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.b64").display().to_string();
        let first = ssm_stdout(&manifest_script_at(Os::Debian, &file));
        let (size, pages, page) = first_page(&first).unwrap();
        let mut encoded = page.trim_end().to_owned();
        for n in 1..pages {
            let next = ssm_stdout(&page_script(&file, n * MANIFEST_PAGE, n + 1 == pages));
            encoded.push_str(next.trim_end());
        }
        let packages = manifest_of(&encoded, size).unwrap();
        assert!(packages.contains_key("dpkg"), "{packages:?}");
        assert!(packages.values().all(|v| !v.is_empty()));
    }

    #[test]
    fn a_manifest_longer_than_a_page_is_read_in_pages_each_inside_ssms_limit() {
        use base64::Engine as _;
        use std::io::Write as _;
        // 3,000 packages with incompressible versions: about 200 KB of base64, 11 pages.
        let list: String = (0..3000)
            .map(|i| format!("pkg-{i}\t{:x}\n", Sha256::digest(i.to_string().as_bytes())))
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(list.as_bytes()).unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.b64");
        std::fs::write(&path, &encoded).unwrap();
        let file = path.display().to_string();
        let first = format!(
            "bake-manifest: {}\n{}",
            encoded.len(),
            &encoded[..MANIFEST_PAGE.min(encoded.len())]
        );
        let (size, pages, page) = first_page(&first).unwrap();
        assert!(pages > 5, "{pages}");
        let mut read = page.to_owned();
        for n in 1..pages {
            let next = ssm_stdout(&page_script(&file, n * MANIFEST_PAGE, n + 1 == pages));
            assert!(next.len() <= MANIFEST_PAGE && next.len() < SSM_STDOUT);
            read.push_str(next.trim_end());
        }
        assert!(!path.exists(), "the last page removes the file");
        let packages = manifest_of(&read, size).unwrap();
        assert_eq!(packages.len(), 3000);
        // A page SSM cut short is an error, not a shorter manifest.
        let err = manifest_of(&read[..read.len() - 10], size).unwrap_err();
        assert!(err.contains("SSM cut the output"), "{err}");
    }

    #[test]
    fn script_is_posix_sh_by_shellcheck() {
        use std::io::Write;
        let commands = vec![
            "systemctl is-active nginx".to_owned(),
            "[[ -n x ]]".to_owned(),
        ];
        let text = script("d1g3st", &commands, Duration::from_secs(600));
        let mut child = Command::new("shellcheck")
            .args(["-s", "sh", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("shellcheck runs (`make deps` installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{text}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[test]
    fn script_runs_commands_after_a_matching_marker() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ran");
        let (code, stdout, _) = run_script(
            dir.path(),
            Some("d1g3st\n"),
            &[
                &format!("echo one > {}", file.display()),
                &format!("echo 'two words' >> {}", file.display()),
            ],
        );
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "one\ntwo words\n");
        assert!(
            stdout.contains("bake-verify: step 2: echo 'two words'")
                && stdout.ends_with("bake-verify: all 2 steps passed\n"),
            "{stdout}"
        );
    }

    #[test]
    fn script_stops_at_the_first_failing_command_with_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let (code, stdout, stderr) = run_script(
            dir.path(),
            Some("d1g3st\n"),
            &["true", "echo said; echo oops >&2; exit 7", "echo never"],
        );
        assert_eq!(code, 7);
        assert!(
            !stdout.contains("never") && stdout.contains("said"),
            "{stdout}"
        );
        assert!(
            stdout.contains("bake-verify: step 2: echo said"),
            "{stdout}"
        );
        assert!(
            stderr.starts_with("bake-verify: step 2 failed with exit code 7\n")
                && stderr.contains("oops"),
            "{stderr}"
        );
        assert_eq!(failed_step(&stdout, &stderr), Some(2));
    }

    #[test]
    fn commands_run_with_bash_when_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let (code, _, stderr) = run_script(dir.path(), Some("d1g3st\n"), &["[[ -n x ]]"]);
        assert_eq!(code, 0, "{stderr}");
    }

    #[test]
    fn script_waits_for_its_digest_over_an_earlier_bakes_marker() {
        // A builder from an AMI bake made boots with that bake's marker; the user data writes
        // this bake's digest over it when it finishes.
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            std::fs::write(ready, "d1g3st\n").unwrap();
        });
        let (code, stdout, stderr) = run_script(dir.path(), Some("earl1er\n"), &["true"]);
        writer.join().unwrap();
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("digest matches"), "{stdout}");
    }

    #[test]
    fn script_refuses_a_marker_with_another_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (code, _, stderr) = run_script(dir.path(), Some("0ther\n"), &["true"]);
        assert_eq!(code, 92);
        assert!(stderr.contains("expected d1g3st"), "{stderr}");
    }

    #[test]
    fn script_gives_up_under_dash_when_the_marker_never_appears() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let (code, _, stderr) = run_script(dir.path(), None, &["true"]);
        assert_eq!(code, 90);
        assert!(stderr.contains("did not finish"), "{stderr}");
        // The 2 s deadline fires (under bash-only `$SECONDS` it never would in dash).
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_loud_step_before_the_failing_one_does_not_hide_it() {
        let dir = tempfile::tempdir().unwrap();
        let commands = [
            "head -c 30000 /dev/zero | tr '\\0' o; head -c 10000 /dev/zero | tr '\\0' e >&2",
            "true",
            "echo last words; exit 3",
        ];
        let (code, stdout, stderr) = run_script(dir.path(), Some("d1g3st\n"), &commands);
        assert_eq!(code, 3);
        let out = answer(code, &stdout, &stderr);
        let owned: Vec<String> = commands.iter().map(|c| (*c).to_owned()).collect();
        match failure("i-1", &owned, &out) {
            Error::CommandFailed {
                command,
                exit_code,
                stdout,
                ..
            } => {
                assert_eq!((command.as_str(), exit_code), (commands[2], 3));
                assert!(stdout.contains("last words"), "{stdout}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_failing_step_that_prints_more_than_ssm_keeps_is_still_named() {
        let dir = tempfile::tempdir().unwrap();
        let commands = [
            "true",
            "head -c 50000 /dev/zero | tr '\\0' o; head -c 20000 /dev/zero | tr '\\0' e >&2; exit 5",
        ];
        let (code, stdout, stderr) = run_script(dir.path(), Some("d1g3st\n"), &commands);
        assert_eq!(code, 5);
        assert!(stdout.len() < SSM_STDOUT && stderr.len() < SSM_STDERR);
        let out = answer(code, &stdout, &stderr);
        let owned: Vec<String> = commands.iter().map(|c| (*c).to_owned()).collect();
        match failure("i-1", &owned, &out) {
            Error::CommandFailed { command, .. } => assert_eq!(command, commands[1]),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_step_cut_off_by_the_execution_timeout_is_named_from_its_marker() {
        let out = InvocationOutput::builder()
            .status(CommandInvocationStatus::TimedOut)
            .status_details("ExecutionTimedOut")
            .response_code(-1)
            .standard_output_content(
                "bake-verify: step 0: user data finished\nbake-verify: step 1: true\n\
                 bake-verify: step 2: sleep 999\n",
            )
            .build();
        let commands = vec!["true".to_owned(), "sleep 999".to_owned()];
        let message = failure("i-1", &commands, &out).to_string();
        assert!(
            message.contains("ExecutionTimedOut during step 2 `sleep 999`"),
            "{message}"
        );
    }
}
