//! `bake init`: against the lab it writes a config for each workshop flow, with the workshop
//! network found by Name tags, that `bake validate` accepts; it never overwrites a file (exit 2,
//! naming it, nothing changed, no AWS call); a region without the network writes nothing.

mod support;

use std::process::Command;

use support::Lab;

/// Runs `bake init` with AWS pointed at a closed port: any AWS call would fail differently.
fn init_offline(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bake"))
        .arg("init")
        .args(args)
        .current_dir(dir)
        .env_remove("BAKE_CONFIG")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", support::REGION)
        .env("AWS_ACCESS_KEY_ID", "AKIDOFFLINETEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .unwrap()
}

#[test]
fn init_never_overwrites_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mine = "# my config\nregion = \"eu-west-1\"\n";
    std::fs::write(dir.path().join("bake.toml"), mine).unwrap();
    for args in [&["--flow", "nginx"][..], &["--flow", "lamp", "bake.toml"]] {
        let out = init_offline(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("bake.toml already exists"), "{stderr}");
        // Refused before any call: the closed endpoint was never tried.
        assert!(!stderr.contains("127.0.0.1:9"), "{stderr}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("bake.toml")).unwrap(),
            mine
        );
    }
    let out = init_offline(&["--flow", "nginx", "-o", "json"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let error: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).trim()).unwrap();
    assert_eq!(error["kind"], "init", "{error}");
    assert_eq!(error["code"], 2, "{error}");
}

#[test]
fn init_needs_a_flow() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_offline(&[], dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--flow"),
        "{out:?}"
    );
    let out = init_offline(&["--flow", "apache"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!dir.path().join("bake.toml").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn init_writes_a_config_validate_accepts_for_each_flow() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vpc = support::network::vpc_named(&lab, "VPC-Lab").await;
    let public_a = support::network::subnet_named(&lab, "Public subnet A").await;
    for flow in ["nginx", "lamp"] {
        let path = dir.path().join(format!("{flow}.toml"));
        let path_str = path.to_str().unwrap();
        let out = lab
            .run_bake(&["-o", "json", "init", "--flow", flow, path_str])
            .await;
        assert!(out.status.success(), "{flow}: {out:?}");
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["flow"], flow, "{result}");
        assert_eq!(result["region"], support::REGION, "{result}");
        assert_eq!(result["vpc"]["id"], vpc.as_str(), "{result}");
        let subnets = result["subnets"].as_array().unwrap();
        assert_eq!(subnets.len(), 4, "{result}");
        assert_eq!(subnets[0]["id"], public_a.subnet_id().unwrap(), "{result}");
        let text = std::fs::read_to_string(&path).unwrap();
        // Commented, and noting what it found.
        assert!(
            text.lines().filter(|l| l.starts_with('#')).count() > 10,
            "{text}"
        );
        assert!(text.contains(&vpc), "{text}");
        assert!(text.contains(public_a.subnet_id().unwrap()), "{text}");
        assert!(
            text.contains(&format!("region = \"{}\"", support::REGION)),
            "{text}"
        );
        // bake validate accepts it as written.
        let out = lab.run_bake(&["-c", path_str, "validate"]).await;
        assert!(out.status.success(), "{flow}: {out:?}\n{text}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("ok web") && stdout.contains("ok rollout web"),
            "{stdout}"
        );
        // A second init over it fails, naming it, and leaves it as it was.
        let again = lab.run_bake(&["init", "--flow", flow, path_str]).await;
        assert_eq!(again.status.code(), Some(2), "{again:?}");
        assert!(
            String::from_utf8_lossy(&again.stderr).contains(path_str),
            "{again:?}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn init_in_a_region_without_the_network_writes_nothing() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bake.toml");
    let out = lab
        .run_bake(&[
            "--region",
            "eu-west-3",
            "init",
            "--flow",
            "nginx",
            path.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("VPC") && stderr.contains("VPC-Lab") && stderr.contains("eu-west-3"),
        "{stderr}"
    );
    assert!(!path.exists());
}
