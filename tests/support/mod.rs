//! The lab from Rust tests: start one (or skip the test where there is none), use its control
//! endpoints, run bake against it, and check that nothing is left behind.

#![allow(dead_code)]

pub mod home;
pub mod mocks;
pub mod network;
pub mod output;
pub mod web;

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;

/// The lab's region: the workshops' network lives there.
pub const REGION: &str = "ap-northeast-2";
/// A cold lab may build its base image first (about a minute); 5 minutes is a broken lab.
const START_TIMEOUT: Duration = Duration::from_secs(300);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One running lab, stopped (and cleaned by its launcher) on drop.
pub struct Lab {
    child: Child,
    pub endpoint: String,
    pub ec2: aws_sdk_ec2::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub ssm: aws_sdk_ssm::Client,
    http: reqwest::Client,
}

/// Set by `make test`: there, a lab test without a lab fails instead of skipping.
const REQUIRE_LAB: &str = "BAKE_REQUIRE_LAB";

impl Lab {
    /// Starts a lab, or, where none is set up (no `LAB_PYTHON`), says on stderr that this test is
    /// skipped and why, and returns `None`: the test then returns early and passes, so plain
    /// `cargo test` passes on any machine. Under `BAKE_REQUIRE_LAB=1` (`make test`, CI) a missing
    /// lab fails the test instead. Each lab test begins with
    /// `let Some(lab) = Lab::start_or_skip().await else { return };`.
    pub async fn start_or_skip() -> Option<Lab> {
        match std::env::var("LAB_PYTHON") {
            Ok(python) if !python.is_empty() => Some(Lab::start(python).await),
            _ => {
                skip();
                None
            }
        }
    }

    /// Starts a lab with `python` (the lab's venv), security groups enforced and eventual
    /// consistency on (the lab's defaults), as on AWS.
    async fn start(python: String) -> Lab {
        // The lab is a Python package (tests/lab), installed in the venv LAB_PYTHON belongs to.
        let mut child = Command::new(python)
            .args(["-m", "bake_lab", "serve", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the lab launcher starts");
        let stdout = child.stdout.take().unwrap();
        let reading = tokio::task::spawn_blocking(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.ok()?;
                if let Some(url) = line.strip_prefix("AWS_ENDPOINT_URL=") {
                    return Some(url.trim().to_owned());
                }
            }
            None
        });
        let endpoint = match tokio::time::timeout(START_TIMEOUT, reading).await {
            Ok(Ok(Some(url))) => url,
            other => {
                let _ = child.kill();
                panic!("the lab did not start: {other:?}");
            }
        };
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "test", "test", None, None, "lab",
            ))
            .load()
            .await;
        Lab {
            child,
            endpoint,
            ec2: aws_sdk_ec2::Client::new(&sdk),
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
            http: reqwest::Client::new(),
        }
    }

    /// bake's clients (as `bake` builds them) aimed at this lab, for tests that drive a module.
    pub async fn clients(&self) -> bake::aws::Clients {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "test", "test", None, None, "lab",
            ))
            .load()
            .await;
        bake::aws::Clients::from_sdk(&sdk)
    }

    /// POSTs JSON to a control endpoint (`latency`, `faults`, `reset`).
    pub async fn control(&self, name: &str, body: serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/_lab/{name}", self.endpoint))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{name}: {}",
            response.status()
        );
    }

    /// GETs a control endpoint's text.
    pub async fn get(&self, name: &str) -> String {
        self.http
            .get(format!("{}/_lab/{name}", self.endpoint))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The API calls logged since reset, as JSON objects.
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        json_lines(&self.get("requests").await)
    }

    /// The transitions the lab reached, as JSON objects.
    pub async fn events(&self) -> Vec<serde_json::Value> {
        json_lines(&self.get("events").await)
    }

    /// The lab's `info` control endpoint: its images, its stand-ins' traffic.
    pub async fn info(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("info").await).unwrap()
    }

    /// The lab's Debian image in its region, for a rollout of an image not baked here.
    pub async fn debian_image(&self) -> String {
        self.info().await["debian_images"][REGION]
            .as_str()
            .expect("the lab has a Debian image in its region")
            .to_owned()
    }

    /// The HTTP statuses the lab answered `action` with since reset, in the order of the calls.
    pub async fn statuses(&self, action: &str) -> Vec<i64> {
        self.requests()
            .await
            .iter()
            .filter(|r| r["action"] == action)
            .map(|r| r["status"].as_i64().expect("a logged call has a status"))
            .collect()
    }

    /// When (the lab's clock, seconds) `action` was first called since reset.
    pub async fn first_call_time(&self, action: &str) -> Option<f64> {
        self.requests()
            .await
            .iter()
            .find(|r| r["action"] == action)
            .and_then(|r| r["time"].as_f64())
    }

    /// When (the lab's clock, seconds) the lab first reached `event`.
    pub async fn first_event_time(&self, event: &str) -> Option<f64> {
        self.events()
            .await
            .iter()
            .find(|e| e["event"] == event)
            .and_then(|e| e["time"].as_f64())
    }

    /// Live containers (instances) in the lab.
    pub async fn containers(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.get("containers").await).unwrap()
    }

    /// How many times `action` was called since reset.
    pub async fn calls(&self, action: &str) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|r| r["action"] == action)
            .count()
    }

    /// A `bake` command line aimed at this lab, with no AWS settings from the machine.
    pub fn bake(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bake"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "BAKE_CHECKIP_URL",
                format!("{}/_lab/checkip", self.endpoint),
            )
            .stdin(Stdio::null());
        command
    }

    /// Runs bake to the end, off the async runtime.
    pub async fn run_bake(&self, args: &[&str]) -> Output {
        let mut command = self.bake(args);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// Runs bake to the end and asserts it succeeded (on failure, showing what it printed).
    pub async fn bake_ok(&self, args: &[&str]) -> Output {
        let out = self.run_bake(args).await;
        output::assert_ok(&out);
        out
    }

    /// Runs bake with `args` (which ask for `-o json`), asserts it succeeded and returns its JSON
    /// result.
    pub async fn bake_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.bake_ok(args).await;
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", output::stdout(&out));
        })
    }

    /// Runs bake to the end and asserts it refused the run (exit 2: bad config or input).
    pub async fn bake_refused(&self, args: &[&str]) -> Output {
        let out = self.run_bake(args).await;
        assert_eq!(out.status.code(), Some(2), "{}", output::stderr(&out));
        out
    }

    /// Throttles every `action` call to `service` (as the lab names services) until
    /// [`Lab::faults_off`].
    pub async fn throttle(&self, service: &str, action: &str) {
        self.control(
            "faults",
            serde_json::json!({"rate": 1.0, "kind": "throttle", "services": [service],
                               "actions": [action]}),
        )
        .await;
    }

    /// Turns every injected fault off (the `faults` control endpoint at rate 0).
    pub async fn faults_off(&self) {
        self.control("faults", serde_json::json!({ "rate": 0 }))
            .await;
    }

    /// How many calls since reset the lab answered with an injected fault.
    pub async fn faulted(&self) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|r| r["fault"] == true)
            .count()
    }

    /// Bakes the quick image of `scratch`'s config and returns its AMI id.
    pub async fn bake_quick(&self, scratch: &Scratch) -> String {
        let out = self
            .bake_ok(&["-c", &scratch.config(), "ami", "quick"])
            .await;
        output::stdout(&out)
    }

    /// The security groups a bake run tagged, as EC2 lists them now (`None` where the call
    /// failed, e.g. throttled).
    pub async fn run_tagged_groups(&self) -> Option<Vec<String>> {
        let out = self
            .ec2
            .describe_security_groups()
            .filters(run_tagged())
            .send()
            .await
            .ok()?;
        Some(
            out.security_groups()
                .iter()
                .map(|g| g.group_id().unwrap().to_owned())
                .collect(),
        )
    }

    /// Asserts no builder, security group, image or snapshot of any bake run is left, apart from
    /// the AMIs in `kept`, and no container runs but those of `instances_kept`.
    pub async fn assert_nothing_left(&self, kept: &[&str], instances_kept: &[&str]) {
        let tagged = run_tagged();
        let live: Vec<String> = self
            .ec2
            .describe_instances()
            .filters(tagged.clone())
            .send()
            .await
            .unwrap()
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.state().and_then(|s| s.name()).map(|s| s.as_str()) != Some("terminated"))
            .map(|i| format!("{} {:?}", i.instance_id().unwrap(), i.state()))
            .collect();
        assert!(live.is_empty(), "builders left: {live:?}");
        let groups = self
            .run_tagged_groups()
            .await
            .expect("EC2 lists the security groups");
        assert!(groups.is_empty(), "security groups left: {groups:?}");
        let images: Vec<String> = own_images(&self.ec2, None)
            .await
            .into_iter()
            .filter(|id| !kept.contains(&id.as_str()))
            .collect();
        assert!(images.is_empty(), "images left: {images:?}");
        let kept_snapshots = self.snapshots_of(kept).await;
        let orphans: Vec<String> = own_snapshots(&self.ec2, Some(tagged))
            .await
            .into_iter()
            .filter(|id| !kept_snapshots.contains(id))
            .collect();
        assert!(orphans.is_empty(), "snapshots left: {orphans:?}");
        let containers: Vec<String> = self
            .containers()
            .await
            .iter()
            .map(|c| c["instance_id"].as_str().unwrap_or_default().to_owned())
            .filter(|id| !instances_kept.contains(&id.as_str()))
            .collect();
        assert!(containers.is_empty(), "containers left: {containers:?}");
    }

    /// The snapshots behind `images`.
    pub async fn snapshots_of(&self, images: &[&str]) -> Vec<String> {
        if images.is_empty() {
            return Vec::new();
        }
        let out = self
            .ec2
            .describe_images()
            .set_image_ids(Some(images.iter().map(|s| (*s).to_owned()).collect()))
            .send()
            .await
            .unwrap();
        out.images()
            .iter()
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
            .collect()
    }

    /// The lab's subnet named `name` (its Name tag), e.g. "Public subnet A".
    pub async fn subnet_named(&self, name: &str) -> aws_sdk_ec2::types::Subnet {
        let out = self
            .ec2
            .describe_subnets()
            .filters(filter("tag:Name", name))
            .send()
            .await
            .unwrap();
        out.subnets()
            .first()
            .unwrap_or_else(|| panic!("no subnet named {name}"))
            .clone()
    }

    /// Waits until `check` holds, polling every 200 ms for at most `limit`.
    pub async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{what} did not happen within {limit:?}");
    }

    /// Waits until EC2 lists a builder by bake's run-id tag, as `bake gc` finds them: a new
    /// instance is listed only after a moment (eventual consistency; seconds in the lab).
    pub async fn wait_until_builders_listed(&self) {
        self.wait_for(
            "the builder listed by tag",
            Duration::from_secs(60),
            || async {
                let out = self
                    .ec2
                    .describe_instances()
                    .filters(run_tagged())
                    .send()
                    .await
                    .unwrap();
                !out.reservations().is_empty()
            },
        )
        .await;
    }

    /// Starts bake with `args` in the background, waits up to `limit` for `ready` (`what`), sends
    /// it signal `sig` (INT, TERM, KILL) and returns how it ended.
    pub async fn interrupt_when<F, Fut>(
        &self,
        args: &[&str],
        sig: &str,
        what: &str,
        limit: Duration,
        ready: F,
    ) -> Output
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let child = self
            .bake(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        self.wait_for(what, limit, ready).await;
        signal(child.id(), sig);
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        // The launcher removes its containers and namespaces, then exits; give it a minute.
        for _ in 0..600 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reports a lab test skipped for want of a lab, or fails it under [`REQUIRE_LAB`].
fn skip() {
    if std::env::var_os(REQUIRE_LAB).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!(
            "{REQUIRE_LAB} is set (as `make test` sets it) and LAB_PYTHON is not: every lab test \
             must run here, none may skip"
        );
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a lab test");
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests,
    // and this line is for whoever runs `cargo test`.
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: LAB_PYTHON is not set, so there is no lab here; `make test` sets up the \
         lab and runs this test"
    );
}

/// An EC2 filter: `name` (e.g. `tag:Name`, `tag-key`) is `value`.
pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// The filter for what any bake run tagged (its `bake:run-id`), as `bake gc` finds it.
pub fn run_tagged() -> Filter {
    filter("tag-key", "bake:run-id")
}

/// The ids of this account's images in `ec2`'s region (those `filter` selects, where given).
pub async fn own_images(ec2: &aws_sdk_ec2::Client, filter: Option<Filter>) -> Vec<String> {
    let out = ec2
        .describe_images()
        .owners("self")
        .set_filters(filter.map(|f| vec![f]))
        .send()
        .await
        .unwrap();
    out.images()
        .iter()
        .filter_map(|i| i.image_id())
        .map(str::to_owned)
        .collect()
}

/// The ids of this account's snapshots in `ec2`'s region (those `filter` selects, where given).
pub async fn own_snapshots(ec2: &aws_sdk_ec2::Client, filter: Option<Filter>) -> Vec<String> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .set_filters(filter.map(|f| vec![f]))
        .send()
        .await
        .unwrap();
    out.snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id())
        .map(str::to_owned)
        .collect()
}

/// Sends a signal (`INT`, `TERM`, `KILL`) to a process.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A scratch config directory holding `bake.toml` and the test templates.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(config: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bake.toml"), config).unwrap();
        let templates = dir.path().join("templates");
        std::fs::create_dir_all(&templates).unwrap();
        std::fs::copy(
            repo().join("tests/fixtures/templates/quick.sh.j2"),
            templates.join("quick.sh.j2"),
        )
        .unwrap();
        Scratch { dir }
    }

    pub fn config(&self) -> String {
        self.dir.path().join("bake.toml").display().to_string()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `bake -c CONFIG -o json pipeline --keep KEEP`: a pipeline run's arguments, its events as JSON
/// lines.
pub fn pipeline_args<'a>(config: &'a str, keep: &'a str) -> [&'a str; 7] {
    ["-c", config, "-o", "json", "pipeline", "--keep", keep]
}

/// A config for the quick template on the lab's Debian AMI in the workshops' public subnet.
pub fn quick_config(vars: &str, health: &str, verify: &str) -> String {
    format!(
        r#"templates_dir = "templates"

[image.quick]
base = {{ ssm = "/aws/service/debian/release/bookworm/latest/amd64" }}
template = "quick"
os = "debian"
vars = {{ {vars} }}

[image.quick.builder]
subnet = {{ tag = {{ Name = "Public subnet A" }} }}
instance_profile = "SSMInstanceProfile"

[image.quick.health]
{health}

[image.quick.verify]
{verify}
"#
    )
}

/// Appended to [`quick_config`] where the test stage is beside the point (prune, rollout,
/// refresh): it boots one more instance per bake. tests/ami.rs and tests/pipeline.rs test it.
pub const NO_TEST_STAGE: &str = "\n[image.quick.test]\nenabled = false\n";

/// Runs bake with `config` written to a fresh `bake.toml` and `args` after `-c`; AWS is pointed at
/// a closed loopback port, so a command that wrongly reaches AWS fails differently from a refused
/// config. Returns the directory (kept alive), the config's path and the output.
pub fn bake_offline(config: &str, args: &[&str]) -> (tempfile::TempDir, PathBuf, Output) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bake.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bake"))
        .arg("-c")
        .arg(&path)
        .args(args)
        .env_remove("BAKE_CONFIG")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "AKIDOFFLINETEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .expect("bake runs");
    (dir, path, out)
}

/// A `[rollout.NAME]` of the quick image shaped like the workshops' part 2 (Web-ALB on the public
/// subnets, Web-ASG on the private ones, its instances with SSMInstanceProfile), then `lines`
/// (capacity, refresh and whatever else the test sets), to append to [`quick_config`].
pub fn lab_rollout(name: &str, lines: &str) -> String {
    format!(
        r#"
[rollout.{name}]
image = "quick"
vpc = {{ tag = {{ Name = "VPC-Lab" }} }}
alb_subnets = [
  {{ tag = {{ Name = "Public subnet A" }} }},
  {{ tag = {{ Name = "Public subnet C" }} }},
]
instance_subnets = [
  {{ tag = {{ Name = "Private subnet A" }} }},
  {{ tag = {{ Name = "Private subnet C" }} }},
]
launch_template = "Web"
asg = "Web-ASG"
alb = "Web-ALB"
target_group = "Web-TG"
instance_profile = "SSMInstanceProfile"
{lines}
"#
    )
}

/// [`lab_rollout`] of one instance of `instance_type`, refreshed with no minimum healthy.
pub fn quick_rollout(name: &str, instance_type: &str) -> String {
    lab_rollout(
        name,
        &format!(
            "instance_type = \"{instance_type}\"\ncapacity = {{ min = 1, desired = 1, max = 2 }}\n\
             refresh = {{ min_healthy = 0, warmup = \"5s\", timeout = \"5m\" }}"
        ),
    )
}
