//! `bake ami IMAGE...`: bake verified golden AMIs, several images at once; prints each AMI id.

use std::time::Duration;

use serde::Serialize;

use super::{CheckIp, Context, Images, Outcome};
use crate::Error;
use crate::ami::{self, Baked};
use crate::config::Config;

/// What a bake spends outside its configured timeouts at worst: the builder reaching `running`
/// (10 min), the AMI becoming available (60 min) and the builder's termination (10 min), as the
/// waits in `ami` bound them.
const BAKE_FIXED: Duration = Duration::from_secs(80 * 60);

/// Bake verified golden AMIs: launch a builder, wait for HTTP health, verify through SSM,
/// create the AMI, test it on an instance of its own, terminate both. Prints the AMI id.
#[derive(Debug, Clone, clap::Args)]
#[command(mut_arg("images", |a| a.help(IMAGES)), mut_arg("all", |a| a.help(ALL)))]
pub struct Args {
    #[command(flatten)]
    pub images: Images,
    /// Bake even when an AMI with the same inputs exists.
    #[arg(long)]
    pub force: bool,
    /// On failure leave the builder running to look at it (remove it later with `bake gc`).
    #[arg(long)]
    pub keep_on_failure: bool,
    #[command(flatten)]
    pub checkip: CheckIp,
}

/// The help of `IMAGES...` and `--all` here.
const IMAGES: &str = "Image names from the config; several are baked at once";
const ALL: &str = "Bake every image in the config";

/// The images baked (or found baked), and those that failed.
#[derive(Debug, Serialize)]
pub struct Bakes {
    pub images: Vec<Baked>,
    pub errors: Vec<Failure>,
    /// How many images were asked for: one prints its AMI id alone.
    #[serde(skip)]
    asked: usize,
    #[serde(skip)]
    failed: Vec<ami::Error>,
}

/// One image that failed, as `-o json` lists it.
#[derive(Debug, Serialize)]
pub struct Failure {
    pub image: String,
    pub error: String,
}

impl std::fmt::Display for Bakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One image: its AMI id alone on the first line; several: `IMAGE AMI`. Each copy
        // follows its image: `[IMAGE] REGION AMI`, or `[IMAGE] REGION failed: why`.
        let alone = self.asked == 1 && self.images.len() == 1;
        for b in &self.images {
            let image = if alone {
                String::new()
            } else {
                format!("{} ", b.image)
            };
            writeln!(f, "{image}{}", b.ami_id)?;
            for copy in &b.copies {
                match (&copy.outcome, &copy.ami_id) {
                    (ami::CopyOutcome::Failed(why), _) => {
                        writeln!(f, "{image}{} failed: {why}", copy.region)?;
                    }
                    (_, Some(id)) => writeln!(f, "{image}{} {id}", copy.region)?,
                    (_, None) => writeln!(f, "{image}{} -", copy.region)?,
                }
            }
        }
        Ok(())
    }
}

impl Outcome for Bakes {
    fn into_result(self) -> Result<(), Error> {
        super::none_failed(self.failed, Error::Ami)
    }
}

impl Args {
    pub async fn run(self, ctx: &Context) -> Result<Bakes, Error> {
        let config = ctx.config()?;
        let names = self.images.names(&config)?;
        let clients = ctx
            .clients(Some(&config), worst_case(&config, &names))
            .await?;
        let options = ami::Options {
            force: self.force,
            keep_on_failure: self.keep_on_failure,
        };
        let (images, mut failed, leases) = ami::bake_all(
            &clients,
            &config,
            &names,
            &options,
            &self.checkip.checkip_url,
        )
        .await?;
        // `bake ami` is done with each image once it is baked: its lease goes back at once.
        leases.release_all().await;
        // An image whose copy failed in some region is good where it is: it is printed with
        // every region's outcome, and the command exits 1 naming the regions that lack it.
        for baked in &images {
            let copies: Vec<ami::Copy> = baked.failed_copies().into_iter().cloned().collect();
            if !copies.is_empty() {
                failed.push(ami::Error {
                    image: baked.image.clone(),
                    step: ami::distribute::Error::CopiesFailed(copies).into(),
                });
            }
        }
        Ok(Bakes {
            images,
            errors: failed
                .iter()
                .map(|e| Failure {
                    image: e.image.clone(),
                    error: e.step.to_string(),
                })
                .collect(),
            asked: names.len(),
            failed,
        })
    }
}

/// How long baking `names` may take at worst: they bake at once, so the slowest one.
pub fn worst_case(config: &Config, names: &[String]) -> Duration {
    let bake = |name: &String| {
        config.image.get(name).map_or(Duration::ZERO, |image| {
            image
                .health
                .timeout
                .0
                .saturating_add(ami::verify::timeout_of(&image.verify))
                .saturating_add(BAKE_FIXED)
                .saturating_add(test_worst_case(image))
                .saturating_add(if image.distribute.regions.is_empty() {
                    Duration::ZERO
                } else {
                    ami::distribute::COPY_FIXED
                })
        })
    };
    names.iter().map(bake).max().unwrap_or_default()
}

/// The test stage at worst: the instance reaching `running`, its health wait and its commands;
/// nothing when it is off.
fn test_worst_case(image: &crate::config::Image) -> Duration {
    if !image.test.enabled {
        return Duration::ZERO;
    }
    ami::test::TEST_FIXED
        .saturating_add(image.test.timeout.0)
        .saturating_add(ami::verify::timeout_of(&image.verify))
}
