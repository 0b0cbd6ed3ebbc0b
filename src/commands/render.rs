//! `bake render IMAGE`: the user data an image would get on stdout; its size, compression and
//! digest on stderr.

use serde::Serialize;

use super::{Context, Outcome};
use crate::Error;
use crate::config::{self, Config};
use crate::output::{self, Format};
use crate::render::{Rendered, Renderer};

/// Print the user data IMAGE would get; size, compression and digest go to stderr.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// An image name from the config (`[image.NAME]`).
    #[arg(add = super::completions::image_names(super::DEFAULT_CONFIG))]
    pub image: String,
}

/// What `render` and `validate` report about one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub image: String,
    pub template: String,
    pub os: config::Os,
    /// Size of the script in bytes.
    pub size: usize,
    /// Size of what EC2 receives (gzip when compressed).
    pub payload_size: usize,
    pub compressed: bool,
    pub digest: String,
    /// The script itself (`render` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

impl ImageReport {
    pub fn new(name: &str, image: &config::Image, rendered: &Rendered) -> Self {
        ImageReport {
            image: name.to_owned(),
            template: image.template.get_ref().clone(),
            os: image.os,
            size: rendered.script.len(),
            payload_size: rendered.payload.len(),
            compressed: rendered.compressed,
            digest: rendered.digest.clone(),
            user_data: None,
        }
    }

    /// One line: "web: nginx on debian, 6131 bytes, not compressed, digest ...".
    pub fn summary(&self) -> String {
        let packing = if self.compressed {
            format!("gzip-compressed to {} bytes", self.payload_size)
        } else {
            "not compressed".to_owned()
        };
        format!(
            "{}: {} on {}, {} bytes, {packing}, digest {}",
            self.image, self.template, self.os, self.size, self.digest
        )
    }
}

/// The rendered user data: the script as text, the report with it as JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct UserData(ImageReport);

impl std::fmt::Display for UserData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.user_data.as_deref().unwrap_or_default())
    }
}

impl Outcome for UserData {}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<UserData, Error> {
        let config = ctx.config()?;
        render(ctx, &config, &self.image)
    }
}

fn render(ctx: &Context, config: &Config, name: &str) -> Result<UserData, Error> {
    let image = config.image(name)?;
    let rendered = Renderer::new(config)?.render(config, name, image)?;
    let mut report = ImageReport::new(name, image, &rendered);
    if ctx.format == Format::Text {
        output::note(&report.summary());
    }
    report.user_data = Some(rendered.script);
    Ok(UserData(report))
}
