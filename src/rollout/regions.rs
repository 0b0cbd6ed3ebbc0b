//! A rollout across its regions: every region preflighted before any is changed, then each rolled
//! out in order with the image's copy in that region, stopping at the first failure.

use serde::Serialize;
use tokio::task::JoinHandle;

use super::preflight::{self, Ami, Plan};
use super::{Error, RolledOut, Step};
use crate::aws::{self, Clients};
use crate::config::{Config, Rollout};
use crate::output::Progress;
use crate::resolve::filter;
use crate::tags;

/// Which AMI each region rolls out.
#[derive(Debug, Clone)]
pub enum Pick {
    /// The newest one baked from the image's current inputs, found in each region by its tags
    /// (a copy carries the source's digest and base).
    Newest,
    /// This AMI of the run's region, and in every other region its copy (the image tagged
    /// `bake:source-ami` with it).
    Given(String),
    /// The AMI each region rolls out, by region (the pipeline's: the bake and its copies); a
    /// region missing here has no copy to roll out.
    PerRegion(Vec<(String, String)>),
}

/// What one region of a rollout came to.
#[derive(Debug, Serialize)]
pub struct InRegion {
    pub region: String,
    /// ok (rolled out), skipped (the group already ran the AMI), failed, not started (an earlier
    /// region failed).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<RolledOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A rollout across several regions: each region's outcome in the rollout's order, and the
/// failure that stopped it (the command's exit code).
#[derive(Debug, Serialize)]
pub struct Regional {
    pub rollout: String,
    pub regions: Vec<InRegion>,
    #[serde(skip)]
    pub failure: Option<Box<Error>>,
}

impl std::fmt::Display for Regional {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.regions {
            match (&r.result, &r.error) {
                (Some(done), _) => writeln!(
                    f,
                    "{}: {} {} serves {} at {}",
                    r.region, r.status, done.asg, done.ami_id, done.url
                )?,
                (None, Some(error)) => writeln!(f, "{}: {}: {error}", r.region, r.status)?,
                (None, None) => writeln!(f, "{}: {}", r.region, r.status)?,
            }
        }
        Ok(())
    }
}

/// One region's clients and what its preflight resolved.
pub struct Planned {
    pub clients: Clients,
    pub plan: Plan,
}

/// The preflight of `[rollout.NAME]` in each of `regions` (its clients `clients.in_region`),
/// before anything is changed anywhere; the first failure, with its region, stops it.
pub async fn preflight_all(
    clients: &Clients,
    config: &Config,
    name: &str,
    rollout: &Rollout,
    regions: &[String],
    pick: &Pick,
) -> Result<Vec<Planned>, Error> {
    let mut planned = Vec::new();
    for region in regions {
        let here = clients.in_region(region);
        let fail = |step: Step| Error {
            rollout: in_region(name, region, regions.len()),
            step,
        };
        let ami = ami_in(clients, &here, pick)
            .await
            .map_err(|e| fail(e.into()))?;
        let plan = preflight::plan(&here, config, name, rollout, ami.as_deref())
            .await
            .map_err(|e| fail(e.into()))?;
        planned.push(Planned {
            clients: here,
            plan,
        });
    }
    Ok(planned)
}

/// Rolls out each preflighted region in order, stopping at the first failure; the regions after
/// it are reported `not started`.
pub async fn apply_all(
    name: &str,
    rollout: &Rollout,
    planned: Vec<Planned>,
    signal: &mut JoinHandle<u8>,
    progress: &dyn Fn(&str) -> Progress,
) -> Regional {
    let count = planned.len();
    let mut out = Regional {
        rollout: name.to_owned(),
        regions: Vec::new(),
        failure: None,
    };
    for Planned { clients, plan } in planned {
        let region = clients.region.clone();
        if out.failure.is_some() {
            out.regions.push(InRegion {
                region,
                status: "not started",
                result: None,
                error: None,
            });
            continue;
        }
        let shown = progress(&region);
        match super::apply(&clients, rollout, plan, &shown, signal).await {
            Ok(done) => out.regions.push(InRegion {
                region,
                status: if done.changed { "ok" } else { "skipped" },
                result: Some(done),
                error: None,
            }),
            Err(step) => {
                let error = Error {
                    rollout: in_region(name, &region, count),
                    step,
                };
                out.regions.push(InRegion {
                    region,
                    status: "failed",
                    result: None,
                    error: Some(error.step.to_string()),
                });
                out.failure = Some(Box::new(error));
            }
        }
    }
    out
}

/// The rollout's name as its errors say it: with the region when it has several.
pub fn in_region(name: &str, region: &str, regions: usize) -> String {
    if regions > 1 {
        format!("{name} in {region}")
    } else {
        name.to_owned()
    }
}

/// The AMI `pick` names in `here`'s region (None: the newest baked, found by preflight); `run`
/// is the run's region's clients.
pub async fn ami_in(
    run: &Clients,
    here: &Clients,
    pick: &Pick,
) -> Result<Option<String>, preflight::Error> {
    match pick {
        Pick::Newest => Ok(None),
        Pick::Given(id) if here.region == run.region => Ok(Some(id.clone())),
        Pick::Given(id) => copy_of(here, id).await.map(|ami| Some(ami.id)),
        Pick::PerRegion(amis) => amis
            .iter()
            .find(|(region, _)| *region == here.region)
            .map(|(_, ami)| Some(ami.clone()))
            .ok_or_else(|| preflight::Error::Lookup {
                kind: "AMI",
                reference: "the image's copy".into(),
                region: here.region.clone(),
                detail: "the bake has no available copy there (its copy failed or the region is \
                         not one of the image's distribute regions)"
                    .into(),
            }),
    }
}

/// The available copy in `clients`' region of AMI `source` (tagged `bake:source-ami` with it).
pub async fn copy_of(clients: &Clients, source: &str) -> Result<Ami, preflight::Error> {
    let request = clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(tags::filter(tags::SOURCE_AMI, source))
        .filters(filter("state", "available"));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("look for the copy of {source}"))
        .await?;
    let newest = out
        .images()
        .iter()
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
        .ok_or_else(|| preflight::Error::Lookup {
            kind: "AMI",
            reference: format!("the copy of {source}"),
            region: clients.region.clone(),
            detail: format!(
                "no available image of this account is tagged {}={source}: it was not copied \
                 here (bake ami copies to [image.NAME.distribute] regions)",
                tags::SOURCE_AMI
            ),
        })?;
    Ok(Ami {
        id: newest.image_id().unwrap_or_default().to_owned(),
        name: newest.name().unwrap_or_default().to_owned(),
    })
}
