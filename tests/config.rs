//! `bake validate` (and every command, since they all load the config) reports every value
//! outside AWS's ranges and shapes in one run, each at the config's file:line:col with its field;
//! exit 2, before any AWS call.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::bake_offline as bake;

const CONFIG: &str = r#"region = "ap-northeast-2"

[image.web]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"
os = "debian"

[image.web.builder]
subnet = { id = "subnet-0123" }
instance_profile = "SSMInstanceProfile"

[image.web.health]
timeout = "10m"

[rollout.web]
image = "web"
vpc = { id = "vpc-0123" }
alb_subnets = [{ id = "subnet-a" }, { id = "subnet-c" }]
instance_subnets = [{ id = "subnet-a" }]
launch_template = "Web"
asg = "Web-ASG"
alb = "Web-ALB"
target_group = "Web-TG"
capacity = { min = 1, desired = 1, max = 2 }
"#;

/// Asserts exit 2, nothing on stdout, no panic, and returns stderr.
fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn the_valid_control_passes() {
    let (_dir, _, out) = bake(CONFIG, &["validate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_huge_health_timeout_exits_2_at_validate_and_before_a_bake() {
    let text = CONFIG.replace("timeout = \"10m\"", "timeout = \"300000000000y\"");
    for args in [vec!["validate"], vec!["ami", "web"]] {
        let started = Instant::now();
        let (_dir, path, out) = bake(&text, &args);
        let msg = refused(&out);
        assert!(
            msg.contains(&format!(
                "{}:13:11: image.web.health.timeout: must be between 10 seconds and 12 hours, \
                 found \"300000000000y\"",
                path.display()
            )),
            "{msg}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn every_problem_is_reported_in_one_run_one_per_line() {
    let text = CONFIG
        .replace("region = \"ap-northeast-2\"", "region = \"ap-northeast\"")
        .replace(
            "instance_profile = \"SSMInstanceProfile\"",
            "instance_profile = \"SSMInstanceProfile\"\nallow_cidr = \"10.0.0.1/+8\"\n\
             volume = { size = 0, type = \"floppy\" }",
        )
        .replace(
            "timeout = \"10m\"",
            "timeout = \"0s\"\nport = 0\npath = \"/../../etc/passwd\"",
        )
        .replace("max = 2", "max = 4294967295")
        .replace("[{ id = \"subnet-a\" }]", "[{ tag = {} }]");
    let (_dir, path, out) = bake(&text, &["validate"]);
    let msg = refused(&out);
    let lines: Vec<&str> = msg.lines().collect();
    let expected = [
        (1, "region: "),
        (11, "image.web.builder.allow_cidr: "),
        (
            12,
            "image.web.builder.volume.type: unknown EBS volume type `floppy`",
        ),
        (
            15,
            "image.web.health.timeout: must be between 10 seconds and 12 hours",
        ),
        (16, "image.web.health.port: a port is 1 to 65535"),
        (17, "image.web.health.path: "),
        (23, "rollout.web.instance_subnets: give exactly one of"),
        (28, "rollout.web.capacity.max: "),
    ];
    assert_eq!(lines.len(), expected.len(), "{msg}");
    for ((line, field), got) in expected.iter().zip(&lines) {
        let want = format!("{}:{line}:", path.display());
        assert!(
            got.contains(&want) && got.contains(field),
            "{got}: want {want} {field}"
        );
    }
}

#[test]
fn three_different_mistakes_are_all_reported_each_at_its_line() {
    // A value outside AWS's shapes, a value of the wrong type, a misspelt field: three tables.
    let text = CONFIG
        .replace("region = \"ap-northeast-2\"", "region = \"ap-northeast\"")
        .replace("timeout = \"10m\"", "timeout = 600")
        .replace("target_group = ", "targetgroup = ");
    let (_dir, path, out) = bake(&text, &["validate"]);
    let msg = refused(&out);
    let path = path.display();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 3, "{msg}");
    let expected = [
        format!("{path}:1:10: region: a region code"),
        format!("{path}:13:11: invalid type: integer `600`, expected a string"),
        format!("{path}:23:1: unknown field `targetgroup` in `rollout.web`"),
    ];
    for (got, want) in lines.iter().zip(&expected) {
        assert!(
            got.contains(want.as_str()),
            "{got}\n  does not contain\n{want}"
        );
    }
    assert!(lines[2].contains("did you mean `target_group`?"), "{msg}");
}

#[test]
fn the_longest_image_name_validate_allows_fits_a_real_run_ids_client_token() {
    // Validation sizes the client token `<run id>-<image>` with a run id of the janitor's shape.
    let run_id = bake::janitor::new_run_id();
    let longest = "i".repeat(bake::limits::CLIENT_TOKEN_MAX - run_id.len() - 1);
    let config = |name: &str| {
        CONFIG
            .replace("[image.web", &format!("[image.{name}"))
            .replace("image = \"web\"", &format!("image = \"{name}\""))
    };
    let (_dir, _, out) = bake(&config(&longest), &["validate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_dir, _, out) = bake(&config(&format!("{longest}i")), &["validate"]);
    let msg = refused(&out);
    assert!(
        msg.contains(&format!("use at most {}", longest.len())),
        "{msg}"
    );
}

#[test]
fn a_misspelt_table_is_named_alone_at_its_line() {
    let text = CONFIG
        .replace("[image.web]", "[images.web]")
        .replace("[image.web.builder]", "[images.web.builder]")
        .replace("[image.web.health]", "[images.web.health]");
    let (_dir, path, out) = bake(&text, &["validate"]);
    let msg = refused(&out);
    assert_eq!(
        msg.trim_end().trim_start_matches("error: "),
        format!(
            "{}:3:2: unknown table `images`, expected `image`",
            path.display()
        )
    );
}

#[test]
fn secret_looking_vars_exit_2_and_look_alikes_pass() {
    let vars = |v: &str| CONFIG.replace("os = \"debian\"", &format!("os = \"debian\"\nvars = {v}"));
    for name in [
        "db_pass",
        "pwd",
        "passphrase",
        "credentials",
        "aws_access_key_id",
        "ssh_key",
        "\"p\u{0430}ssword\"",
    ] {
        let (_dir, path, out) = bake(&vars(&format!("{{ {name} = \"x\" }}")), &["validate"]);
        let msg = refused(&out);
        assert!(
            msg.contains(&format!("{}:7:10: image.web.vars: ", path.display()))
                && msg.contains("looks like a secret"),
            "{name}: {msg}"
        );
    }
    let (_dir, _, out) = bake(
        &vars("{ secretary_name = \"Ann\", tokenizer_model = \"bpe\" }"),
        &["validate"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let allowed = format!(
        "public_vars = [\"pass_rate\"]\n{}",
        vars("{ pass_rate = \"90\" }")
    );
    let (_dir, _, out) = bake(&allowed, &["validate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alarms_are_checked_each_at_its_line_and_the_defaults_pass() {
    let ok = format!(
        "{CONFIG}alarms = {{ errors = 10, latency = \"500ms\", periods = 3 }}\n\
         cpu_alarm = {{ threshold = 70 }}\n"
    );
    let (_dir, _, out) = bake(&ok, &["validate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = format!(
        "{CONFIG}alarms = {{ errors = 0, latency = \"0s\", periods = 1441 }}\n\
         cpu_alarm = {{ threshold = 170, periods = 289 }}\n"
    );
    let (_dir, path, out) = bake(&text, &["validate"]);
    let msg = refused(&out);
    let path = path.display();
    let lines: Vec<&str> = msg.lines().collect();
    let expected = [
        format!("{path}:25:21: rollout.web.alarms.errors: at least 1"),
        format!("{path}:25:34: rollout.web.alarms.latency: must be between 1ms and 1 hour"),
        format!("{path}:25:50: rollout.web.alarms.periods: 1 to 1440 periods of 60 s"),
        format!("{path}:26:27: rollout.web.cpu_alarm.threshold: expected a percentage in (0, 100]"),
        format!("{path}:26:42: rollout.web.cpu_alarm.periods: 1 to 288 periods of 300 s"),
    ];
    assert_eq!(lines.len(), expected.len(), "{msg}");
    for (got, want) in lines.iter().zip(&expected) {
        assert!(
            got.contains(want.as_str()),
            "{got}\n  does not contain\n{want}"
        );
    }

    let unknown = format!("{CONFIG}cpu_alarm = {{ threshold = 70, period = 60 }}\n");
    let (_dir, path, out) = bake(&unknown, &["validate"]);
    let msg = refused(&out);
    assert!(
        msg.contains(&format!("{}:25:", path.display())) && msg.contains("unknown field `period`"),
        "{msg}"
    );
}
