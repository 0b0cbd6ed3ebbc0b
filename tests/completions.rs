//! `bake completions bash` sourced in bash completes subcommands, image names and rollout names
//! (read from the config the line names), and `bake man` prints a page `man` renders.

mod support;

use std::path::Path;
use std::process::Command;

const BAKE: &str = env!("CARGO_BIN_EXE_bake");

/// A config with two images and two rollouts: names only the config holds.
const CONFIG: &str = r#"
[image.frontend]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"
os = "debian"
[image.frontend.builder]
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"

[image.backend]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"
os = "debian"
[image.backend.builder]
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"

[rollout.blue]
image = "frontend"
[rollout.green]
image = "backend"
"#;

/// What bash completes for `line` (the words typed so far, the last one being completed) with
/// the script `bake completions bash` prints sourced, run in `dir`, bake found on PATH as a user
/// has it.
fn complete(dir: &Path, line: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let script = Command::new(BAKE)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success(), "{script:?}");
    let script_path = dir.join("bake.bash");
    std::fs::write(&script_path, &script.stdout).unwrap();
    let words: Vec<String> = line
        .iter()
        .map(|w| shlex::try_quote(w).unwrap().into_owned())
        .collect();
    let current = line.last().unwrap();
    let previous = line[line.len() - 2];
    let program = format!(
        "source {script}\n\
         COMP_WORDS=({words})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE={line}\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         COMP_TYPE=9\n\
         complete -p bake >/dev/null || exit 3\n\
         _clap_complete_bake bake {current} {previous}\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script = script_path.display(),
        words = words.join(" "),
        cword = line.len() - 1,
        line = shlex::try_quote(&line.join(" ")).unwrap(),
        current = shlex::try_quote(current).unwrap(),
        previous = shlex::try_quote(previous).unwrap(),
    );
    let bin_dir = Path::new(BAKE).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(&program)
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("BAKE_CONFIG");
    for (k, v) in env {
        bash.env(k, v);
    }
    let out = bash.output().unwrap();
    assert!(out.status.success(), "{line:?}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn has(found: &[String], want: &[&str]) -> bool {
    want.iter().all(|w| found.iter().any(|f| f == w))
}

#[test]
fn subcommands_complete() {
    let dir = tempfile::tempdir().unwrap();
    let all = complete(dir.path(), &["bake", ""], &[]);
    assert!(
        has(
            &all,
            &[
                "ami",
                "rollout",
                "rollback",
                "pipeline",
                "prune",
                "gc",
                "init",
                "schema",
                "completions",
                "man",
                "validate",
                "render"
            ]
        ),
        "{all:?}"
    );
    let ro = complete(dir.path(), &["bake", "ro"], &[]);
    assert_eq!(ro, ["rollout", "rollback"], "{ro:?}");
}

#[test]
fn image_and_rollout_names_complete_from_the_config_on_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let c = config.to_str().unwrap();
    // Images for ami, render and prune; rollouts for rollout and rollback.
    let images = complete(dir.path(), &["bake", "-c", c, "ami", ""], &[]);
    assert!(has(&images, &["frontend", "backend"]), "{images:?}");
    assert!(!has(&images, &["blue"]), "{images:?}");
    let images = complete(dir.path(), &["bake", "--config", c, "ami", "fr"], &[]);
    assert_eq!(images, ["frontend"], "{images:?}");
    let images = complete(
        dir.path(),
        &["bake", &format!("--config={c}"), "render", "b"],
        &[],
    );
    assert_eq!(images, ["backend"], "{images:?}");
    let images = complete(
        dir.path(),
        &["bake", "-c", c, "prune", "--keep", "2", "ba"],
        &[],
    );
    assert_eq!(images, ["backend"], "{images:?}");
    let rollouts = complete(dir.path(), &["bake", "-c", c, "rollout", ""], &[]);
    assert!(has(&rollouts, &["blue", "green"]), "{rollouts:?}");
    assert!(!has(&rollouts, &["frontend"]), "{rollouts:?}");
    let rollouts = complete(dir.path(), &["bake", "-c", c, "rollback", "gr"], &[]);
    assert_eq!(rollouts, ["green"], "{rollouts:?}");
}

#[test]
fn names_come_from_bake_config_or_bake_toml_when_the_line_names_none() {
    let dir = tempfile::tempdir().unwrap();
    // bake.toml in the directory the shell is in.
    std::fs::write(
        dir.path().join("bake.toml"),
        CONFIG.replace("frontend", "web"),
    )
    .unwrap();
    let images = complete(dir.path(), &["bake", "ami", "w"], &[]);
    assert_eq!(images, ["web"], "{images:?}");
    // $BAKE_CONFIG wins over bake.toml, as for every command.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, CONFIG.replace("backend", "api")).unwrap();
    let images = complete(
        dir.path(),
        &["bake", "ami", "a"],
        &[("BAKE_CONFIG", other.to_str().unwrap())],
    );
    assert_eq!(images, ["api"], "{images:?}");
    // A config that is not there completes no names (and no error reaches the shell).
    let none = complete(
        dir.path(),
        &["bake", "-c", "missing.toml", "rollout", "b"],
        &[],
    );
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn every_shell_gets_a_script_that_calls_bake_back() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = Command::new(BAKE)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("BAKE_COMPLETE"), "{shell}: {text}");
        assert!(text.contains("bake"), "{shell}: {text}");
    }
    let out = Command::new(BAKE)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_man_page_renders() {
    let out = Command::new(BAKE).arg("man").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH bake 1"),
        "{}",
        &page[..200.min(page.len())]
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bake.1"), &page).unwrap();
    // `man ./bake.1` as a user types it; man-db is installed by `make deps`. Where man is
    // missing (plain `cargo test` elsewhere) the roff is still checked above.
    if Command::new("man").arg("--version").output().is_err() {
        // `make test` (BAKE_REQUIRE_LAB=1) installs man-db first: there a missing man fails.
        assert!(
            std::env::var_os("BAKE_REQUIRE_LAB").is_none(),
            "man is not installed (make deps installs man-db)"
        );
        eprintln!("man is not installed: the page was not rendered (make deps installs man-db)");
        return;
    }
    let rendered = Command::new("man")
        .arg("./bake.1")
        .current_dir(dir.path())
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{rendered:?}");
    let text = String::from_utf8_lossy(&rendered.stdout);
    for want in [
        "NAME",
        "SYNOPSIS",
        "bake",
        "completions",
        "rollout",
        "--config",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(!text.contains(".TH"), "{text}");
}
