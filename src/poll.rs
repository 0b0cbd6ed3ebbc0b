//! Polling until a deadline, with capped, jittered backoff and terminal states.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

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
/// `seen` is told each pending observation (for progress bars).
pub async fn until<T, E, F, Fut>(
    deadline: Instant,
    schedule: Schedule,
    mut seen: impl FnMut(&str),
    mut check: F,
) -> Result<T, PollError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Check<T, E>>,
{
    let mut waits = schedule.waits();
    loop {
        let wait = waits.next().unwrap_or(schedule.cap);
        let now = Instant::now();
        if now + wait > deadline {
            // Look once more at the deadline itself rather than give up early.
            sleep(deadline.saturating_duration_since(now)).await;
            return match check().await {
                Check::Ready(v) => Ok(v),
                Check::Failed(e) => Err(PollError::Failed(e)),
                Check::Pending(s) => Err(PollError::TimedOut { last: s }),
            };
        }
        sleep(wait).await;
        match check().await {
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

    #[tokio::test(start_paused = true)]
    async fn ready_after_some_pending_looks() {
        let calls = Cell::new(0);
        let start = Instant::now();
        let got: Result<u32, PollError<()>> = until(
            start + Duration::from_secs(60),
            Schedule::every(Duration::from_secs(1)),
            |_| {},
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
        let got: Result<(), PollError<()>> = until(
            start + Duration::from_secs(10),
            Schedule {
                first: Duration::from_secs(1),
                interval: Duration::from_secs(1),
                dense: Duration::ZERO,
                factor: 2.0,
                cap: Duration::from_secs(4),
            },
            |_| {},
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
        let got: Result<(), PollError<&str>> = until(
            Instant::now() + Duration::from_secs(600),
            Schedule::every(Duration::from_secs(5)),
            |_| {},
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
        let _: Result<(), PollError<()>> = until(
            start + Duration::from_secs(60),
            Schedule {
                first: Duration::from_secs(5),
                interval: Duration::from_secs(1),
                dense: Duration::from_secs(10),
                factor: 2.0,
                cap: Duration::from_secs(8),
            },
            |_| {},
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
}
