//! `bake schema`: the JSON Schema of bake.toml validates every example, refuses a misspelled field
//! with a JSON pointer to where it is, describes every field, and is the committed
//! schema/bake.schema.json that the examples' `#:schema` line names.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::repo;

/// `bake schema`'s output.
fn printed() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bake"))
        .arg("schema")
        .env_remove("BAKE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&printed()).unwrap();
    jsonschema::draft7::new(&schema).expect("bake schema prints a valid draft-07 schema")
}

/// A TOML file as the JSON the schema is about.
fn as_json(text: &str) -> Value {
    toml::from_str(text).unwrap()
}

fn examples() -> Vec<std::path::PathBuf> {
    let mut all: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    all.sort();
    assert!(all.len() >= 3, "{all:?}");
    all
}

#[test]
fn every_example_validates_and_names_the_committed_schema() {
    let validator = validator();
    for path in examples() {
        let text = std::fs::read_to_string(&path).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&as_json(&text))
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        // Taplo and Even Better TOML read the first line; the path is relative to the file.
        let first = text.lines().next().unwrap();
        let named = first
            .strip_prefix("#:schema ")
            .unwrap_or_else(|| panic!("{}: first line {first:?}", path.display()));
        let schema = path.parent().unwrap().join(named);
        assert_eq!(
            schema.canonicalize().unwrap(),
            repo()
                .join("schema/bake.schema.json")
                .canonicalize()
                .unwrap(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn the_committed_schema_is_what_bake_schema_prints() {
    let committed = std::fs::read_to_string(repo().join("schema/bake.schema.json")).unwrap();
    assert!(
        committed == printed(),
        "schema/bake.schema.json is stale: regenerate it with `bake schema > schema/bake.schema.json`"
    );
}

#[test]
fn a_misspelled_field_is_refused_with_a_pointer_to_it() {
    let validator = validator();
    let text = std::fs::read_to_string(repo().join("examples/nginx-debian.toml")).unwrap();
    let cases = [
        // (the misspelling, the JSON pointer of the table it is in)
        (
            (
                "instance_type = \"t3.micro\"\nsubnet",
                "instnace_type = \"t3.micro\"\nsubnet",
            ),
            "/image/web/builder",
            "instnace_type",
        ),
        (
            ("expect_status = 200", "expect_staus = 200"),
            "/image/web/health",
            "expect_staus",
        ),
        (
            ("launch_template = \"Web\"", "launch_templat = \"Web\""),
            "/rollout/web",
            "launch_templat",
        ),
        (
            ("region = \"ap-northeast-2\"", "regoin = \"ap-northeast-2\""),
            "",
            "regoin",
        ),
    ];
    for ((from, to), pointer, field) in cases {
        assert!(text.contains(from), "{from}");
        let broken = as_json(&text.replacen(from, to, 1));
        // A misspelled required field is also missing; the error about the misspelling is one.
        let all: Vec<_> = validator.iter_errors(&broken).collect();
        let quoted = format!("'{field}'");
        let errors: Vec<_> = all
            .iter()
            .filter(|e| e.to_string().contains(&quoted))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "{field}: {:#?}",
            all.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        let error = errors[0];
        assert_eq!(error.instance_path().as_str(), pointer, "{field}: {error}");
        assert!(
            error.to_string().contains("not allowed"),
            "{field}: {error}"
        );
        // The pointer leads to the table in the document that holds the misspelled key.
        let table = broken.pointer(pointer).unwrap();
        assert!(table.get(field).is_some(), "{field} under {pointer}");
        // bake itself refuses it too, at its line.
        let (_dir, _path, out) = support::bake_offline(&text.replacen(from, to, 1), &["validate"]);
        assert_eq!(out.status.code(), Some(2), "{field}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(field),
            "{field}: {out:?}"
        );
    }
}

#[test]
fn a_wrong_value_is_refused_where_bake_refuses_it() {
    let validator = validator();
    let text = std::fs::read_to_string(repo().join("examples/nginx-debian.toml")).unwrap();
    for (from, to, pointer) in [
        ("os = \"debian\"", "os = \"windows\"", "/image/web/os"),
        ("port = 80", "port = \"eighty\"", "/image/web/health/port"),
        (
            "capacity = { min = 2, desired = 2, max = 4 }",
            "capacity = { min = 2, max = 4 }",
            "/rollout/web/capacity",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let broken = as_json(&text.replacen(from, to, 1));
        let pointers: Vec<String> = validator
            .iter_errors(&broken)
            .map(|e| e.instance_path().to_string())
            .collect();
        assert!(pointers.iter().any(|p| p == pointer), "{to}: {pointers:?}");
    }
    // A missing required table is refused at the image.
    let no_builder =
        as_json("[image.web]\nbase = { ssm = \"/p\" }\ntemplate = \"nginx\"\nos = \"debian\"\n");
    let errors: Vec<String> = validator
        .iter_errors(&no_builder)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.iter().any(|e| e.contains("builder")), "{errors:?}");
}

/// Every property of every table has a description (its doc comment), and every table that
/// bake reads with unknown fields refused says so (`additionalProperties: false`).
#[test]
fn every_field_is_described_and_every_table_is_closed() {
    let schema: Value = serde_json::from_str(&printed()).unwrap();
    let mut problems = Vec::new();
    walk(&schema, "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    // Spot checks: the doc comments are the descriptions.
    let builder = &schema["definitions"]["Builder"]["properties"];
    assert!(
        builder["allow_cidr"]["description"]
            .as_str()
            .unwrap()
            .contains("this runner's address"),
        "{builder}"
    );
    assert_eq!(
        schema["properties"]["image"]["additionalProperties"]["$ref"],
        "#/definitions/Image"
    );
    assert!(!printed().contains("null"), "TOML has no null");
}

fn walk(value: &Value, at: &str, problems: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                if map.get("additionalProperties") != Some(&Value::Bool(false)) {
                    problems.push(format!("{at}: unknown fields not refused"));
                }
                for (name, field) in properties {
                    if field
                        .get("description")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        problems.push(format!("{at}/properties/{name}: no description"));
                    }
                }
            }
            for (key, inner) in map {
                walk(inner, &format!("{at}/{key}"), problems);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                walk(inner, &format!("{at}/{i}"), problems);
            }
        }
        _ => {}
    }
}

#[test]
fn the_readme_shows_the_editor_set_up() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(readme.contains("#:schema"), "README: the #:schema line");
    assert!(readme.contains("bake schema"), "README: bake schema");
    assert!(Path::new(&repo().join("schema/bake.schema.json")).exists());
}
