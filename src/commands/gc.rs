//! `bake gc`: delete what killed runs left behind, found by their `bake:run-id` tag.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Context, DEFAULT_CONFIG, HOUSEKEEPING, Outcome};
use crate::Error;
use crate::ami::{egress, endpoints};
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
    pub async fn run(self, ctx: &Context) -> Result<Collected, Error> {
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
