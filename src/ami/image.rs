//! Image: find an AMI already baked from the same inputs, or create one from the builder and
//! wait until it is available.

use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::{Image, ImageState, ResourceType, Tag};
use tokio::time::Instant;

use super::preflight::Plan;
use crate::aws::{self, CallError, Clients};
use crate::janitor::{Janitor, Resource};
use crate::output::Progress;
use crate::poll::{self, Check, PollError, Schedule};
use crate::{resolve, tags};

/// A small root volume's image is available in 1–5 minutes; an hour means it is stuck.
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// No AMI is available within 20 s of CreateImage on EC2 (the snapshot alone takes longer);
/// then every 0.8 s to 60 s (small images and the lab), then growing to 15 s for large volumes.
const AVAILABLE_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(800))
    .first_after(Duration::from_secs(20))
    .dense_for(Duration::from_secs(60))
    .growing(1.25, Duration::from_secs(15));
/// A copy is looked at from 2 s on, then as an image is: its wait is the copy stage, the run's
/// last step, so a late first look is added whole to the run (in the lab, and for a small image
/// between near regions, a copy can be ready in seconds); on EC2, where a copy takes minutes, the
/// early looks cost about 20 DescribeImages more per copy.
pub const COPY_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(800))
    .first_after(Duration::from_secs(2))
    .dense_for(Duration::from_secs(60))
    .growing(1.25, Duration::from_secs(15));
/// How many `-2`, `-3`, ... suffixes to try when the name is taken.
const NAME_SUFFIXES: u32 = 99;

/// Why the image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("AMI {ami_id} in {region} failed: {reason}")]
    Failed {
        ami_id: String,
        region: String,
        reason: String,
    },
    #[error("AMI {ami_id} in {region} did not become available within {waited:?}: state {last}")]
    TimedOut {
        ami_id: String,
        region: String,
        waited: Duration,
        last: String,
    },
    #[error("no free AMI name in {region}: {name} and {NAME_SUFFIXES} suffixed names are taken")]
    NameTaken { name: String, region: String },
    #[error(transparent)]
    Api(#[from] CallError),
}

/// An AMI of this account baked from the same inputs and base image ([`resolve::baked_ami`]).
pub async fn existing(clients: &Clients, plan: &Plan) -> Result<Option<Image>, Error> {
    Ok(resolve::baked_ami(clients, &plan.rendered.digest, Some(&plan.base.id)).await?)
}

/// The newest available AMI of the `[image.NAME]` `image` this account baked in this region
/// (tag `bake:image`), whatever its test verdict or deprecation; None before its first.
pub async fn newest(clients: &Clients, image: &str) -> Result<Option<Image>, CallError> {
    Ok(of_image(clients, image)
        .await?
        .into_iter()
        // Copies made here from another region carry this image's tag too.
        .filter(|i| !i.tags().iter().any(|t| t.key() == Some(tags::SOURCE_AMI)))
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date())))
}

/// Every available AMI of the `[image.NAME]` `image` in this region (tag `bake:image`): those
/// baked here and the copies made here.
pub async fn of_image(clients: &Clients, image: &str) -> Result<Vec<Image>, CallError> {
    let request = clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(tags::filter(tags::IMAGE, image))
        .filters(resolve::filter("state", "available"));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("look up the AMIs of image {image}"))
        .await?;
    Ok(out.images.unwrap_or_default())
}

/// Deprecates the AMI `after` from now, rounded up to a whole minute as EC2 keeps it; returns
/// the time (RFC 3339).
pub async fn deprecate(clients: &Clients, ami_id: &str, after: Duration) -> Result<String, Error> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .saturating_add(after.as_secs());
    let at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs.div_ceil(60).saturating_mul(60)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    deprecate_at(clients, ami_id, at).await?;
    Ok(humantime::format_rfc3339_seconds(at).to_string())
}

/// Deprecates the AMI at `at` (EnableImageDeprecation).
pub async fn deprecate_at(clients: &Clients, ami_id: &str, at: SystemTime) -> Result<(), Error> {
    let request = clients
        .ec2
        .enable_image_deprecation()
        .image_id(ami_id)
        .deprecate_at(at.into());
    clients
        .call(|| request.clone().send())
        .or_fail(|| format!("deprecate {ami_id}"))
        .await?;
    Ok(())
}

/// Creates the AMI from the builder, tags it and its snapshots, and waits until it is available.
/// Returns its id and name.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    clients: &Clients,
    plan: &Plan,
    instance_id: &str,
    name: &str,
    no_reboot: bool,
    tags: &[Tag],
    janitor: &Janitor,
    progress: &Progress,
) -> Result<(String, String), Error> {
    let mut all = tags.to_vec();
    all.extend(image_tags(plan));
    // Names are unique per account and region: on a clash, try `name-2`, `name-3`, ...
    let candidates = std::iter::once(name.to_owned())
        .chain((2..=NAME_SUFFIXES + 1).map(|n| format!("{name}-{n}")));
    let mut created = None;
    // Names already seen taken: after one clash, one listing tells them all, so a re-bake on a
    // day with several AMIs of this name skips to the first free one instead of trying each.
    let mut taken = std::collections::BTreeSet::new();
    for candidate in candidates {
        if taken.contains(&candidate) {
            continue;
        }
        progress.step(format!("creating image {candidate}"));
        let request = clients
            .ec2
            .create_image()
            .instance_id(instance_id)
            .name(&candidate)
            .description(format!(
                "bake image {} from {} ({})",
                plan.image, plan.base.name, plan.base.id
            ))
            .no_reboot(no_reboot)
            .tag_specifications(tags::at_creation(ResourceType::Image, &candidate, &all))
            .tag_specifications(tags::at_creation(ResourceType::Snapshot, &candidate, &all));
        match clients.call(|| request.clone().send()).answer().await {
            Ok(out) => {
                created = Some((out.image_id().unwrap_or_default().to_owned(), candidate));
                break;
            }
            Err(e) if e.is(&["InvalidAMIName.Duplicate"]) => {
                // The SDK retries a CreateImage whose answer was lost; the retry then finds the
                // name taken by the image the first attempt made. That one is ours: use it.
                let names = names_taken(clients, name, &candidate, janitor.run_id()).await?;
                if let Some(id) = names.ours {
                    progress.step(format!("{candidate} exists from this run as {id}"));
                    created = Some((id, candidate));
                    break;
                }
                taken.extend(names.all);
                taken.insert(candidate);
                continue;
            }
            Err(e) => {
                let action = || format!("create image {candidate} from {instance_id}");
                return Err(e.or_fail(action).into());
            }
        }
    }
    let Some((ami_id, name)) = created else {
        return Err(Error::NameTaken {
            name: name.to_owned(),
            region: clients.region.clone(),
        });
    };
    janitor.record(Resource::Image(ami_id.clone()));
    available(clients, &ami_id, progress).await?;
    Ok((ami_id, name))
}

/// Waits until the AMI `ami_id` (just created or copied) is available: unknown to DescribeImages
/// for a while at first (eventual consistency), pending, then available; a failed image ends the
/// wait at once.
pub async fn available(clients: &Clients, ami_id: &str, progress: &Progress) -> Result<(), Error> {
    available_on(clients, ami_id, progress, AVAILABLE_SCHEDULE).await
}

/// [`available`] on another schedule (a copy's, [`COPY_SCHEDULE`]).
pub async fn available_on(
    clients: &Clients,
    ami_id: &str,
    progress: &Progress,
    schedule: Schedule,
) -> Result<(), Error> {
    let step = format!("waiting for {ami_id} to be available");
    progress.step(step.clone());
    let started = Instant::now();
    let result = poll::until(
        &step,
        poll::deadline_after(started, AVAILABLE_TIMEOUT),
        schedule,
        |seen| progress.detail(&step, seen),
        || async {
            let out = clients.ec2.describe_images().image_ids(ami_id).send().await;
            let image = match out {
                Ok(out) => out.images.unwrap_or_default().into_iter().next(),
                // A new AMI is unknown to DescribeImages for a few seconds (eventual
                // consistency); the wait's deadline bounds it.
                Err(e) if aws::code(&e) == Some("InvalidAMIID.NotFound") => None,
                Err(e) => return aws::unless_transient(&e, |e| Err(aws::describe(e))),
            };
            let Some(image) = image else {
                return Check::Pending("not visible yet".into());
            };
            match image.state() {
                Some(ImageState::Available) => Check::Ready(()),
                Some(ImageState::Pending) | None => Check::Pending("pending".into()),
                Some(state) => {
                    let reason = image
                        .state_reason()
                        .and_then(|r| r.message())
                        .unwrap_or("no reason given");
                    Check::Failed(Ok(format!("state {} ({reason})", state.as_str())))
                }
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(Ok(reason))) => Err(Error::Failed {
            ami_id: ami_id.to_owned(),
            region: clients.region.clone(),
            reason,
        }),
        Err(PollError::Failed(Err(message))) => {
            Err(clients.failed(format!("describe {ami_id}"), message).into())
        }
        Err(PollError::TimedOut { last }) => Err(Error::TimedOut {
            ami_id: ami_id.to_owned(),
            region: clients.region.clone(),
            waited: AVAILABLE_TIMEOUT,
            last,
        }),
    }
}

/// What one listing of `name` and its suffixed names (`name-*`) says after `candidate` clashed.
struct Taken {
    /// The image named `candidate`, if this run (tag `bake:run-id`) created it: the SDK retried
    /// a CreateImage whose answer was lost.
    ours: Option<String>,
    /// Every name of the listing.
    all: Vec<String>,
}

/// Lists this account's AMIs named `name` or `name-*` after `candidate` clashed. A clashing name
/// DescribeImages does not list yet was taken moments ago (eventual consistency): it is listed
/// again within the new-image window before it counts as another's.
async fn names_taken(
    clients: &Clients,
    name: &str,
    candidate: &str,
    run_id: &str,
) -> Result<Taken, Error> {
    let settle = aws::NEW_IMAGE;
    let suffixed = format!("{name}-*");
    let result = poll::until(
        &format!("look up the AMI named {candidate}"),
        poll::deadline(settle.within),
        settle.schedule,
        |_| {},
        || async {
            let out = clients
                .ec2
                .describe_images()
                .owners("self")
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("name")
                        .values(name)
                        .values(&suffixed)
                        .build(),
                )
                .send()
                .await;
            let images = match out {
                Ok(out) => out.images.unwrap_or_default(),
                Err(e) => return aws::unless_transient(&e, aws::describe),
            };
            let Some(image) = images.iter().find(|i| i.name() == Some(candidate)) else {
                return Check::Pending(format!("{candidate} is taken but not listed yet"));
            };
            let ours = image
                .tags()
                .iter()
                .any(|t| t.key() == Some(tags::RUN_ID) && t.value() == Some(run_id));
            Check::Ready(Taken {
                ours: ours.then(|| image.image_id().unwrap_or_default().to_owned()),
                all: images
                    .iter()
                    .filter_map(|i| i.name().map(str::to_owned))
                    .collect(),
            })
        },
    )
    .await;
    match result {
        Ok(found) => Ok(found),
        Err(PollError::TimedOut { .. }) => Ok(Taken {
            ours: None,
            all: Vec::new(),
        }),
        Err(PollError::Failed(message)) => Err(clients
            .failed(format!("look up the AMI named {candidate}"), message)
            .into()),
    }
}

/// What an image says about where it came from.
fn image_tags(plan: &Plan) -> Vec<Tag> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let inputs = plan.rendered.inputs.to_tag();
    tags::list([
        (tags::BASE_AMI, plan.base.id.as_str()),
        (tags::INPUTS, inputs.as_str()),
        (tags::BASE_NAME, plan.base.name.as_str()),
        (tags::TEMPLATE, plan.template.as_str()),
        (tags::OS, plan.os.as_str()),
        (tags::VERSION, env!("CARGO_PKG_VERSION")),
        (tags::BAKED_AT, now.as_str()),
    ])
}
