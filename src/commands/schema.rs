//! `bake schema`: the JSON Schema of bake.toml, generated (schemars) from the types the config is
//! read into, for editors (Taplo / Even Better TOML read it through a `#:schema` line).

use std::io::Write;

use schemars::generate::SchemaSettings;

use crate::Error;
use crate::config::Config;

/// Print the JSON Schema of the config file (bake.toml) on stdout: every field with its
/// description; unknown fields are refused, as bake refuses them. Point an editor at it with a
/// `#:schema PATH` first line (Taplo, Even Better TOML).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

impl Args {
    pub fn run(&self) -> Result<(), Error> {
        let mut out = std::io::stdout().lock();
        out.write_all(text().as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

/// The schema as a JSON value. Draft 7, which every TOML editor's validator reads; TOML has no
/// null, so an optional field is just absent (no `null` in its type).
pub fn schema() -> serde_json::Value {
    let generator = SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<Config>().to_value();
    without_null(&mut schema);
    sorted(schema)
}

/// `value` with every table's keys in order: the same text whether serde_json keeps insertion
/// order or not (a dependency may switch its `preserve_order` on), so the committed file stays
/// equal to the output.
fn sorted(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Takes `null` out of every type and default in `schema`: schemars lets an `Option` field be
/// null (and writes an unset one's default as null), and TOML has no null: a field that is not
/// set is left out.
fn without_null(schema: &mut serde_json::Value) {
    use serde_json::Value;
    let is_null = |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
    match schema {
        Value::Object(map) => {
            if map.get("default").is_some_and(Value::is_null) {
                map.remove("default");
            }
            if let Some(default) = map.get_mut("default") {
                drop_null_members(default);
            }
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if let [one] = types.as_slice() {
                    let one = one.clone();
                    map.insert("type".to_owned(), one);
                }
            }
            for key in ["anyOf", "oneOf"] {
                let Some(Value::Array(options)) = map.get_mut(key) else {
                    continue;
                };
                options.retain(|o| !is_null(o));
                if let [one] = options.as_slice() {
                    let Value::Object(one) = one.clone() else {
                        continue;
                    };
                    map.remove(key);
                    for (k, v) in one {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            map.values_mut().for_each(without_null);
        }
        Value::Array(items) => items.iter_mut().for_each(without_null),
        _ => {}
    }
}

/// The schema as `bake schema` prints it (and `schema/bake.schema.json` holds): pretty JSON and
/// a newline.
pub fn text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// Removes the members whose value is null from the tables in `value` (a default).
fn drop_null_members(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(drop_null_members);
    }
}
