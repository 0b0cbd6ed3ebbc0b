//! Baking: preflight, launch, health, verify, image and the image's test for one or more images at
//! once, with the builder and test instance cleaned up on every exit (`bake ami`, and the bake and
//! test steps of `bake pipeline`).

pub mod adopt;
pub mod copy;
pub mod distribute;
pub mod egress;
pub mod endpoints;
pub mod health;
pub mod image;
pub mod launch;
pub mod preflight;
pub mod share;
pub mod test;
pub mod verify;

use serde::Serialize;
use tokio::time::Instant;

use crate::aws::Clients;
use crate::config::{Access, Config, Image, Store};
use crate::janitor::{self, Janitor};
use crate::lease::{self, Lease};
use crate::output::{self, Progress};
use crate::render::{self, Renderer};
use crate::{records, signal, tags};
pub use distribute::{Copy, CopyOutcome};
use preflight::Plan;

/// How `bake ami` behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bake even when an AMI with the same digest exists.
    pub force: bool,
    /// Leave the builder running after a failure, for debugging.
    pub keep_on_failure: bool,
}

/// What a run has of the config's `[store]` for one image: the store (records) and, when it
/// holds one, the image's lease.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    pub store: Option<&'a Store>,
    pub lease: Option<&'a Lease>,
}

/// The result of baking one image.
#[derive(Debug, Clone, Serialize)]
pub struct Baked {
    pub image: String,
    pub ami_id: String,
    pub ami_name: String,
    pub digest: String,
    pub base_ami: String,
    pub region: String,
    /// When the AMI is deprecated (RFC 3339), if `deprecate_after` asked for it.
    pub deprecation_time: Option<String>,
    /// True when an AMI with the same inputs existed and nothing was launched.
    pub skipped: bool,
    /// The whole bake, its test included.
    pub seconds: f64,
    /// The test stage, when this run tested the AMI (none when skipped or `test.enabled = false`).
    pub test: Option<TestReport>,
    /// One per `distribute.regions` region other than the build region, in config order.
    pub copies: Vec<Copy>,
    /// The run whose interrupted bake this one adopted (its AMI, tested here), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted_from: Option<String>,
    /// When it was baked (not skipped): which inputs differ from the image's newest AMI before
    /// it; none for the image's first AMI.
    pub changed: Option<records::Since>,
    /// Where its record was written (`s3://…`), with `[store]`.
    pub record: Option<String>,
}

impl Baked {
    /// The image in `region`: this AMI in the build region, the available copy elsewhere; None
    /// where the copy failed or the image is not distributed to.
    pub fn ami_in(&self, region: &str) -> Option<&str> {
        if region == self.region {
            return Some(&self.ami_id);
        }
        self.copies
            .iter()
            .find(|c| c.region == region)
            .and_then(Copy::available)
    }

    /// The copies that failed.
    pub fn failed_copies(&self) -> Vec<&Copy> {
        self.copies
            .iter()
            .filter(|c| matches!(c.outcome, CopyOutcome::Failed(_)))
            .collect()
    }
}

/// The test stage's outcome in a bake's result.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    /// The instance launched from the AMI (terminated since).
    pub instance_id: String,
    /// From its launch to its last command.
    pub seconds: f64,
}

/// A failed step of one image's bake.
#[derive(Debug, thiserror::Error)]
pub enum Step {
    #[error(transparent)]
    Preflight(#[from] preflight::Error),
    #[error(transparent)]
    Egress(#[from] egress::Error),
    #[error(transparent)]
    Endpoints(#[from] endpoints::Error),
    #[error(transparent)]
    Launch(#[from] launch::Error),
    #[error(transparent)]
    Health(#[from] health::Error),
    #[error(transparent)]
    Verify(#[from] verify::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Test(#[from] test::Error),
    #[error(transparent)]
    Distribute(#[from] distribute::Error),
    /// Another run holds the image's lease (`[store]`): nothing was done.
    #[error("not baked: {0}; that run bakes it")]
    Held(lease::Busy),
    #[error(transparent)]
    Lease(#[from] lease::Error),
    #[error(transparent)]
    Adopt(#[from] adopt::Error),
    /// The lease was lost during the bake, which stopped and cleaned up.
    #[error("stopped: {0}; cleaned up what this run created")]
    LeaseLost(String),
    #[error("{0}")]
    Cleanup(#[from] janitor::Error),
    #[error("{failure}\nand cleaning up after it failed too: {cleanup}")]
    CleanupAfter {
        failure: Box<Step>,
        cleanup: janitor::Error,
    },
}

/// One image's failure.
#[derive(Debug, thiserror::Error)]
#[error("image {image}: {step}")]
pub struct Error {
    pub image: String,
    pub step: Step,
}

impl Error {
    /// 2 for a problem found before anything was created, 1 for a failed bake.
    pub fn exit_code(&self) -> u8 {
        match &self.step {
            Step::Preflight(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Why a bake of several images stopped before each had its outcome.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// The templates could not be loaded.
    #[error(transparent)]
    Render(#[from] render::Error),
    /// Images whose preflight failed: nothing was created for any image.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<Error>),
    /// A signal (its exit code): every image's run was cleaned up.
    #[error("interrupted by {}; cleaned up what this run created", signal::name(*.0))]
    Interrupted(u8),
}

/// The leases (`[store]`) of the images a bake ended with, still held: `bake pipeline` keeps each
/// through its image's rollouts, `bake ami` gives them back at once.
#[derive(Debug, Default)]
pub struct Leases(Vec<(String, Lease)>);

impl Leases {
    /// Why the lease of `image` was lost, if it was (None without a store).
    pub fn lost(&self, image: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(i, _)| i == image)
            .and_then(|(_, l)| l.is_lost())
    }

    /// Gives back the lease of `image`, if held; a failure is only noted (the lease expires).
    pub async fn release(&mut self, image: &str) {
        if let Some(at) = self.0.iter().position(|(i, _)| i == image) {
            let (_, lease) = self.0.swap_remove(at);
            if let Err(e) = lease.release().await {
                output::note(&format!("warning: {e}; it expires after its TTL"));
            }
        }
    }

    /// Gives back every lease.
    pub async fn release_all(self) {
        let all = self.0.into_iter().map(|(_, lease)| async move {
            if let Err(e) = lease.release().await {
                output::note(&format!("warning: {e}; it expires after its TTL"));
            }
        });
        futures_util::future::join_all(all).await;
    }
}

/// Bakes the named images at once, after checking all of them. A preflight problem with any
/// image stops all (nothing is created); a signal cleans up every image's run and stops. With a
/// `[store]`, each image is baked under its lease: an image whose lease another run holds fails
/// with [`Step::Held`], and a lease lost mid-bake stops that image's bake ([`Step::LeaseLost`]).
pub async fn bake_all(
    clients: &Clients,
    config: &Config,
    names: &[String],
    options: &Options,
    checkip_url: &str,
) -> Result<(Vec<Baked>, Vec<Error>, Leases), Stopped> {
    let renderer = Renderer::new(config)?;
    // Every image is checked before anything is created for any of them.
    let plans = futures_util::future::join_all(names.iter().map(|name| {
        preflight::plan(
            clients,
            config,
            &renderer,
            name,
            &config.image[name],
            checkip_url,
        )
    }))
    .await;
    let mut failed = Vec::new();
    let mut ready = Vec::new();
    for (name, plan) in names.iter().zip(plans) {
        match plan {
            Ok(plan) => ready.push(plan),
            Err(e) => failed.push(Error {
                image: name.clone(),
                step: e.into(),
            }),
        }
    }
    if !failed.is_empty() {
        return Err(Stopped::Preflight(failed));
    }
    let janitors: Vec<Janitor> = ready
        .iter()
        .map(|_| Janitor::new(clients.clone(), janitor::new_run_id()))
        .collect();
    // The leases, each under its image's run id, before anything is created.
    let leases: Vec<Option<Lease>> = match &config.store {
        None => ready.iter().map(|_| None).collect(),
        Some(store) => {
            let taken = futures_util::future::join_all(
                ready
                    .iter()
                    .zip(&janitors)
                    .map(|(plan, j)| lease::take(clients, store, &plan.image, j.run_id())),
            )
            .await;
            let mut held = Vec::new();
            for (plan, taken) in ready.iter().zip(taken) {
                let step = match taken {
                    Ok(lease::Taken::Held { lease, previous }) => {
                        if let Some(previous) = previous {
                            output::note(&format!(
                                "image {}: took over the expired lease of run {} on {}",
                                plan.image, previous.run_id, previous.host
                            ));
                        }
                        held.push(Some(lease));
                        continue;
                    }
                    Ok(lease::Taken::Busy(busy)) => Step::Held(busy),
                    Err(e) => Step::Lease(e),
                };
                held.push(None);
                failed.push(Error {
                    image: plan.image.clone(),
                    step,
                });
            }
            held
        }
    };
    // Only the images this run may bake: all without a store, those whose lease it holds with one.
    let store = config.store.is_some();
    let work: Vec<(&Plan, &Janitor, Option<&Lease>)> = ready
        .iter()
        .zip(&janitors)
        .zip(&leases)
        .filter(|(_, lease)| !store || lease.is_some())
        .map(|((plan, janitor), lease)| (plan, janitor, lease.as_ref()))
        .collect();
    let multi = indicatif::MultiProgress::new();
    let bakes = futures_util::future::join_all(work.iter().map(|&(plan, janitor, lease)| {
        let progress = Progress::new(&multi, &plan.image);
        let image = &config.image[&plan.image];
        async move {
            let baking = bake(
                clients,
                image,
                plan,
                options,
                Held {
                    store: config.store.as_ref(),
                    lease,
                },
                janitor,
                &progress,
            );
            let Some(lease) = lease else {
                return baking.await;
            };
            // The bake is dropped (cancelled) before its cleanup begins.
            let outcome = tokio::select! {
                result = baking => Ok(result),
                why = lease.lost() => Err(why),
            };
            match outcome {
                Ok(result) => result,
                Err(why) => {
                    progress.step("the lease was lost; cleaning up");
                    match janitor.clean().await {
                        Ok(_) => Err(Step::LeaseLost(why)),
                        Err(cleanup) => Err(Step::CleanupAfter {
                            failure: Box::new(Step::LeaseLost(why)),
                            cleanup,
                        }),
                    }
                }
            }
        }
    }));
    let used: Vec<(&Plan, &Janitor)> = work.iter().map(|&(p, j, _)| (p, j)).collect();
    // The bakes are dropped (cancelled) before the cleanup begins.
    let outcome = tokio::select! {
        results = bakes => Ok(results),
        signal = signal::interrupted() => Err(signal),
    };
    let mut leases: Vec<(String, Lease)> = ready
        .iter()
        .zip(leases)
        .filter_map(|(plan, lease)| Some((plan.image.clone(), lease?)))
        .collect();
    let results = match outcome {
        Ok(results) => results,
        Err(signal) => {
            output::note("interrupted: cleaning up what this run created");
            let cleaned = futures_util::future::join_all(used.iter().map(|(_, j)| j.clean())).await;
            for e in cleaned.into_iter().filter_map(Result::err) {
                output::note(&format!("error: {e}"));
            }
            Leases(leases).release_all().await;
            return Err(Stopped::Interrupted(signal));
        }
    };
    let mut baked = Vec::new();
    let mut done = Leases::default();
    for ((plan, _), result) in used.iter().zip(results) {
        let lease = leases
            .iter()
            .position(|(i, _)| *i == plan.image)
            .map(|at| leases.swap_remove(at));
        match result {
            Ok(b) => {
                baked.push(b);
                done.0.extend(lease);
            }
            Err(step) => {
                failed.push(Error {
                    image: plan.image.clone(),
                    step,
                });
                // A failed image has nothing more to do under its lease.
                Leases(lease.into_iter().collect()).release_all().await;
            }
        }
    }
    Ok((baked, failed, done))
}

/// Bakes one planned image: skip when already baked, else build it (saying which inputs changed
/// since the image's newest AMI); the janitor cleans up the builder on success and everything on
/// failure. With a `store`, the package manifest is read at verify and the tested AMI's record
/// written.
pub async fn bake(
    clients: &Clients,
    image: &Image,
    plan: &Plan,
    options: &Options,
    held: Held<'_>,
    janitor: &Janitor,
    progress: &Progress,
) -> Result<Baked, Step> {
    let Held { store, lease } = held;
    let started = Instant::now();
    let adopted_from = std::sync::Mutex::new(None::<String>);
    let done = |ami: Ami, skipped: bool, test: Option<TestReport>, copies: Vec<Copy>| Baked {
        image: plan.image.clone(),
        ami_id: ami.id,
        ami_name: ami.name,
        digest: plan.rendered.digest.clone(),
        base_ami: plan.base.id.clone(),
        region: clients.region.clone(),
        deprecation_time: ami.deprecation_time,
        skipped,
        seconds: started.elapsed().as_secs_f64(),
        test,
        copies,
        adopted_from: adopted_from.lock().expect("adopted").clone(),
        changed: None,
        record: None,
    };
    if !options.force
        && let Some(found) = image::existing(clients, plan).await?
    {
        let id = found.image_id().unwrap_or_default().to_owned();
        // A region added to `distribute.regions` since gets its copy without a bake.
        let copies = distribute(clients, plan, &id, janitor, progress).await?;
        progress.finish(format!(
            "already baked as {id} (same digest; --force bakes anew){}",
            regions(&copies)
        ));
        let ami = Ami {
            id,
            name: found.name().unwrap_or_default().to_owned(),
            deprecation_time: found.deprecation_time().map(str::to_owned),
        };
        return Ok(done(ami, true, None, copies));
    }
    let changed = match previous(clients, plan).await {
        Ok(changed) => changed,
        Err(e) => {
            output::note(&format!(
                "warning: {}: cannot tell which input changed: {e}",
                plan.image
            ));
            None
        }
    };
    if let Some(since) = &changed {
        progress.step(since.to_string());
    }
    // Under the lease, an image a run that no longer holds it left half made (pending, or
    // available but not yet tested) is taken up instead of baking again.
    let orphan = match lease {
        Some(_) => adopt::find(clients, plan, janitor.run_id()).await?,
        None => None,
    };
    let made = match orphan {
        Some(orphan) => {
            *adopted_from.lock().expect("adopted") = Some(orphan.run_id.clone());
            adopt::take(clients, image, plan, orphan, janitor, progress)
                .await
                .map(|a| Built {
                    ami: Ami {
                        id: a.ami_id,
                        name: a.name,
                        deprecation_time: a.deprecation_time,
                    },
                    group: a.group,
                    // The builder is gone: an adopted AMI's packages are read on its test
                    // instance (see `tested`).
                    packages: None,
                })
                .map_err(Step::from)
        }
        None => build(clients, image, plan, store, janitor, progress).await,
    };
    let built = match made {
        Ok(built) => tested(clients, image, plan, store, built, janitor, progress).await,
        Err(failure) => Err(failure),
    };
    match built {
        Ok((ami, test, packages)) => {
            janitor.keep(&ami.id);
            progress.step(if test.is_some() {
                "terminating the builder and the test instance"
            } else {
                "terminating the builder"
            });
            // The copies start as the builder and test instance terminate (30-90 s on EC2).
            let (cleaned, copies) = tokio::join!(
                janitor.clean_recorded(),
                distribute(clients, plan, &ami.id, janitor, progress)
            );
            cleaned?;
            let copies = match copies {
                Ok(copies) => copies,
                Err(e) => {
                    progress.finish(format!("baked {}, but {e}", ami.id));
                    return Err(e);
                }
            };
            let until = ami
                .deprecation_time
                .as_ref()
                .map_or(String::new(), |t| format!("; deprecated from {t}"));
            let proof =
                test.as_ref()
                    .map_or("; not tested (test.enabled = false)".to_owned(), |t| {
                        format!(
                            "; its test passed in {:.0} s on {}",
                            t.seconds, t.instance_id
                        )
                    });
            // After the test passed: a record says what a tested AMI is made of. Failing to
            // write it is reported, not fatal: the AMI is good, only `bake diff` lacks it.
            let record = match (store, packages) {
                (Some(store), Some(packages)) => {
                    let written = write_record(clients, store, plan, &ami, janitor, packages).await;
                    match written {
                        Ok(url) => Some(url),
                        Err(e) => {
                            output::note(&format!("warning: image {}: {e}", plan.image));
                            None
                        }
                    }
                }
                _ => None,
            };
            let since = changed.as_ref().map_or(String::new(), |c| format!("; {c}"));
            progress.finish(format!(
                "baked {} ({}) in {:.0} s{proof}{until}{since}{}",
                ami.id,
                ami.name,
                started.elapsed().as_secs_f64(),
                regions(&copies)
            ));
            let mut baked = done(ami, false, test, copies);
            baked.changed = changed;
            baked.record = record;
            Ok(baked)
        }
        Err(failure) if options.keep_on_failure => {
            let kept: Vec<String> = janitor.recorded().iter().map(ToString::to_string).collect();
            // After a failed test, the test instance is the one to look at.
            let (what, instance) = match &failure {
                Step::Test(test::Error::Failed { instance_id, .. }) => {
                    ("the test instance", Some(instance_id.clone()))
                }
                _ => (
                    "the builder",
                    janitor.recorded().into_iter().find_map(|r| match r {
                        janitor::Resource::Instance(id) => Some(id),
                        _ => None,
                    }),
                ),
            };
            let reach = instance.map_or(String::new(), |id| {
                format!("; reach {what} with `aws ssm start-session --target {id}`")
            });
            let image = match &failure {
                Step::Test(test::Error::Failed { ami_id, .. }) => format!(
                    "; the AMI is tagged {}={} and kept until `bake prune` (gc never removes \
                     an available AMI)",
                    tags::TEST,
                    tags::TEST_FAILED
                )
                .replace("the AMI", ami_id),
                _ => String::new(),
            };
            progress.finish(format!(
                "failed; kept {} (run id {}){reach}; `bake gc --ttl 0s` removes them{image}",
                kept.join(", "),
                janitor.run_id()
            ));
            Err(failure)
        }
        Err(failure) => {
            progress.step("failed; cleaning up");
            match janitor.clean().await {
                Ok(removed) => {
                    let list: Vec<String> = removed.iter().map(ToString::to_string).collect();
                    progress.finish(format!("failed; removed {}", list.join(", ")));
                    Err(failure)
                }
                Err(cleanup) => Err(Step::CleanupAfter {
                    failure: Box::new(failure),
                    cleanup,
                }),
            }
        }
    }
}

/// The copy stage for the tested (or found) AMI `ami_id`.
async fn distribute(
    clients: &Clients,
    plan: &Plan,
    ami_id: &str,
    janitor: &Janitor,
    progress: &Progress,
) -> Result<Vec<Copy>, Step> {
    let source = copy::Source {
        ami_id: ami_id.to_owned(),
        digest: plan.rendered.digest.clone(),
        base_ami: plan.base.id.clone(),
    };
    Ok(copy::run(clients, &plan.distribute, &source, janitor, progress).await?)
}

/// `; copies: us-east-1 ami-… copied, ...` for the last line of a bake, or nothing.
fn regions(copies: &[Copy]) -> String {
    if copies.is_empty() {
        return String::new();
    }
    let each: Vec<String> = copies.iter().map(ToString::to_string).collect();
    format!("; copies: {}", each.join(", "))
}

/// Tests the built AMI unless `test.enabled = false`: tags it `bake:test=passed`, or
/// `bake:test=failed` and fails (the caller's cleanup then deregisters it unless
/// `--keep-on-failure`). With a `store`, an adopted AMI's packages are read on the test instance.
async fn tested(
    clients: &Clients,
    image: &Image,
    plan: &Plan,
    store: Option<&Store>,
    built: Built,
    janitor: &Janitor,
    progress: &Progress,
) -> Result<(Ami, Option<TestReport>, Option<Packages>), Step> {
    if !image.test.enabled {
        return Ok((built.ami, None, built.packages));
    }
    let ami = built.ami;
    let packages = built.packages;
    let tags = tags::of_run(janitor.run_id(), &plan.image, &plan.rendered.digest);
    let run = test::run(
        clients,
        image,
        plan,
        &ami.id,
        &built.group,
        &tags,
        janitor,
        progress,
    )
    .await;
    match run {
        Ok(t) => {
            test::mark(clients, &ami.id, tags::TEST_PASSED).await?;
            // An adopted AMI's builder is gone; the test instance runs the AMI as it was made, so
            // its packages make the record. Not read: no record, which is reported, not fatal.
            let packages = match packages {
                None if store.is_some() => {
                    match verify::manifest(clients, &t.instance_id, image.os, progress).await {
                        Ok(packages) => Some(packages),
                        Err(e) => {
                            output::note(&format!("warning: image {}: no record: {e}", plan.image));
                            None
                        }
                    }
                }
                known => known,
            };
            Ok((
                ami,
                Some(TestReport {
                    instance_id: t.instance_id,
                    seconds: t.seconds,
                }),
                packages,
            ))
        }
        Err(failure) => {
            progress.step(format!("{} failed its test", ami.id));
            // Tagged before anything else: an AMI that outlives this run (kept, or its
            // deregistration failed) is never taken as tested. It already says `pending`, which
            // no one takes either, so a failed tagging is only noted.
            if let Err(e) = test::mark(clients, &ami.id, tags::TEST_FAILED).await {
                output::note(&format!("warning: {e}"));
            }
            Err(failure.into())
        }
    }
}

/// What [`build`] made: the AMI, the builder's security group (the test instance's too), and
/// the package manifest read at verify (with `[store]`).
struct Built {
    ami: Ami,
    group: String,
    packages: Option<Packages>,
}

/// Installed packages: name -> version.
type Packages = std::collections::BTreeMap<String, String>;

/// The AMI a bake ended with.
struct Ami {
    id: String,
    name: String,
    deprecation_time: Option<String>,
}

/// Launch, wait, verify and image, then deprecate the image when the config says when.
async fn build(
    clients: &Clients,
    image: &Image,
    plan: &Plan,
    store: Option<&Store>,
    janitor: &Janitor,
    progress: &Progress,
) -> Result<Built, Step> {
    let tags = tags::of_run(janitor.run_id(), &plan.image, &plan.rendered.digest);
    progress.step("launching the builder");
    // The temporary NAT (egress = "nat") is taken while the security group is made: the builder
    // launches only once the route to an available gateway exists.
    let (group, _nat) = tokio::try_join!(
        async {
            launch::security_group(clients, plan, image.health.port, &tags, janitor)
                .await
                .map_err(Step::from)
        },
        async {
            match &plan.egress {
                Some(egress) => egress::take(clients, egress, &tags, janitor, progress)
                    .await
                    .map(Some)
                    .map_err(Step::from),
                None => Ok(None),
            }
        },
    )?;
    // The SSM endpoints (endpoints = "create") admit the builder's group, so they follow it; the
    // builder launches once they are available, so its agent finds SSM from its first try.
    if let Some(wanted) = &plan.endpoints {
        endpoints::take(clients, wanted, &group, &tags, janitor, progress).await?;
    }
    let spec = launch::Spec::builder(plan, janitor.run_id());
    let instance_id =
        launch::instance(clients, plan, &image.builder, &spec, &group, &tags, janitor).await?;
    let ip = health::running(clients, &instance_id, "the builder", progress).await?;
    let deadline = crate::poll::deadline(image.health.timeout.0);
    match plan.access {
        // From the runner over HTTP, while SSM registers the agent for verify.
        Access::Public => {
            let ip = ip.ok_or_else(|| health::Error::NoPublicIp {
                instance_id: instance_id.clone(),
                region: clients.region.clone(),
            })?;
            // Once the agent is Online, the user data is watched through SSM too, so a failed
            // install ends the wait at once instead of at the health deadline.
            let (online, online_seen) = tokio::sync::oneshot::channel();
            let watched = async {
                health::ssm_online(clients, &instance_id, deadline).await?;
                let _ = online.send(());
                Err::<(), _>(
                    health::user_data_failure(clients, &instance_id, &image.health, deadline).await,
                )
            };
            let ready = async {
                health::http(&instance_id, &ip, &image.health, deadline, progress).await?;
                // A closed channel: the watch ended with its error, which select! returns.
                if online_seen.await.is_err() {
                    std::future::pending::<()>().await;
                }
                Ok::<(), health::Error>(())
            };
            tokio::select! {
                ready = ready => ready?,
                failed = watched => failed?,
            }
        }
        // Nothing reaches a private builder from outside: the probe runs on it through SSM.
        Access::Private => {
            progress.step(format!(
                "waiting for {instance_id} to come Online in SSM (private builder)"
            ));
            health::ssm_online(clients, &instance_id, deadline).await?;
            health::through_ssm(clients, &instance_id, &image.health, deadline, progress).await?;
        }
    }
    let timeout = verify::timeout_of(&image.verify);
    verify::run(
        clients,
        &instance_id,
        &plan.rendered.digest,
        &image.verify.commands,
        timeout,
        progress,
    )
    .await?;
    // The manifest is read before the image: the builder is as the AMI will be.
    let packages = match store {
        Some(_) => Some(verify::manifest(clients, &instance_id, image.os, progress).await?),
        None => None,
    };
    // An AMI to be tested says so from its creation: until its verdict, nothing takes it.
    let mut image_tags = tags.clone();
    if image.test.enabled {
        image_tags.push(tags::tag(tags::TEST, tags::TEST_PENDING));
    }
    let (id, name) = image::create(
        clients,
        plan,
        &instance_id,
        &plan.ami_name,
        image.no_reboot,
        &image_tags,
        janitor,
        progress,
    )
    .await?;
    let deprecation_time = match &image.deprecate_after {
        Some(after) => Some(image::deprecate(clients, &id, after.get_ref().0).await?),
        None => None,
    };
    Ok(Built {
        ami: Ami {
            id,
            name,
            deprecation_time,
        },
        group,
        packages,
    })
}

/// Which inputs differ from the image's newest available AMI in this region (its `bake:inputs`
/// and `bake:base-ami` tags); None when the image has none yet.
async fn previous(
    clients: &Clients,
    plan: &Plan,
) -> Result<Option<records::Since>, crate::aws::CallError> {
    let Some(newest) = image::newest(clients, &plan.image).await? else {
        return Ok(None);
    };
    let tag = |key: &str| tags::value(newest.tags(), key);
    let then = tag(tags::INPUTS).map(render::Inputs::from_tag);
    Ok(Some(records::since(
        newest.image_id().unwrap_or_default(),
        then.as_ref(),
        tag(tags::BASE_AMI),
        &plan.rendered.inputs,
        &plan.base.id,
    )))
}

/// Writes the tested AMI's record to the store; its `s3://` address.
async fn write_record(
    clients: &Clients,
    store: &Store,
    plan: &Plan,
    ami: &Ami,
    janitor: &Janitor,
    packages: Packages,
) -> Result<String, records::Error> {
    let record = records::Record {
        image: plan.image.clone(),
        ami_id: ami.id.clone(),
        ami_name: ami.name.clone(),
        region: clients.region.clone(),
        digest: plan.rendered.digest.clone(),
        inputs: plan.rendered.inputs.clone(),
        base_ami: plan.base.id.clone(),
        base_name: plan.base.name.clone(),
        template: plan.template.clone(),
        os: plan.os.as_str().to_owned(),
        run_id: janitor.run_id().to_owned(),
        recorded_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        packages,
    };
    records::write(clients, store, &record).await?;
    Ok(records::url(store, &plan.image, &ami.id))
}
