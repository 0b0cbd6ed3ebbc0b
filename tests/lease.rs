//! The cross-machine lease (`[store]`) against the lab: two pipelines on two copies of a config
//! (two lock dirs, as on two machines) bake an image once; a SIGKILLed holder's lease expires and
//! the next run takes it over and adopts the AMI left pending, launching no builder, and records
//! it; a lease taken away mid-bake stops the bake, cleaned up; `bake validate` names a missing
//! bucket at its line.

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use support::output::stderr;
use support::{Lab, NO_TEST_STAGE, Scratch, quick_config};

/// The lease TTL of these tests: the shortest bake allows, so a takeover comes within seconds.
const TTL: &str = "15s";

/// A bucket of the test's own (the lab makes none bake expects), and the `[store]` naming it.
async fn bucket(lab: &Lab, name: &str) -> String {
    let s3 = lab.clients().await.s3;
    s3.create_bucket()
        .bucket(name)
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    support::REGION,
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();
    store(name)
}

fn store(bucket: &str) -> String {
    format!("\n[store]\nbucket = \"{bucket}\"\nlease_ttl = \"{TTL}\"\n")
}

fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn bake_event(out: &Output) -> serde_json::Value {
    events(out)
        .into_iter()
        .find(|e| e["step"] == "bake")
        .unwrap_or_else(|| panic!("no bake event: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `bake` for `scratch`'s config with its own lock directory (TMPDIR), as on its own machine.
fn on_machine(lab: &Lab, scratch: &Scratch, args: &[&str]) -> std::process::Command {
    let config = scratch.config();
    let mut all = vec!["-c", config.as_str()];
    all.extend_from_slice(args);
    let mut command = lab.bake(&all);
    command.env("TMPDIR", scratch.path());
    command
}

async fn output(mut command: std::process::Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// The lease object of image `quick`, if there is one.
async fn lease(lab: &Lab, bucket: &str) -> Option<serde_json::Value> {
    object(lab, bucket, "bake/leases/quick").await
}

/// The JSON object at `key` in `bucket`, if there is one.
async fn object(lab: &Lab, bucket: &str, key: &str) -> Option<serde_json::Value> {
    let s3 = lab.clients().await.s3;
    let out = s3.get_object().bucket(bucket).key(key).send().await.ok()?;
    let bytes = out.body.collect().await.unwrap().into_bytes();
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pipelines_on_two_machines_bake_the_image_once() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let store = bucket(&lab, "lease-two-machines").await;
    let text = format!("{}{NO_TEST_STAGE}{store}", quick_config("", "", ""));
    let (a, b) = (Scratch::new(&text), Scratch::new(&text));
    let args = ["-o", "json", "pipeline"];
    let (first, second) = tokio::join!(
        output(on_machine(&lab, &a, &args)),
        output(on_machine(&lab, &b, &args))
    );
    for out in [&first, &second] {
        assert!(out.status.success(), "{}", stderr(out));
    }
    let (one, two) = (bake_event(&first), bake_event(&second));
    let statuses = [
        one["status"].as_str().unwrap(),
        two["status"].as_str().unwrap(),
    ];
    assert!(statuses.contains(&"ok"), "{one} {two}");
    let other = if one["status"] == "ok" { &two } else { &one };
    assert_eq!(other["status"], "skipped", "{other}");
    let said = other["message"].as_str().unwrap();
    // Held while the other baked, or (had it started after the other ended) already baked.
    assert!(
        said.contains("held by run") || said.contains("already baked"),
        "{said}"
    );
    assert_eq!(lab.calls("RunInstances").await, 1, "one builder in all");
    assert_eq!(lab.calls("CreateImage").await, 1, "one AMI in all");
    assert!(
        lease(&lab, "lease-two-machines").await.is_none(),
        "both gave their lease back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_holders_lease_expires_and_the_next_run_adopts_its_pending_ami() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let store = bucket(&lab, "lease-takeover").await;
    let scratch = Scratch::new(&format!("{}{store}", quick_config("", "", "")));
    let config = scratch.config();
    // The AMI stays pending long enough for the holder to die before it is available.
    lab.control("latency", serde_json::json!({"image_available": 40}))
        .await;
    let killed = lab
        .interrupt_when(
            &["-c", &config, "pipeline"],
            "KILL",
            "CreateImage",
            Duration::from_secs(240),
            || async { lab.calls("CreateImage").await > 0 },
        )
        .await;
    assert_eq!(killed.status.code(), None, "killed by SIGKILL");
    let holder = lease(&lab, "lease-takeover")
        .await
        .expect("the lease is left");
    let launched = lab.calls("RunInstances").await;
    assert_eq!(launched, 1, "the killed run launched its builder only");

    // Within the TTL the lease is still the dead run's: a cron runner skips, exit 0.
    let early = output(on_machine(&lab, &scratch, &["-o", "json", "pipeline"])).await;
    assert!(early.status.success(), "{}", stderr(&early));
    let held = bake_event(&early);
    assert_eq!(held["status"], "skipped", "{held}");
    let message = held["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "held by run {}",
            holder["run_id"].as_str().unwrap()
        )),
        "{message}"
    );
    assert_eq!(
        lab.calls("RunInstances").await,
        launched,
        "it launched nothing"
    );

    // gc leaves the pending AMI alone (it may be adopted), whatever its --ttl.
    let gc = output(on_machine(
        &lab,
        &scratch,
        &["gc", "--ttl", "0s", "--dry-run"],
    ))
    .await;
    assert!(gc.status.success(), "{}", stderr(&gc));
    let listed = String::from_utf8_lossy(&gc.stdout).into_owned();
    assert!(!listed.contains("image ami-"), "{listed}");
    assert!(
        listed.contains("instance i-"),
        "the dead builder is gc's: {listed}"
    );

    // After the TTL (by S3's clock), the next run takes the lease over and adopts the AMI.
    tokio::time::sleep(Duration::from_secs(18)).await;
    let adopting = output(on_machine(&lab, &scratch, &["-o", "json", "pipeline"])).await;
    assert!(adopting.status.success(), "{}", stderr(&adopting));
    assert!(
        stderr(&adopting).contains(&format!(
            "took over the expired lease of run {}",
            holder["run_id"].as_str().unwrap()
        )),
        "{}",
        stderr(&adopting)
    );
    let baked = bake_event(&adopting);
    assert_eq!(baked["status"], "ok", "{baked}");
    assert!(
        baked["message"]
            .as_str()
            .unwrap()
            .contains("without launching a builder"),
        "{baked}"
    );
    let ami = baked["ami_id"].as_str().unwrap().to_owned();
    let test = events(&adopting)
        .into_iter()
        .find(|e| e["step"] == "test")
        .unwrap();
    assert_eq!(test["status"], "ok", "{test}");
    assert_eq!(lab.calls("CreateImage").await, 1, "no second AMI");
    assert_eq!(
        lab.calls("RunInstances").await,
        launched + 1,
        "the adopting run launched its test instance, and no builder"
    );
    assert!(lease(&lab, "lease-takeover").await.is_none(), "given back");
    // Its record, with the packages read on the test instance, as for any bake.
    let record = object(
        &lab,
        "lease-takeover",
        &format!("bake/records/quick/{ami}.json"),
    )
    .await
    .expect("the adopted AMI's record");
    assert_eq!(record["ami_id"], ami.as_str(), "{record}");
    assert!(
        record["packages"]
            .as_object()
            .is_some_and(|p| p.len() > 50 && p.contains_key("dpkg")),
        "{record}"
    );
    // The dead run's builder is gc's; the adopted AMI, tested, stays.
    let gc = output(on_machine(&lab, &scratch, &["gc", "--ttl", "0s"])).await;
    assert!(gc.status.success(), "{}", stderr(&gc));
    lab.assert_nothing_left(&[&ami], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_taken_away_mid_bake_stops_the_bake_and_cleans_up() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let store = bucket(&lab, "lease-lost").await;
    // A health check that never passes keeps the bake waiting until the lease is gone.
    let scratch = Scratch::new(&format!(
        "{}{NO_TEST_STAGE}{store}",
        quick_config("", "path = \"/never\"\ntimeout = \"10m\"", "")
    ));
    let mut child = on_machine(&lab, &scratch, &["ami", "quick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_for("the builder", Duration::from_secs(120), || async {
        lab.calls("RunInstances").await > 0
    })
    .await;
    // Another run's write over the lease, as a takeover does: the holder's next renewal gets 412.
    let s3 = lab.clients().await.s3;
    s3.put_object()
        .bucket("lease-lost")
        .key("bake/leases/quick")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            br#"{"run_id":"other","image":"quick","host":"b","pid":1,"since":"now","ttl_seconds":15,"renewals":0}"#,
        ))
        .send()
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        for _ in 0..600 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("taken over by another run"),
        "{}",
        stderr(&out)
    );
    let left = lease(&lab, "lease-lost")
        .await
        .expect("the other run's lease");
    assert_eq!(left["run_id"], "other", "the lost lease is not deleted");
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_names_a_missing_bucket_at_its_line() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let base = quick_config("", "", "");
    let line = base.lines().count() + 3;
    let missing = Scratch::new(&format!("{base}{}", store("no-such-bake-bucket")));
    let out = output(on_machine(&lab, &missing, &["validate"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("bake.toml:{line}:10: store.bucket:")),
        "{err}"
    );
    assert!(
        err.contains("NotFound: no bucket no-such-bake-bucket"),
        "{err}"
    );
    let present = bucket(&lab, "lease-validate").await;
    let ok = Scratch::new(&format!("{base}{present}"));
    let out = output(on_machine(&lab, &ok, &["validate"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lab.calls("RunInstances").await, 0);
}

// The protocol's answers the lab cannot time: a 409 race, a lease expired by S3's clock (the
// `Date` header against `Last-Modified`), one still live (aws-smithy-mocks).

mod answers {
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::delete_object::DeleteObjectOutput;
    use aws_sdk_s3::operation::put_object::{PutObjectError, PutObjectOutput};
    use aws_smithy_mocks::{Rule, mock};
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use bake::config::{HumanDuration, Store};
    use bake::lease::{self, Taken};
    use toml::Spanned;

    use super::support::mocks::Answers;

    fn store() -> Store {
        Store {
            bucket: Spanned::new(0..0, "bake-state".to_owned()),
            prefix: Spanned::new(0..0, "bake/".to_owned()),
            lease_ttl: Spanned::new(0..0, HumanDuration(std::time::Duration::from_secs(15))),
        }
    }

    fn failed(code: &'static str) -> impl Fn() -> PutObjectError + Send + Sync + 'static {
        move || PutObjectError::generic(ErrorMetadata::builder().code(code).build())
    }

    /// GetObject's answer: a lease of run `other` written at 10:00:00 (TTL 15 s), read at `date`.
    fn held_lease(date: &'static str) -> Rule {
        mock!(aws_sdk_s3::Client::get_object).then_http_response(move || {
            let body = r#"{"run_id":"other","image":"web","host":"runner-b","pid":7,"since":"2026-11-24T09:00:00Z","ttl_seconds":15,"renewals":3}"#;
            let mut response =
                HttpResponse::new(StatusCode::try_from(200).unwrap(), SdkBody::from(body));
            let headers = response.headers_mut();
            headers.insert("etag", "\"e-other\"");
            headers.insert("last-modified", "Tue, 24 Nov 2026 10:00:00 GMT");
            headers.insert("date", date);
            response
        })
    }

    fn release() -> Rule {
        mock!(aws_sdk_s3::Client::delete_object)
            .match_requests(|r| r.if_match() == Some("\"e-mine\""))
            .then_output(|| DeleteObjectOutput::builder().build())
    }

    #[tokio::test]
    async fn a_409_race_is_tried_again_and_the_lease_taken() {
        let put = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|r| r.if_none_match() == Some("*"))
            .sequence()
            .error(failed("ConditionalRequestConflict"))
            .output(|| PutObjectOutput::builder().e_tag("\"e-mine\"").build())
            .build();
        let release = release();
        let clients = Answers {
            s3: &[&put, &release],
            ..Default::default()
        }
        .clients(super::support::REGION);
        let Taken::Held { lease, previous } = lease::take(&clients, &store(), "web", "mine")
            .await
            .unwrap()
        else {
            panic!("not taken");
        };
        assert!(previous.is_none());
        assert_eq!(put.num_calls(), 2);
        lease.release().await.unwrap();
        assert_eq!(release.num_calls(), 1, "given back with If-Match its ETag");
    }

    #[tokio::test]
    async fn a_lease_expired_by_s3s_clock_is_taken_over_on_the_etag_read() {
        let create = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|r| r.if_none_match() == Some("*"))
            .then_error(failed("PreconditionFailed"));
        // 18 s after its last write: past the 15 s TTL and the 2 s of rounding.
        let read = held_lease("Tue, 24 Nov 2026 10:00:18 GMT");
        let over = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|r| r.if_match() == Some("\"e-other\""))
            .then_output(|| PutObjectOutput::builder().e_tag("\"e-mine\"").build());
        let release = release();
        let clients = Answers {
            s3: &[&create, &read, &over, &release],
            ..Default::default()
        }
        .clients(super::support::REGION);
        let Taken::Held { lease, previous } = lease::take(&clients, &store(), "web", "mine")
            .await
            .unwrap()
        else {
            panic!("not taken over");
        };
        assert_eq!(previous.unwrap().run_id, "other");
        assert_eq!(over.num_calls(), 1);
        lease.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_live_lease_is_busy_whatever_this_machines_clock_says() {
        let create = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|r| r.if_none_match() == Some("*"))
            .then_error(failed("PreconditionFailed"));
        // 17 s by S3's clock: within the TTL and its rounding, though this machine's clock
        // (years later) would call it long expired.
        let read = held_lease("Tue, 24 Nov 2026 10:00:17 GMT");
        let over = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|r| r.if_match().is_some())
            .then_output(|| PutObjectOutput::builder().e_tag("\"e-mine\"").build());
        let clients = Answers {
            s3: &[&create, &read, &over],
            ..Default::default()
        }
        .clients(super::support::REGION);
        let Taken::Busy(busy) = lease::take(&clients, &store(), "web", "mine")
            .await
            .unwrap()
        else {
            panic!("taken");
        };
        assert_eq!(
            busy.to_string(),
            "held by run other on runner-b since 2026-11-24T09:00:00Z (s3 lease \
             s3://bake-state/bake/leases/web)"
        );
        assert_eq!(over.num_calls(), 0, "no take-over");
    }
}
