//! `bake validate` (and every command, since they all load the config) refuses names AWS would
//! refuse, naming the config's file:line, the field and the rule; exit 2, before any AWS call.

mod support;

use std::process::Output;

use support::bake_offline as bake;

fn config(image: &str, rollout_lines: &str) -> String {
    format!(
        r#"region = "ap-northeast-2"

[image.{image}]
base = {{ ssm = "/aws/service/debian/release/bookworm/latest/amd64" }}
template = "nginx"
os = "debian"

[image.{image}.builder]
subnet = {{ id = "subnet-0123" }}
instance_profile = "SSMInstanceProfile"

[rollout.web]
image = "{image}"
vpc = {{ id = "vpc-0123" }}
alb_subnets = [{{ id = "subnet-a" }}, {{ id = "subnet-c" }}]
instance_subnets = [{{ id = "subnet-a" }}]
launch_template = "Web"
asg = "Web-ASG"
capacity = {{ min = 1, desired = 1, max = 2 }}
{rollout_lines}
"#
    )
}

const NAMES: &str = "alb = \"Web-ALB\"\ntarget_group = \"Web-TG\"";

/// Asserts exit 2, nothing on stdout, and returns stderr.
fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    stderr
}

#[test]
fn an_image_name_of_41_characters_fits_the_client_token() {
    let name = "i".repeat(41);
    let (_dir, _, out) = bake(&config(&name, NAMES), &["validate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_image_name_too_long_for_the_client_token_exits_2_at_its_line() {
    let name = "i".repeat(42);
    for args in [vec!["validate"], vec!["ami", name.as_str()]] {
        let (_dir, path, out) = bake(&config(&name, NAMES), &args);
        let msg = refused(&out);
        let at = format!("{}:3:8: image.{name}: ", path.display());
        assert!(msg.contains(&at), "{msg}");
        assert!(
            msg.contains("at most 64 characters") && msg.contains("use at most 41"),
            "{msg}"
        );
    }
}

#[test]
fn an_image_name_that_cannot_be_a_parameter_level_exits_2() {
    let text = config("webapp", NAMES)
        .replace("[image.webapp", "[image.\"web app\"")
        .replace("image = \"webapp\"", "image = \"web app\"");
    let (_dir, path, out) = bake(&text, &["validate"]);
    let msg = refused(&out);
    assert!(
        msg.contains(&format!("{}:3:", path.display())) && msg.contains("_.-"),
        "{msg}"
    );
}

#[test]
fn an_alb_name_over_32_characters_exits_2_at_its_line() {
    let lines = format!("alb = \"{}\"\ntarget_group = \"Web-TG\"", "A".repeat(33));
    let (_dir, path, out) = bake(&config("web", &lines), &["validate"]);
    let msg = refused(&out);
    let at = format!(
        "{}:20:7: rollout.web.alb: load balancer names are 1 to 32",
        path.display()
    );
    assert!(msg.contains(&at), "{msg}");
    assert!(msg.contains("33 characters"), "{msg}");
}

#[test]
fn elb_names_aws_refuses_exit_2() {
    for (lines, field) in [
        ("alb = \"internal-web\"\ntarget_group = \"Web-TG\"", "alb"),
        ("alb = \"-web\"\ntarget_group = \"Web-TG\"", "alb"),
        (
            "alb = \"Web-ALB\"\ntarget_group = \"Web_TG\"",
            "target_group",
        ),
        (
            "alb = \"Web-ALB\"\ntarget_group = \"Web-TG-\"",
            "target_group",
        ),
    ] {
        let (_dir, path, out) = bake(&config("web", lines), &["validate"]);
        let msg = refused(&out);
        let line = if field == "alb" { 20 } else { 21 };
        assert!(
            msg.contains(&format!("{}:{line}:", path.display()))
                && msg.contains(&format!("rollout.web.{field}: ")),
            "{lines}: {msg}"
        );
    }
}

#[test]
fn tags_aws_refuses_exit_2_at_the_tags_line() {
    let many: Vec<String> = (0..50).map(|i| format!("k{i} = \"v\"")).collect();
    let long_key = "k".repeat(129);
    let long_value = "v".repeat(257);
    for (tags, rule) in [
        ("{ \"aws:owner\" = \"me\" }".to_owned(), "reserved"),
        (format!("{{ {long_key} = \"v\" }}"), "1 to 128"),
        (format!("{{ k = \"{long_value}\" }}"), "at most 256"),
        (format!("{{ {} }}", many.join(", ")), "at most 50 tags"),
    ] {
        let lines = format!("{NAMES}\ntags = {tags}");
        let (_dir, path, out) = bake(&config("web", &lines), &["validate"]);
        let msg = refused(&out);
        assert!(
            msg.contains(&format!("{}:22:8: rollout.web.tags: ", path.display()))
                && msg.contains(rule),
            "{msg}"
        );
    }
}

#[test]
fn a_base_parameter_name_aws_refuses_exits_2() {
    let text = config("web", NAMES).replace(
        "/aws/service/debian/release/bookworm/latest/amd64",
        "aws/service/debian",
    );
    let (_dir, path, out) = bake(&text, &["validate"]);
    let msg = refused(&out);
    assert!(
        msg.contains(&format!("{}:4:", path.display()))
            && msg.contains("image.web.base.ssm: ")
            && msg.contains("starts with `/`"),
        "{msg}"
    );
}

#[test]
fn a_publish_prefix_parameter_store_refuses_exits_2_before_any_call() {
    let (_dir, _, out) = bake(
        &config("web", NAMES),
        &["pipeline", "--publish-prefix", "golden amis"],
    );
    let msg = refused(&out);
    assert!(
        msg.contains(
            "--publish-prefix: the AMI of image web would be published in golden amis/web/ami-id"
        ) && msg.contains("starts with `/`"),
        "{msg}"
    );
}
