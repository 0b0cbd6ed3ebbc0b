//! `bake prune IMAGE...`: deregister old AMIs of images and delete their snapshots, in one region
//! or (`--region` several times, `--all-regions`) across regions, an AMI and its copies as one.

use serde::Serialize;

use super::{Context, HOUSEKEEPING, Images, Outcome};
use crate::Error;
use crate::prune::{self, Pruned};

/// Deregister old AMIs of images and delete their snapshots, keeping the newest and every
/// AMI still used by an instance, a launch template or an Auto Scaling group.
#[derive(Debug, Clone, clap::Args)]
#[command(mut_arg("images", |a| a.help(IMAGES)), mut_arg("all", |a| a.help(ALL)))]
pub struct Args {
    #[command(flatten)]
    pub images: Images,
    /// How many of each image's newest AMIs to keep (0 or more).
    #[arg(long, default_value_t = 3, value_parser = super::parse_keep, allow_negative_numbers = true)]
    pub keep: usize,
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where `bake pipeline` publishes (PREFIX/IMAGE/ami-id): the AMI in that parameter, in
    /// any region, is kept.
    #[arg(long, default_value = "/bake")]
    pub publish_prefix: String,
    /// Prune in every region of the config (the run's region, the images' distribute regions,
    /// the rollouts' regions) as one: an AMI and its copies go together, only when no region
    /// uses any of them. `--region` given several times names the regions instead.
    #[arg(long)]
    pub all_regions: bool,
}

/// The help of `IMAGES...` and `--all` here.
const IMAGES: &str = "Image names from the config";
const ALL: &str = "Prune every image in the config";

/// What pruning each image did.
#[derive(Debug, Serialize)]
pub struct Prunes {
    pub region: String,
    pub dry_run: bool,
    pub images: Vec<Pruned>,
}

impl std::fmt::Display for Prunes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = super::verb(self.dry_run, "removed", "would remove");
        for pruned in &self.images {
            let name = match &pruned.region {
                Some(region) => format!("{} in {region}", pruned.image),
                None => pruned.image.clone(),
            };
            if let Some(error) = &pruned.error {
                writeln!(f, "{name}: failed: {error}")?;
            }
            for r in &pruned.removed {
                writeln!(f, "{name}: {verb} {} {}", r.ami_id, r.name)?;
            }
            for k in &pruned.kept {
                writeln!(f, "{name}: kept {} {} ({})", k.ami_id, k.name, k.why)?;
            }
            for region in &pruned.unread {
                writeln!(
                    f,
                    "{name}: warning: cannot read the published parameter in {region}"
                )?;
            }
        }
        Ok(())
    }
}

impl Outcome for Prunes {
    /// Pruning across regions is printed region by region, then fails naming the regions that
    /// failed.
    fn into_result(self) -> Result<(), Error> {
        let failed: Vec<String> = self
            .images
            .iter()
            .filter_map(|p| {
                let region = p.region.as_deref().unwrap_or(&self.region);
                p.error
                    .as_ref()
                    .map(|e| format!("prune {} in {region}: {e}", p.image))
            })
            .collect();
        super::none_failed(failed, Error::Regions)
    }
}

impl Args {
    pub async fn run(self, ctx: &Context) -> Result<Prunes, Error> {
        let config = ctx.config()?;
        let names = self.images.names(&config)?;
        let clients = ctx.clients(Some(&config), HOUSEKEEPING).await?;
        let options = prune::Options {
            keep: self.keep,
            dry_run: self.dry_run,
            publish_prefix: self.publish_prefix,
        };
        let regions = if self.all_regions {
            config.regions(&clients.region)
        } else {
            ctx.regions.clone()
        };
        if regions.len() > 1 {
            let mut images = Vec::new();
            for name in &names {
                images.extend(prune::prune_across(&clients, &regions, name, &options, None).await);
            }
            return Ok(Prunes {
                region: clients.region,
                dry_run: options.dry_run,
                images,
            });
        }
        // Pruning one image never changes what holds another's AMIs: one census serves all.
        let mut census = prune::Census::default();
        let mut images = Vec::new();
        for name in &names {
            // An image copied to other regions: its copies there hold its AMIs here too (one
            // family), so every region it is in is read, and this one pruned.
            let family = config.image_regions(name, &clients.region);
            if family.len() > 1 {
                let only = Some(clients.region.as_str());
                images.extend(prune::prune_across(&clients, &family, name, &options, only).await);
                continue;
            }
            images.push(prune::prune(&clients, name, &options, &mut census).await?);
        }
        Ok(Prunes {
            region: clients.region,
            dry_run: options.dry_run,
            images,
        })
    }
}
