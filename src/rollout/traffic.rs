//! The traffic probe during a refresh: a bounded stream of requests through the load balancer,
//! each checked for the health check's expected status, counted (failures, latency) and tripped
//! when the failures pass `rollout.probe.max_errors`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::preflight::Plan;
use super::stack::Stack;
use crate::config::{Health, Rollout, TrafficProbe};
use crate::probe;

/// What the probe saw, for the result and the JSON.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// The URL requested.
    pub url: String,
    /// When the probe began, seconds since the Unix epoch (the failures' times count from it).
    pub started_at: f64,
    /// Requests answered or failed (not those still in flight when the probe stopped).
    pub requests: u64,
    /// Requests that did not answer with the health check's expected status (or not at all).
    pub failed: u64,
    /// Ticks skipped because as many requests as the probe allows were still in flight.
    pub skipped: u64,
    /// Latency of the answered requests, milliseconds.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The first failure, as a person reads it ("HTTP 502", "timeout", ...).
    pub first_failure: Option<String>,
    /// The first failures (at most [`FAILURES_KEPT`]): seconds since the probe started, and what.
    pub failures: Vec<(f64, String)>,
}

/// How many failures a report lists one by one.
pub const FAILURES_KEPT: usize = 20;

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "probe {}: {} requests, {} failed",
            self.url, self.requests, self.failed
        )?;
        if let (Some(p50), Some(p95), Some(max)) = (self.p50_ms, self.p95_ms, self.max_ms) {
            write!(
                f,
                "; latency p50 {p50:.0} ms, p95 {p95:.0} ms, max {max:.0} ms"
            )?;
        }
        if let Some(first) = &self.first_failure {
            write!(f, "; first failure: {first}")?;
        }
        Ok(())
    }
}

/// The probe passed its error budget.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{failed} of {requests} requests failed, more than max_errors = {max_errors}; first: {first}"
)]
pub struct Tripped {
    pub failed: u64,
    pub requests: u64,
    pub max_errors: u32,
    pub first: String,
}

#[derive(Default)]
struct Counts {
    requests: u64,
    failed: u64,
    skipped: u64,
    latencies_ms: Vec<f64>,
    first_failure: Option<String>,
    failures: Vec<(f64, String)>,
}

/// A running probe: stopped by [`Traffic::stop`] (or when dropped), and at its own bounds.
pub struct Traffic {
    url: String,
    started_at: f64,
    counts: Arc<Mutex<Counts>>,
    tripped: watch::Receiver<Option<Tripped>>,
    stop: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// However long the rollout, the probe sends at most this many requests (a day at five a second
/// is far past any refresh timeout bake accepts at that rate; the count is the hard bound).
const MAX_REQUESTS: u64 = 500_000;

impl Traffic {
    /// Starts probing `url` at `settings.rate` requests a second, for `limit` at most; more than
    /// `max_errors` failures trip it (`None`: it only counts).
    pub fn start(
        url: &str,
        health: &Health,
        settings: &TrafficProbe,
        max_errors: Option<u32>,
        limit: Duration,
    ) -> Traffic {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let (trip, tripped) = watch::channel(None);
        let stop = Arc::new(Notify::new());
        let rate = settings.rate.max(1);
        // A request may take the probe's timeout; more in flight than a timeout's worth of ticks
        // means the load balancer stopped answering, and more would only pile up.
        let timeout = settings.timeout.0;
        let in_flight_max = (u64::from(rate) * timeout.as_secs().max(1)) as usize;
        let total = (u64::from(rate) * limit.as_secs().max(1)).min(MAX_REQUESTS);
        let task = {
            let url = url.to_owned();
            let health = health.clone();
            let counts = counts.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = probe::client_with(timeout);
                let began = Instant::now();
                let deadline = began + limit;
                let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut flight = JoinSet::new();
                let mut sent = 0u64;
                loop {
                    tokio::select! {
                        _ = stop.notified() => break,
                        _ = tokio::time::sleep_until(deadline) => break,
                        Some(_) = flight.join_next(), if !flight.is_empty() => continue,
                        _ = tick.tick() => {}
                    }
                    if sent >= total {
                        break;
                    }
                    if flight.len() >= in_flight_max {
                        counts.lock().expect("not poisoned").skipped += 1;
                        continue;
                    }
                    sent += 1;
                    let (client, url, health, counts, trip) = (
                        client.clone(),
                        url.clone(),
                        health.clone(),
                        counts.clone(),
                        trip.clone(),
                    );
                    flight.spawn(async move {
                        let started = Instant::now();
                        let answer = once(&client, &url, health.expect_status).await;
                        let ms = started.elapsed().as_secs_f64() * 1000.0;
                        let mut c = counts.lock().expect("not poisoned");
                        c.requests += 1;
                        match answer {
                            Ok(()) => c.latencies_ms.push(ms),
                            Err((why, answered)) => {
                                c.failed += 1;
                                if answered {
                                    c.latencies_ms.push(ms);
                                }
                                if c.failures.len() < FAILURES_KEPT {
                                    let at = started.duration_since(began).as_secs_f64();
                                    c.failures.push((at, why.clone()));
                                }
                                let first = c.first_failure.get_or_insert(why).clone();
                                if let Some(max_errors) = max_errors
                                    && c.failed > u64::from(max_errors)
                                    && trip.borrow().is_none()
                                {
                                    trip.send_replace(Some(Tripped {
                                        failed: c.failed,
                                        requests: c.requests,
                                        max_errors,
                                        first,
                                    }));
                                }
                            }
                        }
                    });
                }
                // What is in flight finishes (each within the probe's timeout) and is counted.
                while flight.join_next().await.is_some() {}
            })
        };
        Traffic {
            url: url.to_owned(),
            started_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            counts,
            tripped,
            stop,
            task: Some(task),
        }
    }

    /// Resolves once the failures pass `max_errors`; never otherwise.
    pub async fn tripped(&self) -> Tripped {
        let mut rx = self.tripped.clone();
        loop {
            if let Some(t) = rx.borrow_and_update().clone() {
                return t;
            }
            if rx.changed().await.is_err() {
                // The probe ended without tripping: never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops the probe, lets the requests in flight finish, and reports what it saw.
    pub async fn stop(mut self) -> Report {
        self.settle().await;
        self.report()
    }

    /// Stops sending and waits for the requests in flight (each ends within the probe's timeout):
    /// a request sent during the refresh that fails after it counts too. Returns whether the
    /// failures passed `max_errors`.
    pub async fn settle(&mut self) -> Option<Tripped> {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.tripped.borrow().clone()
    }

    fn report(&self) -> Report {
        let c = self.counts.lock().expect("not poisoned");
        let mut sorted = c.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        Report {
            url: self.url.clone(),
            started_at: self.started_at,
            requests: c.requests,
            failed: c.failed,
            skipped: c.skipped,
            p50_ms: percentile(&sorted, 50),
            p95_ms: percentile(&sorted, 95),
            max_ms: sorted.last().copied(),
            first_failure: c.first_failure.clone(),
            failures: c.failures.clone(),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The URL the traffic probe requests: the load balancer's listener and `rollout.probe.path`
/// (by default the image's health path).
pub fn probe_url(alb_dns: &str, rollout: &Rollout, plan: &Plan) -> String {
    let port = match rollout.alb_port {
        80 => String::new(),
        port => format!(":{port}"),
    };
    let probe = rollout.probe.get_ref();
    let path = probe.path.as_deref().unwrap_or(plan.health.path.get_ref());
    format!("http://{alb_dns}{port}{path}")
}

/// Starts the traffic probe for a refresh of `stack`: bounded by twice the refresh timeout (the
/// refresh and a rollback refresh) and the time the load balancer takes to drain.
pub fn for_refresh(stack: &Stack, plan: &Plan, rollout: &Rollout) -> Traffic {
    // The rollback and the last look through the load balancer, past the two refreshes.
    const AFTER_REFRESHES: std::time::Duration = std::time::Duration::from_secs(300);
    let limit = rollout
        .refresh
        .get_ref()
        .timeout
        .0
        .saturating_mul(2)
        .saturating_add(AFTER_REFRESHES);
    // The group's size as the config sets it (the refresh reads the live one; they differ only
    // while a scaling policy has moved the desired capacity).
    let capacity = rollout.capacity.get_ref();
    let (_, max_healthy) = rollout
        .refresh
        .get_ref()
        .healthy_range(capacity.desired, capacity.max);
    let probe = rollout.probe.get_ref();
    let max_errors = probe.max_errors_for(max_healthy);
    if max_errors.is_none() {
        crate::output::note(&format!(
            "note: {} replaces its instances before launching new ones (capacity.max = {} leaves              no room above desired {}): clients may see errors meanwhile, so the traffic probe              counts them without rolling back; set rollout.probe.max_errors to hold them, or              raise capacity.max to launch first",
            plan.names.asg, capacity.max, capacity.desired
        ));
    }
    Traffic::start(
        &probe_url(&stack.alb_dns, rollout, plan),
        &plan.health,
        probe,
        max_errors,
        limit,
    )
}

/// One request: `Ok` when it answers `expect_status`, else what went wrong and whether an answer
/// came at all. The body is not checked: during a rollout old and new versions both serve, and
/// their pages may differ.
async fn once(
    client: &reqwest::Client,
    url: &str,
    expect_status: u16,
) -> Result<(), (String, bool)> {
    match client.get(url).send().await {
        Ok(response) if response.status().as_u16() == expect_status => {
            // Read to the end: a body cut short is a failure too.
            match response.bytes().await {
                Ok(_) => Ok(()),
                Err(e) => Err((format!("HTTP {expect_status}, body cut short: {e}"), true)),
            }
        }
        Ok(response) => Err((format!("HTTP {}", response.status()), true)),
        Err(e) if e.is_timeout() => Err(("timeout".to_owned(), false)),
        Err(e) if e.is_connect() => Err(("connection refused".to_owned(), false)),
        Err(e) => Err((e.to_string(), false)),
    }
}

/// The `p`th percentile of sorted values (nearest rank).
fn percentile(sorted: &[f64], p: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50), Some(50.0));
        assert_eq!(percentile(&values, 95), Some(95.0));
        assert_eq!(percentile(&[7.0], 95), Some(7.0));
        assert_eq!(percentile(&[], 50), None);
    }
}
