//! Waiting for the builder: running, Online in SSM, and healthy over HTTP: probed from the runner
//! for a public builder, from inside the builder through one SSM Run Command for a private one.

use std::time::Duration;

use aws_sdk_ec2::types::InstanceStateName;
use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus};
use tokio::time::Instant;

use super::verify::{self, Ended, InvocationOutput, Script};
use crate::aws::{self, CallError, Clients};
use crate::config::Health;
use crate::output::Progress;
use crate::poll::{self, Check, PollError, Schedule};
use crate::probe;
use crate::render::{FAILED_MARKER, READY_MARKER};

/// pending → running takes 5–20 s on EC2 (5 s in the bench's lab): first look at 4 s, every
/// 0.8 s while it usually happens (to 25 s, so it is seen within a second), then growing to 5 s.
const RUNNING_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(800))
    .first_after(Duration::from_secs(4))
    .dense_for(Duration::from_secs(25))
    .growing(1.3, Duration::from_secs(5));
/// A new instance that is not running after 10 minutes never will be.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(600);
/// HTTP probes cost no API calls: every half second, so health is seen within a second.
const HTTP_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(500));
/// GetCommandInvocation of the in-builder health loop (its output is empty until it ends, as AWS
/// documents, so only its end is looked for): every 0.8 s for the first two minutes, when a
/// warm template's page usually comes up, so health is seen within about a second as from the
/// runner; then growing to 2 s, so a 15-minute wait costs at most ~550 calls, well inside SSM's
/// throttling, and health is still seen within ~2.5 s.
const SSM_HEALTH_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(800))
    .first_after(Duration::from_millis(800))
    .dense_for(Duration::from_secs(120))
    .growing(1.2, Duration::from_secs(2));
/// A public builder's user data watched through SSM while the runner probes it: the watch only
/// has to notice a failure, so every 5 s (about a dozen calls a minute) is enough, against the
/// whole health timeout a failed user data otherwise costs.
const WATCH_SCHEDULE: Schedule =
    Schedule::every(Duration::from_secs(5)).first_after(Duration::from_secs(5));
/// The in-builder loop ends by itself at the health deadline; its command gets this much longer
/// to be delivered and to report, after which the runner stops waiting for it.
const SSM_HEALTH_MARGIN: Duration = Duration::from_secs(60);
/// Of the user data log, the last lines shown when its failure marker appears: as verify shows.
const LOG_TAIL_LINES: usize = 20;
/// ... and at most this many bytes of them: inside SSM's 8,000 characters of stderr with the
/// failure line before it.
const LOG_TAIL_BYTES: usize = 6_000;

/// The SSM agent registers 5–60 s after boot: first look at 2 s, every 0.8 s for a minute (the
/// usual window), then growing to 5 s; these calls overlap the HTTP health wait.
const SSM_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(800))
    .first_after(Duration::from_secs(2))
    .dense_for(Duration::from_secs(60))
    .growing(1.3, Duration::from_secs(5));

/// Why the builder did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("builder {instance_id} in {region} stopped booting: {state}")]
    Died {
        instance_id: String,
        region: String,
        state: String,
    },
    #[error("builder {instance_id} in {region} has no public address; the subnet must assign one")]
    NoPublicIp { instance_id: String, region: String },
    #[error("builder {instance_id} in {region} was not running within {waited:?}: {last}")]
    NotRunning {
        instance_id: String,
        region: String,
        waited: Duration,
        last: String,
    },
    #[error(
        "builder {instance_id} was not healthy at {url} within {waited:?}; last answer: {last}. \
         Its user data log is /var/log/bake-userdata.log"
    )]
    Unhealthy {
        instance_id: String,
        url: String,
        waited: Duration,
        last: String,
    },
    #[error(
        "builder {instance_id} in {region} did not come Online in SSM within {waited:?} ({last}); \
         does it run the SSM agent (Debian's AMIs ship none: the user data must install it), does \
         its instance profile have AmazonSSMManagedInstanceCore, and the subnet a way to reach SSM?"
    )]
    SsmOffline {
        instance_id: String,
        region: String,
        waited: Duration,
        last: String,
    },
    #[error(
        "the user data on builder {instance_id} failed before its health page was served \
         (last answer at {url}: {last})\n{detail}"
    )]
    UserDataFailed {
        instance_id: String,
        url: String,
        last: String,
        detail: String,
    },
    #[error("the health check on builder {instance_id} through SSM ended {status}: {detail}")]
    HealthCommand {
        instance_id: String,
        status: String,
        detail: String,
    },
    #[error(transparent)]
    Api(#[from] CallError),
}

/// Waits for the instance (`what`: the builder, the test instance) to run; returns its public
/// IP, if it has one.
pub async fn running(
    clients: &Clients,
    instance_id: &str,
    what: &str,
    progress: &Progress,
) -> Result<Option<String>, Error> {
    let step = &format!("waiting for {what} to run");
    progress.step(format!("{step}: {instance_id}"));
    let result = poll::until(
        step,
        poll::deadline(RUNNING_TIMEOUT),
        RUNNING_SCHEDULE,
        |seen| progress.detail(step, seen),
        || async {
            let out = match clients
                .ec2
                .describe_instances()
                .instance_ids(instance_id)
                .send()
                .await
            {
                Ok(out) => out,
                // Right after RunInstances the id may not be visible yet (eventual consistency).
                Err(e) if aws::code(&e) == Some("InvalidInstanceID.NotFound") => {
                    return Check::Pending("not visible yet".into());
                }
                Err(e) => return aws::unless_transient(&e, |e| Err(aws::describe(e))),
            };
            let Some(instance) = out.reservations().iter().flat_map(|r| r.instances()).next()
            else {
                return Check::Pending("not visible yet".into());
            };
            let state = instance.state().and_then(|s| s.name()).cloned();
            match state {
                Some(InstanceStateName::Running) => {
                    Check::Ready(instance.public_ip_address().map(str::to_owned))
                }
                Some(InstanceStateName::Pending) | None => Check::Pending("pending".into()),
                Some(other) => {
                    let reason = instance
                        .state_reason()
                        .and_then(|r| r.message())
                        .unwrap_or("no reason given");
                    Check::Failed(Ok(format!("{} ({reason})", other.as_str())))
                }
            }
        },
    )
    .await;
    match result {
        Ok(ip) => Ok(ip),
        Err(PollError::Failed(Ok(state))) => Err(Error::Died {
            instance_id: instance_id.to_owned(),
            region: clients.region.clone(),
            state,
        }),
        Err(PollError::Failed(Err(message))) => Err(Error::Api(
            clients.failed(format!("describe builder {instance_id}"), message),
        )),
        Err(PollError::TimedOut { last }) => Err(Error::NotRunning {
            instance_id: instance_id.to_owned(),
            region: clients.region.clone(),
            waited: RUNNING_TIMEOUT,
            last,
        }),
    }
}

/// Waits until `http://IP:PORT/PATH` answers the expected status (and body).
pub async fn http(
    instance_id: &str,
    ip: &str,
    health: &Health,
    deadline: Instant,
    progress: &Progress,
) -> Result<(), Error> {
    let url = format!("http://{ip}:{}{}", health.port, health.path.get_ref());
    let step = format!("waiting for health at {url}");
    probe::until_healthy(&url, health, deadline, HTTP_SCHEDULE, &step, progress)
        .await
        .map_err(|e| Error::Unhealthy {
            instance_id: instance_id.to_owned(),
            url: url.clone(),
            waited: e.waited,
            last: e.last,
        })
}

/// Waits until the builder's SSM agent reports Online.
pub async fn ssm_online(
    clients: &Clients,
    instance_id: &str,
    deadline: Instant,
) -> Result<(), Error> {
    let started = Instant::now();
    let result = poll::until(
        &format!("waiting for {instance_id} to come Online in SSM"),
        deadline,
        SSM_SCHEDULE,
        |_| {},
        || async {
            let out = clients
                .ssm
                .describe_instance_information()
                .filters(
                    InstanceInformationStringFilter::builder()
                        .key("InstanceIds")
                        .values(instance_id)
                        .build()
                        .expect("key and values are set"),
                )
                .send()
                .await;
            match out {
                Ok(out) => match out.instance_information_list().first() {
                    Some(info) if info.ping_status() == Some(&PingStatus::Online) => {
                        Check::Ready(())
                    }
                    Some(info) => Check::Pending(
                        info.ping_status()
                            .map_or("unknown", |s| s.as_str())
                            .to_owned(),
                    ),
                    None => Check::Pending("not registered".into()),
                },
                Err(e) => aws::unless_transient(&e, aws::describe),
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(message)) => Err(Error::Api(clients.failed(
            format!("describe SSM instance information of {instance_id}"),
            message,
        ))),
        Err(PollError::TimedOut { last }) => Err(Error::SsmOffline {
            instance_id: instance_id.to_owned(),
            region: clients.region.clone(),
            waited: started.elapsed(),
            last,
        }),
    }
}

/// The health check's URL on the builder itself.
fn local_url(health: &Health) -> String {
    format!("http://127.0.0.1:{}{}", health.port, health.path.get_ref())
}

/// The in-builder health loop, in POSIX sh (the agent runs it with `sh`): every half second (as
/// the runner's probe) `curl` the page with the probe's timeout and no redirects followed,
/// healthy when the status is the expected one and the body holds the expected text; stop early
/// when the user data's failure marker appears, or when `wait` has passed. Every value from the
/// config is quoted.
///
/// Exit 0 healthy; 90 timed out; 91 the user data failed (its log's tail on stderr); 94 no curl.
/// The last answer is the last line of stdout (`bake-health: last answer: ...`).
pub fn script(health: &Health, wait: Duration) -> String {
    let q = |s: &str| shlex::try_quote(s).map_or_else(|_| "''".into(), |c| c.into_owned());
    let interval = HTTP_SCHEDULE.interval;
    vec![
        format!(
            "url={} want={} expect={}",
            q(&local_url(health)),
            health.expect_status,
            q(health.expect_body.as_deref().unwrap_or(""))
        ),
        format!("ready={} failed={}", q(READY_MARKER), q(FAILED_MARKER)),
        "log=/var/log/bake-userdata.log".into(),
        format!("deadline=$(( $(date +%s) + {} ))", wait.as_secs()),
        "body=$(mktemp) || exit 93".into(),
        "trap 'rm -f \"$body\"' EXIT".into(),
        "last='not probed yet'".into(),
        "if ! command -v curl >/dev/null 2>&1; then".into(),
        "  echo 'bake-health: last answer: curl is not installed on the builder'".into(),
        "  echo 'bake-health: the health check through SSM needs curl on the builder' >&2".into(),
        "  exit 94".into(),
        "fi".into(),
        "while :; do".into(),
        "  if [ -e \"$failed\" ]; then".into(),
        "    echo \"bake-health: last answer: $last\"".into(),
        "    echo \"bake-health: user data failed: $(head -c 500 \"$failed\")\" >&2".into(),
        format!(
            "    tail -n {LOG_TAIL_LINES} \"$log\" 2>/dev/null | tail -c {LOG_TAIL_BYTES} >&2"
        ),
        "    exit 91".into(),
        "  fi".into(),
        format!(
            "  code=$(curl -s -o \"$body\" -w '%{{http_code}}' --max-time {} \"$url\")",
            probe::TIMEOUT.as_secs()
        ),
        "  rc=$?".into(),
        "  case $rc in".into(),
        "    0) if [ \"$code\" != \"$want\" ]; then last=\"HTTP $code\"".into(),
        "       elif [ -z \"$expect\" ]; then echo \"bake-health: last answer: HTTP $code\"; exit 0".into(),
        "       else case $(cat \"$body\") in".into(),
        "         *\"$expect\"*) echo \"bake-health: last answer: HTTP $code\"; exit 0 ;;".into(),
        "         *) last=\"HTTP $code but the body lacks \\\"$expect\\\" ($(wc -c <\"$body\") bytes)\" ;;".into(),
        "       esac; fi ;;".into(),
        "    7) last='connection refused' ;;".into(),
        "    28) last='timeout' ;;".into(),
        "    52) last='empty reply' ;;".into(),
        "    *) last=\"curl exit code $rc\" ;;".into(),
        "  esac".into(),
        "  if [ \"$(date +%s)\" -ge \"$deadline\" ]; then".into(),
        "    echo \"bake-health: last answer: $last\"".into(),
        "    exit 90".into(),
        "  fi".into(),
        format!("  sleep {:.1}", interval.as_secs_f64()),
        "done".into(),
    ]
    .join("\n")
}

/// The last answer the in-builder loop printed.
fn last_answer(stdout: &str) -> String {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("bake-health: last answer: "))
        .unwrap_or("none recorded")
        .to_owned()
}

/// A private builder's health check: ONE SendCommand runs [`script`] on the builder until the
/// page answers as `health` expects, the user data fails, or `deadline` passes; its invocation
/// is polled until it ends. Call once the builder is Online in SSM.
pub async fn through_ssm(
    clients: &Clients,
    instance_id: &str,
    health: &Health,
    deadline: Instant,
    progress: &Progress,
) -> Result<(), Error> {
    let step = format!(
        "waiting for health at {} on {instance_id} (through SSM)",
        local_url(health)
    );
    progress.step(step.clone());
    in_builder(
        clients,
        instance_id,
        health,
        deadline,
        SSM_HEALTH_SCHEDULE,
        &|seen| progress.detail(&step, seen),
    )
    .await
}

/// A public builder's user data, watched while the runner probes its page: the same command as
/// [`through_ssm`] (so one SendCommand), polled slowly, and only its verdict that the user data
/// failed counts — the runner's probe decides health. Returns that failure; otherwise it never
/// returns (its caller stops waiting once the runner saw the page). Call once the builder is
/// Online in SSM.
pub async fn user_data_failure(
    clients: &Clients,
    instance_id: &str,
    health: &Health,
    deadline: Instant,
) -> Error {
    let verdict = in_builder(
        clients,
        instance_id,
        health,
        deadline,
        WATCH_SCHEDULE,
        &|_| {},
    )
    .await;
    match verdict {
        Err(failed @ Error::UserDataFailed { .. }) => failed,
        // Healthy inside, no curl, a slow answer: the runner's probe is the judge of those.
        _ => std::future::pending().await,
    }
}

/// Runs [`script`] on the builder through one SendCommand and polls its invocation on `schedule`
/// until it ends or `deadline` (plus the command's margin) passes.
async fn in_builder(
    clients: &Clients,
    instance_id: &str,
    health: &Health,
    deadline: Instant,
    schedule: Schedule,
    seen: &dyn Fn(&str),
) -> Result<(), Error> {
    let url = local_url(health);
    let step = format!("waiting for health at {url} on builder {instance_id} (through SSM)");
    let started = Instant::now();
    let wait = deadline.saturating_duration_since(started);
    let script = Script {
        instance_id,
        what: "health",
        sending: format!("send the health check to builder {instance_id}"),
        script: script(health, wait),
        execution_timeout: wait.saturating_add(SSM_HEALTH_MARGIN).as_secs().max(1),
    };
    let outcome = verify::run_script(
        clients,
        script,
        &step,
        |_| deadline + SSM_HEALTH_MARGIN,
        schedule,
        seen,
    )
    .await?;
    match outcome {
        Ok(_) => Ok(()),
        Err(Ended::Failed(out)) => Err(ended(instance_id, &url, started, &out)),
        Err(Ended::TimedOut { last }) => Err(Error::Unhealthy {
            instance_id: instance_id.to_owned(),
            url: format!("{url} (through SSM)"),
            waited: started.elapsed(),
            last: format!("the health command was still {last}"),
        }),
    }
}

/// What a health command that did not succeed means: not healthy in time (exit 90), the user
/// data failed (91), or the command itself could not run.
fn ended(instance_id: &str, url: &str, started: Instant, out: &InvocationOutput) -> Error {
    let stdout = out.standard_output_content().unwrap_or_default();
    let stderr = out.standard_error_content().unwrap_or_default();
    let last = last_answer(stdout);
    let finished = out.status() == Some(&aws_sdk_ssm::types::CommandInvocationStatus::Failed);
    match out.response_code() {
        90 if finished => Error::Unhealthy {
            instance_id: instance_id.to_owned(),
            url: format!("{url} (through SSM)"),
            waited: started.elapsed(),
            last,
        },
        91 if finished => Error::UserDataFailed {
            instance_id: instance_id.to_owned(),
            url: url.to_owned(),
            last,
            detail: stderr.trim_end().to_owned(),
        },
        code => Error::HealthCommand {
            instance_id: instance_id.to_owned(),
            status: out.status().map_or("Failed", |s| s.as_str()).to_owned(),
            detail: format!(
                "{} (exit code {code}; last answer: {last}){}{}",
                out.status_details().unwrap_or_default(),
                if stderr.is_empty() { "" } else { "\n" },
                stderr.trim_end()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::Command;
    use toml::Spanned;

    /// A server on 127.0.0.1 that answers every request with `status` and `body`; its port.
    fn serve(status: u16, body: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn health(port: u16, expect_body: Option<&str>) -> Health {
        Health {
            path: Spanned::new(0..0, "/health?x=1".to_owned()),
            port,
            expect_status: 200,
            expect_body: expect_body.map(str::to_owned),
            timeout: crate::config::HumanDuration(Duration::from_secs(60)),
        }
    }

    /// Runs the script under dash (the agent's sh on Debian) with the markers and the log in
    /// `dir`; exit code, stdout, stderr and how long it took.
    fn run(dir: &std::path::Path, health: &Health, wait: u64) -> (i32, String, String, Duration) {
        let text = script(health, Duration::from_secs(wait))
            .replace(READY_MARKER, &dir.join("ready").display().to_string())
            .replace(FAILED_MARKER, &dir.join("failed").display().to_string())
            .replace(
                "/var/log/bake-userdata.log",
                &dir.join("log").display().to_string(),
            );
        let started = std::time::Instant::now();
        let out = Command::new("dash").arg("-c").arg(text).output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            started.elapsed(),
        )
    }

    #[test]
    fn healthy_page_ends_the_loop_at_once_with_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let port = serve(200, "Hello from Immersion Day");
        let (code, stdout, _, took) = run(dir.path(), &health(port, Some("Immersion Day")), 30);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(last_answer(&stdout), "HTTP 200");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn wrong_status_or_body_or_nothing_listening_times_out_with_the_last_answer() {
        let dir = tempfile::tempdir().unwrap();
        let port = serve(502, "bad gateway");
        let (code, stdout, _, _) = run(dir.path(), &health(port, None), 1);
        assert_eq!(code, 90, "{stdout}");
        assert_eq!(last_answer(&stdout), "HTTP 502");
        let port = serve(200, "It works");
        let (code, stdout, _, _) = run(dir.path(), &health(port, Some("Immersion Day")), 1);
        assert_eq!(code, 90, "{stdout}");
        assert_eq!(
            last_answer(&stdout),
            "HTTP 200 but the body lacks \"Immersion Day\" (8 bytes)"
        );
        let (code, stdout, _, _) = run(dir.path(), &health(closed_port(), None), 1);
        assert_eq!(code, 90, "{stdout}");
        assert_eq!(last_answer(&stdout), "connection refused");
    }

    #[test]
    fn the_user_data_failure_marker_stops_the_wait_early_with_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("failed"), "line 12: apt-get install ngnix").unwrap();
        std::fs::write(
            dir.path().join("log"),
            "E: Unable to locate package ngnix\n",
        )
        .unwrap();
        let (code, stdout, stderr, took) = run(dir.path(), &health(closed_port(), None), 60);
        assert_eq!(code, 91, "{stdout}{stderr}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(
            stderr.contains("user data failed: line 12: apt-get install ngnix"),
            "{stderr}"
        );
        assert!(
            stderr.contains("E: Unable to locate package ngnix"),
            "{stderr}"
        );
    }

    #[test]
    fn values_from_the_config_are_quoted_in_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("pwned");
        let body = Box::leak(
            format!("$(touch {0}) `touch {0}` '\"; touch {0}", canary.display()).into_boxed_str(),
        );
        let port = serve(200, body);
        let (code, stdout, _, _) = run(dir.path(), &health(port, Some(body)), 5);
        assert_eq!(code, 0, "{stdout}");
        assert!(!canary.exists());
    }
}
