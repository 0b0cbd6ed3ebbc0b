//! The cross-machine lease (`[store]`) against the lab: two pipelines on two copies of a config
//! (two lock dirs, as on two machines) bake an image once; a SIGKILLed holder's lease expires and
//! the next run takes it over and adopts the AMI left pending, launching no builder; a lease taken
//! away mid-bake stops the bake, cleaned up; `bake validate` names a missing bucket at its line.

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

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

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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
    let s3 = lab.clients().await.s3;
    let out = s3
        .get_object()
        .bucket(bucket)
        .key("bake/leases/quick")
        .send()
        .await
        .ok()?;
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
