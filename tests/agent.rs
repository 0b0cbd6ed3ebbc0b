//! The SSM agent in user data: the built-in templates install it on Debian from the region's
//! download location, and `bake validate` warns about a user's Debian template that never does.

#[path = "support/output.rs"]
mod output;

use std::path::PathBuf;
use std::process::{Command, Output};

use output::{stderr, stdout};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// bake with no AWS settings from the machine (no region, no credentials, no IMDS).
fn bake(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bake"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("bake runs")
}

const CONFIG: &str = r#"
[image.web]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "mine"
os = "OS"

[image.web.builder]
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"
"#;

/// A config whose image uses the user's own template `mine` with `body`, for `os`.
fn scratch(os: &str, body: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("templates/mine.sh.j2"), body).unwrap();
    let config = CONFIG.replace("OS", os);
    std::fs::write(
        dir.path().join("bake.toml"),
        format!("templates_dir = \"templates\"\n{config}"),
    )
    .unwrap();
    let path = dir.path().join("bake.toml").display().to_string();
    (dir, path)
}

const NO_AGENT: &str = "#!/bin/bash\napt-get install -y nginx\n";

#[test]
fn the_nginx_example_validates_without_any_warning() {
    let example = repo().join("examples/nginx-debian.toml");
    let out = bake(&["-c", example.to_str().unwrap(), "validate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "validate printed on stderr");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok web: nginx on debian"));
}

#[test]
fn a_debian_template_without_the_agent_is_warned_about_at_its_line() {
    let (_dir, config) = scratch("debian", NO_AGENT);
    let out = bake(&["-c", &config, "validate"]);
    assert!(
        out.status.success(),
        "a warning is not an error: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("warning: {config}:5:"))
            && err.contains("image.web.template: template \"mine\" for os = \"debian\"")
            && err.contains("never mentions amazon-ssm-agent"),
        "{err}"
    );
    let json = bake(&["-c", &config, "-o", "json", "validate"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        json["warnings"][0]
            .as_str()
            .unwrap()
            .contains("Debian's AMIs ship no SSM agent"),
        "{json}"
    );
}

#[test]
fn templates_that_install_the_agent_or_run_elsewhere_get_no_warning() {
    let with_partial = "{% include \"partials/common.sh.j2\" %}\npkg_install nginx\n";
    let own_install = "#!/bin/bash\ndpkg -i /tmp/amazon-ssm-agent.deb\n";
    for (os, body) in [
        ("debian", with_partial),
        ("debian", own_install),
        ("al2023", NO_AGENT),
    ] {
        let (_dir, config) = scratch(os, body);
        let out = bake(&["-c", &config, "validate"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stderr(&out), "", "{os}: {body}");
    }
}

#[test]
fn debian_user_data_installs_the_agent_from_the_regions_location_with_retries() {
    let example = repo().join("examples/nginx-debian.toml");
    let out = bake(&["-c", example.to_str().unwrap(), "render", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    let install = script.find("\nssm_agent\n").expect("the agent step runs");
    let packages = script.find("pkg_install nginx").unwrap();
    assert!(
        install < packages,
        "the agent comes first, so SSM is up early"
    );
    for needle in [
        "http://169.254.169.254/latest/api/token",
        "meta-data/placement/region",
        "fetch \"https://s3.$region.amazonaws.com/amazon-ssm-$region/latest/debian_$arch/amazon-ssm-agent.deb\"",
        "dpkg -i \"$deb\"",
        "systemctl enable --now amazon-ssm-agent.service",
        "snap.amazon-ssm-agent.amazon-ssm-agent.service",
    ] {
        assert!(script.contains(needle), "missing {needle:?}");
    }
    // fetch is the templates' download helper: retried (retry 5) like every other download.
    assert!(script.contains("fetch() {\n  retry 5 curl"));
    let al2023 = repo().join("examples/lamp-al2023.toml");
    let out = bake(&["-c", al2023.to_str().unwrap(), "render", "web"]);
    assert!(
        !stdout(&out).contains("amazon-ssm-agent"),
        "Amazon Linux ships the agent"
    );
}
