//! `bake diff AMI_A AMI_B`: what changed from one baked AMI to another, from their records in the
//! `[store]`: inputs, base AMI, packages added, removed and upgraded.

use std::time::Duration;

use super::{Context, Outcome};
use crate::Error;
use crate::aws::Clients;
use crate::config::Store;
use crate::records::{self, Diff, Record};
use crate::tags;

/// Two DescribeImages and two GetObjects, with the SDK's retries.
const DIFF_WORST_CASE: Duration = Duration::from_secs(5 * 60);

/// Show what changed between two AMIs bake baked (in this region): the inputs whose digests
/// differ, the base AMI, and the packages added, removed or upgraded, from the records each bake
/// keeps in the [store] bucket.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The earlier AMI (ami-...).
    pub from: String,
    /// The later AMI (ami-...).
    pub to: String,
}

impl Outcome for Diff {}

impl Args {
    pub async fn run(self, ctx: &Context) -> Result<Diff, Error> {
        let config = ctx.config()?;
        let store = config
            .store
            .as_ref()
            .ok_or_else(|| records::Error::NoStore {
                config: config.source.path.display().to_string(),
            })?;
        let clients = ctx.clients(Some(&config), DIFF_WORST_CASE).await?;
        let (a, b) = tokio::try_join!(
            record_of(&clients, store, &self.from),
            record_of(&clients, store, &self.to)
        )?;
        Ok(records::diff(&a, &b))
    }
}

/// The record of `ami_id`: its image from its `bake:image` tag, then its record in the store.
async fn record_of(clients: &Clients, store: &Store, ami_id: &str) -> Result<Record, Error> {
    let request = clients.ec2.describe_images().image_ids(ami_id);
    let found = clients
        .call(|| request.clone().send())
        .or_none(&["InvalidAMIID.NotFound", "InvalidAMIID.Malformed"], || {
            format!("describe {ami_id}")
        })
        .await
        .map_err(records::Error::from)?
        .and_then(|out| out.images.unwrap_or_default().into_iter().next());
    let Some(image) = found else {
        return Err(records::Error::NoAmi {
            ami_id: ami_id.to_owned(),
            region: clients.region.clone(),
        }
        .into());
    };
    let Some(name) =
        tags::map(image.tags().iter().map(|t| (t.key(), t.value()))).remove(tags::IMAGE)
    else {
        return Err(records::Error::NotBaked {
            ami_id: ami_id.to_owned(),
            region: clients.region.clone(),
        }
        .into());
    };
    records::read(clients, store, &name, ami_id)
        .await?
        .ok_or_else(|| {
            records::Error::NoRecord {
                ami_id: ami_id.to_owned(),
                image: name.clone(),
                url: records::url(store, &name, ami_id),
            }
            .into()
        })
}
