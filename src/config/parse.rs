//! Reading the TOML with positions: the file's tables into the config's types, every unknown
//! key, wrong type or missing field recorded at its file:line:col (the rest is still read).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::place::{Error, Source};
use super::types::{Alarms, Builder, Config, Health, Image, Refresh, Rollout, Store, TrafficProbe};
use super::types::{DEFAULT_AMI_NAME, default_instance_type};

/// The known top-level keys.
const TOP_KEYS: &[&str] = &[
    "region",
    "templates_dir",
    "image",
    "rollout",
    "public_vars",
    "store",
];
const IMAGE_KEYS: &[&str] = &[
    "base",
    "template",
    "os",
    "vars",
    "name",
    "no_reboot",
    "deprecate_after",
    "builder",
    "health",
    "verify",
    "test",
    "distribute",
];
const ROLLOUT_KEYS: &[&str] = &[
    "image",
    "region",
    "vpc",
    "alb_subnets",
    "instance_subnets",
    "launch_template",
    "asg",
    "alb",
    "target_group",
    "alb_security_group",
    "instance_security_group",
    "alb_allow_cidr",
    "alb_port",
    "instance_type",
    "instance_profile",
    "capacity",
    "cpu_target",
    "alarms",
    "cpu_alarm",
    "refresh",
    "probe",
    "tags",
];

/// The parsed file with its positions, and the problems found so far.
pub(super) struct Doc<'a> {
    pub(super) source: &'a Source,
    pub(super) root: &'a DeTable<'a>,
    errors: RefCell<Vec<Error>>,
}

/// A place in the file by field path (`["image", "web", "health", "port"]`).
pub(super) type FieldPath<'p> = &'p [&'p str];

impl<'a> Doc<'a> {
    pub(super) fn new(source: &'a Source, root: &'a DeTable<'a>) -> Doc<'a> {
        Doc {
            source,
            root,
            errors: RefCell::new(Vec::new()),
        }
    }

    /// The problems recorded, in the order they were found.
    pub(super) fn into_errors(self) -> Vec<Error> {
        self.errors.into_inner()
    }

    pub(super) fn push(&self, span: Range<usize>, message: String) {
        self.errors.borrow_mut().push(Error::At {
            at: self.source.locate(span.start),
            message,
        });
    }

    /// An error about the field at `path`: `path: message`, at the field's value, or (when the
    /// field is not in the file) at the nearest enclosing name that is.
    pub(super) fn fail(&self, path: FieldPath<'_>, message: impl fmt::Display) {
        self.push(self.span(path), format!("{}: {message}", dotted(path)));
    }

    /// The value span of `path`, or the key span of its nearest ancestor in the file.
    pub(super) fn span(&self, path: FieldPath<'_>) -> Range<usize> {
        let mut table = self.root;
        let mut best = 0..0;
        for (i, key) in path.iter().enumerate() {
            let Some((k, v)) = table.get_key_value(*key) else {
                return best;
            };
            if i + 1 == path.len() {
                return v.span();
            }
            best = k.span();
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return v.span(),
            }
        }
        best
    }

    /// The key span of `path` (its name in the file), or the nearest ancestor's.
    pub(super) fn key_span(&self, path: FieldPath<'_>) -> Range<usize> {
        let mut table = self.root;
        let mut best = 0..0;
        for key in path {
            let Some((k, v)) = table.get_key_value(*key) else {
                break;
            };
            best = k.span();
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => break,
            }
        }
        best
    }

    /// The field path of the innermost value at `span` (for serde's messages, which name none).
    fn path_at(&self, span: &Range<usize>, mut path: Vec<String>) -> String {
        let mut table = self.root;
        let mut value: Option<&DeValue> = None;
        for key in &path {
            value = table.get(key.as_str()).map(|v| v.get_ref());
            match value {
                Some(DeValue::Table(t)) => table = t,
                _ => break,
            }
        }
        if value.is_some_and(|v| !matches!(v, DeValue::Table(_))) {
            return dotted(&path);
        }
        'down: loop {
            for (k, v) in table.iter() {
                let inside = |r: Range<usize>| r.start <= span.start && span.end <= r.end;
                if inside(k.span()) {
                    path.push(k.get_ref().to_string());
                    break 'down;
                }
                if inside(v.span()) {
                    path.push(k.get_ref().to_string());
                    match v.get_ref() {
                        DeValue::Table(t) => {
                            table = t;
                            continue 'down;
                        }
                        _ => break 'down,
                    }
                }
            }
            break;
        }
        dotted(&path)
    }

    /// Deserializes the value at `table[key]` (reached by `path`): `None` when it is absent,
    /// `Some(None)` when it is there but wrong (the error is recorded).
    fn field<T: DeserializeOwned>(
        &self,
        table: &DeTable<'a>,
        path: &[&str],
        key: &str,
    ) -> Option<Option<T>> {
        let value = table.get(key)?;
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(Some(v)),
            Err(e) => {
                let span = e.span().unwrap_or_else(|| value.span());
                let mut owned: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
                owned.push(key.to_owned());
                let field = self.path_at(&span, owned);
                self.push(span, format!("{} (in `{field}`)", plain(e.message())));
                Some(None)
            }
        }
    }

    /// Keys of `table` (at `path`) that are not in `known`.
    fn unknown_keys(&self, table: &DeTable<'a>, path: &[&str], known: &[&str]) {
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = match closest(name, known) {
                Some(k) => format!("; did you mean `{k}`?"),
                None => String::new(),
            };
            let what = if value.get_ref().is_table() {
                "table"
            } else {
                "field"
            };
            let place = if path.is_empty() {
                String::new()
            } else {
                format!(" in `{}`", dotted(path))
            };
            let expected = known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let message = match closest(name, known) {
                Some(k) if path.is_empty() && what == "table" => {
                    format!("unknown table `{name}`, expected `{k}`")
                }
                _ => format!("unknown {what} `{name}`{place}, expected one of {expected}{hint}"),
            };
            self.push(key.span(), message);
        }
    }

    /// The names under top-level tables that look like misspellings of `table`.
    pub(super) fn misspelled(&self, table: &str) -> Vec<String> {
        self.root
            .iter()
            .filter(|(k, v)| {
                let name = k.get_ref().as_ref();
                name != table
                    && !TOP_KEYS.contains(&name)
                    && closest(name, TOP_KEYS) == Some(table)
                    && v.get_ref().is_table()
            })
            .flat_map(|(_, v)| {
                v.get_ref()
                    .as_table()
                    .map(|t| {
                        t.keys()
                            .map(|k| k.get_ref().to_string())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Builds the config from the file, recording every problem: what could be read, and whether
    /// all of it could (a table that could not be read is left out, so the rest is still checked).
    pub(super) fn config(&self) -> (Config, bool) {
        self.unknown_keys(self.root, &[], TOP_KEYS);
        let mut ok = true;
        let region = self.optional(self.root, &[], "region", &mut ok);
        let templates_dir = self.optional(self.root, &[], "templates_dir", &mut ok);
        let public_vars: Vec<String> = self
            .optional(self.root, &[], "public_vars", &mut ok)
            .unwrap_or_default();
        let image = self.tables("image", |name, t| self.image(name, t), &mut ok);
        let rollout = self.tables("rollout", |name, t| self.rollout(name, t), &mut ok);
        let store = self
            .optional::<Store>(self.root, &[], "store", &mut ok)
            .map(|mut store| {
                // Defaults point at the table's name, so a message about them has a place.
                let at = self.key_span(&["store"]);
                if store.prefix.span() == (0..0) {
                    store.prefix = Spanned::new(at.clone(), store.prefix.into_inner());
                }
                if store.lease_ttl.span() == (0..0) {
                    store.lease_ttl = Spanned::new(at, store.lease_ttl.into_inner());
                }
                store
            });
        let config = Config {
            region,
            templates_dir,
            image,
            rollout,
            public_vars,
            store,
            source: Source::default(),
        };
        (config, ok)
    }

    /// Each `[kind.NAME]` table built by `build`, leaving out those that could not be (then `ok`
    /// turns false).
    fn tables<T>(
        &self,
        kind: &str,
        build: impl Fn(&str, &DeTable<'a>) -> Option<T>,
        ok: &mut bool,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        let Some(value) = self.root.get(kind) else {
            return out;
        };
        let Some(table) = value.get_ref().as_table() else {
            self.push(
                value.span(),
                format!(
                    "{kind}: expected [{kind}.NAME] tables, found {}",
                    value.get_ref().type_str()
                ),
            );
            *ok = false;
            return out;
        };
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            let Some(inner) = value.get_ref().as_table() else {
                self.push(
                    value.span(),
                    format!(
                        "{}: expected a table, found {}",
                        dotted(&[kind, name]),
                        value.get_ref().type_str()
                    ),
                );
                *ok = false;
                continue;
            };
            match build(name, inner) {
                Some(v) => {
                    out.insert(name.to_owned(), v);
                }
                None => *ok = false,
            }
        }
        out
    }

    /// An optional field: `None` when absent or wrong (then `ok` turns false).
    fn optional<T: DeserializeOwned>(
        &self,
        table: &DeTable<'a>,
        path: &[&str],
        key: &str,
        ok: &mut bool,
    ) -> Option<T> {
        match self.field(table, path, key) {
            Some(Some(v)) => Some(v),
            Some(None) => {
                *ok = false;
                None
            }
            None => None,
        }
    }

    /// A required field: absent is an error at the table's name, unless the table is only there
    /// because a misspelt table (`[images.web]`) beside it was meant.
    fn required<T: DeserializeOwned>(
        &self,
        table: &DeTable<'a>,
        path: &[&str],
        key: &str,
        explained: bool,
    ) -> Option<T> {
        match self.field(table, path, key) {
            Some(v) => v,
            None => {
                let misspelt = table.keys().any(|k| {
                    let name = k.get_ref().as_ref();
                    name != key && closest(name, &[key]).is_some()
                });
                if !explained && !misspelt {
                    self.push(
                        self.key_span(path),
                        format!("{}: missing field `{key}`", dotted(path)),
                    );
                }
                None
            }
        }
    }

    fn image(&self, name: &str, t: &DeTable<'a>) -> Option<Image> {
        let path = ["image", name];
        self.unknown_keys(t, &path, IMAGE_KEYS);
        let explained = self.misspelled("image").iter().any(|n| n == name);
        let here = self.key_span(&path);
        let mut ok = true;
        let base = self.required(t, &path, "base", explained);
        let template = self.required(t, &path, "template", explained);
        let os = self.required(t, &path, "os", explained);
        let builder: Option<Builder> = self.required(t, &path, "builder", explained);
        let vars = self.optional(t, &path, "vars", &mut ok).unwrap_or_default();
        let ami_name = self
            .optional(t, &path, "name", &mut ok)
            .unwrap_or_else(|| Spanned::new(here.clone(), DEFAULT_AMI_NAME.to_owned()));
        let no_reboot = self
            .optional(t, &path, "no_reboot", &mut ok)
            .unwrap_or(false);
        let deprecate_after = self.optional(t, &path, "deprecate_after", &mut ok);
        let health: Option<Health> = self.optional(t, &path, "health", &mut ok);
        let verify = self
            .optional(t, &path, "verify", &mut ok)
            .unwrap_or_default();
        let test = self.optional(t, &path, "test", &mut ok).unwrap_or_default();
        let distribute = self
            .optional(t, &path, "distribute", &mut ok)
            .unwrap_or_default();
        let mut builder = builder?;
        if builder.allow_cidr.span() == (0..0) {
            let at = self.key_span(&["image", name, "builder"]);
            builder.allow_cidr = Spanned::new(at, builder.allow_cidr.into_inner());
        }
        // Defaults point at the builder table, so a message about them has a place.
        if builder.endpoints.span() == (0..0) {
            let at = self.key_span(&["image", name, "builder"]);
            builder.endpoints = Spanned::new(at, builder.endpoints.into_inner());
        }
        if builder.egress.span() == (0..0) {
            let at = self.key_span(&["image", name, "builder"]);
            builder.egress = Spanned::new(at, builder.egress.into_inner());
        }
        let mut health = health.unwrap_or_default();
        if health.path.span() == (0..0) {
            let at = self.key_span(&["image", name, "health"]);
            health.path = Spanned::new(at, health.path.into_inner());
        }
        let image = Image {
            base: base?,
            template: template?,
            os: os?,
            vars,
            name: ami_name,
            no_reboot,
            deprecate_after,
            builder,
            health,
            verify,
            test,
            distribute,
        };
        ok.then_some(image)
    }

    fn rollout(&self, name: &str, t: &DeTable<'a>) -> Option<Rollout> {
        let path = ["rollout", name];
        self.unknown_keys(t, &path, ROLLOUT_KEYS);
        let explained = self.misspelled("rollout").iter().any(|n| n == name);
        let here = self.key_span(&path);
        let image = self.required(t, &path, "image", explained);
        let vpc = self.required(t, &path, "vpc", explained);
        let alb_subnets = self.required(t, &path, "alb_subnets", explained);
        let instance_subnets = self.required(t, &path, "instance_subnets", explained);
        let launch_template = self.required(t, &path, "launch_template", explained);
        let asg = self.required(t, &path, "asg", explained);
        let alb = self.required(t, &path, "alb", explained);
        let target_group = self.required(t, &path, "target_group", explained);
        let capacity = self.required(t, &path, "capacity", explained);
        let mut ok = true;
        let region = self.optional(t, &path, "region", &mut ok);
        let alb_security_group = self.optional(t, &path, "alb_security_group", &mut ok);
        let instance_security_group = self.optional(t, &path, "instance_security_group", &mut ok);
        let alb_allow_cidr = self
            .optional(t, &path, "alb_allow_cidr", &mut ok)
            .unwrap_or_else(|| Spanned::new(here.clone(), "0.0.0.0/0".to_owned()));
        let alb_port = self.optional(t, &path, "alb_port", &mut ok).unwrap_or(80);
        let instance_type = self
            .optional(t, &path, "instance_type", &mut ok)
            .unwrap_or_else(default_instance_type);
        let instance_profile = self.optional(t, &path, "instance_profile", &mut ok);
        let cpu_target = self.optional(t, &path, "cpu_target", &mut ok);
        let alarms = self
            .optional(t, &path, "alarms", &mut ok)
            .unwrap_or_else(|| Spanned::new(here.clone(), Alarms::default()));
        let cpu_alarm = self.optional(t, &path, "cpu_alarm", &mut ok);
        let refresh = self
            .optional(t, &path, "refresh", &mut ok)
            .unwrap_or_else(|| Spanned::new(here.clone(), Refresh::default()));
        let probe = self
            .optional(t, &path, "probe", &mut ok)
            .unwrap_or_else(|| Spanned::new(here.clone(), TrafficProbe::default()));
        let tags = self.optional(t, &path, "tags", &mut ok).unwrap_or_default();
        let rollout = Rollout {
            image: image?,
            region,
            vpc: vpc?,
            alb_subnets: alb_subnets?,
            instance_subnets: instance_subnets?,
            launch_template: launch_template?,
            asg: asg?,
            alb: alb?,
            target_group: target_group?,
            alb_security_group,
            instance_security_group,
            alb_allow_cidr,
            alb_port,
            instance_type,
            instance_profile,
            capacity: capacity?,
            cpu_target,
            alarms,
            cpu_alarm,
            refresh,
            probe,
            tags,
        };
        ok.then_some(rollout)
    }
}

/// A deserializer's message without Rust's names for the types: "expected struct Builder" reads
/// "expected a table".
fn plain(message: &str) -> String {
    let mut out = message.trim_end().to_owned();
    for kind in ["struct ", "enum "] {
        while let Some(i) = out.find(&format!("expected {kind}")) {
            let name_start = i + "expected ".len() + kind.len();
            let name_end = out[name_start..]
                .find(|c: char| !c.is_alphanumeric() && c != '_')
                .map_or(out.len(), |j| name_start + j);
            let what = if kind == "struct " {
                "a table"
            } else {
                "one of the listed values"
            };
            out.replace_range(i..name_end, &format!("expected {what}"));
        }
    }
    out
}

/// `a.b."c d"`, for messages: names that are not bare TOML keys are quoted.
pub(super) fn dotted<S: AsRef<str>>(path: &[S]) -> String {
    path.iter()
        .map(|p| {
            let p = p.as_ref();
            let bare = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if bare { p.to_owned() } else { format!("{p:?}") }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The known name `name` most likely stands for: the same in another case or number, or at most
/// two edits away.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = name.to_lowercase();
    let singular = lower.strip_suffix('s').unwrap_or(&lower);
    known
        .iter()
        .map(|k| (*k, edit_distance(singular, k).min(edit_distance(&lower, k))))
        .filter(|(k, d)| *d <= 2 && *d < k.len())
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        let web = &config.image["web"];
        assert_eq!(web.builder.instance_type, "t3.micro");
        assert_eq!(web.builder.allow_cidr.get_ref(), "auto");
        assert_eq!(web.health.port, 80);
        assert_eq!(web.health.timeout.0, Duration::from_secs(900));
        assert_eq!(web.builder.volume.kind, "gp3");
    }

    #[test]
    fn misspelled_field_names_line_column_and_field() {
        let text = MINIMAL.replace("instance_profile", "instnace_profile");
        let msg = error(&text);
        assert!(
            msg.starts_with("bake.toml:9:1: unknown field `instnace_profile`"),
            "{msg}"
        );
        assert!(msg.contains("expected one of"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line_and_expected_type() {
        let text = format!("{MINIMAL}\n[image.web.health]\nport = \"eighty\"\n");
        let msg = error(&text);
        assert!(msg.starts_with("bake.toml:12:8:"), "{msg}");
        assert!(msg.contains("u16"), "{msg}");
    }

    #[test]
    fn bad_duration_names_its_place() {
        let text = format!("{MINIMAL}\n[image.web.health]\ntimeout = \"15 minuets\"\n");
        let msg = error(&text);
        assert!(
            msg.starts_with("bake.toml:12:11: invalid duration"),
            "{msg}"
        );
    }

    #[test]
    fn a_misspelt_table_is_named_at_its_line_and_nothing_else_is_reported() {
        let text = MINIMAL.replace("[image.web]", "[images.web]");
        let all = problems(&text);
        assert_eq!(
            all,
            ["bake.toml:2:2: unknown table `images`, expected `image`"],
            "{all:#?}"
        );
        let all = problems(&format!(
            "{MINIMAL}{}",
            ROLLOUT.replace("[rollout.web]", "[rollouts.web]")
        ));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(
            all[0].contains("unknown table `rollouts`, expected `rollout`"),
            "{all:#?}"
        );
        // A misspelt field is named, and not reported again as missing.
        let all = problems(&MINIMAL.replace("template =", "templat ="));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(
            all[0].starts_with("bake.toml:4:1: unknown field `templat` in `image.web`")
                && all[0].contains("did you mean `template`?"),
            "{all:#?}"
        );
        // A field that really is missing is reported at the image's name.
        let msg = error(&MINIMAL.replace("template = \"nginx\"\n", ""));
        assert_eq!(msg, "bake.toml:2:8: image.web: missing field `template`");
    }

    #[test]
    fn a_bad_image_key_is_reported_at_the_key_not_the_top_of_the_file() {
        let text = MINIMAL
            .replace("[image.web]", "[image.\"web app\"]")
            .replace("[image.web.builder]", "[image.\"web app\".builder]");
        let msg = error(&text);
        assert!(
            msg.starts_with("bake.toml:2:8: image.\"web app\": the image name"),
            "{msg}"
        );
        let msg = error("[image.web]\nbase = 5\n");
        assert!(!msg.contains("bake.toml:1:1"), "{msg}");
        assert!(
            msg.contains(
                "bake.toml:2:8: invalid type: integer `5`, expected a table (in `image.web.base`)"
            ),
            "{msg}"
        );
        assert!(!msg.contains("struct"), "{msg}");
    }
}
