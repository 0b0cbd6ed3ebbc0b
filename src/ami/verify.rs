//! Verify: the readiness marker and the verify commands, run on the builder through SSM.

use std::time::Duration;

use aws_sdk_ssm::types::CommandInvocationStatus;
use tokio::time::Instant;

use crate::aws::{self, CallError, Clients};
use crate::output::Progress;
use crate::poll::{self, Check, PollError, Schedule};
use crate::render::{FAILED_MARKER, READY_MARKER};

/// A short command finishes within a second or two of delivery: look after 0.8 s and every
/// 0.8 s for half a minute, then growing to 5 s for long ones.
const COMMAND_SCHEDULE: Schedule = Schedule {
    first: Duration::from_millis(800),
    interval: Duration::from_millis(800),
    dense: Duration::from_secs(30),
    factor: 1.3,
    cap: Duration::from_secs(5),
};

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
    #[error(transparent)]
    Api(#[from] CallError),
}

/// The script SSM runs: wait for the user data to finish, check its marker holds `digest`,
/// then run each command, stopping at the first that fails with its exit code.
pub fn script(digest: &str, commands: &[String], wait: Duration) -> String {
    let q = |s: &str| shlex::try_quote(s).map_or_else(|_| "''".into(), |c| c.into_owned());
    let mut lines = vec![
        format!("ready={} failed={}", q(READY_MARKER), q(FAILED_MARKER)),
        format!("deadline=$((SECONDS + {}))", wait.as_secs()),
        "until [ -s \"$ready\" ] || [ -e \"$failed\" ]; do".into(),
        "  if ((SECONDS >= deadline)); then".into(),
        "    echo \"bake-verify: user data did not finish: no $ready\" >&2".into(),
        "    tail -n 20 /var/log/bake-userdata.log >&2".into(),
        "    exit 90".into(),
        "  fi".into(),
        "  sleep 1".into(),
        "done".into(),
        "if [ -e \"$failed\" ]; then".into(),
        "  echo \"bake-verify: user data failed: $(cat \"$failed\")\" >&2".into(),
        "  tail -n 20 /var/log/bake-userdata.log >&2".into(),
        "  exit 91".into(),
        "fi".into(),
        format!("if [ \"$(cat \"$ready\")\" != {} ]; then", q(digest)),
        format!("  echo \"bake-verify: $ready holds $(cat \"$ready\"), expected {digest}\" >&2"),
        "  exit 92".into(),
        "fi".into(),
        "echo 'bake-verify: step 0: user data finished, digest matches'".into(),
    ];
    for (i, command) in commands.iter().enumerate() {
        let n = i + 1;
        lines.push(format!(
            "echo {}",
            q(&format!("bake-verify: step {n}: {command}"))
        ));
        lines.push(format!(
            "bash -c {} || {{ rc=$?; echo \"bake-verify: step {n} failed with exit code $rc\" >&2; exit $rc; }}",
            q(command)
        ));
    }
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
    let sent = clients
        .ssm
        .send_command()
        .instance_ids(instance_id)
        .document_name("AWS-RunShellScript")
        .comment("bake verify")
        .parameters("commands", vec![script(digest, commands, timeout)])
        .parameters("executionTimeout", vec![timeout.as_secs().to_string()])
        .send()
        .await
        .map_err(|e| clients.failed("send the verify command", aws::describe(&e)))?;
    let command_id = sent
        .command()
        .and_then(|c| c.command_id())
        .unwrap_or_default()
        .to_owned();
    let started = Instant::now();
    let result = poll::until(
        // The command's own timeout plus a minute for delivery and reporting.
        started + timeout + Duration::from_secs(60),
        COMMAND_SCHEDULE,
        |seen| progress.detail(&step, seen),
        || async {
            let out = clients
                .ssm
                .get_command_invocation()
                .command_id(&command_id)
                .instance_id(instance_id)
                .send()
                .await;
            match out {
                Ok(out) => match out.status() {
                    Some(CommandInvocationStatus::Success) => Check::Ready(()),
                    Some(
                        CommandInvocationStatus::Pending
                        | CommandInvocationStatus::InProgress
                        | CommandInvocationStatus::Delayed,
                    )
                    | None => {
                        Check::Pending(out.status().map_or("Pending", |s| s.as_str()).to_owned())
                    }
                    Some(_) => Check::Failed(Ok(out)),
                },
                // Just after SendCommand the invocation may not exist yet.
                Err(e) if aws::code(&e) == Some("InvocationDoesNotExist") => {
                    Check::Pending("not delivered yet".into())
                }
                Err(e) => Check::Failed(Err(aws::describe(&e))),
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(Ok(out))) => Err(failure(instance_id, commands, &out)),
        Err(PollError::Failed(Err(message))) => {
            Err(clients.failed("read the verify result", message).into())
        }
        Err(PollError::TimedOut { last }) => Err(Error::TimedOut {
            instance_id: instance_id.to_owned(),
            waited: started.elapsed(),
            last,
        }),
    }
}

/// Names the failed step from the script's own step lines.
fn failure(
    instance_id: &str,
    commands: &[String],
    out: &aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput,
) -> Error {
    let stdout = out.standard_output_content().unwrap_or_default().to_owned();
    let stderr = out.standard_error_content().unwrap_or_default().to_owned();
    let status = out.status().map_or("Failed", |s| s.as_str()).to_owned();
    if out.status() != Some(&CommandInvocationStatus::Failed) {
        return Error::Aborted {
            instance_id: instance_id.to_owned(),
            status,
            detail: out.status_details().unwrap_or_default().to_owned(),
        };
    }
    let step = stdout
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("bake-verify: step "))
        .find_map(|l| l.split(':').next()?.parse::<usize>().ok())
        .unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

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
        let out = Command::new("bash").arg("-c").arg(text).output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn script_runs_commands_after_a_matching_marker() {
        let dir = tempfile::tempdir().unwrap();
        let (code, stdout, _) = run_script(
            dir.path(),
            Some("d1g3st\n"),
            &["echo one", "echo 'two words'"],
        );
        assert_eq!(code, 0);
        assert!(
            stdout.contains("one\n") && stdout.contains("two words\n"),
            "{stdout}"
        );
    }

    #[test]
    fn script_stops_at_the_first_failing_command_with_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let (code, stdout, stderr) = run_script(
            dir.path(),
            Some("d1g3st\n"),
            &["true", "echo oops >&2; exit 7", "echo never"],
        );
        assert_eq!(code, 7);
        assert!(!stdout.contains("never"));
        assert!(
            stdout.contains("bake-verify: step 2: echo oops"),
            "{stdout}"
        );
        assert!(
            stderr.contains("oops") && stderr.contains("step 2 failed"),
            "{stderr}"
        );
    }

    #[test]
    fn script_refuses_a_marker_with_another_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (code, _, stderr) = run_script(dir.path(), Some("0ther\n"), &["true"]);
        assert_eq!(code, 92);
        assert!(stderr.contains("expected d1g3st"), "{stderr}");
    }

    #[test]
    fn script_gives_up_when_the_marker_never_appears() {
        let dir = tempfile::tempdir().unwrap();
        let (code, _, stderr) = run_script(dir.path(), None, &["true"]);
        assert_eq!(code, 90);
        assert!(stderr.contains("did not finish"), "{stderr}");
    }
}
