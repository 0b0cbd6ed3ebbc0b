//! The per-image lease in the config's S3 store (`[store]`, key `PREFIX` `leases/IMAGE`): taken
//! atomically, renewed while the run works, taken over once expired, given back on every exit.
//!
//! # Why S3 and not DynamoDB
//!
//! The issue suggests DynamoDB conditional writes, as Terraform's S3 backend long locked its state
//! (`dynamodb_table`). S3 fits bake better:
//!
//! - bake needs the S3 bucket anyway, for the bake records (`records/IMAGE/AMI.json`); a lock
//!   table would be a second resource to create, name in the config, grant and check, and the
//!   `aws-sdk-dynamodb` crate a second client for one item.
//! - S3 has had the primitive since 2024: PutObject with `If-None-Match: *` writes only when the
//!   key does not exist, with `If-Match: ETAG` only when the object is unchanged (412
//!   `PreconditionFailed` otherwise; 409 `ConditionalRequestConflict` when two conditional writes
//!   race, to be retried), and DeleteObject takes `If-Match: ETAG` in general purpose buckets
//!   since 2025 ("How to prevent object overwrites with conditional writes", "How to perform
//!   conditional deletes", S3 User Guide). S3 is strongly consistent for reads after writes.
//! - Terraform itself moved this way: its S3 backend's `use_lockfile` (1.10) locks with an
//!   S3 conditional write of `KEY.tflock`, and its DynamoDB locking is deprecated. Terraform's
//!   lock file has no expiry (a crashed run's lock waits for `force-unlock`); an unattended
//!   runner cannot wait for a person, so bake's lease has a TTL and a heartbeat.
//!
//! # The protocol
//!
//! The lease is one small JSON object ([`Body`]: the run id, host, pid, when it was first taken
//! and the holder's TTL). To take it, PutObject with `If-None-Match: *`. When the key exists
//! (412), GetObject reads it: the lease has expired when S3's own clock says so, the response's
//! `Date` minus the object's `Last-Modified` being more than the TTL written in it (plus
//! [`ROUNDING`]); so two machines' clocks never meet. An expired lease is taken over with
//! PutObject `If-Match:` the ETag just read, so of several runners who saw it expire only one
//! wins. A live one is [`Taken::Busy`]: held by run X since T.
//!
//! The holder renews every third of the TTL with PutObject `If-Match:` its ETag (each renewal
//! writes a new body, so a new ETag). A 412 or 404 means another run took the lease: it is
//! lost. So is a lease not renewed in time: each renewal has until the TTL (less
//! [`ROUNDING`]) since the last one was sent, then the holder counts it as lost, before anyone
//! else can count it as expired. A lost lease ends the image's run, which cleans up what it made
//! ([`Lease::lost`]). On every exit (success, failure, SIGINT/SIGTERM) the lease is given back
//! with DeleteObject `If-Match:` its ETag, so a lease since taken over is never deleted. A
//! SIGKILLed run gives nothing back: its lease expires after its TTL.
//!
//! S3 actions: `s3:PutObject`, `s3:GetObject` (also needed for the `If-Match` writes and
//! deletes), `s3:DeleteObject` on `arn:aws:s3:::BUCKET/PREFIXleases/*`; `s3:ListBucket` on the
//! bucket for HeadBucket (`bake validate`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

use crate::aws::{CallError, Clients};
use crate::config::Store;

/// S3's `Last-Modified` and `Date` count whole seconds: each may be up to a second early, so a
/// lease counts as expired only a TTL and two seconds after its last renewal, and its holder
/// counts it as lost two seconds before its TTL has passed.
pub const ROUNDING: Duration = Duration::from_secs(2);
/// Rounds of take-read-take-over before giving up: each round ends because another runner wrote
/// or deleted the lease in between (a 409, a 412 on the take-over, a 404 on the read), which
/// happens once or twice when runners start together; five is a race that never settles.
const ROUNDS: u32 = 5;
/// After a 409 `ConditionalRequestConflict` (two conditional writes at once), S3 asks for a
/// retry; a short pause (jittered below) lets the other write finish.
const CONFLICT_PAUSE: Duration = Duration::from_millis(200);
/// A renewal that failed for a transient reason (throttling, a dropped connection) is tried again
/// after this, as long as the lease is still ours by the clock.
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// What the lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Body {
    /// The run holding it (`bake:run-id` on what that run creates).
    pub run_id: String,
    pub image: String,
    pub host: String,
    pub pid: u32,
    /// When the holder took it (RFC 3339, the holder's clock; for messages only).
    pub since: String,
    /// The holder's `store.lease_ttl`, in seconds: expiry is judged by the holder's TTL, not the
    /// reader's, so two configs with different TTLs agree.
    pub ttl_seconds: u64,
    /// How many times it was renewed: each renewal writes a new body, so a new ETag.
    pub renewals: u64,
}

/// Why the lease could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(
        "the lease s3://{bucket}/{key} changed hands {ROUNDS} times while this run tried to take \
         it; try again"
    )]
    Contended { bucket: String, key: String },
}

/// A live lease of another run.
#[derive(Debug, Clone, Serialize)]
pub struct Busy {
    pub run_id: String,
    pub host: String,
    pub since: String,
    /// Where the lease is, for messages.
    pub key: String,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "held by run {} on {} since {} (s3 lease {})",
            self.run_id, self.host, self.since, self.key
        )
    }
}

/// The outcome of [`take`].
#[derive(Debug)]
pub enum Taken {
    /// This run holds it; `previous` is the run whose expired lease it took over.
    Held {
        lease: Lease,
        previous: Option<Body>,
    },
    /// Another run holds it.
    Busy(Busy),
}

/// A lease this run holds, renewed in the background until [`Lease::release`].
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
    renewing: tokio::task::JoinHandle<()>,
    lost: watch::Receiver<Option<String>>,
}

#[derive(Debug)]
struct Shared {
    clients: Clients,
    bucket: String,
    key: String,
    ttl: Duration,
    /// The body and ETag last written.
    state: Mutex<(Body, String)>,
}

/// Takes the lease of `image` for the run `run_id`, or says who holds it.
pub async fn take(
    clients: &Clients,
    store: &Store,
    image: &str,
    run_id: &str,
) -> Result<Taken, Error> {
    let bucket = store.bucket.get_ref().clone();
    let key = store.lease_key(image);
    let ttl = store.lease_ttl.get_ref().0;
    let body = Body {
        run_id: run_id.to_owned(),
        image: image.to_owned(),
        host: host(),
        pid: std::process::id(),
        since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        ttl_seconds: ttl.as_secs(),
        renewals: 0,
    };
    let object = Object {
        clients,
        bucket: &bucket,
        key: &key,
    };
    for round in 0..ROUNDS {
        if round > 0 {
            sleep(jitter(CONFLICT_PAUSE)).await;
        }
        match object.put(&body, Condition::Absent).await? {
            Put::Written(etag) => {
                return Ok(Taken::Held {
                    lease: Lease::start(clients, bucket, key, ttl, body, etag),
                    previous: None,
                });
            }
            Put::Conflict | Put::Gone => continue,
            Put::Refused => {}
        }
        let Some(found) = object.read().await? else {
            continue; // given back between the two calls
        };
        if found.body.as_ref().is_some_and(|b| b.run_id == run_id) {
            // The SDK retried a write whose answer was lost: the lease is ours already.
            return Ok(Taken::Held {
                lease: Lease::start(clients, bucket, key, ttl, body, found.etag),
                previous: None,
            });
        }
        if !found.expired() {
            let holder = found.body.unwrap_or_else(|| unreadable(image));
            return Ok(Taken::Busy(Busy {
                run_id: holder.run_id,
                host: holder.host,
                since: holder.since,
                key: format!("s3://{bucket}/{key}"),
            }));
        }
        match object.put(&body, Condition::Unchanged(&found.etag)).await? {
            Put::Written(etag) => {
                return Ok(Taken::Held {
                    lease: Lease::start(clients, bucket, key, ttl, body, etag),
                    previous: Some(found.body.unwrap_or_else(|| unreadable(image))),
                });
            }
            // Another runner took it over first, or its holder renewed or gave it back.
            Put::Refused | Put::Conflict | Put::Gone => continue,
        }
    }
    Err(Error::Contended { bucket, key })
}

/// The body of a lease object bake cannot read (another tool's, or a truncated write): it counts
/// as held by no run bake knows, and expires as any other.
fn unreadable(image: &str) -> Body {
    Body {
        run_id: "(unreadable lease)".into(),
        image: image.to_owned(),
        host: "?".into(),
        pid: 0,
        since: "?".into(),
        ttl_seconds: 0,
        renewals: 0,
    }
}

impl Lease {
    fn start(
        clients: &Clients,
        bucket: String,
        key: String,
        ttl: Duration,
        body: Body,
        etag: String,
    ) -> Lease {
        let shared = Arc::new(Shared {
            clients: clients.clone(),
            bucket,
            key,
            ttl,
            state: Mutex::new((body, etag)),
        });
        let (tell, lost) = watch::channel(None);
        let renewing = tokio::spawn(renew(shared.clone(), tell));
        Lease {
            shared,
            renewing,
            lost,
        }
    }

    /// The run holding it.
    pub fn run_id(&self) -> String {
        self.shared
            .state
            .lock()
            .expect("lease state")
            .0
            .run_id
            .clone()
    }

    /// Why the lease was lost, once it is (pending until then).
    pub async fn lost(&self) -> String {
        let mut lost = self.lost.clone();
        match lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The renewal task ended without saying why: it panicked, so nothing renews.
            Err(_) => "its renewal stopped".to_owned(),
        }
    }

    /// Why the lease was lost, if it is.
    pub fn is_lost(&self) -> Option<String> {
        if self.renewing.is_finished() && self.lost.borrow().is_none() {
            return Some("its renewal stopped".to_owned());
        }
        self.lost.borrow().clone()
    }

    /// Gives the lease back: stops renewing, then deletes it if it is still this run's (DeleteObject
    /// `If-Match` its ETag). A lost lease is left to its new holder.
    pub async fn release(self) -> Result<(), CallError> {
        self.renewing.abort();
        let _ = self.renewing.await;
        if self.lost.borrow().is_some() {
            return Ok(());
        }
        let etag = self.shared.state.lock().expect("lease state").1.clone();
        let s = &self.shared;
        let delete = s
            .clients
            .s3
            .delete_object()
            .bucket(&s.bucket)
            .key(&s.key)
            .if_match(&etag);
        match s.clients.call(|| delete.clone().send()).answer().await {
            Ok(_) => Ok(()),
            // Taken over meanwhile, or already gone: not ours to delete.
            Err(e)
                if e.is(&[
                    "PreconditionFailed",
                    "NoSuchKey",
                    "ConditionalRequestConflict",
                ]) =>
            {
                Ok(())
            }
            Err(e) => Err(e.or_fail(|| format!("give back the lease s3://{}/{}", s.bucket, s.key))),
        }
    }
}

/// Renews the lease every third of its TTL until aborted; on loss, says why and stops.
async fn renew(shared: Arc<Shared>, tell: watch::Sender<Option<String>>) {
    let object = Object {
        clients: &shared.clients,
        bucket: &shared.bucket,
        key: &shared.key,
    };
    let lease = format!("s3://{}/{}", shared.bucket, shared.key);
    // Ours until a TTL after the write that took or last renewed it was sent (less the rounding).
    let mut ours_until = Instant::now() + shared.ttl.saturating_sub(ROUNDING);
    loop {
        sleep(shared.ttl / 3).await;
        loop {
            let sent = Instant::now();
            let left = ours_until.saturating_duration_since(sent);
            if left.is_zero() {
                let _ = tell.send(Some(format!(
                    "the lease {lease} could not be renewed within its TTL ({}s); another run may \
                     take it over",
                    shared.ttl.as_secs()
                )));
                return;
            }
            let (mut body, etag) = shared.state.lock().expect("lease state").clone();
            body.renewals += 1;
            let put = timeout(left, object.put(&body, Condition::Unchanged(&etag))).await;
            match put {
                Ok(Ok(Put::Written(etag))) => {
                    *shared.state.lock().expect("lease state") = (body, etag);
                    ours_until = sent + shared.ttl.saturating_sub(ROUNDING);
                    break;
                }
                Ok(Ok(Put::Refused | Put::Gone)) => {
                    let _ = tell.send(Some(format!(
                        "the lease {lease} was taken over by another run (its renewal got 412 or \
                         404)"
                    )));
                    return;
                }
                // A concurrent write (409) or a failed call: again while it is still ours.
                Ok(Ok(Put::Conflict)) | Ok(Err(_)) => sleep(RENEW_RETRY.min(left)).await,
                Err(_) => {} // timed out: the next turn says it is lost
            }
        }
    }
}

/// The lease object, for its three calls.
struct Object<'a> {
    clients: &'a Clients,
    bucket: &'a str,
    key: &'a str,
}

/// A conditional write's precondition.
#[derive(Clone, Copy)]
enum Condition<'a> {
    /// `If-None-Match: *`.
    Absent,
    /// `If-Match: ETAG`.
    Unchanged(&'a str),
}

/// What a conditional write did.
enum Put {
    /// Written; its ETag.
    Written(String),
    /// 412 `PreconditionFailed`: the key exists (`Absent`) or changed (`Unchanged`).
    Refused,
    /// 409 `ConditionalRequestConflict`: another write raced it; try again.
    Conflict,
    /// 404 `NoSuchKey` on `Unchanged`: deleted meanwhile.
    Gone,
}

/// What GetObject found.
struct Found {
    body: Option<Body>,
    etag: String,
    last_modified: Option<DateTime>,
    /// S3's clock when it answered (the `Date` header).
    now: Option<DateTime>,
}

impl Found {
    /// Whether, by S3's clock, the holder's TTL has passed since the last write. A lease whose
    /// times cannot be read never expires by itself (its holder still gives it back).
    fn expired(&self) -> bool {
        let (Some(modified), Some(now)) = (self.last_modified, self.now) else {
            return false;
        };
        let ttl = self
            .body
            .as_ref()
            .map_or(crate::config::DEFAULT_LEASE_TTL.as_secs(), |b| {
                b.ttl_seconds
            });
        now.secs() - modified.secs() > i64::try_from(ttl + ROUNDING.as_secs()).unwrap_or(i64::MAX)
    }
}

impl Object<'_> {
    fn at(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    async fn put(&self, body: &Body, condition: Condition<'_>) -> Result<Put, CallError> {
        let json = serde_json::to_vec(body).expect("a lease body serializes");
        let send = || {
            let request = self
                .clients
                .s3
                .put_object()
                .bucket(self.bucket)
                .key(self.key)
                .content_type("application/json")
                .body(ByteStream::from(json.clone()));
            match condition {
                Condition::Absent => request.if_none_match("*"),
                Condition::Unchanged(etag) => request.if_match(etag),
            }
            .send()
        };
        let answer = self.clients.call(send).answer().await;
        match answer {
            Ok(out) => Ok(Put::Written(out.e_tag().unwrap_or_default().to_owned())),
            Err(e) if e.is(&["PreconditionFailed"]) => Ok(Put::Refused),
            Err(e) if e.is(&["ConditionalRequestConflict"]) => Ok(Put::Conflict),
            Err(e) if e.is(&["NoSuchKey"]) => Ok(Put::Gone),
            Err(e) => Err(e.or_fail(|| format!("write the lease {}", self.at()))),
        }
    }

    /// The lease as it is now, or None when there is none.
    async fn read(&self) -> Result<Option<Found>, CallError> {
        let date = ServerDate::default();
        let request = self
            .clients
            .s3
            .get_object()
            .bucket(self.bucket)
            .key(self.key);
        let answer = self
            .clients
            .call(|| request.clone().customize().interceptor(date.clone()).send())
            .answer()
            .await;
        let out = match answer {
            Ok(out) => out,
            Err(e) if e.is(&["NoSuchKey"]) => return Ok(None),
            Err(e) => return Err(e.or_fail(|| format!("read the lease {}", self.at()))),
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let last_modified = out.last_modified().copied();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| {
                self.clients
                    .failed(format!("read the lease {}", self.at()), e.to_string())
            })?
            .into_bytes();
        Ok(Some(Found {
            body: serde_json::from_slice(&bytes).ok(),
            etag,
            last_modified,
            now: date.get(),
        }))
    }
}

/// Keeps the `Date` header of the answer it sees: S3's clock.
#[derive(Debug, Clone, Default)]
struct ServerDate(Arc<Mutex<Option<DateTime>>>);

impl ServerDate {
    fn get(&self) -> Option<DateTime> {
        *self.0.lock().expect("server date")
    }
}

impl Intercept for ServerDate {
    fn name(&self) -> &'static str {
        "bake::lease::ServerDate"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let date = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| DateTime::from_str(d, Format::HttpDate).ok());
        *self.0.lock().expect("server date") = date;
        Ok(())
    }
}

/// This machine's name, for messages ("held by run X on HOST").
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unnamed host".to_owned())
}

/// `pause` plus up to as much again, so runners that collided do not collide again.
fn jitter(pause: Duration) -> Duration {
    let random =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
    pause + Duration::from_millis(random % (pause.as_millis() as u64 + 1))
}

/// HeadBucket: whether the store's bucket is there and this caller may use it (`bake validate`).
pub async fn check_bucket(clients: &Clients, store: &Store) -> Result<(), CallError> {
    let bucket = store.bucket.get_ref();
    let request = clients.s3.head_bucket().bucket(bucket);
    match clients.call(|| request.clone().send()).answer().await {
        Ok(_) => Ok(()),
        Err(e) => {
            // HeadBucket answers with a status and no body: name what the status means.
            let status = match &e.error {
                aws_sdk_s3::error::SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
                _ => None,
            };
            let message = match status {
                Some(404) => format!("NotFound: no bucket {bucket} (bake never creates it)"),
                Some(403) => format!(
                    "Forbidden: bucket {bucket} exists but this caller may not use it (another \
                     account's, or s3:ListBucket is not allowed)"
                ),
                Some(301) => format!(
                    "PermanentRedirect: bucket {bucket} is in another region than {}",
                    clients.region
                ),
                _ => e.describe(),
            };
            Err(clients.failed(format!("reach the store's bucket {bucket}"), message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(modified: i64, now: i64, ttl: u64) -> Found {
        Found {
            body: Some(Body {
                run_id: "r".into(),
                image: "web".into(),
                host: "h".into(),
                pid: 1,
                since: "t".into(),
                ttl_seconds: ttl,
                renewals: 0,
            }),
            etag: "\"e\"".into(),
            last_modified: Some(DateTime::from_secs(modified)),
            now: Some(DateTime::from_secs(now)),
        }
    }

    #[test]
    fn a_lease_expires_by_s3s_clock_and_its_holders_ttl_with_the_rounding() {
        assert!(!found(1000, 1000 + 30, 30).expired());
        assert!(!found(1000, 1000 + 32, 30).expired());
        assert!(found(1000, 1000 + 33, 30).expired());
        // The holder's TTL, not a default: a 300 s lease is live at 100 s.
        assert!(!found(1000, 1100, 300).expired());
        let mut no_date = found(1000, 5000, 30);
        no_date.now = None;
        assert!(!no_date.expired());
    }

    #[test]
    fn a_busy_lease_says_who_holds_it_since_when() {
        let busy = Busy {
            run_id: "20260101t000000-abc".into(),
            host: "runner-a".into(),
            since: "2026-01-01T00:00:00Z".into(),
            key: "s3://b/bake/leases/web".into(),
        };
        assert_eq!(
            busy.to_string(),
            "held by run 20260101t000000-abc on runner-a since 2026-01-01T00:00:00Z (s3 lease \
             s3://b/bake/leases/web)"
        );
    }
}
