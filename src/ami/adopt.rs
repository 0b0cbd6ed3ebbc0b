//! Adopting an interrupted bake: under the image's lease (`[store]`), an AMI of the same digest
//! and base that a run which no longer holds the lease left pending or untested is waited for and
//! tested by this run, instead of launching a builder again.

use std::time::SystemTime;

use aws_sdk_ec2::types::{Image as Ec2Image, ImageState};

use super::preflight::Plan;
use super::{image, launch};
use crate::aws::{self, Clients};
use crate::config::Image;
use crate::janitor::{self, Janitor, Resource};
use crate::output::Progress;
use crate::resolve::filter_any;
use crate::tags;

/// Why an adoption failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Launch(#[from] launch::Error),
}

/// The adopted AMI, available, and the security group its test instance gets.
#[derive(Debug)]
pub struct Adopted {
    pub ami_id: String,
    pub name: String,
    pub deprecation_time: Option<String>,
    pub group: String,
}

/// An AMI another run left for this one.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub ami_id: String,
    pub name: String,
    /// The run that created it (its `bake:run-id`).
    pub run_id: String,
    pub state: String,
}

/// The newest AMI of this account with the plan's digest and base AMI, created by another run
/// within [`janitor::ADOPTION_WINDOW`], that is pending (its creation was under way when its run
/// ended) or available with `bake:test=pending` (its test never gave a verdict). The caller
/// holds the image's lease, so the run that created it no longer does.
pub async fn find(clients: &Clients, plan: &Plan, run_id: &str) -> Result<Option<Orphan>, Error> {
    let request = clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(tags::filter(tags::IMAGE, &plan.image))
        .filters(tags::filter(tags::DIGEST, &plan.rendered.digest))
        .filters(tags::filter(tags::BASE_AMI, &plan.base.id))
        .filters(filter_any("state", &["pending", "available"]));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| "look for an interrupted bake of the same digest to adopt".into())
        .await
        .map_err(image::Error::from)?;
    let now = SystemTime::now();
    Ok(out
        .images()
        .iter()
        .filter(|i| adoptable(i, run_id, now))
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
        .map(|i| Orphan {
            ami_id: i.image_id().unwrap_or_default().to_owned(),
            name: i.name().unwrap_or_default().to_owned(),
            run_id: tag(i, tags::RUN_ID).unwrap_or("?").to_owned(),
            state: i.state().map_or("?", |s| s.as_str()).to_owned(),
        }))
}

/// Whether `image` was left by another run, recently enough, before its test's verdict.
pub fn adoptable(image: &Ec2Image, run_id: &str, now: SystemTime) -> bool {
    let another = tag(image, tags::RUN_ID).is_some_and(|r| r != run_id);
    let verdict = tag(image, tags::TEST);
    let unfinished = match image.state() {
        // Being created: its test (if any) has not begun.
        Some(ImageState::Pending) => verdict.is_none_or(|v| v == tags::TEST_PENDING),
        Some(ImageState::Available) => verdict == Some(tags::TEST_PENDING),
        _ => false,
    };
    another && unfinished && janitor::within_adoption_window(image.creation_date(), now)
}

fn tag<'a>(image: &'a Ec2Image, key: &str) -> Option<&'a str> {
    tags::value(image.tags(), key)
}

/// Takes up `orphan`: tags it as this run's (so this run's cleanup removes it on failure, and a
/// later run sees whose it is), waits until it is available, and makes the security group its
/// test instance needs. The caller then tests it as one it built.
pub async fn take(
    clients: &Clients,
    image: &Image,
    plan: &Plan,
    orphan: Orphan,
    janitor: &Janitor,
    progress: &Progress,
) -> Result<Adopted, Error> {
    progress.step(format!(
        "adopting {} ({}), left {} by run {}: no builder is launched",
        orphan.ami_id, orphan.name, orphan.state, orphan.run_id
    ));
    janitor.record(Resource::Image(orphan.ami_id.clone()));
    let retag = clients
        .ec2
        .create_tags()
        .resources(&orphan.ami_id)
        .tags(tags::tag(tags::RUN_ID, janitor.run_id()));
    clients
        .call(|| retag.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("tag {} as adopted by this run", orphan.ami_id))
        .await
        .map_err(image::Error::from)?;
    image::available(clients, &orphan.ami_id, progress).await?;
    let tags = tags::of_run(janitor.run_id(), &plan.image, &plan.rendered.digest);
    let group = launch::security_group(clients, plan, image.health.port, &tags, janitor).await?;
    let deprecation_time = match &image.deprecate_after {
        Some(after) => Some(image::deprecate(clients, &orphan.ami_id, after.get_ref().0).await?),
        None => None,
    };
    Ok(Adopted {
        ami_id: orphan.ami_id,
        name: orphan.name,
        deprecation_time,
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::Tag;
    use std::time::Duration;

    fn image(state: ImageState, run: &str, test: Option<&str>, age: Duration) -> Ec2Image {
        let created = humantime::format_rfc3339_millis(SystemTime::now() - age).to_string();
        let mut b = Ec2Image::builder()
            .image_id("ami-1")
            .state(state)
            .creation_date(created)
            .tags(Tag::builder().key(tags::RUN_ID).value(run).build());
        if let Some(v) = test {
            b = b.tags(Tag::builder().key(tags::TEST).value(v).build());
        }
        b.build()
    }

    #[test]
    fn only_another_runs_recent_unfinished_image_is_adopted() {
        let now = SystemTime::now();
        let minute = Duration::from_secs(60);
        let pending = tags::TEST_PENDING;
        assert!(adoptable(
            &image(ImageState::Pending, "old", Some(pending), minute),
            "me",
            now
        ));
        assert!(adoptable(
            &image(ImageState::Pending, "old", None, minute),
            "me",
            now
        ));
        assert!(adoptable(
            &image(ImageState::Available, "old", Some(pending), minute),
            "me",
            now
        ));
        // Its own, tested, failed, or past the window: not adopted.
        assert!(!adoptable(
            &image(ImageState::Pending, "me", Some(pending), minute),
            "me",
            now
        ));
        let passed = Some(tags::TEST_PASSED);
        assert!(!adoptable(
            &image(ImageState::Available, "old", passed, minute),
            "me",
            now
        ));
        let failed = Some(tags::TEST_FAILED);
        assert!(!adoptable(
            &image(ImageState::Available, "old", failed, minute),
            "me",
            now
        ));
        assert!(!adoptable(
            &image(ImageState::Failed, "old", None, minute),
            "me",
            now
        ));
        let late = janitor::ADOPTION_WINDOW + minute;
        assert!(!adoptable(
            &image(ImageState::Pending, "old", Some(pending), late),
            "me",
            now
        ));
    }
}
