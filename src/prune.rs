//! `bake prune`: deregister an image's old AMIs and delete their snapshots, keeping the newest ones
//! and every AMI still in use by an instance, a launch template, an Auto Scaling group (mixed
//! instances policies too) or published in an SSM parameter (this region's, or the image's
//! published parameter in any other region); across regions ([`prune_across`]), an AMI and its
//! copies as one family.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::Image;
use aws_sdk_ssm::operation::get_parameters_by_path::GetParametersByPathOutput;
use serde::Serialize;

use crate::aws::{self, CallError, Clients};
use crate::janitor::{self, Resource};
use crate::publish::parameter_name;
use crate::resolve::{self, filter};
use crate::tags;

/// How `bake prune` behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many of the newest AMIs of each image to keep whatever else holds.
    pub keep: usize,
    /// List what would go, change nothing.
    pub dry_run: bool,
    /// Where `bake pipeline` publishes: `PREFIX/IMAGE/ami-id`, read in every region.
    pub publish_prefix: String,
}

/// What pruning one image did.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    pub image: String,
    /// The region, when one prune worked in several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Why nothing could be pruned in this region (its AMIs or uses could not be read, or a
    /// deletion failed), when one prune worked in several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub kept: Vec<Kept>,
    pub removed: Vec<Removed>,
    /// Regions whose published parameter bake may not read (AccessDenied, e.g. a policy that
    /// denies the region), with AWS's answer. An AMI published only there is not protected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<String>,
}

impl Pruned {
    /// What removing the AMIs marked for removal deletes: each AMI and its snapshots.
    fn resources(&self) -> Vec<Resource> {
        self.removed
            .iter()
            .flat_map(|r| {
                std::iter::once(Resource::Image(r.ami_id.clone()))
                    .chain(r.snapshots.iter().cloned().map(Resource::Snapshot))
            })
            .collect()
    }

    /// Keeps `ami` for `why`, or (no reason to keep it) marks it for removal with its snapshots.
    fn judge(&mut self, ami: &Image, why: Option<String>) {
        let ami_id = ami.image_id().unwrap_or_default().to_owned();
        let name = ami.name().unwrap_or_default().to_owned();
        match why {
            Some(why) => self.kept.push(Kept { ami_id, name, why }),
            None => self.removed.push(Removed {
                ami_id,
                name,
                snapshots: ami
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                    .map(str::to_owned)
                    .collect(),
            }),
        }
    }
}

/// An AMI that stays, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub ami_id: String,
    pub name: String,
    pub why: String,
}

/// An AMI that was (or, with `--dry-run`, would be) deregistered, with its snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub ami_id: String,
    pub name: String,
    pub snapshots: Vec<String>,
}

/// Why pruning stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] CallError),
    #[error(transparent)]
    Delete(#[from] janitor::Error),
}

/// What holds AMIs in the account: this region's uses and the account's other regions. Read at
/// most once, when the first image has more AMIs than it keeps, and shared by every image one
/// command prunes (`bake prune --all` reads the account once, not once per image). A caller that
/// changes what is in use between two prunes (the pipeline's rollouts) starts a new one.
#[derive(Debug, Default)]
pub struct Census {
    used: Option<BTreeMap<String, String>>,
    other_regions: Option<Vec<String>>,
}

impl Census {
    async fn used(&mut self, clients: &Clients) -> Result<&BTreeMap<String, String>, CallError> {
        if self.used.is_none() {
            self.used = Some(in_use(clients).await?);
        }
        Ok(self.used.get_or_insert_default())
    }

    async fn other_regions(&mut self, clients: &Clients) -> Result<&[String], CallError> {
        if self.other_regions.is_none() {
            self.other_regions = Some(other_regions(clients).await?);
        }
        Ok(self.other_regions.get_or_insert_default())
    }
}

/// Prunes the AMIs baked for `image` (tagged `bake:image`) in this account and region, judging
/// what is in use by `census`.
pub async fn prune(
    clients: &Clients,
    image: &str,
    options: &Options,
    census: &mut Census,
) -> Result<Pruned, Error> {
    let mut amis = baked(clients, image).await?;
    // Newest first: creation dates are ISO 8601, so they sort as text.
    amis.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
    let (in_use, unread) = if amis.len() > options.keep {
        let mut used = census.used(clients).await?.clone();
        let regions = census.other_regions(clients).await?;
        let parameter = parameter_name(&options.publish_prefix, image);
        let (elsewhere, unread) = published_elsewhere(clients, regions, &parameter).await?;
        for (ami, why) in elsewhere {
            used.entry(ami).or_insert(why);
        }
        (used, unread)
    } else {
        (BTreeMap::new(), Vec::new())
    };
    let mut pruned = Pruned {
        image: image.to_owned(),
        region: None,
        error: None,
        kept: Vec::new(),
        removed: Vec::new(),
        unread,
    };
    for (n, ami) in amis.iter().enumerate() {
        let why = if n < options.keep {
            Some(format!("one of the newest {}", options.keep))
        } else {
            in_use.get(ami.image_id().unwrap_or_default()).cloned()
        };
        pruned.judge(ami, why);
    }
    if !options.dry_run {
        let resources = pruned.resources();
        janitor::delete(clients, &resources).await?;
    }
    Ok(pruned)
}

/// This account's AMIs of `image`, in any state but those on their way out.
async fn baked(clients: &Clients, image: &str) -> Result<Vec<Image>, CallError> {
    let request = clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(tags::filter(tags::IMAGE, image))
        .filters(filter("state", "available"));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("list the AMIs of {image}"))
        .await?;
    Ok(out.images.unwrap_or_default())
}

/// AMI id → what uses it: live instances, the default and latest versions of every launch
/// template, and the version every Auto Scaling group launches.
async fn in_use(clients: &Clients) -> Result<BTreeMap<String, String>, CallError> {
    let mut used = published(clients).await?;
    for instance in resolve::live_instances(clients, Vec::new()).await? {
        if let (Some(ami), Some(id)) = (instance.image_id(), instance.instance_id()) {
            used.entry(ami.to_owned())
                .or_insert_with(|| format!("used by instance {id}"));
        }
    }
    // (template id, version) → who refers to it.
    let mut versions: Vec<(String, String, String)> = Vec::new();
    for template in resolve::launch_templates(clients, Vec::new()).await? {
        let (Some(id), Some(name)) = (
            template.launch_template_id(),
            template.launch_template_name(),
        ) else {
            continue;
        };
        for (label, version) in [
            ("default", template.default_version_number()),
            ("latest", template.latest_version_number()),
        ] {
            if let Some(version) = version {
                versions.push((
                    id.to_owned(),
                    version.to_string(),
                    format!("the {label} version ({version}) of launch template {name}"),
                ));
            }
        }
    }
    for group in resolve::auto_scaling_groups(clients, Vec::new()).await? {
        let name = group.auto_scaling_group_name().unwrap_or_default();
        // A group launches from its launch template, or from the one of its mixed instances
        // policy and the overrides' own templates.
        let mixed = group
            .mixed_instances_policy()
            .and_then(|p| p.launch_template());
        let specs = group
            .launch_template()
            .into_iter()
            .chain(mixed.and_then(|t| t.launch_template_specification()))
            .chain(
                mixed
                    .map(|t| t.overrides())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|o| o.launch_template_specification()),
            );
        for spec in specs {
            let version = spec.version().unwrap_or("$Default");
            let template = spec
                .launch_template_id()
                .map(|id| (true, id))
                .or(spec.launch_template_name().map(|n| (false, n)));
            if let Some((by_id, template)) = template {
                versions.push((
                    if by_id {
                        template.to_owned()
                    } else {
                        format!("name:{template}")
                    },
                    version.to_owned(),
                    format!("launched by Auto Scaling group {name}"),
                ));
            }
        }
    }
    for (template, version, who) in versions {
        let request = clients.ec2.describe_launch_template_versions();
        let request = match template.strip_prefix("name:") {
            Some(name) => request.launch_template_name(name),
            None => request.launch_template_id(&template),
        };
        let request = request.versions(&version);
        let out = clients
            .call(|| request.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_fail(|| format!("read version {version} of launch template {template}"))
            .await?;
        for v in out.launch_template_versions() {
            if let Some(ami) = v.launch_template_data().and_then(|d| d.image_id()) {
                used.entry(ami.to_owned()).or_insert_with(|| who.clone());
            }
        }
    }
    Ok(used)
}

/// AMI id → the SSM parameter that publishes it: every parameter of this account and region
/// whose value is an AMI id (`bake pipeline`'s `PREFIX/IMAGE/ami-id`, and any other a launch
/// template may resolve with `resolve:ssm:`). Its history is not read: only current values hold.
async fn published(clients: &Clients) -> Result<BTreeMap<String, String>, CallError> {
    let mut used = BTreeMap::new();
    let listing = clients
        .ssm
        .get_parameters_by_path()
        .path("/")
        .recursive(true)
        .max_results(PARAMETERS_PER_PAGE);
    let pages = aws::pages::all(
        PARAMETER_PAGES,
        "list SSM parameters",
        |token| {
            let request = listing.clone().set_next_token(token);
            clients.call(move || request.clone().send())
        },
        GetParametersByPathOutput::next_token,
    )
    .await?;
    for page in pages {
        for parameter in page.parameters() {
            if let (Some(name), Some(value)) = (parameter.name(), parameter.value())
                && value.starts_with("ami-")
            {
                used.entry(value.to_owned())
                    .or_insert_with(|| format!("published in SSM parameter {name}"));
            }
        }
    }
    Ok(used)
}

/// Every region enabled in the account other than this one.
async fn other_regions(clients: &Clients) -> Result<Vec<String>, CallError> {
    let regions = clients
        .call(|| clients.ec2.describe_regions().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| "list the account's regions".into())
        .await?;
    Ok(regions
        .regions()
        .iter()
        .filter_map(|r| r.region_name())
        .filter(|r| *r != clients.region)
        .map(str::to_owned)
        .collect())
}

/// AMI id → the region whose `parameter` names it, for each of `regions` (this region's
/// parameters are all read by [`published`]); and the regions that answered AccessDenied. Any
/// other failure stops the prune: an unread value cannot be protected.
async fn published_elsewhere(
    clients: &Clients,
    regions: &[String],
    parameter: &str,
) -> Result<(BTreeMap<String, String>, Vec<String>), CallError> {
    let reads = regions.iter().map(|region| async move {
        let ssm = clients.ssm_in(region);
        let answer = aws::Call::new(region, || ssm.get_parameter().name(parameter).send())
            .settle(&aws::THROTTLE_BURST)
            .answer()
            .await;
        (region, answer)
    });
    let mut used = BTreeMap::new();
    let mut unread = Vec::new();
    for (region, answer) in futures_util::future::join_all(reads).await {
        match answer {
            Ok(out) => {
                if let Some(value) = out.parameter().and_then(|p| p.value())
                    && value.starts_with("ami-")
                {
                    used.entry(value.to_owned()).or_insert_with(|| {
                        format!("published in SSM parameter {parameter} in {region}")
                    });
                }
            }
            Err(e) if e.is(&["ParameterNotFound"]) => {}
            Err(e) if e.is(&["AccessDeniedException", "AccessDenied"]) => {
                unread.push(format!("{region}: {}", e.describe()));
            }
            Err(e) => return Err(e.or_fail(|| format!("read {parameter}"))),
        }
    }
    Ok((used, unread))
}

/// GetParametersByPath answers at most 10 a page; a region holds at most 100,000 parameters
/// (10,000 standard, the rest advanced), 10,000 pages.
const PARAMETERS_PER_PAGE: i32 = 10;
const PARAMETER_PAGES: usize = 10_000;
/// At most this many regions are read at once; see [`crate::commands::gc::REGION_POOL`].
const REGION_POOL: usize = 4;

/// One region's AMIs of the image and what holds AMIs there.
struct Seen {
    clients: Clients,
    amis: Vec<Image>,
    used: BTreeMap<String, String>,
}

/// Prunes `image` in each of `regions` as one: an AMI and its copies (linked by `bake:source-ami`)
/// are a family, kept or removed together. The newest `keep` families stay; a family stays
/// whole while any region still uses any of its images (each region's rules: its instances,
/// launch templates, groups and published parameters), and the image's parameter in the
/// account's other regions still counts. A region that cannot be read is reported for that
/// region, and then nothing is removed anywhere: an image of a family there may be in use.
/// One [`Pruned`] per region, in the order of `regions`; with `only`, every region is read but
/// that one alone is pruned (and reported).
pub async fn prune_across(
    run: &Clients,
    regions: &[String],
    image: &str,
    options: &Options,
    only: Option<&str>,
) -> Vec<Pruned> {
    use futures_util::StreamExt;
    let mut seen: Vec<(String, Result<Seen, String>)> = futures_util::stream::iter(regions)
        .map(|region| async move {
            let clients = run.in_region(region);
            let read = async {
                let amis = baked(&clients, image).await?;
                let used = in_use(&clients).await?;
                Ok::<_, CallError>((amis, used))
            };
            let seen = match read.await {
                Ok((amis, used)) => Ok(Seen {
                    clients,
                    amis,
                    used,
                }),
                Err(e) => Err(e.to_string()),
            };
            (region.clone(), seen)
        })
        .buffer_unordered(REGION_POOL)
        .collect()
        .await;
    seen.sort_by_key(|(r, _)| regions.iter().position(|n| n == r));
    // The image's parameter in the account's regions that are not pruned here.
    let parameter = parameter_name(&options.publish_prefix, image);
    let mut elsewhere = BTreeMap::new();
    let mut unread = Vec::new();
    let mut blocked: Option<String> = None;
    match other_regions(run).await {
        Ok(others) => {
            let others: Vec<String> = others
                .into_iter()
                .filter(|r| !regions.contains(r))
                .collect();
            match published_elsewhere(run, &others, &parameter).await {
                Ok((used, denied)) => {
                    elsewhere = used;
                    unread = denied;
                }
                Err(e) => blocked = Some(e.to_string()),
            }
        }
        Err(e) => blocked = Some(e.to_string()),
    }
    if let Some((region, _)) = seen.iter().find(|(_, s)| s.is_err()) {
        blocked.get_or_insert_with(|| format!("{region} could not be read"));
    }
    // Family (the source AMI's id) -> its oldest creation date (the source's), and why it stays.
    let family = |ami: &Image| {
        tags::value(ami.tags(), tags::SOURCE_AMI)
            .unwrap_or_else(|| ami.image_id().unwrap_or_default())
            .to_owned()
    };
    let mut families: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for (region, s) in &seen {
        let Ok(s) = s else { continue };
        for ami in &s.amis {
            let id = ami.image_id().unwrap_or_default();
            let created = ami.creation_date().unwrap_or_default().to_owned();
            let entry = families
                .entry(family(ami))
                .or_insert_with(|| (created.clone(), None));
            if created < entry.0 {
                entry.0 = created;
            }
            let why = s
                .used
                .get(id)
                .map(|why| format!("{why} in {region}"))
                .or_else(|| elsewhere.get(id).cloned());
            if entry.1.is_none()
                && let Some(why) = why
            {
                entry.1 = Some(format!("{id} of its family: {why}"));
            }
        }
    }
    // The newest `keep` families, by their source's creation date (ISO 8601 sorts as text).
    let mut newest: Vec<(&String, &String)> = families.iter().map(|(f, (d, _))| (f, d)).collect();
    newest.sort_by(|a, b| b.1.cmp(a.1));
    let kept_new: Vec<&String> = newest.iter().take(options.keep).map(|(f, _)| *f).collect();
    let mut out = Vec::new();
    for (region, s) in seen {
        if only.is_some_and(|o| o != region) {
            continue;
        }
        let mut pruned = Pruned {
            image: image.to_owned(),
            region: Some(region.clone()),
            error: None,
            kept: Vec::new(),
            removed: Vec::new(),
            unread: unread.clone(),
        };
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                pruned.error = Some(e);
                out.push(pruned);
                continue;
            }
        };
        let mut amis = s.amis;
        amis.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
        for ami in &amis {
            let f = family(ami);
            let why = if kept_new.contains(&&f) {
                Some(format!(
                    "its family ({f}) is one of the newest {}",
                    options.keep
                ))
            } else if let Some((_, Some(why))) = families.get(&f) {
                Some(why.clone())
            } else {
                blocked
                    .as_ref()
                    .map(|b| format!("not judged: {b}, where an image of its family may be in use"))
            };
            pruned.judge(ami, why);
        }
        if !options.dry_run && !pruned.removed.is_empty() {
            let resources = pruned.resources();
            if let Err(e) = janitor::delete(&s.clients, &resources).await {
                pruned.error = Some(e.to_string());
            }
        }
        out.push(pruned);
    }
    out
}
