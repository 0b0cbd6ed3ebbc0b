//! The corpus itself: hostile-but-realistic configs, templates and command lines (issue 10), each
//! with what bake must do about it: exit 0 for a valid control, or exit 2 naming a place
//! (`file:line:col` in the config, `file:line` in a template, or the file) and the field.

use std::path::Path;
use std::time::Duration;

use super::doc::{Doc, q};

/// The usual limit for one run.
pub const LIMIT: Duration = Duration::from_secs(5);
/// A runaway template must be stopped this fast ("What it must show")...
pub const RUNAWAY_LIMIT: Duration = Duration::from_secs(2);
/// ... under this address-space limit.
pub const RUNAWAY_ADDRESS_SPACE: u64 = 512 * 1024 * 1024;

/// Every category the issue lists; each has cases (checked by a test).
pub const CATEGORIES: &[&str] = &[
    "control",
    "runaway-template",
    "template-error",
    "duration",
    "port",
    "http-status",
    "volume",
    "capacity",
    "percent",
    "empty-name",
    "empty-key",
    "aws-name",
    "ami-name",
    "cidr",
    "subnet-selector",
    "region",
    "instance-type",
    "templates-dir",
    "missing-config",
    "typo",
    "image-key",
    "wrong-type",
    "quoting",
    "health-path",
    "secret",
    "command-line",
    "json-errors",
    "every-command",
];

/// One run of bake and what it must do.
#[derive(Clone, Debug)]
pub struct Case {
    /// `category/what`, unique.
    pub name: String,
    pub category: &'static str,
    /// Files to write in the case's directory (relative path, content).
    pub files: Vec<(String, Vec<u8>)>,
    /// Directories to create in the case's directory.
    pub dirs: Vec<String>,
    /// bake's arguments; it runs in the case's directory.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// The longest the run may take.
    pub limit: Duration,
    /// An address-space limit for the run, in bytes.
    pub address_space: Option<u64>,
    pub expect: Expect,
}

#[derive(Clone, Debug)]
pub enum Expect {
    /// A valid control: exit 0.
    Success,
    /// Bad input: exit 2 with a message naming where and what.
    Refused(Refusal),
}

#[derive(Clone, Debug, Default)]
pub struct Refusal {
    /// Where the error must point; any one of these will do.
    pub places: Vec<Place>,
    /// The field (dotted path, as the issue writes it) or flag the message must name.
    pub field: Option<String>,
    /// Further text the message must contain (an undefined name, the expected table).
    pub mentions: Vec<String>,
    /// Text the message must not contain (a made-up place).
    pub forbids: Vec<String>,
    /// The error must come as a JSON object (`-o json`).
    pub json: bool,
}

#[derive(Clone, Debug)]
pub enum Place {
    /// `file:line:col` in a config file, the column inside that line.
    Config {
        file: String,
        line: usize,
        text: String,
    },
    /// `file:line` in a template.
    Template { file: String, line: usize },
    /// The file's path, for a file that cannot be read at all.
    File(String),
    /// A command-line mistake: no file to point at.
    CommandLine,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Config { file, line, text } => write!(f, "{file}:{line}:COL ({text})"),
            Place::Template { file, line } => write!(f, "{file}:{line}"),
            Place::File(file) => write!(f, "{file}"),
            Place::CommandLine => write!(f, "the command line"),
        }
    }
}

impl Case {
    fn new(category: &'static str, what: impl AsRef<str>, expect: Expect) -> Case {
        assert!(
            CATEGORIES.contains(&category),
            "unlisted category {category}"
        );
        Case {
            name: format!("{category}/{}", what.as_ref()),
            category,
            files: Vec::new(),
            dirs: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            limit: LIMIT,
            address_space: None,
            expect,
        }
    }

    /// A config mistake: `doc` is written as bake.toml and `bake -c bake.toml validate` must
    /// exit 2 naming the marked line and `field`.
    fn config(category: &'static str, what: impl AsRef<str>, doc: &Doc, field: &str) -> Case {
        let mark = doc
            .mark()
            .unwrap_or_else(|| panic!("corpus case {}: no marked line", what.as_ref()));
        Case::new(
            category,
            what,
            Expect::Refused(Refusal {
                places: vec![Place::Config {
                    file: "bake.toml".into(),
                    line: mark.line,
                    text: mark.text,
                }],
                field: Some(field.to_owned()),
                ..Refusal::default()
            }),
        )
        .file("bake.toml", doc.text())
        .args(&["-c", "bake.toml", "validate"])
    }

    /// A valid control: `bake -c bake.toml validate` exits 0.
    fn control(what: impl AsRef<str>, doc: &Doc) -> Case {
        Case::new("control", what, Expect::Success)
            .file("bake.toml", doc.text())
            .args(&["-c", "bake.toml", "validate"])
    }

    /// A command-line mistake naming `flag`.
    fn command_line(what: impl AsRef<str>, flag: &str, args: &[&str]) -> Case {
        Case::new(
            "command-line",
            what,
            Expect::Refused(Refusal {
                places: vec![Place::CommandLine],
                field: Some(flag.to_owned()),
                ..Refusal::default()
            }),
        )
        .args(args)
    }

    fn file(mut self, path: &str, content: impl Into<Vec<u8>>) -> Case {
        self.files.retain(|(p, _)| p != path);
        self.files.push((path.to_owned(), content.into()));
        self
    }

    fn dir(mut self, path: &str) -> Case {
        self.dirs.push(path.to_owned());
        self
    }

    fn args(mut self, args: &[&str]) -> Case {
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Runs `command` (after `-c bake.toml`) instead of `validate`.
    fn command(self, command: &[&str]) -> Case {
        let mut args = vec!["-c", "bake.toml"];
        args.extend_from_slice(command);
        self.args(&args)
    }

    fn env(mut self, key: &str, value: &str) -> Case {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn refusal(&mut self) -> &mut Refusal {
        match &mut self.expect {
            Expect::Refused(r) => r,
            Expect::Success => panic!("corpus case {}: a control has no refusal", self.name),
        }
    }

    fn mention(mut self, text: &str) -> Case {
        self.refusal().mentions.push(text.to_owned());
        self
    }

    fn forbid(mut self, text: &str) -> Case {
        self.refusal().forbids.push(text.to_owned());
        self
    }

    /// Another place the error may point at instead.
    fn or_at(mut self, place: Place) -> Case {
        self.refusal().places.push(place);
        self
    }

    /// The error must point at `place` (instead of the config's marked line).
    fn at(mut self, place: Place) -> Case {
        self.refusal().places = vec![place];
        self
    }

    fn json(mut self) -> Case {
        self.refusal().json = true;
        self
    }

    /// A runaway: stopped within 2 s under a 512 MB address-space limit.
    fn runaway(mut self) -> Case {
        self.limit = RUNAWAY_LIMIT;
        self.address_space = Some(RUNAWAY_ADDRESS_SPACE);
        self
    }

    /// The shell-quoted command line, for people.
    pub fn command_text(&self) -> String {
        let mut words = vec!["bake".to_owned()];
        words.extend(self.args.iter().map(|a| shell_word(a)));
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_word(v)))
            .collect();
        let mut text = env.join(" ");
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&words.join(" "));
        text
    }

    /// What the case expects, for people.
    pub fn expect_text(&self) -> String {
        match &self.expect {
            Expect::Success => "exit 0".to_owned(),
            Expect::Refused(r) => {
                let places: Vec<String> = r.places.iter().map(ToString::to_string).collect();
                let mut text = format!("exit 2 at {}", places.join(" or "));
                if let Some(field) = &r.field {
                    text.push_str(&format!(", naming {field}"));
                }
                for m in &r.mentions {
                    text.push_str(&format!(", mentioning {m:?}"));
                }
                for f in &r.forbids {
                    text.push_str(&format!(", never {f:?}"));
                }
                if r.json {
                    text.push_str(", as a JSON object");
                }
                text
            }
        }
    }
}

fn shell_word(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// A valid config with every table and field written out, each on its own line: the corpus
/// edits one line of it per case.
const BASE: &str = r#"
region = "ap-northeast-2"

[image.web]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"
os = "debian"
name = "web-nginx-{{ date }}-{{ digest[:12] }}"
no_reboot = false
deprecate_after = "90d"

[image.web.vars]
app = "flask"
title = "AWS Immersion Day"
message = "Nginx in front of a Python app"

[image.web.builder]
instance_type = "t3.micro"
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"
allow_cidr = "203.0.113.7/32"
volume = { size = 8, type = "gp3" }

[image.web.health]
path = "/"
port = 80
expect_status = 200
expect_body = "Immersion Day"
timeout = "10m"

[image.web.verify]
commands = ["systemctl is-active nginx"]
timeout = "5m"

[rollout.web]
image = "web"
vpc = { tag = { Name = "VPC-Lab" } }
alb_subnets = [{ tag = { Name = "Public subnet A" } }, { tag = { Name = "Public subnet C" } }]
instance_subnets = [{ tag = { Name = "Private subnet A" } }, { tag = { Name = "Private subnet C" } }]
launch_template = "Web"
asg = "Web-ASG"
alb = "Web-ALB"
target_group = "Web-TG"
alb_security_group = "Web-ALB-SG"
instance_security_group = "ASG-Web-Inst-SG"
instance_type = "t3.micro"
instance_profile = "SSMInstanceProfile"
alb_allow_cidr = "0.0.0.0/0"
alb_port = 80
cpu_target = 30
tags = { Name = "ASG-Web-Instance" }

[rollout.web.capacity]
min = 2
desired = 2
max = 4

[rollout.web.refresh]
min_healthy = 90
warmup = "300s"
timeout = "30m"
"#;

pub fn base() -> Doc {
    Doc::parse(BASE)
}

/// The dotted path of `key` in `section`.
fn path(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// `bake -c bake.toml validate` with `section.key = value` must exit 2 naming that field.
fn value(category: &'static str, section: &str, key: &str, value: &str) -> Case {
    let field = path(section, key);
    let doc = base().set(section, key, value);
    Case::config(category, format!("{field} = {value}"), &doc, &field)
}

/// Like [`value`], with `section` written as an inline table in its parent.
fn inline_value(category: &'static str, section: &str, key: &str, value: &str) -> Case {
    let field = path(section, key);
    let doc = base().set(section, key, value).inline(section);
    Case::config(
        category,
        format!("{field} = {value} (inline table)"),
        &doc,
        &field,
    )
}

/// A config using the user's templates in `templates/`: `template = "t"` (marked), os al2023.
fn with_templates() -> Doc {
    base()
        .setup("", "templates_dir", &q("templates"))
        .setup("image.web", "os", &q("al2023"))
        .set("image.web", "template", &q("t"))
}

/// A mistake inside the user's templates: the error must name `file:line` and the image.
fn template(category: &'static str, what: &str, files: &[(&str, &str)], at: (&str, usize)) -> Case {
    let doc = with_templates();
    let mut case = Case::config(category, what, &doc, "image.web").at(Place::Template {
        file: format!("templates/{}", at.0),
        line: at.1,
    });
    for (name, text) in files {
        case = case.file(&format!("templates/{name}"), *text);
    }
    case
}

/// Everything: controls first, then the mistakes by category.
pub fn all(repo: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    controls(repo, &mut cases);
    runaway_templates(&mut cases);
    template_errors(&mut cases);
    durations(&mut cases);
    numbers(&mut cases);
    names(&mut cases);
    network(&mut cases);
    silent_fallbacks(&mut cases);
    typos(&mut cases);
    quoting(&mut cases);
    secrets(&mut cases);
    command_lines(&mut cases);
    every_command(&mut cases);
    cases
}

fn controls(repo: &Path, cases: &mut Vec<Case>) {
    for example in ["nginx-debian", "lamp-al2023"] {
        let text = std::fs::read(repo.join(format!("examples/{example}.toml")))
            .unwrap_or_else(|e| panic!("examples/{example}.toml: {e}"));
        for command in [&["validate"][..], &["render", "web"]] {
            cases.push(
                Case::new(
                    "control",
                    format!("examples/{example}.toml {}", command.join(" ")),
                    Expect::Success,
                )
                .file("bake.toml", text.clone())
                .command(command),
            );
        }
    }
    cases.push(Case::control("base config", &base()));
    cases.push(Case::control("base config, render", &base()).command(&["render", "web"]));
    cases.push(Case::control(
        "base config without rollouts",
        &base().drop_sections("rollout"),
    ));
    // Values at the edges of what AWS accepts, and look-alikes of mistakes.
    let edges: &[(&str, &str, &str)] = &[
        ("image.web.health", "port", "1"),
        ("image.web.health", "port", "65535"),
        // ALB health checks take success codes 200-499, and expect_status is the target group's.
        ("image.web.health", "expect_status", "499"),
        ("image.web.health", "expect_status", "204"),
        ("image.web.health", "timeout", "\"10s\""),
        ("image.web.health", "timeout", "\"12h\""),
        ("image.web.health", "path", "\"/healthz\""),
        ("image.web.health", "path", "\"/app/status.html\""),
        (
            "image.web.builder",
            "volume",
            "{ size = 1, type = \"gp3\" }",
        ),
        (
            "image.web.builder",
            "volume",
            "{ size = 16384, type = \"gp3\" }",
        ),
        (
            "image.web.builder",
            "volume",
            "{ size = 4, type = \"io1\" }",
        ),
        (
            "image.web.builder",
            "volume",
            "{ size = 65536, type = \"io2\" }",
        ),
        (
            "image.web.builder",
            "volume",
            "{ size = 1024, type = \"standard\" }",
        ),
        ("image.web.builder", "allow_cidr", "\"auto\""),
        ("image.web.builder", "allow_cidr", "\"10.0.0.0/8\""),
        ("image.web.builder", "instance_type", "\"m7i-flex.large\""),
        ("image.web.builder", "instance_type", "\"t4g.nano\""),
        ("image.web", "deprecate_after", "\"10y\""),
        ("image.web", "deprecate_after", "\"1m\""),
        (
            "image.web",
            "name",
            "\"web (nginx) [{{ date }}] {{ time }}/{{ digest[:8] }}\"",
        ),
        ("image.web", "base", "{ id = \"ami-0123456789abcdef0\" }"),
        (
            "image.web",
            "base",
            "{ name = \"debian-12-amd64-*\", owners = [\"136693071363\"] }",
        ),
        ("image.web.vars", "secretary_name", "\"Ada\""),
        ("image.web.vars", "tokenizer_model", "\"bert\""),
        ("image.web.vars", "passenger_count", "\"4\""),
        ("image.web.vars", "compass_heading", "\"north\""),
        ("image.web.verify", "timeout", "\"1h\""),
        ("rollout.web", "alb_port", "65535"),
        ("rollout.web", "alb_allow_cidr", "\"198.51.100.0/24\""),
        ("rollout.web", "cpu_target", "100"),
        ("rollout.web.capacity", "min", "0"),
        ("rollout.web.refresh", "warmup", "\"0s\""),
        ("rollout.web.refresh", "warmup", "\"3600s\""),
        ("rollout.web.refresh", "min_healthy", "100"),
        ("rollout.web.refresh", "min_healthy", "0"),
        ("", "region", "\"eu-central-2\""),
        ("", "region", "\"us-gov-west-1\""),
    ];
    for (section, key, v) in edges {
        let doc = base().set(section, key, v);
        cases.push(Case::control(format!("{} = {v}", path(section, key)), &doc));
    }
    cases.push(Case::control(
        "capacity 0/0/1 inline",
        &base()
            .set("rollout.web.capacity", "desired", "0")
            .set("rollout.web.capacity", "min", "0")
            .set("rollout.web.capacity", "max", "1")
            .inline("rollout.web.capacity"),
    ));
    // A user template that quotes properly, with a partial that is not named *.sh.j2.
    let good = "#!/bin/bash\nset -euo pipefail\ntitle={{ vars.title }}\n{% include \"p.sh\" %}\n\
                printf '%s\\n' \"$title\" \"$message\" >/tmp/page\n";
    cases.push(
        Case::control("user template with a .sh partial", &with_templates())
            .file("templates/t.sh.j2", good)
            .file("templates/p.sh", "message={{ vars.message }}\n"),
    );
    cases.push(
        Case::control(
            "hostile value in a .sh partial renders",
            &with_templates().setup(
                "image.web.vars",
                "message",
                &q("$(touch pwned)`id`\"; reboot"),
            ),
        )
        .file("templates/t.sh.j2", good)
        .file("templates/p.sh", "message={{ vars.message }}\n")
        .command(&["render", "web"]),
    );
}

fn runaway_templates(cases: &mut Vec<Case>) {
    let endless =
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
    let header = "#!/bin/bash\nset -euo pipefail\n";
    let body = |line: &str| format!("{header}{line}\necho done\n");
    cases.push(
        template(
            "runaway-template",
            "endless loop",
            &[("t.sh.j2", &body(endless))],
            ("t.sh.j2", 3),
        )
        .runaway(),
    );
    cases.push(
        template(
            "runaway-template",
            "endless loop in a partial",
            &[
                ("t.sh.j2", &body("{% include \"partials/spin.sh.j2\" %}")),
                ("partials/spin.sh.j2", &format!("echo spin\n{endless}\n")),
            ],
            ("partials/spin.sh.j2", 2),
        )
        .runaway(),
    );
    cases.push(
        template(
            "runaway-template",
            "endless loop setting values",
            &[(
                "t.sh.j2",
                &body(
                    "{% for a in range(100000) %}{% for b in range(100000) %}{% set x = a * b %}{% endfor %}{% endfor %}",
                ),
            )],
            ("t.sh.j2", 3),
        )
        .runaway(),
    );
    cases.push(
        template(
            "runaway-template",
            "macro recursion",
            &[(
                "t.sh.j2",
                &body("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
            )],
            ("t.sh.j2", 3),
        )
        .runaway(),
    );
    cases.push(
        template(
            "runaway-template",
            "includes itself",
            &[("t.sh.j2", &body("{% include \"t.sh.j2\" %}"))],
            ("t.sh.j2", 3),
        )
        .runaway(),
    );
    // Output: checked while rendering, so the error comes at the line producing it, or at the
    // config's `template` (the image's user data as a whole).
    let size_cases: &[(&str, &str)] = &[
        ("a gigabyte in one expression", "{{ \"x\" * 1000000000 }}"),
        (
            "ten gigabytes in a loop",
            "{% for a in range(100000) %}{{ \"y\" * 100000 }}{% endfor %}",
        ),
        ("100 MB in one expression", "{{ \"x\" * 100000000 }}"),
        (
            "100 MB in a loop",
            "{% for a in range(100000) %}{{ \"z\" * 1000 }}{% endfor %}",
        ),
    ];
    let template_line = with_templates().mark().unwrap();
    for (what, line) in size_cases {
        cases.push(
            template(
                "runaway-template",
                what,
                &[("t.sh.j2", &body(line))],
                ("t.sh.j2", 3),
            )
            .or_at(Place::Config {
                file: "bake.toml".into(),
                line: template_line.line,
                text: template_line.text.clone(),
            })
            .runaway(),
        );
    }
    // 48 KB that gzip cannot shrink below 16 KB: refused at validate, before any launch.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let noise: String = (0..1200)
        .map(|_| {
            let mut word = String::from("echo ");
            for _ in 0..5 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.push_str(&format!("{state:016x}"));
                word.truncate(word.len() - 9);
            }
            word.push('\n');
            word
        })
        .collect();
    cases.push(
        template(
            "runaway-template",
            "48 KB that does not compress",
            &[("t.sh.j2", &format!("{header}{noise}"))],
            ("t.sh.j2", 3),
        )
        .at(Place::Config {
            file: "bake.toml".into(),
            line: template_line.line,
            text: template_line.text.clone(),
        })
        .or_at(Place::File("templates/t.sh.j2".into())),
    );
    // The AMI name is a template too.
    for (what, name) in [
        ("endless loop", format!("{endless}web-{{{{ date }}}}")),
        ("a gigabyte", "web-{{ \"x\" * 1000000000 }}".to_owned()),
        (
            "macro recursion",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}web-{{ f(0) }}".to_owned(),
        ),
    ] {
        let doc = base().set("image.web", "name", &q(&name));
        cases.push(
            Case::config(
                "runaway-template",
                format!("AMI name: {what}"),
                &doc,
                "image.web.name",
            )
            .runaway(),
        );
    }
}

fn template_errors(cases: &mut Vec<Case>) {
    let head = "#!/bin/bash\nset -euo pipefail\n";
    cases.push(template(
        "template-error",
        "syntax error",
        &[("t.sh.j2", &format!("{head}echo a\n{{% if %}}\necho b\n"))],
        ("t.sh.j2", 4),
    ));
    cases.push(
        template(
            "template-error",
            "undefined var",
            &[("t.sh.j2", &format!("{head}name={{{{ vars.nosuch }}}}\n"))],
            ("t.sh.j2", 3),
        )
        .mention("vars.nosuch"),
    );
    cases.push(
        template(
            "template-error",
            "unknown filter",
            &[(
                "t.sh.j2",
                &format!("{head}echo a\nx={{{{ vars.app | shout }}}}\n"),
            )],
            ("t.sh.j2", 4),
        )
        .mention("shout"),
    );
    cases.push(
        template(
            "template-error",
            "missing partial",
            &[(
                "t.sh.j2",
                &format!("{head}{{% include \"partials/nosuch.sh.j2\" %}}\n"),
            )],
            ("t.sh.j2", 3),
        )
        .mention("partials/nosuch.sh.j2"),
    );
    cases.push(
        template(
            "template-error",
            "undefined var in a partial",
            &[
                (
                    "t.sh.j2",
                    &format!("{head}{{% include \"partials/x.sh.j2\" %}}\n"),
                ),
                (
                    "partials/x.sh.j2",
                    "echo one\necho two\ny={{ vars.missing }}\n",
                ),
            ],
            ("partials/x.sh.j2", 3),
        )
        .mention("vars.missing"),
    );
    // Files that cannot be read: named by their path, never a made-up `templates/?` or line 0.
    let unreadable = |case: Case, file: &str| {
        case.at(Place::File(format!("templates/{file}")))
            .forbid("templates/?")
            .forbid(&format!("{file}:0"))
            .forbid("(built in):0")
    };
    cases.push(unreadable(
        template(
            "template-error",
            "template is not UTF-8",
            &[],
            ("t.sh.j2", 1),
        )
        .file(
            "templates/t.sh.j2",
            b"#!/bin/bash\necho \xff\xfe caf\xe9\n".to_vec(),
        ),
        "t.sh.j2",
    ));
    cases.push(unreadable(
        template(
            "template-error",
            "template is a directory",
            &[],
            ("t.sh.j2", 1),
        )
        .dir("templates/t.sh.j2"),
        "t.sh.j2",
    ));
    cases.push(unreadable(
        template(
            "template-error",
            "partial is not UTF-8",
            &[(
                "t.sh.j2",
                &format!("{head}{{% include \"partials/bad.sh.j2\" %}}\n"),
            )],
            ("t.sh.j2", 3),
        )
        .file("templates/partials/bad.sh.j2", b"echo \xff\n".to_vec()),
        "partials/bad.sh.j2",
    ));
    // The AMI name's own mistakes.
    cases.push(
        value(
            "ami-name",
            "image.web",
            "name",
            &q("web-{{ build_number }}"),
        )
        .mention("build_number"),
    );
    cases.push(value("ami-name", "image.web", "name", &q("web-{{ vars.title }}")).mention("vars"));
    cases.push(value("ami-name", "image.web", "name", &q("web-{% if %}")));
    for name in [
        "web:{{ date }}",
        "web*{{ date }}",
        "wéb-{{ date }}",
        "web-{{ date }}?",
        "web|{{ digest }}",
        "web\t{{ date }}",
        "ab",
        "{{ digest }}{{ digest }}{{ digest }}",
        "",
    ] {
        cases.push(value("ami-name", "image.web", "name", &q(name)));
    }
}

fn durations(cases: &mut Vec<Case>) {
    let fields: &[(&str, &str)] = &[
        ("image.web.health", "timeout"),
        ("image.web.verify", "timeout"),
        ("rollout.web.refresh", "timeout"),
        ("rollout.web.refresh", "warmup"),
        ("image.web", "deprecate_after"),
    ];
    for (section, key) in fields {
        let mut bad = vec![
            "\"300000000000y\"",
            "\"18446744073709551616s\"",
            "\"-5m\"",
            "\"soon\"",
            "\"\"",
            "900",
        ];
        if *key != "warmup" {
            bad.push("\"0s\"");
        }
        for v in bad {
            cases.push(value("duration", section, key, v));
        }
    }
    // Beyond the documented maximum, or under the minimum.
    for (section, key, v) in [
        ("image.web.health", "timeout", "\"13h\""),
        ("image.web.health", "timeout", "\"5s\""),
        ("rollout.web.refresh", "warmup", "\"3601s\""),
        ("image.web", "deprecate_after", "\"11y\""),
        ("image.web", "deprecate_after", "\"30s\""),
    ] {
        cases.push(value("duration", section, key, v));
    }
    // The same mistakes in inline tables.
    cases.push(inline_value(
        "duration",
        "image.web.health",
        "timeout",
        "\"300000000000y\"",
    ));
    cases.push(inline_value(
        "duration",
        "image.web.verify",
        "timeout",
        "\"0s\"",
    ));
    cases.push(inline_value(
        "duration",
        "rollout.web.refresh",
        "timeout",
        "\"300000000000y\"",
    ));
    cases.push(inline_value(
        "duration",
        "rollout.web.refresh",
        "warmup",
        "\"300000000000y\"",
    ));
}

fn numbers(cases: &mut Vec<Case>) {
    for v in ["0", "65536", "-1", "4294967376"] {
        cases.push(value("port", "image.web.health", "port", v));
        cases.push(value("port", "rollout.web", "alb_port", v));
    }
    cases.push(inline_value("port", "image.web.health", "port", "0"));
    for v in ["0", "999", "199", "500", "600", "65536", "-200"] {
        cases.push(value("http-status", "image.web.health", "expect_status", v));
    }
    cases.push(inline_value(
        "http-status",
        "image.web.health",
        "expect_status",
        "999",
    ));
    // Volumes: size inside the type's range, types from AWS's list.
    let volume = |size: &str, kind: &str, field: &str| {
        let v = format!("{{ size = {size}, type = {} }}", q(kind));
        let doc = base().set("image.web.builder", "volume", &v);
        Case::config(
            "volume",
            format!("image.web.builder.volume = {v}"),
            &doc,
            &format!("image.web.builder.volume.{field}"),
        )
    };
    for (size, kind, field) in [
        ("0", "gp3", "size"),
        ("16385", "gp3", "size"),
        ("4294967295", "gp3", "size"),
        ("2147483648", "gp2", "size"),
        ("-8", "gp3", "size"),
        ("1025", "standard", "size"),
        ("3", "io1", "size"),
        ("3", "io2", "size"),
        ("65537", "io2", "size"),
        // Throughput optimized and cold HDD volumes cannot be boot volumes (EBS volume types).
        ("125", "st1", "type"),
        ("500", "sc1", "type"),
        ("8", "floppy", "type"),
        ("8", "", "type"),
        ("8", "GP3", "type"),
        ("8", "gp3 ", "type"),
    ] {
        cases.push(volume(size, kind, field));
    }
    let table = base()
        .remove("image.web.builder", "volume")
        .setup("image.web.builder.volume", "type", &q("gp3"))
        .set("image.web.builder.volume", "size", "0");
    cases.push(Case::config(
        "volume",
        "image.web.builder.volume.size = 0 (table)",
        &table,
        "image.web.builder.volume.size",
    ));
    // Capacity: inside what Auto Scaling accepts.
    for (key, v) in [
        ("max", "4294967295"),
        ("max", "2147483648"),
        ("min", "-1"),
        ("desired", "4294967296"),
    ] {
        cases.push(value("capacity", "rollout.web.capacity", key, v));
    }
    cases.push(inline_value(
        "capacity",
        "rollout.web.capacity",
        "max",
        "4294967295",
    ));
    let relation =
        |what: &str, doc: Doc| Case::config("capacity", what, &doc, "rollout.web.capacity");
    cases.push(relation(
        "max 0",
        base()
            .setup("rollout.web.capacity", "min", "0")
            .setup("rollout.web.capacity", "desired", "0")
            .set("rollout.web.capacity", "max", "0")
            .inline("rollout.web.capacity"),
    ));
    cases.push(relation(
        "desired over max",
        base()
            .set("rollout.web.capacity", "desired", "5")
            .inline("rollout.web.capacity"),
    ));
    cases.push(relation(
        "min over desired",
        base()
            .set("rollout.web.capacity", "min", "3")
            .inline("rollout.web.capacity"),
    ));
    // Percentages.
    for v in ["0", "101", "-5", "nan", "inf", "\"30%\""] {
        cases.push(value("percent", "rollout.web", "cpu_target", v));
    }
    for v in ["101", "256", "-1"] {
        cases.push(value("percent", "rollout.web.refresh", "min_healthy", v));
    }
    cases.push(inline_value(
        "percent",
        "rollout.web.refresh",
        "min_healthy",
        "101",
    ));
}

fn names(cases: &mut Vec<Case>) {
    // Empty names, at every level they exist.
    for (section, key) in [
        ("", "region"),
        ("image.web", "template"),
        ("image.web.builder", "instance_type"),
        ("image.web.builder", "instance_profile"),
        ("rollout.web", "image"),
        ("rollout.web", "launch_template"),
        ("rollout.web", "asg"),
        ("rollout.web", "alb"),
        ("rollout.web", "target_group"),
        ("rollout.web", "alb_security_group"),
        ("rollout.web", "instance_security_group"),
        ("rollout.web", "instance_type"),
        ("rollout.web", "instance_profile"),
    ] {
        cases.push(value("empty-name", section, key, "\"\""));
    }
    for (v, field) in [
        ("{ ssm = \"\" }", "ssm"),
        ("{ id = \"\" }", "id"),
        ("{ name = \"\", owners = [\"amazon\"] }", "name"),
        ("{ name = \"debian-12-*\", owners = [\"\"] }", "owners"),
    ] {
        let doc = base().set("image.web", "base", v);
        cases.push(Case::config(
            "empty-name",
            format!("image.web.base = {v}"),
            &doc,
            &format!("image.web.base.{field}"),
        ));
    }
    // Empty keys: vars, tags, tag selectors.
    cases.push(value("empty-key", "image.web.vars", "\"\"", "\"x\""));
    let doc = base().drop_sections("image.web.vars").set(
        "image.web",
        "vars",
        "{ \"\" = \"x\", app = \"flask\" }",
    );
    cases.push(Case::config(
        "empty-key",
        "image.web.vars inline",
        &doc,
        "image.web.vars.\"\"",
    ));
    for (section, key, v, field) in [
        (
            "rollout.web",
            "tags",
            "{ \"\" = \"x\" }",
            "rollout.web.tags",
        ),
        (
            "image.web.builder",
            "subnet",
            "{ tag = { \"\" = \"Public subnet A\" } }",
            "image.web.builder.subnet.tag",
        ),
        (
            "rollout.web",
            "vpc",
            "{ tag = { \"\" = \"VPC-Lab\" } }",
            "rollout.web.vpc.tag",
        ),
        (
            "rollout.web",
            "alb_subnets",
            "[{ tag = { \"\" = \"A\" } }, { tag = { Name = \"Public subnet C\" } }]",
            "rollout.web.alb_subnets",
        ),
        (
            "rollout.web",
            "instance_subnets",
            "[{ tag = { \"\" = \"A\" } }]",
            "rollout.web.instance_subnets",
        ),
    ] {
        let doc = base().set(section, key, v);
        cases.push(Case::config(
            "empty-key",
            format!("{section}.{key} = {v}"),
            &doc,
            field,
        ));
    }
    // Names AWS refuses.
    let long = |n: usize| "a".repeat(n);
    for (section, key, v) in [
        ("rollout.web", "alb", "\"Web_ALB\"".to_owned()),
        ("rollout.web", "alb", "\"internal-web\"".to_owned()),
        ("rollout.web", "alb", "\"-web\"".to_owned()),
        ("rollout.web", "target_group", "\"Web TG\"".to_owned()),
        ("rollout.web", "target_group", q(&long(33))),
        (
            "rollout.web",
            "launch_template",
            "\"Web Template!\"".to_owned(),
        ),
        ("rollout.web", "asg", q(&long(256))),
        ("rollout.web", "alb_security_group", "\"sg-web\"".to_owned()),
        (
            "rollout.web",
            "instance_profile",
            "\"my profile\"".to_owned(),
        ),
        (
            "image.web.builder",
            "instance_profile",
            "\"SSM Instance Profile\"".to_owned(),
        ),
        ("image.web.builder", "instance_profile", q(&long(129))),
        ("image.web", "template", "\"../nginx\"".to_owned()),
    ] {
        cases.push(value("aws-name", section, key, &v));
    }
    for (v, what) in [
        ("{ \"aws:team\" = \"web\" }".to_owned(), "reserved aws: key"),
        (format!("{{ {} = \"web\" }}", long(129)), "key of 129"),
        (format!("{{ Name = {} }}", q(&long(257))), "value of 257"),
    ] {
        let doc = base().set("rollout.web", "tags", &v);
        cases.push(Case::config(
            "aws-name",
            format!("rollout.web.tags: {what}"),
            &doc,
            "rollout.web.tags",
        ));
    }
    // Regions and instance types that cannot be real.
    for v in [
        "moon-1",
        "us-east-1 ",
        "US-EAST-1",
        "ap-northeast-2; rm -rf /",
        "useast1",
    ] {
        cases.push(value("region", "", "region", &q(v)).mention(v.trim_end()));
    }
    for v in [
        "t3micro",
        "T3.MICRO",
        "t3.micro ",
        "t3.micro;reboot",
        "m5.big large",
    ] {
        cases.push(value(
            "instance-type",
            "image.web.builder",
            "instance_type",
            &q(v),
        ));
        cases.push(value(
            "instance-type",
            "rollout.web",
            "instance_type",
            &q(v),
        ));
    }
}

fn network(cases: &mut Vec<Case>) {
    // CIDRs: no host bits, a plain prefix length.
    for v in [
        "10.0.0.1/8",
        "10.0.0.0/+8",
        "10.0.0.0/33",
        "10.0.0.0",
        "300.0.0.0/8",
        "192.168.1.1/24",
        " 10.0.0.0/8",
        "",
    ] {
        cases.push(value("cidr", "image.web.builder", "allow_cidr", &q(v)));
    }
    for v in [
        "10.0.0.1/8",
        "10.0.0.0/+8",
        "0.0.0.0/-0",
        "192.168.1.1/24",
        "everyone",
    ] {
        cases.push(value("cidr", "rollout.web", "alb_allow_cidr", &q(v)));
    }
    // Subnet and VPC selectors that select nothing, or two ways at once.
    for (section, key, v) in [
        ("image.web.builder", "subnet", "{}"),
        ("image.web.builder", "subnet", "{ tag = {} }"),
        ("image.web.builder", "subnet", "{ id = \"\" }"),
        (
            "image.web.builder",
            "subnet",
            "{ id = \"subnet-0123\", tag = { Name = \"A\" } }",
        ),
        ("rollout.web", "vpc", "{}"),
        ("rollout.web", "vpc", "{ tag = {} }"),
        ("rollout.web", "vpc", "{ id = \"\" }"),
        ("rollout.web", "alb_subnets", "[{}, { id = \"subnet-c\" }]"),
        (
            "rollout.web",
            "alb_subnets",
            "[{ id = \"subnet-a\" }, { tag = {} }]",
        ),
        ("rollout.web", "instance_subnets", "[{}]"),
        ("rollout.web", "instance_subnets", "[{ id = \"\" }]"),
        ("rollout.web", "instance_subnets", "[]"),
    ] {
        cases.push(value("subnet-selector", section, key, v));
    }
    // health.path: an absolute URL path without `..`.
    for v in [
        "../x",
        "x/y",
        "/../../../etc/passwd",
        "/a/../../b",
        "/static/..",
        "",
    ] {
        cases.push(value("health-path", "image.web.health", "path", &q(v)));
    }
    cases.push(inline_value(
        "health-path",
        "image.web.health",
        "path",
        &q("../etc/passwd"),
    ));
}

fn silent_fallbacks(cases: &mut Vec<Case>) {
    // templates_dir must exist.
    cases.push(value("templates-dir", "", "templates_dir", &q("nope")).mention("nope"));
    cases.push(value("templates-dir", "", "templates_dir", &q("templates")).mention("templates"));
    cases.push(value("templates-dir", "", "templates_dir", &q("bake.toml")).mention("bake.toml"));
    // Every command reads the config it is told to read; a valid bake.toml beside it is a decoy.
    let commands: &[&[&str]] = &[
        &["validate"],
        &["render", "web"],
        &["ami", "web"],
        &["ami", "--all"],
        &["rollout", "web"],
        &["prune", "web"],
        &["prune", "--all", "--dry-run"],
        &["pipeline"],
        &["gc"],
        &["gc", "--dry-run"],
        &["gc", "--ttl", "1h"],
    ];
    for command in commands {
        let mut args = vec!["-c", "missing.toml"];
        args.extend_from_slice(command);
        cases.push(
            Case::new(
                "missing-config",
                format!("-c missing.toml {}", command.join(" ")),
                Expect::Refused(Refusal {
                    places: vec![Place::File("missing.toml".into())],
                    ..Refusal::default()
                }),
            )
            .file("bake.toml", base().text())
            .args(&args),
        );
    }
    for command in [&["gc"][..], &["validate"]] {
        cases.push(
            Case::new(
                "missing-config",
                format!("BAKE_CONFIG=missing.toml {}", command.join(" ")),
                Expect::Refused(Refusal {
                    places: vec![Place::File("missing.toml".into())],
                    ..Refusal::default()
                }),
            )
            .file("bake.toml", base().text())
            .env("BAKE_CONFIG", "missing.toml")
            .args(command),
        );
    }
    for command in [&["gc"][..], &["validate"]] {
        cases.push(
            Case::new(
                "missing-config",
                format!("-c conf (a directory) {}", command.join(" ")),
                Expect::Refused(Refusal {
                    places: vec![Place::File("conf".into())],
                    ..Refusal::default()
                }),
            )
            .dir("conf")
            .args(&[&["-c", "conf"][..], command].concat()),
        );
    }
    cases.push(
        Case::new(
            "missing-config",
            "config is not UTF-8",
            Expect::Refused(Refusal {
                places: vec![Place::File("bad.toml".into())],
                ..Refusal::default()
            }),
        )
        .file("bad.toml", b"region = \"ap-northeast-2\xff\"\n".to_vec())
        .args(&["-c", "bad.toml", "gc"]),
    );
    cases.push(
        Case::new(
            "missing-config",
            "empty config",
            Expect::Refused(Refusal {
                places: vec![Place::Config {
                    file: "empty.toml".into(),
                    line: 1,
                    text: String::new(),
                }],
                mentions: vec!["[image.".into()],
                ..Refusal::default()
            }),
        )
        .file("empty.toml", "")
        .args(&["-c", "empty.toml", "validate"]),
    );
}

fn typos(cases: &mut Vec<Case>) {
    // Typo'd tables: "unknown table `images`, expected `image`".
    for (from, to, field, expected) in [
        ("image.web", "images.web", "images", "image"),
        ("rollout.web", "rollouts.web", "rollouts", "rollout"),
        ("image", "Image", "Image", "image"),
    ] {
        let doc = base().rename_sections(from, to);
        cases.push(
            Case::config("typo", format!("[{to}]"), &doc, field).mention(&format!("`{expected}`")),
        );
    }
    // One header typo'd, its subtables not: the typo is the error, not a missing `base`.
    for (from, to, wrong, right) in [
        ("image.web", "images.web", "images", "image"),
        ("rollout.web", "rollouts.web", "rollouts", "rollout"),
    ] {
        let doc = base().rename_header(from, to);
        cases.push(
            Case::config("typo", format!("[{to}] only"), &doc, wrong)
                .mention(&format!("`{right}`"))
                .forbid("missing field"),
        );
    }
    // Typo'd tables and keys below the top level: the unknown key itself (at its line) and the
    // right spelling, as for the top-level table.
    let misspelled = |what: String, doc: &Doc, wrong: &str, right: &str| {
        Case::config("typo", what, doc, wrong).mention(&format!("`{right}`"))
    };
    for (from, to, wrong, right) in [
        ("image.web.health", "image.web.helth", "helth", "health"),
        (
            "image.web.builder",
            "image.web.bulider",
            "bulider",
            "builder",
        ),
        ("image.web.verify", "image.web.verfy", "verfy", "verify"),
        ("image.web.vars", "image.web.var", "var", "vars"),
        (
            "rollout.web.refresh",
            "rollout.web.refesh",
            "refesh",
            "refresh",
        ),
        (
            "rollout.web.capacity",
            "rollout.web.capasity",
            "capasity",
            "capacity",
        ),
    ] {
        let doc = base().rename_sections(from, to);
        cases.push(misspelled(format!("[{to}]"), &doc, wrong, right));
    }
    for (section, wrong, right, v) in [
        ("", "regoin", "region", "\"ap-northeast-2\""),
        ("", "template_dir", "templates_dir", "\"templates\""),
        ("image.web", "tempalte", "template", "\"nginx\""),
        ("image.web", "deprecate_afer", "deprecate_after", "\"90d\""),
        (
            "image.web.builder",
            "instnace_type",
            "instance_type",
            "\"t3.micro\"",
        ),
        ("image.web.health", "prot", "port", "80"),
        ("image.web.verify", "comands", "commands", "[\"true\"]"),
        (
            "rollout.web",
            "launch_templat",
            "launch_template",
            "\"Web\"",
        ),
        ("rollout.web.capacity", "maxx", "max", "4"),
        ("rollout.web.refresh", "warmpu", "warmup", "\"300s\""),
    ] {
        let doc = base().set(section, wrong, v);
        cases.push(misspelled(
            format!("{} = {v}", path(section, wrong)),
            &doc,
            wrong,
            right,
        ));
    }
    for (section, key, v, wrong, right) in [
        (
            "image.web.builder",
            "volume",
            "{ sise = 8, type = \"gp3\" }",
            "sise",
            "size",
        ),
        (
            "image.web.builder",
            "subnet",
            "{ tags = { Name = \"A\" } }",
            "tags",
            "tag",
        ),
        (
            "image.web",
            "base",
            "{ sssm = \"/aws/service/x\" }",
            "sssm",
            "ssm",
        ),
    ] {
        let doc = base().set(section, key, v);
        cases.push(misspelled(
            format!("{section}.{key} = {v}"),
            &doc,
            wrong,
            right,
        ));
    }
    // Image keys that cannot name an AMI's parameter or client token.
    let long = "w".repeat(60);
    for key in ["web server", "web/1", "wéb", "", "web:1", long.as_str()] {
        let quoted = q(key);
        let doc = base()
            .drop_sections("rollout")
            .rename_sections("image.web", &format!("image.{quoted}"));
        cases.push(Case::config(
            "image-key",
            format!("[image.{quoted}]"),
            &doc,
            &format!("image.{quoted}"),
        ));
    }
    // Values of the wrong type.
    for (section, key, v) in [
        ("image.web.health", "port", "\"eighty\""),
        ("image.web", "no_reboot", "\"yes\""),
        (
            "image.web.verify",
            "commands",
            "\"systemctl is-active nginx\"",
        ),
        ("rollout.web.capacity", "min", "\"two\""),
        ("rollout.web", "alb_subnets", "\"subnet-a\""),
        ("image.web", "os", "\"windows\""),
        ("image.web.vars", "list", "[1, 2]"),
    ] {
        cases.push(value("wrong-type", section, key, v));
    }
    let doc = base().set(
        "image.web.builder",
        "volume",
        "{ size = 8.5, type = \"gp3\" }",
    );
    cases.push(Case::config(
        "wrong-type",
        "image.web.builder.volume.size = 8.5",
        &doc,
        "image.web.builder.volume.size",
    ));
}

fn quoting(cases: &mut Vec<Case>) {
    let head = "#!/bin/bash\nset -euo pipefail\n";
    // Values inside double quotes, $(…), backticks or an unquoted heredoc: refused at validate.
    for (what, text, line) in [
        (
            "inside double quotes",
            format!("{head}echo \"Hello {{{{ vars.title }}}}\"\n"),
            3,
        ),
        (
            "inside $(...)",
            format!("{head}greeting=$(echo {{{{ vars.title }}}})\n"),
            3,
        ),
        (
            "inside backticks",
            format!("{head}greeting=`echo {{{{ vars.title }}}}`\n"),
            3,
        ),
        (
            "inside an unquoted heredoc",
            format!("{head}cat >/etc/motd <<EOF\nWelcome to {{{{ vars.title }}}}\nEOF\n"),
            4,
        ),
        (
            "inside quotes inside $(...)",
            format!("{head}x=\"$(printf '%s' \"{{{{ vars.title }}}}\")\"\n"),
            3,
        ),
    ] {
        cases.push(template(
            "quoting",
            what,
            &[("t.sh.j2", &text)],
            ("t.sh.j2", line),
        ));
    }
    cases.push(template(
        "quoting",
        "inside double quotes in a .sh.j2 partial",
        &[
            (
                "t.sh.j2",
                &format!("{head}{{% include \"partials/motd.sh.j2\" %}}\n"),
            ),
            (
                "partials/motd.sh.j2",
                "echo one\necho \"{{ vars.title }}\" >/etc/motd\n",
            ),
        ],
        ("partials/motd.sh.j2", 2),
    ));
    cases.push(template(
        "quoting",
        "inside double quotes in a .sh partial",
        &[
            ("t.sh.j2", &format!("{head}{{% include \"motd.sh\" %}}\n")),
            (
                "motd.sh",
                "echo one\necho \"{{ vars.title }}\" >/etc/motd\n",
            ),
        ],
        ("motd.sh", 2),
    ));
    cases.push(template(
        "quoting",
        "inside an unquoted heredoc in a .sh partial",
        &[
            ("t.sh.j2", &format!("{head}{{% include \"motd.sh\" %}}\n")),
            (
                "motd.sh",
                "cat >/etc/motd <<MOTD\n{{ vars.message }}\nMOTD\n",
            ),
        ],
        ("motd.sh", 2),
    ));
}

fn secrets(cases: &mut Vec<Case>) {
    let names = [
        "db_pass",
        "pwd",
        "passphrase",
        "credentials",
        "aws_access_key_id",
        "AWS_SECRET_ACCESS_KEY",
        "ssh_key",
        "dbPassword",
        "DB-PASS",
        "githubToken",
        // Homoglyphs: Cyrillic а, ѕ, о, е; fullwidth letters.
        "p\u{0430}ssword",
        "db_p\u{0430}ss",
        "\u{0455}ecret",
        "t\u{043e}ken",
        "ssh_k\u{0435}y",
        "\u{ff50}\u{ff41}\u{ff53}\u{ff53}\u{ff57}\u{ff4f}\u{ff52}\u{ff44}",
    ];
    for name in names {
        let key = if name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            name.to_owned()
        } else {
            q(name)
        };
        let doc = base().set("image.web.vars", &key, "\"hunter2\"");
        cases.push(Case::config(
            "secret",
            format!("image.web.vars.{name}"),
            &doc,
            &format!("image.web.vars.{name}"),
        ));
    }
    for name in ["db_pass", "passphrase"] {
        let doc = base()
            .set("image.web.vars", name, "\"hunter2\"")
            .inline("image.web.vars");
        cases.push(Case::config(
            "secret",
            format!("image.web.vars.{name} (inline)"),
            &doc,
            &format!("image.web.vars.{name}"),
        ));
    }
}

fn command_lines(cases: &mut Vec<Case>) {
    let with_config = |case: Case| case.file("bake.toml", base().text());
    for (what, flag, args) in [
        (
            "prune --keep -1",
            "--keep",
            &["-c", "bake.toml", "prune", "web", "--keep", "-1"][..],
        ),
        (
            "pipeline --keep -1",
            "--keep",
            &["-c", "bake.toml", "pipeline", "--keep", "-1"],
        ),
        (
            "prune --keep huge",
            "--keep",
            &[
                "-c",
                "bake.toml",
                "prune",
                "web",
                "--keep",
                "99999999999999999999999",
            ],
        ),
        (
            "gc --ttl 300000000000y",
            "--ttl",
            &["-c", "bake.toml", "gc", "--ttl", "300000000000y"],
        ),
        (
            "gc --ttl 300000000000y --dry-run",
            "--ttl",
            &[
                "-c",
                "bake.toml",
                "gc",
                "--dry-run",
                "--ttl",
                "300000000000y",
            ],
        ),
        (
            "gc --ttl -1h",
            "--ttl",
            &["-c", "bake.toml", "gc", "--ttl=-1h"],
        ),
        (
            "gc --ttl forever",
            "--ttl",
            &["-c", "bake.toml", "gc", "--ttl", "forever"],
        ),
        (
            "gc --ttl empty",
            "--ttl",
            &["-c", "bake.toml", "gc", "--ttl", ""],
        ),
        (
            "-o yaml",
            "--output",
            &["-c", "bake.toml", "-o", "yaml", "validate"],
        ),
        (
            "pipeline --publish-prefix with a space",
            "--publish-prefix",
            &[
                "-c",
                "bake.toml",
                "pipeline",
                "--publish-prefix",
                "/bake prod",
            ],
        ),
        (
            "pipeline --publish-prefix relative",
            "--publish-prefix",
            &[
                "-c",
                "bake.toml",
                "pipeline",
                "--publish-prefix",
                "bake/prod",
            ],
        ),
        (
            "gc --region with a space",
            "--region",
            &["-c", "bake.toml", "--region", "us east 1", "gc"],
        ),
        (
            "ami --region fake",
            "--region",
            &["-c", "bake.toml", "--region", "moon-1", "ami", "web"],
        ),
    ] {
        cases.push(with_config(Case::command_line(what, flag, args)));
    }
    // Without any config at all, gc's own flags are still checked first.
    cases.push(Case::command_line(
        "gc --ttl 300000000000y, no config",
        "--ttl",
        &["gc", "--ttl", "300000000000y"],
    ));
    // Names on the command line that the config does not have.
    for command in [
        &["render", "nosuch"][..],
        &["ami", "nosuch"],
        &["prune", "nosuch"],
        &["rollout", "nosuch"],
    ] {
        cases.push(with_config(
            Case::new(
                "command-line",
                command.join(" "),
                Expect::Refused(Refusal {
                    places: vec![Place::File("bake.toml".into())],
                    mentions: vec!["nosuch".into()],
                    ..Refusal::default()
                }),
            )
            .command(command),
        ));
    }
    // -o json: the error as a JSON object with its file and line.
    for (section, key, v) in [
        ("image.web.health", "port", "0"),
        ("image.web.builder", "instnace_type", "\"t3.micro\""),
        ("image.web.health", "timeout", "\"300000000000y\""),
    ] {
        let field = path(section, key);
        let doc = base().set(section, key, v);
        cases.push(
            Case::config(
                "json-errors",
                format!("-o json: {field} = {v}"),
                &doc,
                &field,
            )
            .json()
            .command(&["-o", "json", "validate"]),
        );
    }
}

/// `section`, `key` and the value written there.
type Setting<'a> = (&'a str, &'a str, &'a str);
/// Command lines after `-c bake.toml`.
type Commands<'a> = &'a [&'a [&'a str]];

fn every_command(cases: &mut Vec<Case>) {
    // A mistake caught by validate is caught by every command, before any AWS call.
    let huge_health = ("image.web.health", "timeout", "\"300000000000y\"");
    let mistakes: &[(Setting, Commands)] = &[
        (
            huge_health,
            &[
                &["ami", "web"],
                &["pipeline"],
                &["render", "web"],
                &["rollout", "web"],
                &["prune", "web"],
                &["gc"],
            ],
        ),
        (
            ("rollout.web.refresh", "timeout", "\"300000000000y\""),
            &[&["rollout", "web"], &["pipeline"]],
        ),
        (
            ("image.web.verify", "timeout", "\"0s\""),
            &[&["ami", "web"]],
        ),
        (
            (
                "image.web.builder",
                "volume",
                "{ size = 8, type = \"floppy\" }",
            ),
            &[&["ami", "web"]],
        ),
        (
            ("image.web.health", "port", "0"),
            &[&["ami", "web"], &["rollout", "web"]],
        ),
        (
            ("image.web.health", "expect_status", "999"),
            &[&["rollout", "web"]],
        ),
        (
            ("rollout.web.capacity", "max", "4294967295"),
            &[&["rollout", "web"], &["pipeline"]],
        ),
        (
            ("image.web.builder", "allow_cidr", "\"10.0.0.1/8\""),
            &[&["ami", "web"]],
        ),
        (
            ("rollout.web", "alb_allow_cidr", "\"10.0.0.0/+8\""),
            &[&["rollout", "web"]],
        ),
        (
            ("image.web.builder", "subnet", "{ tag = {} }"),
            &[&["ami", "web"]],
        ),
        (
            ("rollout.web", "instance_subnets", "[{}]"),
            &[&["rollout", "web"]],
        ),
        (
            ("image.web.builder", "instance_type", "\"t3micro\""),
            &[&["ami", "web"]],
        ),
        (("", "region", "\"moon-1\""), &[&["ami", "web"], &["gc"]]),
        (
            ("rollout.web.refresh", "warmup", "\"300000000000y\""),
            &[&["rollout", "web"]],
        ),
        (
            ("image.web.vars", "db_pass", "\"hunter2\""),
            &[&["ami", "web"], &["render", "web"]],
        ),
        (
            ("image.web.health", "path", "\"/../../../etc/passwd\""),
            &[&["ami", "web"]],
        ),
    ];
    for ((section, key, v), commands) in mistakes {
        for command in *commands {
            let field = path(section, key);
            let doc = base().set(section, key, v);
            let field = if *key == "volume" {
                "image.web.builder.volume.type".to_owned()
            } else {
                field
            };
            cases.push(
                Case::config(
                    "every-command",
                    format!("{} with {} = {v}", command.join(" "), path(section, key)),
                    &doc,
                    &field,
                )
                .command(command),
            );
        }
    }
    // Runaway and missing templates stop every command that renders, too.
    let endless = "#!/bin/bash\n{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}\n";
    for command in [&["render", "web"][..], &["ami", "web"], &["pipeline"]] {
        cases.push(
            template(
                "every-command",
                &format!("{} with an endless template", command.join(" ")),
                &[("t.sh.j2", endless)],
                ("t.sh.j2", 2),
            )
            .command(command),
        );
    }
    for command in [&["render", "web"][..], &["ami", "web"]] {
        let doc = base().set("", "templates_dir", &q("nope"));
        cases.push(
            Case::config(
                "every-command",
                format!("{} with templates_dir = \"nope\"", command.join(" ")),
                &doc,
                "templates_dir",
            )
            .command(command)
            .mention("nope"),
        );
    }
}
