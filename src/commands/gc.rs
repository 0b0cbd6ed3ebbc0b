//! `bake gc`: delete what killed runs left behind, found by their `bake:run-id` tag, in one region
//! or (`--region` several times, `--all-regions`) in each region at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Context, DEFAULT_CONFIG, HOUSEKEEPING, Outcome};
use futures_util::StreamExt;

use crate::Error;
use crate::ami::{egress, endpoints};
use crate::aws::Clients;
use crate::aws::sdk;
use crate::janitor::{self, Resource};
use crate::output;

/// The longest `--ttl`: ten years as humantime counts them (365.25 days each), so "10y" itself
/// is accepted. Nothing bake leaves behind is older than that.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 31_557_600);

/// Delete what killed runs left behind (found by their bake:run-id tag): instances, security
/// groups, unfinished images and unused snapshots older than the TTL, and temporary NAT gateways
/// (with their routes and Elastic IPs) and SSM endpoints (with their group) whose users are all
/// older than the TTL, and the parts of rollout stacks a killed run left half-built (its Auto
/// Scaling group, alarms, load balancer, target group, launch template and security groups).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only what is older than this: 0s to 10y ("90m", "2h", "7d").
    #[arg(long, default_value = "2h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Work in every region of the config: the run's region, the images' distribute regions and
    /// the rollouts' regions (each at once, in a bounded pool). `--region` given several times
    /// names the regions instead.
    #[arg(long)]
    pub all_regions: bool,
}

/// At most this many regions are collected at once: each region's calls are bounded by its own
/// throttling, and four keeps a run of many regions from holding a connection pool per region
/// open at once, while a typical two or three regions still run side by side.
pub const REGION_POOL: usize = 4;

/// What gc did in each region, or why it could not: one region's failure (throttling that
/// outlasted its retries, a denied call) never stops the others.
#[derive(Debug, Serialize)]
pub struct InRegions {
    pub dry_run: bool,
    pub regions: Vec<InRegion>,
}

/// One region's collection.
#[derive(Debug, Serialize)]
pub struct InRegion {
    pub region: String,
    pub resources: Vec<Resource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl std::fmt::Display for InRegions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = super::verb(self.dry_run, "deleted", "would delete");
        for r in &self.regions {
            for resource in &r.resources {
                writeln!(f, "{}: {verb} {resource}", r.region)?;
            }
            if let Some(error) = &r.error {
                writeln!(f, "{}: failed: {error}", r.region)?;
            }
        }
        Ok(())
    }
}

impl Outcome for InRegions {
    fn into_result(self) -> Result<(), Error> {
        let failed: Vec<String> = self
            .regions
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| format!("gc in {}: {e}", r.region)))
            .collect();
        super::none_failed(failed, Error::Regions)
    }
}

/// gc's result: one region as ever, or per region.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum GcResult {
    One(Collected),
    Regions(InRegions),
}

impl std::fmt::Display for GcResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GcResult::One(c) => c.fmt(f),
            GcResult::Regions(r) => r.fmt(f),
        }
    }
}

impl Outcome for GcResult {
    fn into_result(self) -> Result<(), Error> {
        match self {
            GcResult::One(c) => c.into_result(),
            GcResult::Regions(r) => r.into_result(),
        }
    }
}

/// What was (or, with `--dry-run`, would be) deleted.
#[derive(Debug, Serialize)]
pub struct Collected {
    pub region: String,
    pub dry_run: bool,
    pub resources: Vec<Resource>,
}

impl Outcome for Collected {}

impl std::fmt::Display for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = super::verb(self.dry_run, "deleted", "would delete");
        self.resources
            .iter()
            .try_for_each(|r| writeln!(f, "{verb} {r}"))
    }
}

impl Args {
    pub async fn run(self, ctx: &Context) -> Result<GcResult, Error> {
        // gc works from tags alone; the config only contributes a default region, so gc runs
        // without one when none was named and bake.toml is not here. A named one is always read.
        let config = if ctx.config.is_none() && !ctx.config_path().exists() {
            None
        } else {
            Some(ctx.config()?)
        };
        let target = ctx.target(config.as_ref(), HOUSEKEEPING);
        if config.is_none() {
            let (region, from) = sdk::region_and_source(&target).await?;
            output::note(&format!(
                "gc: no config ({DEFAULT_CONFIG} is not here; name one with -c or BAKE_CONFIG): \
                 working in region {region}, from {from}"
            ));
        }
        let clients = ctx.clients(config.as_ref(), HOUSEKEEPING).await?;
        let regions = match (&config, self.all_regions) {
            (Some(config), true) => config.regions(&clients.region),
            (None, true) => {
                return Err(Error::Config(crate::config::Error::Flag {
                    flag: "--all-regions",
                    message: format!(
                        "the regions come from the config, and there is none ({DEFAULT_CONFIG} \
                         is not here; name one with -c or BAKE_CONFIG, or name the regions \
                         with --region)"
                    ),
                }));
            }
            (_, false) => ctx.regions.clone(),
        };
        if regions.len() <= 1 {
            return self.collect(&clients).await.map(GcResult::One);
        }
        let each = regions.iter().map(|r| clients.in_region(r)).collect();
        Ok(GcResult::Regions(self.collect_regions(each).await))
    }

    /// gc in each of `each` (one region's clients each) at once, at most [`REGION_POOL`] at a
    /// time; a region's error is its own. In the order given.
    pub async fn collect_regions(&self, each: Vec<Clients>) -> InRegions {
        let order: Vec<String> = each.iter().map(|c| c.region.clone()).collect();
        let mut done: Vec<InRegion> = futures_util::stream::iter(each)
            .map(|here| async move {
                let region = here.region.clone();
                match self.collect(&here).await {
                    Ok(c) => InRegion {
                        region,
                        resources: c.resources,
                        error: None,
                    },
                    Err(e) => InRegion {
                        region,
                        resources: Vec::new(),
                        error: Some(e.to_string()),
                    },
                }
            })
            .buffer_unordered(REGION_POOL)
            .collect()
            .await;
        // In the order the regions were named, whichever finished first.
        done.sort_by_key(|r| order.iter().position(|n| *n == r.region));
        InRegions {
            dry_run: self.dry_run,
            regions: done,
        }
    }

    /// gc in `clients`' region.
    async fn collect(&self, clients: &Clients) -> Result<Collected, Error> {
        let clients = clients.clone();
        // --ttl is at most ten years, so this is a real time; the epoch would mean "everything".
        let cutoff = SystemTime::now()
            .checked_sub(self.ttl)
            .unwrap_or(UNIX_EPOCH);
        let scope = janitor::Scope::LeftBefore(cutoff);
        let mut found = janitor::find(&clients, &scope, &Default::default()).await?;
        // The temporary NAT gateways (their routes and addresses) whose every user is past the
        // cutoff; removed after the builders, which may still send through them.
        let egress = egress::find_left(&clients, cutoff)
            .await
            .map_err(janitor::Error::from)?;
        // bake's SSM endpoints (and their group) whose every user is past the cutoff; removed
        // after the builders, whose groups their group admits.
        let endpoints = endpoints::find_left(&clients, cutoff)
            .await
            .map_err(janitor::Error::from)?;
        if !self.dry_run {
            let builders = janitor::delete(&clients, &found).await;
            let nats = egress::remove_left(&clients, cutoff).await;
            let ends = endpoints::remove_left(&clients, cutoff).await;
            let mut left = match builders {
                Err(janitor::Error::Left { left, .. }) => left,
                Err(e) => return Err(e.into()),
                Ok(()) => Vec::new(),
            };
            for removed in [nats, ends] {
                match removed {
                    Ok(removed) => found.extend(removed),
                    Err(stuck) => left.extend(stuck),
                }
            }
            if !left.is_empty() {
                return Err(janitor::Error::Left {
                    region: clients.region.clone(),
                    left,
                }
                .into());
            }
        } else {
            found.extend(egress);
            found.extend(endpoints);
        }
        found.sort();
        found.dedup();
        Ok(Collected {
            region: clients.region,
            dry_run: self.dry_run,
            resources: found,
        })
    }
}

/// `--ttl`: a duration from 0s to [`MAX_TTL`], so the cutoff `now - ttl` is a real time.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let range = format!("from 0s to {}", humantime::format_duration(MAX_TTL));
    let ttl = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration {range}, like \"2h\" or \"7d\""))?;
    if ttl > MAX_TTL {
        return Err(format!("must be {range} (like \"2h\" or \"7d\")"));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_bounded_and_ten_years_as_humantime_counts_them_fits() {
        assert_eq!(humantime::parse_duration("10y").unwrap(), MAX_TTL);
        assert_eq!(parse_ttl("10y").unwrap(), MAX_TTL);
        assert_eq!(parse_ttl("0s").unwrap(), Duration::ZERO);
        let refused = parse_ttl("300000000000y").unwrap_err();
        assert!(refused.contains("from 0s to 10years"), "{refused}");
        assert!(parse_ttl("10y 1s").is_err());
        assert!(
            parse_ttl("soon")
                .unwrap_err()
                .contains("from 0s to 10years")
        );
    }
}
