//! `bake validate`: the config, its templates and the references in them, every image rendered;
//! no AWS call, except HeadBucket on the `[store]` bucket when the config has one.

use std::path::PathBuf;

use serde::Serialize;

use super::render::ImageReport;
use super::{Context, HOUSEKEEPING, Outcome};
use crate::Error;
use crate::config::{self, Config};
use crate::output;
use crate::render::{Rendered, Renderer};

/// Check the config, its templates and the references in them, rendering every image.
/// Makes no AWS call, except that with a `[store]` it checks its bucket is there (HeadBucket).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

/// A valid config: each image's report, its rollouts, and the warnings (also on stderr).
#[derive(Debug, Clone, Serialize)]
pub struct Validated {
    pub config: PathBuf,
    pub images: Vec<ImageReport>,
    pub rollouts: Vec<String>,
    pub warnings: Vec<String>,
    /// "rollout web: image web to ASG Web-ASG behind ALB Web-ALB", for the text.
    #[serde(skip)]
    rollout_lines: Vec<String>,
}

impl std::fmt::Display for Validated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for report in &self.images {
            writeln!(f, "ok {}", report.summary())?;
        }
        for line in &self.rollout_lines {
            writeln!(f, "ok {line}")?;
        }
        Ok(())
    }
}

impl Outcome for Validated {}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<Validated, Error> {
        let config = ctx.config()?;
        let validated = validate(&config)?;
        if let Some(store) = &config.store {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime starts");
            runtime.block_on(async {
                let clients = ctx.clients(Some(&config), HOUSEKEEPING).await?;
                crate::lease::check_bucket(&clients, store)
                    .await
                    .map_err(|e| {
                        Error::Config(
                            config.error_at(store.bucket.span(), format!("store.bucket: {e}")),
                        )
                    })
            })?;
        }
        Ok(validated)
    }
}

fn validate(config: &Config) -> Result<Validated, Error> {
    let renderer = Renderer::new(config)?;
    let mut errors = Vec::new();
    let mut rendered = Vec::new();
    for (name, image) in &config.image {
        let checked = renderer.render(config, name, image).and_then(|r| {
            renderer.ami_name(config, name, image, &r.digest, std::time::SystemTime::now())?;
            Ok(r)
        });
        match checked {
            Ok(r) => rendered.push((name, image, r)),
            Err(e) => errors.push(Error::Render(e)),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    let warnings: Vec<String> = rendered
        .iter()
        .filter_map(|(name, image, r)| agent_warning(config, name, image, r))
        .collect();
    for warning in &warnings {
        output::note(&format!("warning: {warning}"));
    }
    Ok(Validated {
        config: config.source.path.clone(),
        images: rendered
            .iter()
            .map(|(name, image, r)| ImageReport::new(name, image, r))
            .collect(),
        rollouts: config.rollout.keys().cloned().collect(),
        warnings,
        rollout_lines: config
            .rollout
            .iter()
            .map(|(name, rollout)| {
                format!(
                    "rollout {name}: image {} to ASG {} behind ALB {}",
                    rollout.image.get_ref(),
                    rollout.asg,
                    rollout.alb
                )
            })
            .collect(),
    })
}

/// Debian's AMIs ship no SSM agent (Ubuntu's and Amazon Linux's do), and bake verifies through
/// SSM: user data for `os = "debian"` that never mentions the agent bakes a builder that never
/// comes Online. The built-in templates install it (partials/common.sh.j2).
fn agent_warning(
    config: &Config,
    name: &str,
    image: &config::Image,
    rendered: &Rendered,
) -> Option<String> {
    if image.os != config::Os::Debian || rendered.script.contains("amazon-ssm-agent") {
        return None;
    }
    Some(format!(
        "{}: image.{name}.template: template {:?} for os = \"debian\" never mentions \
         amazon-ssm-agent; Debian's AMIs ship no SSM agent, so the builder never comes Online in \
         SSM and verification times out. Install it in the template (include \
         \"partials/common.sh.j2\", which does), or use an image that ships it (Ubuntu)",
        config.source.locate(image.template.span().start),
        image.template.get_ref()
    ))
}
