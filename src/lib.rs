//! bake: turns user-data templates into verified golden AMIs and rolls them out.
//!
//! The binary is a thin wrapper around [`run`]; each module owns one part of the work.

pub mod cli;
pub mod config;
pub mod output;
pub mod render;

use serde::Serialize;

use cli::{Cli, Command};
use config::Config;
use render::{Rendered, Renderer};

/// Why a command failed; each variant maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Render(#[from] render::Error),
    /// Several problems found by `bake validate`.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Error>),
    #[error("cannot write the result: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    /// The process exit code: 2 for bad usage or config, 1 for a failed run.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Render(_) | Error::Invalid(_) => 2,
            Error::Output(_) => 1,
        }
    }
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    let config = Config::load(&cli.config)?;
    match &cli.command {
        Command::Render { image } => render_image(&cli, &config, image),
        Command::Validate => validate(&cli, &config),
    }
}

/// What `render` and `validate` report about one image.
#[derive(Serialize)]
struct ImageReport<'a> {
    image: &'a str,
    template: &'a str,
    os: config::Os,
    /// Size of the script in bytes.
    size: usize,
    /// Size of what EC2 receives (gzip when compressed).
    payload_size: usize,
    compressed: bool,
    digest: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_data: Option<&'a str>,
}

impl<'a> ImageReport<'a> {
    fn new(name: &'a str, image: &'a config::Image, rendered: &'a Rendered) -> Self {
        ImageReport {
            image: name,
            template: image.template.get_ref(),
            os: image.os,
            size: rendered.script.len(),
            payload_size: rendered.payload.len(),
            compressed: rendered.compressed,
            digest: &rendered.digest,
            user_data: None,
        }
    }

    fn summary(&self) -> String {
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

fn render_image(cli: &Cli, config: &Config, name: &str) -> Result<(), Error> {
    let image = config.image(name)?;
    let rendered = Renderer::new(config).render(config, name, image)?;
    let mut report = ImageReport::new(name, image, &rendered);
    if cli.output == output::Format::Text {
        output::note(&report.summary());
    }
    report.user_data = Some(&rendered.script);
    output::result(cli.output, &rendered.script, &report)?;
    Ok(())
}

fn validate(cli: &Cli, config: &Config) -> Result<(), Error> {
    let renderer = Renderer::new(config);
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
    let reports: Vec<ImageReport> = rendered
        .iter()
        .map(|(name, image, r)| ImageReport::new(name, image, r))
        .collect();
    let mut text: String = reports
        .iter()
        .map(|r| format!("ok {}\n", r.summary()))
        .collect();
    for (name, rollout) in &config.rollout {
        text.push_str(&format!(
            "ok rollout {name}: image {} to ASG {} behind ALB {}\n",
            rollout.image.get_ref(),
            rollout.asg,
            rollout.alb
        ));
    }
    let json = serde_json::json!({
        "config": config.source.path,
        "images": reports,
        "rollouts": config.rollout.keys().collect::<Vec<_>>(),
    });
    output::result(cli.output, &text, &json)?;
    Ok(())
}
