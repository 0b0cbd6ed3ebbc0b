//! What changed between two AMIs, against the lab: `bake ami` names the input that changed,
//! each bake's record (input digests, package manifest read through SSM) lands in the [store]
//! bucket, and `bake diff` lists the package a template change added. Offline: `bake diff`
//! without a store, and an AMI without a record.

mod support;

use support::output::{stderr, stdout};
use support::{Lab, bake_offline, repo};

const BUCKET: &str = "bake-records-changes";

/// The Nginx example's static site from a templates_dir copy of the built-in nginx template,
/// with a [store]; the test stage is off (tests/ami.rs tests it).
fn config() -> String {
    format!(
        r#"templates_dir = "templates"

[store]
bucket = "{BUCKET}"
prefix = "team/bake/"

[image.site]
base = {{ ssm = "/aws/service/debian/release/bookworm/latest/amd64" }}
template = "site"
os = "debian"
vars = {{ title = "Changes", message = "what changed" }}

[image.site.builder]
subnet = {{ tag = {{ Name = "Public subnet A" }} }}
instance_profile = "SSMInstanceProfile"

[image.site.health]
path = "/"
expect_body = "Changes"

[image.site.verify]
commands = ["systemctl is-active nginx"]

[image.site.test]
enabled = false
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_package_is_named_by_bake_ami_and_listed_by_bake_diff() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let clients = lab.clients().await;
    clients
        .s3
        .create_bucket()
        .bucket(BUCKET)
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    clients.region.as_str(),
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let nginx = std::fs::read_to_string(repo().join("templates/nginx.sh.j2")).unwrap();
    assert!(nginx.contains("{% else %}\npkg_install nginx\n"), "{nginx}");
    std::fs::write(templates.join("site.sh.j2"), &nginx).unwrap();
    let path = dir.path().join("bake.toml");
    std::fs::write(&path, config()).unwrap();
    let path = path.to_str().unwrap();

    let first = lab
        .bake_json(&["-c", path, "-o", "json", "ami", "site"])
        .await;
    let a = first["images"][0]["ami_id"].as_str().unwrap().to_owned();
    assert_eq!(first["images"][0]["changed"], serde_json::Value::Null);
    let record = first["images"][0]["record"].as_str().unwrap().to_owned();
    assert_eq!(
        record,
        format!("s3://{BUCKET}/team/bake/records/site/{a}.json")
    );
    // The record holds the digests and the manifest the builder listed through SSM.
    let object = clients
        .s3
        .get_object()
        .bucket(BUCKET)
        .key(format!("team/bake/records/site/{a}.json"))
        .send()
        .await
        .unwrap();
    let body = object.body.collect().await.unwrap().into_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(json["packages"]["nginx"].is_string(), "{json}");
    assert!(json["packages"]["dpkg"].is_string(), "{json}");
    assert!(
        json["packages"].as_object().unwrap().len() > 100,
        "a Debian system's packages: {json}"
    );
    assert!(json["packages"]["tree"].is_null(), "{json}");
    assert_eq!(json["inputs"].as_object().unwrap().len(), 6, "{json}");

    // One package more in the template: the user data changed, nothing else.
    std::fs::write(
        templates.join("site.sh.j2"),
        nginx.replace(
            "{% else %}\npkg_install nginx\n",
            "{% else %}\npkg_install nginx tree\n",
        ),
    )
    .unwrap();
    let second = lab.bake_ok(&["-c", path, "ami", "site"]).await;
    let b = stdout(&second);
    assert!(b.starts_with("ami-") && b != a, "{b}");
    let said = stderr(&second);
    assert!(
        said.contains(&format!("user data changed since {a}")),
        "bake ami names the input: {said}"
    );
    assert!(!said.contains("base AMI changed"), "{said}");

    let diff = lab.bake_ok(&["-c", path, "diff", &a, &b]).await;
    let text = stdout(&diff);
    assert!(text.contains("input user data changed"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("+ tree ")),
        "tree added: {text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("- ")), "{text}");
    let json = lab
        .bake_json(&["-c", path, "-o", "json", "diff", &a, &b])
        .await;
    assert_eq!(json["inputs"], serde_json::json!(["user-data"]));
    assert!(json["added"]["tree"].is_string(), "{json}");
    assert_eq!(json["removed"], serde_json::json!({}));
    assert_eq!(json["base_ami"], serde_json::Value::Null);

    // A new base AMI (a copy of the Debian base, by id): bake ami names it with both ids, and
    // so does diff.
    let base = lab
        .ec2
        .describe_images()
        .image_ids(&b)
        .send()
        .await
        .unwrap();
    let old_base = base.images()[0]
        .tags()
        .iter()
        .find(|t| t.key() == Some("bake:base-ami"))
        .and_then(|t| t.value())
        .unwrap()
        .to_owned();
    let copy = lab
        .ec2
        .copy_image()
        .source_image_id(&old_base)
        .source_region(&clients.region)
        .name("debian-base-copy")
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    lab.wait_for(
        "the base's copy",
        std::time::Duration::from_secs(120),
        || {
            let ec2 = lab.ec2.clone();
            let copy = copy.clone();
            async move {
                let out = ec2.describe_images().image_ids(&copy).send().await;
                out.ok().and_then(|o| o.images().first()?.state().cloned())
                    == Some(aws_sdk_ec2::types::ImageState::Available)
            }
        },
    )
    .await;
    let text = std::fs::read_to_string(dir.path().join("bake.toml"))
        .unwrap()
        .replace(
            "base = { ssm = \"/aws/service/debian/release/bookworm/latest/amd64\" }",
            &format!("base = {{ id = \"{copy}\" }}"),
        );
    std::fs::write(dir.path().join("bake.toml"), text).unwrap();
    let third = lab
        .bake_ok(&["-c", path, "-o", "json", "ami", "site"])
        .await;
    let said = stderr(&third);
    assert!(
        said.contains(&format!(
            "base changed, base AMI changed ({old_base} -> {copy}) since {b}"
        )),
        "{said}"
    );
    let third: serde_json::Value = serde_json::from_slice(&third.stdout).unwrap();
    let c = third["images"][0]["ami_id"].as_str().unwrap().to_owned();
    assert_eq!(
        third["images"][0]["changed"]["inputs"],
        serde_json::json!(["base"])
    );
    assert_eq!(
        third["images"][0]["changed"]["base_ami"]["from"],
        old_base.as_str()
    );
    let diff = lab.bake_ok(&["-c", path, "diff", &b, &c]).await;
    let text = stdout(&diff);
    assert!(
        text.contains(&format!("base AMI changed ({old_base} -> {copy})")),
        "{text}"
    );
    assert!(text.contains("packages: none changed"), "{text}");

    // An AMI without a record (its record removed): named, with why.
    clients
        .s3
        .delete_object()
        .bucket(BUCKET)
        .key(format!("team/bake/records/site/{a}.json"))
        .send()
        .await
        .unwrap();
    let missing = lab.run_bake(&["-c", path, "diff", &a, &b]).await;
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    let said = stderr(&missing);
    assert!(
        said.contains(&format!("AMI {a} (image site) has no record"))
            && said.contains("baked before records were kept"),
        "{said}"
    );
    lab.assert_nothing_left(&[&a, &b, &c, &copy], &[]).await;
}

#[test]
fn diff_without_a_store_says_records_need_one() {
    let config = r#"
[image.web]
base = { id = "ami-0123456789abcdef0" }
template = "nginx"
os = "debian"
[image.web.builder]
subnet = { id = "subnet-1" }
instance_profile = "p"
"#;
    let (_dir, path, out) = bake_offline(config, &["diff", "ami-1", "ami-2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&path.display().to_string()) && said.contains("no [store]"),
        "{said}"
    );
}
