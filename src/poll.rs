//! Polling until a deadline, with capped, jittered backoff and terminal states; deadlines that
//! cannot overflow the clock.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// How far ahead a deadline goes when the one asked for is past what the clock can hold: 30
/// years, as tokio's own far-future instant.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `from + after`, checked: a duration too large for the clock gives a deadline 30 years ahead
/// instead of a panic.
pub fn deadline_after(from: Instant, after: Duration) -> Instant {
    from.checked_add(after)
        .or_else(|| from.checked_add(FAR_FUTURE))
        .unwrap_or(from)
}

/// `after` from now, checked as in [`deadline_after`].
pub fn deadline(after: Duration) -> Instant {
    deadline_after(Instant::now(), after)
}

/// When to look again: first after `first` (when the state becomes likely), then every
/// `interval` until `dense` has passed since the wait began (the window in which the state
/// usually arrives), then growing by `factor` up to `cap` (a slow tail costs few calls).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub first: Duration,
    pub interval: Duration,
    pub dense: Duration,
    pub factor: f64,
    pub cap: Duration,
}

impl Schedule {
    /// A fixed interval, first check at once.
    pub const fn every(interval: Duration) -> Schedule {
        Schedule {
            first: Duration::ZERO,
            interval,
            dense: Duration::ZERO,
            factor: 1.0,
            cap: interval,
        }
    }

    /// The first look after `first` instead of at once.
    pub const fn first_after(self, first: Duration) -> Schedule {
        Schedule { first, ..self }
    }

    /// Every `interval` until `dense` has passed since the wait began.
    pub const fn dense_for(self, dense: Duration) -> Schedule {
        Schedule { dense, ..self }
    }

    /// After the dense part, each wait `factor` times the last, up to `cap`.
    pub const fn growing(self, factor: f64, cap: Duration) -> Schedule {
        Schedule {
            factor,
            cap,
            ..self
        }
    }
}

impl Schedule {
    /// The waits between looks, jittered: `first`, then `interval` while within `dense` of the
    /// start (counted from the waits themselves), then growing by `factor` up to `cap`.
    pub fn waits(self) -> impl Iterator<Item = Duration> {
        let mut elapsed = Duration::ZERO;
        let mut next = self.first;
        let mut interval = self.interval;
        std::iter::from_fn(move || {
            let wait = next;
            elapsed += wait;
            if elapsed >= self.dense {
                interval = interval.mul_f64(self.factor).min(self.cap);
            }
            next = interval;
            Some(jitter(wait))
        })
    }
}

/// What one look found.
#[derive(Debug)]
pub enum Check<T, E> {
    /// The wait is over.
    Ready(T),
    /// Not yet; the text says what was seen (for progress and the timeout message).
    Pending(String),
    /// A terminal state: waiting longer cannot help.
    Failed(E),
}

/// Why a poll ended without a result.
#[derive(Debug)]
pub enum PollError<E> {
    /// The deadline passed; holds the last thing seen.
    TimedOut {
        last: String,
    },
    Failed(E),
}

/// Calls `check` on the schedule until it is ready, fails, or `deadline` passes.
/// `seen` is told each pending observation (for progress bars); each look is logged at debug
/// level (`-vv`) under `what` the wait is for.
pub async fn until<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    schedule: Schedule,
    mut seen: impl FnMut(&str),
    mut check: F,
) -> Result<T, PollError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Check<T, E>>,
{
    let started = Instant::now();
    let mut waits = schedule.waits();
    let mut look = async || {
        let found = check().await;
        let elapsed = started.elapsed();
        match &found {
            Check::Ready(_) => tracing::debug!("{what}: ready after {elapsed:.1?}"),
            Check::Pending(s) => tracing::debug!("{what}: {s} ({elapsed:.1?})"),
            Check::Failed(_) => tracing::debug!("{what}: failed after {elapsed:.1?}"),
        }
        found
    };
    loop {
        let wait = waits.next().unwrap_or(schedule.cap);
        let now = Instant::now();
        if deadline_after(now, wait) > deadline {
            // Look once more at the deadline itself rather than give up early.
            sleep(deadline.saturating_duration_since(now)).await;
            return match look().await {
                Check::Ready(v) => Ok(v),
                Check::Failed(e) => Err(PollError::Failed(e)),
                Check::Pending(s) => Err(PollError::TimedOut { last: s }),
            };
        }
        sleep(wait).await;
        match look().await {
            Check::Ready(v) => return Ok(v),
            Check::Failed(e) => return Err(PollError::Failed(e)),
            Check::Pending(s) => seen(&s),
        }
    }
}

/// Up to 15% shorter, so that bakes started together do not poll in lockstep, while a wait never
/// exceeds its interval (the interval bounds how late a state is noticed).
fn jitter(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    let r = std::collections::hash_map::RandomState::new();
    let x = std::hash::BuildHasher::hash_one(&r, 0u8) % 1501;
    d.mul_f64(1.0 - x as f64 / 10_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// `until` with the deadline `within` from now and no progress callback.
    async fn poll_for<T, E, F, Fut>(
        within: Duration,
        schedule: Schedule,
        check: F,
    ) -> Result<T, PollError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Check<T, E>>,
    {
        until("a test", Instant::now() + within, schedule, |_| {}, check).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_past_the_clock_is_far_ahead_not_a_panic() {
        let now = Instant::now();
        let huge = Duration::from_secs(300_000_000_000 * 31_557_600);
        let far = deadline_after(now, huge);
        assert!(far > deadline_after(now, Duration::from_secs(29 * 365 * 24 * 3600)));
        assert_eq!(deadline_after(now, Duration::MAX), far);
        assert_eq!(
            deadline_after(now, Duration::from_secs(60)),
            now + Duration::from_secs(60)
        );
        assert!(deadline(Duration::MAX) >= far);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_after_some_pending_looks() {
        let calls = Cell::new(0);
        let start = Instant::now();
        let got: Result<u32, PollError<()>> = poll_for(
            Duration::from_secs(60),
            Schedule::every(Duration::from_secs(1)),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 4 {
                        Check::Pending(format!("look {n}"))
                    } else {
                        Check::Ready(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(got.unwrap(), 4);
        // Three 1 s waits, each shortened by jitter by at most 15%, never lengthened.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(2550) && elapsed <= Duration::from_secs(3),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_at_the_deadline_with_the_last_observation() {
        let start = Instant::now();
        let got: Result<(), PollError<()>> = poll_for(
            Duration::from_secs(10),
            Schedule::every(Duration::from_secs(1))
                .first_after(Duration::from_secs(1))
                .growing(2.0, Duration::from_secs(4)),
            || async { Check::Pending("502 Bad Gateway".into()) },
        )
        .await;
        match got {
            Err(PollError::TimedOut { last }) => assert_eq!(last, "502 Bad Gateway"),
            other => panic!("{other:?}"),
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(10) && elapsed < Duration::from_secs(11));
    }

    #[tokio::test(start_paused = true)]
    async fn a_terminal_state_ends_the_wait_at_once() {
        let calls = Cell::new(0);
        let got: Result<(), PollError<&str>> = poll_for(
            Duration::from_secs(600),
            Schedule::every(Duration::from_secs(5)),
            || {
                calls.set(calls.get() + 1);
                async { Check::Failed("failed") }
            },
        )
        .await;
        assert!(matches!(got, Err(PollError::Failed("failed"))));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn jitter_only_shortens_by_up_to_fifteen_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_millis(8500) && j <= Duration::from_secs(10),
                "{j:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn intervals_stay_dense_then_grow_to_the_cap() {
        let start = Instant::now();
        let times = std::cell::RefCell::new(Vec::new());
        let _: Result<(), PollError<()>> = poll_for(
            Duration::from_secs(60),
            Schedule::every(Duration::from_secs(1))
                .first_after(Duration::from_secs(5))
                .dense_for(Duration::from_secs(10))
                .growing(2.0, Duration::from_secs(8)),
            || {
                times.borrow_mut().push(start.elapsed());
                async { Check::Pending("pending".into()) }
            },
        )
        .await;
        let times = times.into_inner();
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(times[0] <= Duration::from_secs(5), "{times:?}");
        assert!(
            gaps.iter().take(4).all(|g| *g <= Duration::from_secs(1)),
            "{gaps:?}"
        );
        assert!(
            gaps.iter().all(|g| *g <= Duration::from_secs(8)),
            "{gaps:?}"
        );
        assert!(gaps.iter().any(|g| *g > Duration::from_secs(4)), "{gaps:?}");
    }

    #[test]
    fn each_look_of_a_wait_is_logged_at_debug_under_its_name() {
        let lines = crate::output::Captured::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let calls = Cell::new(0);
            let got: Result<(), PollError<()>> = runtime.block_on(until(
                "waiting for i-1 to run",
                Instant::now() + Duration::from_secs(60),
                Schedule::every(Duration::from_secs(1)),
                |_| {},
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move {
                        if n < 3 {
                            Check::Pending("pending".into())
                        } else {
                            Check::Ready(())
                        }
                    }
                },
            ));
            got.unwrap();
        });
        let text = lines.text();
        assert_eq!(
            text.matches("waiting for i-1 to run: pending").count(),
            2,
            "{text}"
        );
        assert!(
            text.contains("waiting for i-1 to run: ready after"),
            "{text}"
        );
    }
}
