//! The HTTP health probe: its client, one probe described the way a person reads it, and the
//! wait until a URL answers as the image's health check expects (the builder, then the page
//! through the load balancer).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Health;
use crate::output::Progress;
use crate::poll::{self, Check, PollError, Schedule};

/// One probe may take this long before it counts as "timeout" (a booting server accepts slowly).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The probe's client: no redirects followed (the health check expects its own status).
pub fn client() -> reqwest::Client {
    client_with(TIMEOUT)
}

/// The probe's client with another timeout per request (the traffic probe's).
pub fn client_with(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client without TLS options builds")
}

/// One health probe, described the way a person reads it: "refused", "timeout", "502", ...
pub async fn once(client: &reqwest::Client, url: &str, health: &Health) -> Check<(), String> {
    let response = match client.get(url).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Check::Pending("timeout".into()),
        Err(e) if e.is_connect() => return Check::Pending("connection refused".into()),
        Err(e) => return Check::Pending(e.to_string()),
    };
    let status = response.status();
    if status.as_u16() != health.expect_status {
        return Check::Pending(format!("HTTP {status}"));
    }
    let Some(expected) = &health.expect_body else {
        return Check::Ready(());
    };
    match response.text().await {
        Ok(body) if body.contains(expected.as_str()) => Check::Ready(()),
        Ok(body) => Check::Pending(format!(
            "HTTP {status} but the body lacks {expected:?} ({} bytes)",
            body.len()
        )),
        Err(e) => Check::Pending(format!("HTTP {status}, body unreadable: {e}")),
    }
}

/// Why a URL was not healthy in time.
#[derive(Debug)]
pub struct Unhealthy {
    /// How long it was probed.
    pub waited: Duration,
    /// The last answer.
    pub last: String,
}

/// Probes `url` on `schedule` until it answers as `health` expects or `deadline` passes; `step`
/// is the progress line it shows.
pub async fn until_healthy(
    url: &str,
    health: &Health,
    deadline: Instant,
    schedule: Schedule,
    step: &str,
    progress: &Progress,
) -> Result<(), Unhealthy> {
    progress.step(step);
    let client = client();
    let started = Instant::now();
    poll::until(
        step,
        deadline,
        schedule,
        |seen| progress.detail(step, seen),
        || once(&client, url, health),
    )
    .await
    .map_err(|e| Unhealthy {
        waited: started.elapsed(),
        last: match e {
            PollError::TimedOut { last } => last,
            PollError::Failed(never) => never,
        },
    })
}
