//! `bake iam-policy [ami|rollout|pipeline|prune|gc|all]`: the least-privilege IAM policy a
//! command needs (from [`crate::iam`]), as a policy document; makes no AWS call.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{Context, DEFAULT_CONFIG, Outcome};
use crate::Error;
use crate::iam::{self, Command, Scope};

/// Print the IAM policy a command needs (all of them by default), as an IAM policy document.
///
/// `iam:PassRole` is narrowed to the roles of the config's instance profiles (builders and
/// rollouts), taken to be the profiles' names as the console makes them; `--role` names the roles
/// instead (the config's `[store]` still gives its S3 statements). Without a config (none named
/// and no bake.toml here) and without `--role`, any role may be passed, still only to EC2.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The command the policy is for; `all` is the union of every command's.
    #[arg(value_enum, default_value = "all")]
    pub command: Command,
    /// A role bake may pass to EC2 (repeat for several); default: the config's profile names.
    #[arg(long = "role", value_name = "NAME")]
    pub roles: Vec<String>,
}

/// The policy document: the same JSON as text or with `-o json`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Policy(serde_json::Value);

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string_pretty(&self.0).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

impl Outcome for Policy {}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<Policy, Error> {
        // The config is optional, as for gc: named and missing is an error. It gives the store's
        // S3 statements even when `--role` names the roles.
        let config = if ctx.config.is_none() && !ctx.config_path().exists() {
            if self.roles.is_empty() {
                crate::output::note(&format!(
                    "iam-policy: no config ({DEFAULT_CONFIG} is not here): iam:PassRole allows \
                     any role, to EC2 only; name the roles with --role"
                ));
            }
            None
        } else {
            Some(ctx.config()?)
        };
        let store = config
            .as_ref()
            .and_then(|c| c.store.as_ref())
            .map(|s| (s.bucket.get_ref().clone(), s.prefix.get_ref().clone()));
        let roles: BTreeSet<String> = if self.roles.is_empty() {
            config.map_or_else(BTreeSet::new, |c| {
                let builders = c
                    .image
                    .values()
                    .map(|i| i.builder.instance_profile.get_ref());
                let rollouts = c
                    .rollout
                    .values()
                    .filter_map(|r| r.instance_profile.as_ref().map(|p| p.get_ref()));
                builders.chain(rollouts).cloned().collect()
            })
        } else {
            self.roles.into_iter().collect()
        };
        Ok(Policy(iam::document(self.command, &Scope { roles, store })))
    }
}
