//! Publishing an AMI id in SSM Parameter Store (`PREFIX/IMAGE/ami-id`), where launch templates
//! and other accounts' pipelines read it, and labelling its versions (`tested`, `live`); `bake
//! prune` keeps what is published there.

use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;

use crate::aws::{self, CallError, Clients};
use crate::poll::{self, Check, PollError, Schedule};

/// The SSM parameter an image's AMI id is published in: `PREFIX/IMAGE/ami-id`.
pub fn parameter_name(prefix: &str, image: &str) -> String {
    format!("{}/{image}/ami-id", prefix.trim_end_matches('/'))
}

/// Parameter Store validates an `aws:ec2:image` value after PutParameter has answered ("Native
/// parameter support for Amazon Machine Image IDs"): the new version shows within seconds, or
/// never when the AMI is refused. A minute without it means it was refused.
const PUBLISH_SETTLE: Duration = Duration::from_secs(60);
/// Read the parameter back after 1 s, every second for 10 s, then growing to 5 s.
const PUBLISH_SCHEDULE: Schedule = Schedule::every(Duration::from_secs(1))
    .first_after(Duration::from_secs(1))
    .dense_for(Duration::from_secs(10))
    .growing(1.5, Duration::from_secs(5));

/// The label on the parameter version `bake pipeline` published after the AMI passed its test
/// (and its rollouts, when it has any).
pub const TESTED: &str = "tested";
/// The label on the parameter version whose AMI a rollout put in service.
pub const LIVE: &str = "live";

/// What [`publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Whether a new version was written (false: the parameter held the id already).
    pub changed: bool,
    /// The version that holds the id.
    pub version: i64,
}

/// Puts the AMI id in the parameter unless it holds it already, then reads it back until it
/// does (the value is validated after PutParameter answers). Returns whether it changed and the
/// version that holds it.
pub async fn publish(
    clients: &Clients,
    parameter: &str,
    ami_id: &str,
) -> Result<Published, CallError> {
    let held = clients
        .call(|| clients.ssm.get_parameter().name(parameter).send())
        .settle(&aws::THROTTLE_BURST)
        .or_none(&["ParameterNotFound"], || {
            format!("read SSM parameter {parameter}")
        })
        .await?;
    if let Some(p) = held.as_ref().and_then(|out| out.parameter())
        && p.value() == Some(ami_id)
    {
        return Ok(Published {
            changed: false,
            version: p.version(),
        });
    }
    let request = clients
        .ssm
        .put_parameter()
        .name(parameter)
        .value(ami_id)
        .r#type(ParameterType::String)
        .data_type("aws:ec2:image")
        .overwrite(true)
        .description("The newest AMI baked by bake");
    let put = clients
        .call(|| request.clone().send())
        .or_fail(|| format!("write SSM parameter {parameter}"))
        .await?;
    let version = put.version();
    let action = || format!("publish {ami_id} in SSM parameter {parameter}");
    let read = poll::until(
        &format!("reading {parameter} back"),
        poll::deadline(PUBLISH_SETTLE),
        PUBLISH_SCHEDULE,
        |seen| tracing::debug!("{parameter}: {seen}"),
        || async {
            let read = || clients.ssm.get_parameter().name(parameter).send();
            match clients.call(read).answer().await {
                Ok(out) => {
                    let p = out.parameter();
                    match p.and_then(|p| p.value()) {
                        Some(v) if v == ami_id => Check::Ready(()),
                        v => Check::Pending(format!(
                            "it still holds {} (version {})",
                            v.unwrap_or("nothing"),
                            p.map_or(0, |p| p.version())
                        )),
                    }
                }
                Err(e) if e.is(&["ParameterNotFound"]) => {
                    Check::Pending("it does not exist yet".to_owned())
                }
                Err(e) if e.transient() => Check::Pending(e.describe()),
                Err(e) => Check::Failed(e.describe()),
            }
        },
    )
    .await;
    match read {
        Ok(()) => Ok(Published {
            changed: true,
            version,
        }),
        Err(PollError::Failed(message)) => Err(clients.failed(
            action(),
            format!("reading it back after PutParameter: {message}"),
        )),
        Err(PollError::TimedOut { last }) => {
            let history = history_has(clients, parameter, version).await;
            Err(clients.failed(
                action(),
                format!(
                    "PutParameter answered version {version}, but {PUBLISH_SETTLE:?} later {last}; \
                     {history}: Parameter Store validates aws:ec2:image values after PutParameter \
                     and drops one naming an AMI that is not available in {}",
                    clients.region
                ),
            ))
        }
    }
}

/// Puts `labels` on `version` of the parameter (LabelParameterVersion): a label on another version
/// moves here, as Parameter Store moves it. A label Parameter Store refuses (it answers it in
/// InvalidLabels instead of failing) is an error.
pub async fn label(
    clients: &Clients,
    parameter: &str,
    version: i64,
    labels: &[&str],
) -> Result<(), CallError> {
    let action = || format!("label version {version} of SSM parameter {parameter} {labels:?}");
    let mut request = clients
        .ssm
        .label_parameter_version()
        .name(parameter)
        .parameter_version(version);
    for l in labels {
        request = request.labels(*l);
    }
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(action)
        .await?;
    if !out.invalid_labels().is_empty() {
        return Err(clients.failed(
            action(),
            format!(
                "Parameter Store refused the labels {:?} (InvalidLabels)",
                out.invalid_labels()
            ),
        ));
    }
    Ok(())
}

/// What the parameter's history says about `version`, for the failure message.
async fn history_has(clients: &Clients, parameter: &str, version: i64) -> String {
    let mut found = false;
    let mut token = None;
    // Bounded: the history holds at most 100 versions, 50 a page.
    for _ in 0..3 {
        let page = clients
            .ssm
            .get_parameter_history()
            .name(parameter)
            .set_next_token(token.take())
            .send()
            .await;
        let Ok(page) = page else {
            return "its history could not be read".to_owned();
        };
        found |= page.parameters().iter().any(|p| p.version() == version);
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    if found {
        format!("version {version} is in its history")
    } else {
        format!("its history has no version {version}")
    }
}
