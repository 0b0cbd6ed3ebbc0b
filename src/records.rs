//! Bake records: what each tested AMI was made from (a digest per input, the base, the package
//! manifest), kept as `PREFIX` `records/IMAGE/AMI.json` in the `[store]` bucket; and what changed
//! between two AMIs (inputs, base AMI, packages).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::aws::{CallError, Clients};
use crate::config::Store;
use crate::render::{INPUT_NAMES, Inputs};

/// A record larger than this is not a record bake wrote (a manifest of 5,000 packages is about
/// 250 KB of JSON): reading stops there instead of holding whatever the key holds.
const RECORD_CAP: usize = 16 * 1024 * 1024;
/// A package list longer than this, decompressed, is not one (5,000 packages are about 200 KB).
pub const MANIFEST_CAP: usize = 16 * 1024 * 1024;

/// What one bake made and from what: written after the AMI's test passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The `[image.NAME]`.
    pub image: String,
    pub ami_id: String,
    pub ami_name: String,
    /// The build region.
    pub region: String,
    /// The whole digest (tag `bake:digest`).
    pub digest: String,
    /// A short digest per input.
    pub inputs: Inputs,
    pub base_ami: String,
    pub base_name: String,
    pub template: String,
    pub os: String,
    /// The run that baked it (tag `bake:run-id` of its builder).
    pub run_id: String,
    /// When the record was written, RFC 3339.
    pub recorded_at: String,
    /// The installed packages: name -> version (several versions of one name, as kernels on
    /// rpm systems, joined by a space, sorted).
    pub packages: BTreeMap<String, String>,
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] CallError),
    #[error(
        "{config}: no [store]: bake keeps records (input digests, package manifests) only in a \
         store's bucket; add [store] bucket = \"...\" and bake again"
    )]
    NoStore { config: String },
    #[error("AMI {ami_id} not found in {region} (DescribeImages, owners self)")]
    NoAmi { ami_id: String, region: String },
    #[error("AMI {ami_id} in {region} was not baked by bake: it has no bake:image tag")]
    NotBaked { ami_id: String, region: String },
    #[error(
        "AMI {ami_id} (image {image}) has no record at {url}: baked before records were kept, \
         by a run without [store] (or another prefix), or its record could not be written"
    )]
    NoRecord {
        ami_id: String,
        image: String,
        url: String,
    },
    /// `bake status` could not read some of what it shows (each is in its result too).
    #[error("{}", .0.join("\n"))]
    Incomplete(Vec<String>),
    #[error("s3://{bucket}/{key} in {region} is not a bake record: {why}")]
    Unreadable {
        bucket: String,
        key: String,
        region: String,
        why: String,
    },
}

impl Error {
    /// 2 when there is no store to read (the config), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NoStore { .. } => 2,
            _ => 1,
        }
    }
}

/// The key of `ami_id`'s record.
pub fn key(store: &Store, image: &str, ami_id: &str) -> String {
    format!("{}records/{image}/{ami_id}.json", store.prefix.get_ref())
}

/// `s3://BUCKET/KEY` of `ami_id`'s record, for messages.
pub fn url(store: &Store, image: &str, ami_id: &str) -> String {
    format!(
        "s3://{}/{}",
        store.bucket.get_ref(),
        key(store, image, ami_id)
    )
}

/// Writes `record` (PutObject; a later bake of the same AMI id cannot happen, so it never
/// replaces another's).
pub async fn write(clients: &Clients, store: &Store, record: &Record) -> Result<(), Error> {
    let key = key(store, &record.image, &record.ami_id);
    let body = serde_json::to_vec_pretty(record).expect("a record serializes to JSON");
    let request = || {
        clients
            .s3
            .put_object()
            .bucket(store.bucket.get_ref())
            .key(&key)
            .content_type("application/json")
            .body(body.clone().into())
            .send()
    };
    clients
        .call(request)
        .or_fail(|| format!("write the record s3://{}/{key}", store.bucket.get_ref()))
        .await?;
    Ok(())
}

/// Reads `ami_id`'s record (GetObject); None when there is none (NoSuchKey: S3 answers it to a
/// caller allowed s3:ListBucket, AccessDenied otherwise).
pub async fn read(
    clients: &Clients,
    store: &Store,
    image: &str,
    ami_id: &str,
) -> Result<Option<Record>, Error> {
    let key = key(store, image, ami_id);
    let bucket = store.bucket.get_ref();
    let request = clients.s3.get_object().bucket(bucket).key(&key);
    let Some(out) = clients
        .call(|| request.clone().send())
        .or_none(&["NoSuchKey"], || {
            format!("read the record s3://{bucket}/{key}")
        })
        .await?
    else {
        return Ok(None);
    };
    let unreadable = |why: String| Error::Unreadable {
        bucket: bucket.clone(),
        key: key.clone(),
        region: clients.region.clone(),
        why,
    };
    if out
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > RECORD_CAP))
    {
        return Err(unreadable(format!("larger than {RECORD_CAP} bytes")));
    }
    let bytes = out
        .body
        .collect()
        .await
        .map_err(|e| unreadable(format!("reading it failed: {e}")))?
        .into_bytes();
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| unreadable(e.to_string()))
}

/// Reads the manifest bake prints on the builder: one `NAME<TAB>VERSION` per line. A name seen
/// twice keeps every version, sorted and joined by a space.
pub fn parse_manifest(text: &str) -> BTreeMap<String, String> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, version)) = line.split_once('\t') else {
            continue;
        };
        let (name, version) = (name.trim(), version.trim());
        if name.is_empty() {
            continue;
        }
        seen.entry(name.to_owned())
            .or_default()
            .push(version.to_owned());
    }
    seen.into_iter()
        .map(|(name, mut versions)| {
            versions.sort();
            versions.dedup();
            (name, versions.join(" "))
        })
        .collect()
}

/// A base AMI that differs between two bakes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseChange {
    pub from: String,
    pub to: String,
}

/// Which inputs of an image differ from an earlier AMI's ([`since`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Since {
    /// The AMI compared against (the image's newest).
    pub ami_id: String,
    /// Inputs whose digests differ, by [`INPUT_NAMES`] name.
    pub inputs: Vec<String>,
    /// The base AMI, when it differs.
    pub base_ami: Option<BaseChange>,
    /// The earlier AMI carries no per-input digests (baked before bake kept them), so only
    /// "something changed" is known.
    pub unknown: bool,
}

impl Since {
    /// Whether nothing that bake knows of differs.
    pub fn nothing(&self) -> bool {
        self.inputs.is_empty() && self.base_ami.is_none() && !self.unknown
    }
}

/// How an input is named to people (`user data`, `base AMI`).
pub fn input_label(name: &str) -> &str {
    match name {
        "user-data" => "user data",
        other => other,
    }
}

/// Compares the inputs now (`inputs`, on base `base_ami`) with those of `ami_id` (its
/// `bake:inputs` tag, if it has one, and its `bake:base-ami`).
pub fn since(
    ami_id: &str,
    then_inputs: Option<&Inputs>,
    then_base: Option<&str>,
    inputs: &Inputs,
    base_ami: &str,
) -> Since {
    Since {
        ami_id: ami_id.to_owned(),
        inputs: then_inputs
            .map(|then| inputs.changed_since(then))
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        base_ami: then_base
            .filter(|then| *then != base_ami)
            .map(|then| BaseChange {
                from: then.to_owned(),
                to: base_ami.to_owned(),
            }),
        unknown: then_inputs.is_none_or(|t| t.0.is_empty()),
    }
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .inputs
            .iter()
            .map(|i| format!("{} changed", input_label(i)))
            .collect();
        if let Some(b) = &self.base_ami {
            parts.push(format!("base AMI changed ({} -> {})", b.from, b.to));
        }
        if self.unknown {
            parts.push("inputs unknown (no bake:inputs tag: baked by an older bake)".to_owned());
        }
        if parts.is_empty() {
            return write!(f, "no input changed since {}", self.ami_id);
        }
        write!(f, "{} since {}", parts.join(", "), self.ami_id)
    }
}

/// A package whose version differs between two AMIs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upgrade {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// What changed from one AMI's record to another's (`bake diff`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub from: String,
    pub to: String,
    /// Inputs whose digests differ, by [`INPUT_NAMES`] name.
    pub inputs: Vec<String>,
    pub base_ami: Option<BaseChange>,
    /// Packages only in `to`: name -> version.
    pub added: BTreeMap<String, String>,
    /// Packages only in `from`: name -> version.
    pub removed: BTreeMap<String, String>,
    /// Packages in both at another version (upgraded, or downgraded: versions are compared for
    /// equality only).
    pub upgraded: Vec<Upgrade>,
}

/// What changed from `a` to `b`.
pub fn diff(a: &Record, b: &Record) -> Diff {
    let inputs = INPUT_NAMES
        .into_iter()
        .filter(|n| a.inputs.0.get(*n) != b.inputs.0.get(*n))
        .map(str::to_owned)
        .collect();
    let only = |x: &Record, y: &Record| -> BTreeMap<String, String> {
        x.packages
            .iter()
            .filter(|(n, _)| !y.packages.contains_key(*n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    };
    Diff {
        from: a.ami_id.clone(),
        to: b.ami_id.clone(),
        inputs,
        base_ami: (a.base_ami != b.base_ami).then(|| BaseChange {
            from: a.base_ami.clone(),
            to: b.base_ami.clone(),
        }),
        added: only(b, a),
        removed: only(a, b),
        upgraded: a
            .packages
            .iter()
            .filter_map(|(n, from)| {
                let to = b.packages.get(n)?;
                (to != from).then(|| Upgrade {
                    name: n.clone(),
                    from: from.clone(),
                    to: to.clone(),
                })
            })
            .collect(),
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} -> {}", self.from, self.to)?;
        if self.inputs.is_empty() && self.base_ami.is_none() {
            writeln!(f, "inputs: none changed")?;
        }
        for i in &self.inputs {
            writeln!(f, "input {} changed", input_label(i))?;
        }
        if let Some(b) = &self.base_ami {
            writeln!(f, "base AMI changed ({} -> {})", b.from, b.to)?;
        }
        if self.added.is_empty() && self.removed.is_empty() && self.upgraded.is_empty() {
            writeln!(f, "packages: none changed")?;
        }
        for (n, v) in &self.added {
            writeln!(f, "+ {n} {v}")?;
        }
        for (n, v) in &self.removed {
            writeln!(f, "- {n} {v}")?;
        }
        for u in &self.upgraded {
            writeln!(f, "~ {} {} -> {}", u.name, u.from, u.to)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pairs: &[(&str, &str)]) -> Inputs {
        Inputs(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn record(ami: &str, base: &str, user_data: &str, packages: &str) -> Record {
        Record {
            image: "web".into(),
            ami_id: ami.into(),
            ami_name: format!("web-{ami}"),
            region: "ap-northeast-2".into(),
            digest: "d".repeat(64),
            inputs: inputs(&[("user-data", user_data), ("verify", "v1")]),
            base_ami: base.into(),
            base_name: "ubuntu".into(),
            template: "nginx".into(),
            os: "debian".into(),
            run_id: "r1".into(),
            recorded_at: "2026-11-24T00:00:00Z".into(),
            packages: parse_manifest(packages),
        }
    }

    #[test]
    fn a_manifest_keeps_every_version_of_a_name_and_skips_other_lines() {
        let m = parse_manifest("nginx\t1.24\nkernel\t6.1.2\nkernel\t6.1.1\nnoise\n\tx\n");
        assert_eq!(m.get("nginx").map(String::as_str), Some("1.24"));
        assert_eq!(m.get("kernel").map(String::as_str), Some("6.1.1 6.1.2"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_diff_lists_inputs_base_and_packages_added_removed_upgraded() {
        let a = record(
            "ami-a",
            "ami-base1",
            "u1",
            "nginx\t1.24\ncurl\t8.0\nvim\t9.0\n",
        );
        let b = record(
            "ami-b",
            "ami-base2",
            "u2",
            "nginx\t1.26\ncurl\t8.0\njq\t1.7\n",
        );
        let d = diff(&a, &b);
        assert_eq!(d.inputs, ["user-data"]);
        assert_eq!(
            d.base_ami.as_ref().map(|b| b.to.as_str()),
            Some("ami-base2")
        );
        assert_eq!(d.added.keys().collect::<Vec<_>>(), ["jq"]);
        assert_eq!(d.removed.keys().collect::<Vec<_>>(), ["vim"]);
        assert_eq!(d.upgraded.len(), 1);
        assert_eq!(d.upgraded[0].name, "nginx");
        let text = d.to_string();
        assert!(text.contains("input user data changed"), "{text}");
        assert!(
            text.contains("+ jq 1.7") && text.contains("- vim 9.0"),
            "{text}"
        );
        assert!(text.contains("~ nginx 1.24 -> 1.26"), "{text}");
        let same = diff(&a, &a);
        assert!(same.inputs.is_empty() && same.added.is_empty() && same.upgraded.is_empty());
        assert!(same.to_string().contains("packages: none changed"));
    }

    #[test]
    fn since_names_the_changed_inputs_and_the_base_ami() {
        let then = inputs(&[("user-data", "a"), ("verify", "v"), ("health", "h")]);
        let now = inputs(&[("user-data", "b"), ("verify", "v"), ("health", "h")]);
        let s = since("ami-old", Some(&then), Some("ami-b1"), &now, "ami-b2");
        assert_eq!(
            s.to_string(),
            "user data changed, base AMI changed (ami-b1 -> ami-b2) since ami-old"
        );
        let same = since("ami-old", Some(&then), Some("ami-b1"), &then, "ami-b1");
        assert!(same.nothing());
        assert_eq!(same.to_string(), "no input changed since ami-old");
        let old = since("ami-old", None, Some("ami-b1"), &now, "ami-b1");
        assert!(old.unknown && !old.nothing());
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record("ami-a", "ami-base1", "u1", "nginx\t1.24\n");
        let json = serde_json::to_string(&r).unwrap();
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
