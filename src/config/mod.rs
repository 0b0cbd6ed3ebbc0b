//! The config file (`bake.toml`): its types, parsing with positions, and validation against the
//! ranges and shapes AWS accepts, reporting every problem found, each at its file:line:col.
//!
//! - `types`: the types as the file spells them, and their defaults;
//! - `parse`: reading the TOML with positions into those types;
//! - `validate`: the checks, every problem at its place;
//! - `secrets`: var names that look like secrets.
//!
//! - `place`: the file and positions in it ([`Source`], [`Location`]) and the [`Error`] at them.
//!
//! This module holds the public API: [`Config::load`] and the lookups, and re-exports the rest.

mod parse;
mod place;
mod secrets;
mod types;
mod validate;

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use place::names;
pub use place::{Error, Location, Source};
pub use secrets::{SECRET_WORDS, secret_word};
pub use types::DEFAULT_LEASE_TTL;
pub use types::{
    Access, Alarms, BaseImage, Builder, Capacity, Config, CpuAlarm, Distribute, Egress, Endpoints,
    Health, HumanDuration, Image, KmsKey, Os, Refresh, Regions, ResourceRef, Rollout, Store, Test,
    TrafficProbe, Verify, Volume,
};

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, text)
    }

    /// Parses and validates config text that was read from `path`; the error holds every
    /// problem found (a [`Error::List`] when there are several).
    pub fn parse(path: &Path, text: String) -> Result<Config, Error> {
        let source = Source {
            path: path.to_owned(),
            text,
        };
        let (root, syntax) = DeTable::parse_recoverable(&source.text);
        if !syntax.is_empty() {
            let errors = syntax
                .iter()
                .map(|e| Error::At {
                    at: source.locate(e.span().map_or(0, |s| s.start)),
                    message: e.message().trim_end().to_owned(),
                })
                .collect();
            return Err(Error::from_list(errors));
        }
        let doc = parse::Doc::new(&source, root.get_ref());
        let (mut config, complete) = doc.config();
        doc.validate(&config);
        let errors = doc.into_errors();
        if complete && errors.is_empty() {
            config.source = source;
            Ok(config)
        } else {
            Err(Error::from_list(errors))
        }
    }

    /// An error at a span of this file.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> Error {
        Error::At {
            at: self.source.locate(span.start),
            message: message.into(),
        }
    }

    /// The image called `name`, or an error listing the ones there are.
    pub fn image(&self, name: &str) -> Result<&Image, Error> {
        self.image.get(name).ok_or_else(|| Error::UnknownImage {
            path: self.source.path.clone(),
            name: name.to_owned(),
            known: names(self.image.keys()),
        })
    }

    /// The rollout called `name`, or an error listing the ones there are.
    pub fn rollout(&self, name: &str) -> Result<&Rollout, Error> {
        self.rollout.get(name).ok_or_else(|| Error::UnknownRollout {
            path: self.source.path.clone(),
            name: name.to_owned(),
            known: names(self.rollout.keys()),
        })
    }

    /// The regions `image` is in when it is baked in `build_region`: that region first, then
    /// the regions it is copied to.
    pub fn image_regions(&self, image: &str, build_region: &str) -> Vec<String> {
        let mut regions = vec![build_region.to_owned()];
        if let Some(image) = self.image.get(image) {
            for region in &image.distribute.regions {
                if !regions.contains(region.get_ref()) {
                    regions.push(region.get_ref().clone());
                }
            }
        }
        regions
    }

    /// Every region the config works in when run in `run_region` (`--all-regions`): that region,
    /// then the images' distribute regions and the rollouts' regions, each once.
    pub fn regions(&self, run_region: &str) -> Vec<String> {
        let mut regions = vec![run_region.to_owned()];
        let named = self
            .image
            .keys()
            .flat_map(|image| self.image_regions(image, run_region))
            .chain(self.rollout.values().flat_map(|r| r.regions(run_region)));
        for region in named {
            if !regions.contains(&region) {
                regions.push(region);
            }
        }
        regions
    }

    /// The regions `[rollout.NAME]` rolls out to, in its order, when the run is in
    /// `build_region`; a region the image is not in (neither built nor copied there) is an
    /// error at the rollout's `region`.
    pub fn rollout_regions(&self, name: &str, build_region: &str) -> Result<Vec<String>, Error> {
        let rollout = self.rollout(name)?;
        match (
            &rollout.region,
            self.region_missing(name, rollout, build_region),
        ) {
            (Some(at), Some(message)) => Err(self.error_at(at.span(), message)),
            _ => Ok(rollout.regions(build_region)),
        }
    }

    /// What is wrong when `[rollout.NAME]` names a region its image is not in, the image baked
    /// in `build_region`.
    pub(crate) fn region_missing(
        &self,
        name: &str,
        rollout: &Rollout,
        build_region: &str,
    ) -> Option<String> {
        let image = rollout.image.get_ref();
        let have = self.image_regions(image, build_region);
        let missing = rollout
            .regions(build_region)
            .into_iter()
            .find(|r| !have.contains(r))?;
        Some(format!(
            "rollout.{name}.region: image {image} is not in {missing}: it is baked in \
             {build_region} and copied to {} (add {missing} to [image.{image}.distribute] \
             regions)",
            match &have[1..] {
                [] => "no other region".to_owned(),
                copies => copies.join(", "),
            }
        ))
    }

    /// The directory of the user's own templates, resolved against the config's directory.
    pub fn templates_dir(&self) -> Option<PathBuf> {
        self.templates_dir
            .as_ref()
            .map(|d| self.source.dir().join(d.get_ref()))
    }
}

/// What the tests of this module's parts share: a minimal config and ways to read its errors.
#[cfg(test)]
mod testing {
    pub use std::path::Path;

    pub use super::*;

    pub const MINIMAL: &str = r#"
[image.web]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"
os = "debian"

[image.web.builder]
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"
"#;

    pub fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("bake.toml"), text.to_owned())
    }

    pub fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// Asserts that config `text` fails with an error that says `want`.
    #[track_caller]
    pub fn assert_error(text: &str, want: &str) {
        let msg = error(text);
        assert!(msg.contains(want), "{msg}");
    }

    /// MINIMAL with `lines` added under `[image.web]`'s header line set.
    pub fn with_image(lines: &str) -> String {
        MINIMAL.replace("os = \"debian\"", &format!("os = \"debian\"\n{lines}"))
    }

    pub const ROLLOUT: &str = r#"
[rollout.web]
image = "web"
vpc = { id = "vpc-0123" }
alb_subnets = [{ id = "subnet-a" }, { id = "subnet-c" }]
instance_subnets = [{ tag = { Name = "Private subnet A" } }]
launch_template = "Web"
asg = "Web-ASG"
alb = "Web-ALB"
target_group = "Web-TG"
capacity = { min = 1, desired = 1, max = 2 }
"#;

    pub fn problems(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_lines_and_columns_from_one() {
        let source = Source {
            path: "x.toml".into(),
            text: "a\nbc\nd".into(),
        };
        assert_eq!(source.locate(0).to_string(), "x.toml:1:1");
        assert_eq!(source.locate(3).to_string(), "x.toml:2:2");
        assert_eq!(source.locate(5).to_string(), "x.toml:3:1");
    }

    #[test]
    fn the_probe_holds_no_errors_where_the_refresh_launches_first_and_counts_elsewhere() {
        let default = TrafficProbe::default();
        let refresh = Refresh::default();
        // A group of 2 with room for 4 launches first (max healthy 200): no error is tolerated.
        let (_, roomy) = refresh.healthy_range(2, 4);
        assert_eq!(roomy, 200);
        assert_eq!(default.max_errors_for(roomy), Some(0));
        // A group of 1 with a maximum of 1 replaces first: the probe only counts.
        let (_, tight) = refresh.healthy_range(1, 1);
        assert_eq!(tight, 100);
        assert_eq!(default.max_errors_for(tight), None);
        // A given budget holds either way.
        let set = TrafficProbe {
            max_errors: Some(3),
            ..TrafficProbe::default()
        };
        assert_eq!(set.max_errors_for(tight), Some(3));
        assert_eq!(set.max_errors_for(roomy), Some(3));
    }

    #[test]
    fn a_rollout_takes_one_region_or_a_list_and_defaults_to_the_runs() {
        use testing::*;
        let one = parse(&format!(
            "{MINIMAL}{}",
            ROLLOUT.replace(
                "image = \"web\"",
                "image = \"web\"\nregion = \"ap-northeast-2\""
            )
        ))
        .unwrap();
        assert_eq!(one.rollout["web"].regions("us-east-1"), ["ap-northeast-2"]);
        let none = parse(&format!("{MINIMAL}{ROLLOUT}")).unwrap();
        assert_eq!(none.rollout["web"].regions("us-east-1"), ["us-east-1"]);
        assert_eq!(
            none.rollout_regions("web", "eu-west-1").unwrap(),
            ["eu-west-1"]
        );
        let list = format!(
            "region = \"ap-northeast-2\"\n{MINIMAL}{}",
            ROLLOUT.replace(
                "image = \"web\"",
                "image = \"web\"\nregion = [\"ap-northeast-2\", \"us-east-1\"]"
            )
        );
        // The image is baked in ap-northeast-2 and copied nowhere: us-east-1 has no copy.
        let msg = error(&list);
        let copied = list.replace(
            "[rollout.web]",
            "[image.web.distribute]\nregions = [\"us-east-1\"]\n\n[rollout.web]",
        );
        assert_eq!(
            parse(&copied)
                .unwrap()
                .rollout_regions("web", "ap-northeast-2")
                .unwrap(),
            ["ap-northeast-2", "us-east-1"]
        );
        assert!(
            msg.starts_with("bake.toml:14:10: rollout.web.region: image web is not in us-east-1"),
            "{msg}"
        );
        assert!(msg.contains("[image.web.distribute] regions"), "{msg}");
    }

    #[test]
    fn a_rollout_region_has_a_region_shape_and_is_listed_once() {
        use testing::*;
        for (region, says) in [
            ("\"mars\"", "a region code looks like"),
            ("[]", "an empty list"),
            (
                "[\"us-east-1\", \"us-east-1\"]",
                "us-east-1 is listed twice",
            ),
            ("3", "a region (\"us-east-1\") or a list of regions"),
        ] {
            let text = format!(
                "{MINIMAL}{}",
                ROLLOUT.replace(
                    "image = \"web\"",
                    &format!("image = \"web\"\nregion = {region}")
                )
            );
            let msg = error(&text);
            assert!(msg.starts_with("bake.toml:13:10: "), "{region}: {msg}");
            assert!(msg.contains("rollout.web.region"), "{region}: {msg}");
            assert!(msg.contains(says), "{region}: {msg}");
        }
    }
}
