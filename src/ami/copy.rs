//! The copy stage: the tested AMI copied to every other region of its distribution at once (not
//! where a copy of the same digest and base is there already), the image and its copies shared
//! with accounts, organizations and OUs; a failed copy is deregistered with its snapshots and its
//! region reported failed, the others stay.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_sdk_ec2::types::{
    Image, LaunchPermission, LaunchPermissionModifications, ResourceType, Tag,
};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::distribute::{Copy, CopyOutcome, Error, Plan, Share, Target};
use super::image;
use crate::aws::{self, CallError, Clients};
use crate::janitor::{self, Hold, Janitor, Left, Resource};
use crate::output::Progress;
use crate::resolve;
use crate::tags;

/// Regions one image copies to at once. Each region has its own clients, retries and throttling
/// budget, so they do not slow each other; 8 covers the usual region lists in one round while
/// bounding the connections and waits one image keeps open (with several images baked at once).
pub const REGIONS_AT_ONCE: usize = 8;

/// The tested image, as the copy stage starts from it.
#[derive(Debug, Clone)]
pub struct Source {
    pub ami_id: String,
    pub digest: String,
    pub base_ami: String,
}

/// Shares the image, then copies it to every planned region at once (at most
/// [`REGIONS_AT_ONCE`]) and shares each copy; returns each region's outcome in plan order. A
/// failed copy is cleaned up at once; every copy is in the run's ledger (through a [`Hold`] on
/// `janitor`) while it is pending, so an interrupted run removes it.
pub async fn run(
    clients: &Clients,
    plan: &Plan,
    source: &Source,
    janitor: &Janitor,
    progress: &Progress,
) -> Result<Vec<Copy>, Error> {
    if plan.copies.is_empty() && plan.share.is_empty() {
        return Ok(Vec::new());
    }
    let image = describe(clients, &source.ami_id).await?;
    if !plan.share.is_empty() {
        progress.step(format!("{}: sharing {}", clients.region, source.ami_id));
        share(clients, &plan.share, &image).await?;
    }
    if plan.copies.is_empty() {
        return Ok(Vec::new());
    }
    let pending = Arc::new(Pending::default());
    janitor.hold(pending.clone());
    // While this stage runs it owns its copies (the run's ordinary cleanup, which may run beside
    // it, leaves them alone); once it is dropped unfinished (a signal), the hold removes them.
    let _running = pending.running();
    let image = &image;
    let copies = futures_util::stream::iter(plan.copies.iter().map(|target| {
        let pending = pending.clone();
        async move {
            let regional = clients.in_region(&target.region);
            let ledger = pending.open(&regional, janitor.run_id());
            Job {
                home: clients,
                regional,
                target,
                plan,
                source,
                image,
                ledger,
                progress,
            }
            .copy_to()
            .await
        }
    }))
    .buffered(REGIONS_AT_ONCE)
    .collect::<Vec<Copy>>()
    .await;
    Ok(copies)
}

/// DescribeImages of the source: its name, tags, deprecation time and snapshots.
async fn describe(clients: &Clients, ami_id: &str) -> Result<Image, CallError> {
    let request = clients.ec2.describe_images().image_ids(ami_id);
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::NEW_IMAGE)
        .or_fail(|| format!("describe {ami_id}"))
        .await?;
    out.images
        .unwrap_or_default()
        .into_iter()
        .next()
        .ok_or_else(|| clients.failed(format!("describe {ami_id}"), "no such image"))
}

/// One region's copy: what it is made from, where, and the ledger it is held in while pending.
struct Job<'a> {
    home: &'a Clients,
    regional: Clients,
    target: &'a Target,
    plan: &'a Plan,
    source: &'a Source,
    image: &'a Image,
    ledger: Arc<Janitor>,
    progress: &'a Progress,
}

impl Job<'_> {
    /// One region: the copy already there (skip by digest and base), or a new one, waited for,
    /// deprecated as the source and shared; a failure is cleaned up and becomes the outcome.
    async fn copy_to(&self) -> Copy {
        let Job {
            regional,
            target,
            plan,
            source,
            ledger,
            progress,
            ..
        } = self;
        let region = target.region.clone();
        let done = |ami_id: Option<String>, outcome| Copy {
            region: region.clone(),
            ami_id,
            outcome,
        };
        let existing =
            match resolve::baked_ami(regional, &source.digest, Some(&source.base_ami)).await {
                Ok(found) => found,
                Err(e) => return done(None, CopyOutcome::Failed(e.to_string())),
            };
        // Only a copy of this very AMI counts: after `--force` baked the image anew, its copies are
        // made anew too rather than leaving an older bake's copy in the other regions.
        let existing = existing.filter(|found| {
            found
                .tags()
                .iter()
                .any(|t| t.key() == Some(tags::SOURCE_AMI) && t.value() == Some(&source.ami_id))
        });
        if let Some(found) = existing {
            let id = found.image_id().unwrap_or_default().to_owned();
            progress.step(format!(
                "{region}: {id} is there already (a copy of {})",
                source.ami_id
            ));
            // The list of accounts may have grown since that copy was made.
            return match share(regional, &plan.share, &found).await {
                Ok(()) => done(Some(id), CopyOutcome::Skipped),
                Err(e) => done(Some(id), CopyOutcome::Failed(e.to_string())),
            };
        }
        let mut made = None;
        let result = self.copy(&mut made).await;
        match (result, made) {
            (Ok(()), Some(id)) => {
                ledger.keep(&id);
                progress.step(format!("{region}: {id} available"));
                done(Some(id), CopyOutcome::Copied)
            }
            (Ok(()), None) => done(None, CopyOutcome::Failed("CopyImage answered no id".into())),
            (Err(e), made) => {
                progress.step(format!("{region}: copy failed; cleaning up"));
                let mut why = e.to_string();
                if let Err(left) = ledger.clean().await {
                    why.push_str(&format!("; and cleaning up after it: {left}"));
                }
                done(made, CopyOutcome::Failed(why))
            }
        }
    }

    /// CopyImage (same name, the source's tags with this run's and the source's, encrypted with the
    /// region's key, a client token of the source and region), then the wait, the deprecation and the
    /// sharing. `made` gets the copy's id as soon as it exists.
    async fn copy(&self, made: &mut Option<String>) -> Result<(), Error> {
        let region = &self.target.region;
        let name = self.image.name().unwrap_or_default();
        let all = copy_tags(
            self.image.tags(),
            &self.home.region,
            &self.source.ami_id,
            self.ledger.run_id(),
        );
        let mut request = self
            .regional
            .ec2
            .copy_image()
            .source_image_id(&self.source.ami_id)
            .source_region(&self.home.region)
            .name(name)
            .encrypted(true)
            .client_token(client_token(
                &self.source.ami_id,
                region,
                self.ledger.run_id(),
            ))
            .tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .set_tags(Some(all.clone()))
                    .build(),
            )
            .tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(ResourceType::Snapshot)
                    .set_tags(Some(all))
                    .build(),
            )
            .set_kms_key_id(self.target.kms_key.clone());
        if let Some(description) = self.image.description() {
            request = request.description(description);
        }
        self.progress.step(format!(
            "{region}: copying {} as {name}",
            self.source.ami_id
        ));
        let out = self
            .regional
            .call(|| request.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_fail(|| {
                format!(
                    "copy {} from {} to {region}",
                    self.source.ami_id, self.home.region
                )
            })
            .await?;
        let id = out.image_id().unwrap_or_default().to_owned();
        if id.is_empty() {
            return Ok(());
        }
        self.ledger.record(Resource::Image(id.clone()));
        *made = Some(id.clone());
        image::available_on(&self.regional, &id, self.progress, image::COPY_SCHEDULE)
            .await
            .map_err(|e| {
                self.regional.failed(
                    format!("copy {} to {region}", self.source.ami_id),
                    e.to_string(),
                )
            })?;
        if let Some(at) = self
            .image
            .deprecation_time()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
        {
            image::deprecate_at(&self.regional, &id, at)
                .await
                .map_err(|e| {
                    self.regional
                        .failed(format!("deprecate {id}"), e.to_string())
                })?;
        }
        let copy = describe(&self.regional, &id).await?;
        share(&self.regional, &self.plan.share, &copy).await?;
        Ok(())
    }
}

/// The copy's tags: every tag of the source (Name, bake:image, bake:digest, bake:base-ami,
/// bake:test, ...) but its run and creation, which are this run's (cleanup and `bake gc` find a
/// copy left pending by the run that made it), plus where it was copied from.
pub fn copy_tags(source: &[Tag], source_region: &str, source_ami: &str, run_id: &str) -> Vec<Tag> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let ours = [
        tags::RUN_ID,
        tags::CREATED,
        tags::SOURCE_AMI,
        tags::SOURCE_REGION,
    ];
    let mut all: Vec<Tag> = source
        .iter()
        .filter(|t| t.key().is_some_and(|k| !ours.contains(&k)))
        .cloned()
        .collect();
    all.extend(tags::list([
        (tags::RUN_ID, run_id),
        (tags::CREATED, now.as_str()),
        (tags::SOURCE_AMI, source_ami),
        (tags::SOURCE_REGION, source_region),
    ]));
    all
}

/// CopyImage's ClientToken: the source AMI, the destination region and the run, hashed to EC2's
/// 64 characters. The SDK's retry of a lost answer (and the janitor's) gets the same copy; a later
/// run after a failed copy (deregistered) asks afresh instead of being answered the failed one.
pub fn client_token(source_ami: &str, region: &str, run_id: &str) -> String {
    let hash = Sha256::digest(format!("{source_ami}\n{region}\n{run_id}").as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("copy-{}", &hex[..59])
}

/// Launch permission for the accounts, organizations and OUs on `image`, and create-volume
/// permission for the accounts on its snapshots. Adding a permission that is there is a no-op.
async fn share(clients: &Clients, share: &Share, image: &Image) -> Result<(), CallError> {
    if share.is_empty() {
        return Ok(());
    }
    let id = image.image_id().unwrap_or_default();
    let mut add = Vec::new();
    for account in &share.accounts {
        add.push(LaunchPermission::builder().user_id(account).build());
    }
    for org in &share.organizations {
        add.push(LaunchPermission::builder().organization_arn(org).build());
    }
    for ou in &share.organizational_units {
        add.push(
            LaunchPermission::builder()
                .organizational_unit_arn(ou)
                .build(),
        );
    }
    let request = clients
        .ec2
        .modify_image_attribute()
        .image_id(id)
        .launch_permission(
            LaunchPermissionModifications::builder()
                .set_add(Some(add))
                .build(),
        );
    clients
        .call(|| request.clone().send())
        .settle(&aws::NEW_IMAGE)
        .or_fail(|| format!("share {id} (launch permission)"))
        .await?;
    if share.accounts.is_empty() {
        return Ok(());
    }
    let snapshots = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()));
    for snapshot in snapshots {
        let request = clients
            .ec2
            .modify_snapshot_attribute()
            .snapshot_id(snapshot)
            .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
            .operation_type(aws_sdk_ec2::types::OperationType::Add)
            .set_user_ids(Some(share.accounts.clone()));
        clients
            .call(|| request.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_fail(|| format!("share snapshot {snapshot} of {id} (create-volume permission)"))
            .await?;
    }
    Ok(())
}

/// The copies of one image's run, each region's in a ledger of its own (a [`Janitor`] of that
/// region, with the run's id): released, it deletes every copy not kept (an interrupted run's).
#[derive(Default)]
struct Pending {
    ledgers: Mutex<Vec<Arc<Janitor>>>,
    /// Whether the copy stage is running (then a release leaves its copies to it).
    running: Arc<AtomicBool>,
}

/// Marks the copy stage running until dropped (finished, or cancelled by a signal).
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Pending {
    fn running(&self) -> Running {
        self.running.store(true, Ordering::SeqCst);
        Running(self.running.clone())
    }

    /// The ledger for `clients`' region.
    fn open(&self, clients: &Clients, run_id: &str) -> Arc<Janitor> {
        let ledger = Arc::new(Janitor::new(clients.clone(), run_id.to_owned()));
        self.ledgers
            .lock()
            .expect("copies lock")
            .push(ledger.clone());
        ledger
    }
}

impl Hold for Pending {
    fn release(&self) -> BoxFuture<'_, Result<Vec<Resource>, Vec<Left>>> {
        Box::pin(async move {
            // The builder's cleanup runs beside the copy stage: the copies are the stage's own.
            if self.running.load(Ordering::SeqCst) {
                return Ok(Vec::new());
            }
            let ledgers: Vec<Arc<Janitor>> = self.ledgers.lock().expect("copies lock").clone();
            let cleaned = futures_util::future::join_all(ledgers.iter().map(|l| l.clean())).await;
            let mut removed = Vec::new();
            let mut left = Vec::new();
            for (ledger, result) in ledgers.iter().zip(cleaned) {
                match result {
                    Ok(gone) => removed.extend(gone),
                    Err(janitor::Error::Left { left: stuck, .. }) => left.extend(stuck),
                    Err(e) => left.push(Left {
                        resource: Resource::Image(format!("copies of run {}", ledger.run_id())),
                        reason: e.to_string(),
                    }),
                }
            }
            super::share::outcome(removed, left)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_token_is_the_source_region_and_run_within_ec2s_limit() {
        let a = client_token(
            "ami-0123456789abcdef0",
            "us-east-1",
            "20261124t000000-abcdef",
        );
        assert_eq!(a.len(), 64);
        assert!(crate::limits::client_token(&a).is_ok());
        assert_eq!(
            a,
            client_token(
                "ami-0123456789abcdef0",
                "us-east-1",
                "20261124t000000-abcdef"
            )
        );
        assert_ne!(
            a,
            client_token(
                "ami-0123456789abcdef0",
                "eu-west-1",
                "20261124t000000-abcdef"
            )
        );
        assert_ne!(
            a,
            client_token(
                "ami-0123456789abcdef0",
                "us-east-1",
                "20261125t000000-abcdef"
            )
        );
    }

    #[test]
    fn a_copy_carries_the_sources_tags_with_this_runs_and_where_it_came_from() {
        let source = tags::list([
            ("Name", "web-nginx"),
            (tags::DIGEST, "d1"),
            (tags::BASE_AMI, "ami-base"),
            (tags::TEST, tags::TEST_PASSED),
            (tags::RUN_ID, "old-run"),
            (tags::CREATED, "2026-01-01T00:00:00Z"),
        ]);
        let all = copy_tags(&source, "ap-northeast-2", "ami-src", "new-run");
        let value = |k: &str| {
            all.iter()
                .filter(|t| t.key() == Some(k))
                .map(|t| t.value().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(value("Name"), ["web-nginx"]);
        assert_eq!(value(tags::DIGEST), ["d1"]);
        assert_eq!(value(tags::BASE_AMI), ["ami-base"]);
        assert_eq!(value(tags::TEST), [tags::TEST_PASSED]);
        assert_eq!(value(tags::RUN_ID), ["new-run"]);
        assert_eq!(value(tags::SOURCE_AMI), ["ami-src"]);
        assert_eq!(value(tags::SOURCE_REGION), ["ap-northeast-2"]);
        assert_eq!(value(tags::CREATED).len(), 1);
        assert_ne!(value(tags::CREATED), ["2026-01-01T00:00:00Z"]);
    }
}
