//! Distribution (`[image.NAME.distribute]`) as preflight resolves it: the regions to copy to,
//! each region's KMS key checked there, who the images are shared with; and each region's
//! outcome in a bake's result (the copy stage itself is [`super::copy`]).

use std::time::Duration;

use aws_sdk_kms::types::{KeyManagerType, KeySpec, KeyState};
use serde::Serialize;

use crate::aws::{self, CallError, Clients};
use crate::config::{Config, Image as ImageConfig};
use crate::resolve::{self, Error as PreflightError};

/// What an image's distribution was resolved to at preflight.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The regions other than the build region, in config order, each with its key.
    pub copies: Vec<Target>,
    /// The build region's key (its ARN), which encrypts the builder's volume and so the image;
    /// None: the account's default EBS encryption key.
    pub build_key: Option<String>,
    /// Who gets launch permission on the image and every copy.
    pub share: Share,
}

/// One region a copy goes to.
#[derive(Debug, Clone)]
pub struct Target {
    pub region: String,
    /// The key (its ARN, as DescribeKey answered) the copy is encrypted with; None: that
    /// region's default EBS key.
    pub kms_key: Option<String>,
}

/// The launch permissions given on every image (with create-volume permission on the snapshots
/// for the accounts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Share {
    pub accounts: Vec<String>,
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
}

impl Share {
    /// Whether no one is given launch permission.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.organizations.is_empty()
            && self.organizational_units.is_empty()
    }
}

/// One region's copy in a bake's result.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Copy {
    pub region: String,
    /// The copy's id (also a failed copy's, deregistered since); None when no copy was made.
    pub ami_id: Option<String>,
    #[serde(flatten)]
    pub outcome: CopyOutcome,
}

/// What became of one region's copy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", content = "error", rename_all = "lowercase")]
pub enum CopyOutcome {
    /// Copied by this run and available.
    Copied,
    /// An available copy of the same digest and base was there already.
    Skipped,
    /// The copy failed (and was cleaned up): why.
    Failed(String),
}

impl Copy {
    /// The copy's id when it is available (copied or already there).
    pub fn available(&self) -> Option<&str> {
        match self.outcome {
            CopyOutcome::Copied | CopyOutcome::Skipped => self.ami_id.as_deref(),
            CopyOutcome::Failed(_) => None,
        }
    }
}

impl std::fmt::Display for Copy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.ami_id.as_deref().unwrap_or("no AMI");
        match &self.outcome {
            CopyOutcome::Copied => write!(f, "{}: {id} copied", self.region),
            CopyOutcome::Skipped => write!(f, "{}: {id} already there", self.region),
            CopyOutcome::Failed(why) => write!(f, "{}: failed ({why})", self.region),
        }
    }
}

/// Why the image could not be shared (the copies' failures are their regions' outcomes).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] CallError),
    #[error("copies failed in {}: {}", .0.iter().map(|c| c.region.as_str()).collect::<Vec<_>>().join(", "), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    CopiesFailed(Vec<Copy>),
}

/// Resolves `[image.NAME.distribute]` for a bake in `clients`' region: each region's key is
/// described in that region (it must exist, be enabled, be a symmetric encryption key, and when
/// the image is shared be customer managed). Every problem is at the key's place in the config.
pub async fn plan(
    clients: &Clients,
    config: &Config,
    name: &str,
    image: &ImageConfig,
) -> Result<Plan, PreflightError> {
    let d = &image.distribute;
    let build = clients.region.as_str();
    let mut regions: Vec<&str> = Vec::new();
    for region in &d.regions {
        let region = region.get_ref().as_str();
        if region != build && !regions.contains(&region) {
            regions.push(region);
        }
    }
    let share = Share {
        accounts: d.accounts.iter().map(|a| a.get_ref().clone()).collect(),
        organizations: d
            .organizations
            .iter()
            .map(|a| a.get_ref().clone())
            .collect(),
        organizational_units: d
            .organizational_units
            .iter()
            .map(|a| a.get_ref().clone())
            .collect(),
    };
    let field = format!("image.{name}.distribute.kms_key");
    // The build region's image is shared too: its key must be one the other accounts can use.
    if d.shares() && d.kms_key.is_some() && d.key_for(build).is_none() {
        let span = d.kms_key.as_ref().map(|k| k.span()).unwrap_or_default();
        return Err(resolve::at(config, span, field)(PreflightError::Lookup {
            kind: "KMS key",
            reference: format!("for the build region {build}"),
            region: build.to_owned(),
            detail: "the kms_key table has no key for the build region, whose image is shared \
                     too; add it (the builder's volume, so the image, is encrypted with it)"
                .to_owned(),
        }));
    }
    let keys =
        futures_util::future::join_all(std::iter::once(build).chain(regions.iter().copied()).map(
            |region| {
                let field = &field;
                async move {
                    let Some(key) = d.key_for(region) else {
                        return Ok(None);
                    };
                    let at = resolve::at(config, key.span(), field.clone());
                    let regional = clients.in_region(region);
                    describe_key(&regional, key.get_ref(), d.shares())
                        .await
                        .map(Some)
                        .map_err(at)
                }
            },
        ))
        .await;
    let mut keys = keys.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter();
    let build_key = keys.next().flatten();
    let copies = regions
        .iter()
        .zip(keys)
        .map(|(region, kms_key)| Target {
            region: (*region).to_owned(),
            kms_key,
        })
        .collect();
    Ok(Plan {
        copies,
        build_key,
        share,
    })
}

/// DescribeKey of `key` in `clients`' region: its ARN, or why it cannot encrypt the images.
async fn describe_key(
    clients: &Clients,
    key: &str,
    shared: bool,
) -> Result<String, PreflightError> {
    let fail = |detail: String| PreflightError::Lookup {
        kind: "KMS key",
        reference: key.to_owned(),
        region: clients.region.clone(),
        detail,
    };
    let request = clients.kms.describe_key().key_id(key);
    let found = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_none(&["NotFoundException"], || format!("describe KMS key {key}"))
        .await?;
    let Some(meta) = found.and_then(|out| out.key_metadata) else {
        return Err(fail(
            "does not exist in this region (an alias is a name per region: create it in each \
             region the image goes to, or give that region's key in a table)"
                .to_owned(),
        ));
    };
    if meta.key_state() != Some(&KeyState::Enabled) {
        let state = meta.key_state().map_or("unknown", |s| s.as_str());
        return Err(fail(format!(
            "is {state}, not Enabled: EBS cannot encrypt with it"
        )));
    }
    if meta
        .key_spec()
        .is_some_and(|s| *s != KeySpec::SymmetricDefault)
    {
        let spec = meta.key_spec().map_or("", |s| s.as_str());
        return Err(fail(format!(
            "is a {spec} key; EBS encrypts only with symmetric keys (SYMMETRIC_DEFAULT)"
        )));
    }
    if shared && meta.key_manager() == Some(&KeyManagerType::Aws) {
        return Err(fail(
            "is an AWS managed key: its policy is AWS's and allows only this account, so the \
             accounts the image is shared with could not launch it; use a customer managed key \
             whose policy allows them"
                .to_owned(),
        ));
    }
    Ok(meta.arn().unwrap_or(key).to_owned())
}

/// What the copy stage adds to a bake's worst case (for the credentials' expiry warning): a
/// copy's wait, bounded as the image wait by an hour, and 10 minutes for its CopyImage,
/// deprecation, sharing and the cleanup of a failed one.
pub const COPY_FIXED: Duration = Duration::from_secs(70 * 60);
