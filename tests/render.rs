//! `bake render` and `bake validate` as a user runs them: examples, committed user data,
//! shell safety of values, and the errors for bad input.

#[path = "support/output.rs"]
mod output;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bake::config::Config;
use bake::render::Renderer;
use output::stderr;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bake(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bake"))
        .args(args)
        .env_remove("BAKE_CONFIG")
        .output()
        .expect("bake runs")
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "examples/ should hold at least two configs"
    );
    files
}

/// Runs `program args` with `input` on stdin.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); `make deps` installs it"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// A scratch directory with a config and its `templates/` (empty unless given templates).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new(config: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bake.toml"), config).unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        Scratch { dir }
    }

    fn template(self, name: &str, text: &str) -> Scratch {
        let dir = self.dir.path().join("templates");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
        self
    }

    fn config(&self) -> String {
        self.dir.path().join("bake.toml").display().to_string()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn config_with(image_lines: &str) -> String {
    format!(
        r#"templates_dir = "templates"

[image.probe]
base = {{ id = "ami-0123456789abcdef0" }}
os = "debian"
{image_lines}

[image.probe.builder]
subnet = {{ id = "subnet-0123" }}
instance_profile = "SSMInstanceProfile"
"#
    )
}

#[test]
fn every_example_renders_a_script_that_passes_bash_n_and_shellcheck() {
    for example in examples() {
        let config = Config::load(&example).unwrap();
        for image in config.image.keys() {
            let out = bake(&["-c", example.to_str().unwrap(), "render", image]);
            assert!(
                out.status.success(),
                "{}: {}",
                example.display(),
                stderr(&out)
            );
            assert!(out.stdout.starts_with(b"#!/bin/bash\n"));
            let syntax = pipe("bash", &["-n"], &out.stdout);
            assert!(syntax.status.success(), "bash -n: {}", stderr(&syntax));
            let lint = pipe("shellcheck", &["-s", "bash", "-"], &out.stdout);
            assert!(
                lint.status.success(),
                "shellcheck on {} {image}:\n{}",
                example.display(),
                String::from_utf8_lossy(&lint.stdout)
            );
        }
    }
}

#[test]
fn render_reports_the_same_digest_on_every_run() {
    let example = repo().join("examples/nginx-debian.toml");
    let digest = |_: u8| {
        let out = bake(&[
            "-c",
            example.to_str().unwrap(),
            "-o",
            "json",
            "render",
            "web",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            json["user_data"].as_str().unwrap().len() as u64,
            json["size"]
        );
        json["digest"].as_str().unwrap().to_owned()
    };
    let first = digest(0);
    assert_eq!(first.len(), 64);
    assert_eq!(digest(1), first);
    let text = bake(&["-c", example.to_str().unwrap(), "render", "web"]);
    assert!(stderr(&text).contains(&first), "{}", stderr(&text));
}

/// userdata/ holds the rendered user data of every example image, kept current by this test.
/// `BAKE_UPDATE_USERDATA=1` rewrites the files instead of comparing.
#[test]
fn committed_userdata_matches_what_rendering_produces() {
    let update = std::env::var_os("BAKE_UPDATE_USERDATA").is_some();
    let dir = repo().join("userdata");
    let mut expected = Vec::new();
    for example in examples() {
        let config = Config::load(&example).unwrap();
        let renderer = Renderer::new(&config).unwrap();
        let stem = example.file_stem().unwrap().to_string_lossy().into_owned();
        for (name, image) in &config.image {
            let rendered = renderer.render(&config, name, image).unwrap();
            let file = format!("{stem}.{name}.sh");
            let path = dir.join(&file);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &rendered.script).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == rendered.script,
                "userdata/{file} differs from what `bake -c {} render {name}` prints now; \
                 regenerate with `make userdata` and commit the result",
                example.strip_prefix(repo()).unwrap().display()
            );
            expected.push(file);
        }
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(
        present, expected,
        "userdata/ holds files no example renders; `make userdata`"
    );
}

#[test]
fn hostile_values_stay_literal_text_when_the_script_runs() {
    let hostile = [
        "x'; touch pwned; echo '",
        "$(reboot)",
        "`reboot`",
        "a\"; touch pwned; echo \"",
        "line one\ntouch pwned",
        "$HOME ${PATH} * ? [a] ~ & | ; < > !",
        "",
    ];
    for value in hostile {
        let toml_value = serde_json::to_string(value).unwrap();
        let scratch = Scratch::new(&config_with(&format!(
            "template = \"probe\"\nvars = {{ value = {toml_value} }}"
        )))
        .template(
            "probe.sh.j2",
            "#!/bin/bash\nset -eu\nprintf '%s' {{ vars.value }} > out\n",
        );
        let out = bake(&["-c", &scratch.config(), "render", "probe"]);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::write(scratch.path().join("probe.sh"), &out.stdout).unwrap();
        // A `reboot` earlier on PATH than the real one: if quoting failed, it would only leave a mark.
        let bin = scratch.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("reboot");
        std::fs::write(&fake, "#!/bin/sh\ntouch pwned\n").unwrap();
        let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&fake, executable).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let run = Command::new("bash")
            .arg("probe.sh")
            .current_dir(scratch.path())
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(run.status.success(), "{value:?}: {}", stderr(&run));
        assert!(
            !scratch.path().join("pwned").exists(),
            "{value:?} ran a command"
        );
        let written = std::fs::read_to_string(scratch.path().join("out")).unwrap();
        assert_eq!(written, value);
    }
}

#[test]
fn the_lamp_template_keeps_a_presigned_url_one_literal_word() {
    let example = repo().join("examples/lamp-al2023.toml");
    let config = Config::load(&example).unwrap();
    let url = config.image["web"]
        .vars
        .iter()
        .find(|(k, _)| k.get_ref() == "app_url")
        .unwrap()
        .1;
    let url = url.get_ref().as_str().unwrap();
    assert!(url.contains('&') && url.contains('~') && url.contains('='));
    let out = bake(&["-c", example.to_str().unwrap(), "render", "web"]);
    let script = String::from_utf8(out.stdout).unwrap();
    let line = script.lines().find(|l| l.starts_with("app_url=")).unwrap();
    let echoed = Command::new("bash")
        .arg("-c")
        .arg(format!("{line}\nprintf '%s' \"$app_url\""))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), url);
}

/// Runs bake on a bad config and returns its stderr, asserting exit code 2.
fn fails_with_2(scratch: &Scratch, command: &str) -> String {
    let config = scratch.config();
    let args = match command {
        "validate" => vec!["-c", &config, "validate"],
        _ => vec!["-c", &config, command, "probe"],
    };
    let out = bake(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    stderr(&out)
}

#[test]
fn misspelled_field_exits_2_naming_file_line_and_field() {
    let scratch = Scratch::new(&config_with(
        "template = \"nginx\"\ninstnace_type = \"t3.micro\"",
    ));
    let msg = fails_with_2(&scratch, "validate");
    let at = format!("{}:7:1: unknown field `instnace_type`", scratch.config());
    assert!(msg.contains(&at), "{msg}");
}

#[test]
fn wrong_type_exits_2_naming_file_and_line() {
    let scratch = Scratch::new(&config_with("template = \"nginx\"\nno_reboot = \"yes\""));
    let msg = fails_with_2(&scratch, "render");
    assert!(
        msg.contains(&format!("{}:7:13: invalid type", scratch.config())),
        "{msg}"
    );
}

#[test]
fn missing_template_exits_2_listing_the_templates() {
    let scratch = Scratch::new(&config_with("template = \"nginks\""));
    let msg = fails_with_2(&scratch, "render");
    assert!(
        msg.contains(&format!("{}:6:12:", scratch.config())),
        "{msg}"
    );
    assert!(
        msg.contains("no template \"nginks\"") && msg.contains("lamp, nginx"),
        "{msg}"
    );
}

#[test]
fn undefined_variable_exits_2_naming_template_line_and_variable() {
    let scratch = Scratch::new(&config_with("template = \"lamp\""));
    let msg = fails_with_2(&scratch, "validate");
    let line = include_str!("../templates/lamp.sh.j2")
        .lines()
        .position(|l| l.contains("vars.app_url"))
        .unwrap()
        + 1;
    let at = format!("templates/lamp.sh.j2 (built in):{line}: undefined value `vars.app_url`");
    assert!(msg.contains(&at), "{msg}");
}

#[test]
fn undefined_variable_in_a_user_template_names_that_file() {
    let scratch = Scratch::new(&config_with("template = \"probe\""))
        .template("probe.sh.j2", "#!/bin/bash\n\necho {{ vars.greeting }}\n");
    let msg = fails_with_2(&scratch, "render");
    let file = scratch.path().join("templates/probe.sh.j2");
    assert!(
        msg.contains(&format!(
            "{}:3: undefined value `vars.greeting`",
            file.display()
        )),
        "{msg}"
    );
}

#[test]
fn template_syntax_error_exits_2_naming_file_and_line() {
    let scratch = Scratch::new(&config_with("template = \"probe\""))
        .template("probe.sh.j2", "#!/bin/bash\n\necho \"${#list[@]}\"\n");
    let msg = fails_with_2(&scratch, "render");
    let file = scratch.path().join("templates/probe.sh.j2");
    assert!(msg.contains(&format!("{}:4:", file.display())), "{msg}");
    assert!(msg.contains("comment"), "{msg}");
}

#[test]
fn secret_looking_var_exits_2_pointing_at_parameter_store() {
    let scratch = Scratch::new(&config_with(
        "template = \"nginx\"\nvars = { db_password = \"hunter2\" }",
    ));
    let msg = fails_with_2(&scratch, "render");
    assert!(
        msg.contains(&format!("{}:7:10:", scratch.config())),
        "{msg}"
    );
    assert!(
        msg.contains("SSM Parameter Store") && msg.contains("Secrets Manager"),
        "{msg}"
    );
}

#[test]
fn deprecation_beyond_ec2s_limit_exits_2_naming_file_line_and_field() {
    let scratch = Scratch::new(&config_with(
        "template = \"nginx\"\ndeprecate_after = \"11years\"",
    ));
    let msg = fails_with_2(&scratch, "validate");
    assert!(
        msg.contains(&format!(
            "{}:7:19: image.probe.deprecate_after: must be between 1 minute and 10 years",
            scratch.config()
        )),
        "{msg}"
    );
}

#[test]
fn oversized_user_data_exits_2_with_both_sizes() {
    // 40 KB of hex from a xorshift stream: gzip cannot bring it under 16 KB.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let blob: String = (0..40_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect();
    let scratch = Scratch::new(&config_with(&format!(
        "template = \"probe\"\nvars = {{ blob = \"{blob}\" }}"
    )))
    .template("probe.sh.j2", "#!/bin/bash\necho {{ vars.blob }}\n");
    let msg = fails_with_2(&scratch, "render");
    assert!(
        msg.contains(&format!("{}:6:12:", scratch.config())),
        "{msg}"
    );
    assert!(
        msg.contains("40018 bytes") && msg.contains("gzip-compressed"),
        "{msg}"
    );
    assert!(msg.contains("16384 bytes at most"), "{msg}");
}

#[test]
fn large_but_compressible_user_data_is_gzipped() {
    let scratch = Scratch::new(&config_with("template = \"probe\"")).template(
        "probe.sh.j2",
        "#!/bin/bash\n{% for i in range(3000) %}echo {{ i }}\n{% endfor %}",
    );
    let out = bake(&["-c", &scratch.config(), "-o", "json", "render", "probe"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["compressed"], true);
    assert!(json["size"].as_u64().unwrap() > 16384);
    assert!(json["payload_size"].as_u64().unwrap() <= 16384);
}

#[test]
fn unknown_image_exits_2_listing_the_images() {
    let example = repo().join("examples/nginx-debian.toml");
    let out = bake(&["-c", example.to_str().unwrap(), "render", "wbe"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no [image.wbe] table; images: web"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn validate_accepts_every_example_and_lists_its_images() {
    for example in examples() {
        let out = bake(&["-c", example.to_str().unwrap(), "-o", "json", "validate"]);
        assert!(
            out.status.success(),
            "{}: {}",
            example.display(),
            stderr(&out)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["images"][0]["image"], "web");
        // Every [rollout.NAME] of the file is listed (the private builder's example has none).
        let text = std::fs::read_to_string(&example).unwrap();
        let file: toml::Table = text.parse().unwrap();
        let written: Vec<String> = file
            .get("rollout")
            .and_then(|r| r.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        let listed: Vec<String> = json["rollouts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, written, "{}", example.display());
    }
}

/// Runs bake under a 512 MB address-space limit, as a small cron host might; returns its output
/// and how long it took.
fn bake_limited(args: &[&str]) -> (Output, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 524288; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_bake"))
        .args(args)
        .env_remove("BAKE_CONFIG")
        .output()
        .expect("sh runs");
    (out, started.elapsed())
}

#[test]
fn an_endless_template_loop_exits_2_within_2_s_naming_file_and_line() {
    let scratch = Scratch::new(&config_with("template = \"probe\"")).template(
        "probe.sh.j2",
        "#!/bin/bash\necho start\n{% for a in range(100000) %}{% for b in range(100000) %}\
         {% set c = a * b %}{% endfor %}{% endfor %}\n",
    );
    let (out, took) = bake_limited(&["-c", &scratch.config(), "validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    let file = scratch.path().join("templates/probe.sh.j2");
    let msg = stderr(&out);
    assert!(msg.contains(&format!("{}:3: ", file.display())), "{msg}");
    assert!(msg.contains("more than 1000000 steps"), "{msg}");
}

#[test]
fn a_gigabyte_template_exits_2_within_2_s_giving_cap_and_size() {
    for body in [
        // Values: stopped at the first value past the cap.
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ \"x\" * 10000 }}\
         {% endfor %}{% endfor %}",
        // Plain text only: dropped past the cap, stopped when its fuel runs out.
        "{% for a in range(100000) %}{% for b in range(100000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
         {% endfor %}{% endfor %}",
        // One value of 100 MB: refused before it is quoted or copied.
        "{{ \"x\" * 100000000 }}",
    ] {
        let scratch = Scratch::new(&config_with("template = \"probe\""))
            .template("probe.sh.j2", &format!("#!/bin/bash\n\n{body}\n"));
        let (out, took) = bake_limited(&["-c", &scratch.config(), "render", "probe"]);
        assert_eq!(out.status.code(), Some(2), "{body}: {}", stderr(&out));
        assert!(
            took < std::time::Duration::from_secs(2),
            "{body}: took {took:?}"
        );
        let msg = stderr(&out);
        let file = scratch.path().join("templates/probe.sh.j2");
        assert!(msg.contains(&format!("{}:3: ", file.display())), "{msg}");
        assert!(
            msg.contains("grew past 1048576 bytes while rendering (stopped at "),
            "{msg}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn the_ami_name_template_is_bounded_too() {
    let scratch = Scratch::new(&config_with(
        "template = \"probe\"\nname = '{% for i in range(100000) %}{{ i }}{% endfor %}'",
    ))
    .template("probe.sh.j2", "#!/bin/bash\namazon-ssm-agent\n");
    let (out, took) = bake_limited(&["-c", &scratch.config(), "validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!("{}:7:8: image.probe.name: ", scratch.config()))
            && msg.contains("more than 1024 bytes"),
        "{msg}"
    );
}

#[test]
fn an_undefined_name_in_the_ami_name_template_is_named() {
    let scratch = Scratch::new(&config_with(
        "template = \"probe\"\nname = \"{{ image }}-{{ relase }}\"",
    ))
    .template("probe.sh.j2", "#!/bin/bash\namazon-ssm-agent\n");
    let msg = fails_with_2(&scratch, "validate");
    assert!(
        msg.contains(&format!(
            "{}:7:8: image.probe.name: undefined value `relase`",
            scratch.config()
        )) && msg.contains("image, date, time and digest"),
        "{msg}"
    );
}

#[test]
fn a_missing_templates_dir_exits_2_at_its_place_in_the_config() {
    let scratch =
        Scratch::new(&config_with("template = \"nginx\"").replace("\"templates\"", "\"templtes\""));
    let msg = fails_with_2(&scratch, "validate");
    let dir = scratch.path().join("templtes");
    assert!(
        msg.contains(&format!(
            "{}:1:17: templates_dir: {} does not exist",
            scratch.config(),
            dir.display()
        )),
        "{msg}"
    );
    // Not a silent fall back to the built-in templates, for any command that renders.
    assert!(fails_with_2(&scratch, "render").contains("templates_dir"));
}

#[test]
fn a_self_include_and_an_include_cycle_name_file_and_line() {
    let scratch = Scratch::new(&config_with("template = \"probe\"")).template(
        "probe.sh.j2",
        "#!/bin/bash\necho a\n{% include \"probe.sh.j2\" %}\n",
    );
    let msg = fails_with_2(&scratch, "validate");
    let file = scratch.path().join("templates/probe.sh.j2");
    assert!(
        msg.contains(&format!(
            "{}:3: this template includes itself (probe.sh.j2)",
            file.display()
        )),
        "{msg}"
    );
    let scratch = Scratch::new(&config_with("template = \"probe\""))
        .template("probe.sh.j2", "#!/bin/bash\n{% include \"b.sh.j2\" %}\n")
        .template("b.sh.j2", "echo b\necho b\n{% include \"probe.sh.j2\" %}\n");
    let msg = fails_with_2(&scratch, "validate");
    let file = scratch.path().join("templates/probe.sh.j2");
    let other = scratch.path().join("templates/b.sh.j2");
    assert!(
        msg.contains(&format!(
            "include cycle, which never ends: {}:2 includes b.sh.j2, {}:3 includes probe.sh.j2",
            file.display(),
            other.display()
        )),
        "{msg}"
    );
}

#[test]
fn an_unreadable_template_is_reported_at_its_own_path() {
    let scratch = Scratch::new(&config_with("template = \"probe\"")).template(
        "probe.sh.j2",
        "#!/bin/bash\necho a\n{% include \"part.sh.j2\" %}\n",
    );
    std::fs::create_dir(scratch.path().join("templates/part.sh.j2")).unwrap();
    let msg = fails_with_2(&scratch, "render");
    let part = scratch.path().join("templates/part.sh.j2");
    let file = scratch.path().join("templates/probe.sh.j2");
    assert!(
        msg.contains(&format!("{}: cannot read this template: ", part.display()))
            && msg.contains(&format!("(included from {}:3)", file.display())),
        "{msg}"
    );
    assert!(!msg.contains("(built in)"), "{msg}");
}

#[test]
fn hostile_values_in_partials_of_any_name_stay_literal_when_sh_runs_the_script() {
    let hostile = [
        "$(touch pwned)",
        "`touch pwned`",
        "x; touch pwned",
        "x'; touch pwned; echo '",
        "line one\ntouch pwned",
    ];
    for partial in ["p.sh", "x.txt"] {
        for value in hostile {
            let toml_value = serde_json::to_string(value).unwrap();
            let scratch = Scratch::new(&config_with(&format!(
                "template = \"probe\"\nvars = {{ value = {toml_value} }}"
            )))
            .template(
                "probe.sh.j2",
                &format!("#!/bin/sh\nset -eu\n{{% include \"{partial}\" %}}\n"),
            )
            .template(partial, "printf '%s' {{ vars.value }} > out\n");
            let out = bake(&["-c", &scratch.config(), "render", "probe"]);
            assert!(out.status.success(), "{}", stderr(&out));
            std::fs::write(scratch.path().join("probe.sh"), &out.stdout).unwrap();
            let run = Command::new("sh")
                .arg("probe.sh")
                .current_dir(scratch.path())
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{partial} {value:?}: {}",
                stderr(&run)
            );
            assert!(
                !scratch.path().join("pwned").exists(),
                "{partial}: {value:?} ran a command"
            );
            let written = std::fs::read_to_string(scratch.path().join("out")).unwrap();
            assert_eq!(written, value, "{partial}");
        }
    }
}

#[test]
fn validate_refuses_values_where_quoting_does_not_hold_unless_the_template_opts_out() {
    let cases = [
        ("echo \"hello {{ vars.name }}\"", "inside double quotes"),
        ("echo $(basename {{ vars.name }})", "inside $(…)"),
        ("echo `basename {{ vars.name }}`", "inside backticks"),
        (
            "cat >/etc/motd <<EOF\nhello {{ vars.name }}\nEOF",
            "inside the unquoted heredoc <<EOF of line 3",
        ),
        ("echo 'hello {{ vars.name }}'", "inside single quotes"),
        ("true # {{ vars.name }}", "inside a shell comment"),
    ];
    for (line, why) in cases {
        let text = format!("#!/bin/bash\namazon-ssm-agent\n{line}\n");
        let scratch = Scratch::new(&config_with(
            "template = \"probe\"\nvars = { name = \"web\" }",
        ))
        .template("probe.sh.j2", &text);
        let msg = fails_with_2(&scratch, "validate");
        let file = scratch.path().join("templates/probe.sh.j2");
        let at = if line.starts_with("cat") { 4 } else { 3 };
        assert!(
            msg.contains(&format!(
                "{}:{at}: `{{{{ vars.name }}}}` is {why}",
                file.display()
            )),
            "{line}: {msg}"
        );
        assert!(msg.contains("{# bake: no-quote-check #}"), "{msg}");
        let scratch = Scratch::new(&config_with(
            "template = \"probe\"\nvars = { name = \"web\" }",
        ))
        .template(
            "probe.sh.j2",
            &format!("{{# bake: no-quote-check #}}\n{text}"),
        );
        let out = bake(&["-c", &scratch.config(), "validate"]);
        assert!(out.status.success(), "{line}: {}", stderr(&out));
    }
}

#[test]
fn a_multi_line_value_is_refused_where_it_could_end_a_quoted_heredoc() {
    let template =
        "#!/bin/bash\namazon-ssm-agent\ncat >/etc/app.conf <<'EOF'\nname {{ vars.name }}\nEOF\n";
    let config = |value: &str| {
        config_with(&format!(
            "template = \"probe\"\nvars = {{ name = {} }}",
            serde_json::to_string(value).unwrap()
        ))
    };
    let scratch = Scratch::new(&config("web")).template("probe.sh.j2", template);
    let out = bake(&["-c", &scratch.config(), "render", "probe"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let scratch = Scratch::new(&config("x\nEOF\ntouch pwned")).template("probe.sh.j2", template);
    let msg = fails_with_2(&scratch, "render");
    let file = scratch.path().join("templates/probe.sh.j2");
    assert!(
        msg.contains(&format!("{}:4: the value", file.display()))
            && msg.contains("quoted heredoc (line 4)"),
        "{msg}"
    );
}
