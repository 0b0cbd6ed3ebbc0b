//! The lifecycle bake's shared resources (the temporary NAT gateway, the SSM endpoints it creates)
//! have in common: a `PREFIX<run-id>` user tag per run using one, taken and given back under an
//! in-process lock per scope, the last user out removing it, and `bake gc` reading when each
//! user joined. Each resource's own calls (create, delete, wait) stay in its module.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::Tag;

use crate::aws::{CallError, Clients, Settle};
use crate::janitor::{Left, Resource};
use crate::poll::Schedule;
use crate::tags;

/// How a shared resource's state is watched while AWS creates or deletes it: look after 1 s (the
/// lab takes seconds), every second for 20 s, then growing to 15 s: one that takes AWS's minutes
/// costs a few calls a minute.
pub const SCHEDULE: Schedule = Schedule::every(Duration::from_secs(1))
    .first_after(Duration::from_secs(1))
    .dense_for(Duration::from_secs(20))
    .growing(1.5, Duration::from_secs(15));

/// How one kind of shared resource names its users.
#[derive(Debug, Clone, Copy)]
pub struct Users {
    /// The user tags' key prefix (`bake:egress-user:`, ...): the key ends with the run id, the
    /// value is when the run joined (RFC 3339).
    pub prefix: &'static str,
    /// What the resource is called in errors ("NAT gateway").
    pub kind: &'static str,
    /// The window an untag is asked again in (a resource just created may be unknown for a while).
    pub settle: Settle,
    /// The codes that mean the resource is gone: its user tag is then gone too.
    pub gone: &'static [&'static str],
}

impl Users {
    /// The key of `run_id`'s user tag.
    pub fn key(&self, run_id: &str) -> String {
        format!("{}{run_id}", self.prefix)
    }

    /// `run_id`'s user tag, joining now.
    pub fn tag(&self, run_id: &str) -> Tag {
        tags::tag(&self.key(run_id), &now_rfc3339())
    }

    /// The runs tagged as users, with when each joined (None when the value is not a time).
    pub fn of(&self, all: &[Tag]) -> Vec<(String, Option<SystemTime>)> {
        all.iter()
            .filter_map(|t| {
                let run = t.key()?.strip_prefix(self.prefix)?;
                let joined = t.value().and_then(|v| humantime::parse_rfc3339(v).ok());
                Some((run.to_owned(), joined))
            })
            .collect()
    }

    /// Tags `run_id` a user of resource `id`.
    pub async fn join(&self, clients: &Clients, id: &str, run_id: &str) -> Result<(), CallError> {
        add_tag(clients, id, self.tag(run_id), || {
            format!("tag {} {id} as used by run {run_id}", self.kind)
        })
        .await
    }

    /// Removes `run_id`'s user tag from resource `id` (gone already is fine).
    pub async fn leave(&self, clients: &Clients, id: &str, run_id: &str) -> Result<(), CallError> {
        remove_tag(
            clients,
            id,
            &self.key(run_id),
            &self.settle,
            self.gone,
            || format!("remove run {run_id}'s tag from {} {id}", self.kind),
        )
        .await
    }
}

/// Tags resource `id` with `tag`; `action` names the request in errors.
pub async fn add_tag(
    clients: &Clients,
    id: &str,
    tag: Tag,
    action: impl FnOnce() -> String,
) -> Result<(), CallError> {
    let request = clients.ec2.create_tags().resources(id).tags(tag);
    clients
        .call(|| request.clone().send())
        .settle(&crate::aws::THROTTLE_BURST)
        .or_fail(action)
        .await
        .map(|_| ())
}

/// Removes tag `key` from resource `id`, asked again within `settle`; the `gone` codes mean the
/// resource, and so its tag, is gone. `action` names the request in errors.
pub async fn remove_tag(
    clients: &Clients,
    id: &str,
    key: &str,
    settle: &Settle,
    gone: &[&str],
    action: impl FnOnce() -> String,
) -> Result<(), CallError> {
    let request = clients
        .ec2
        .delete_tags()
        .resources(id)
        .tags(Tag::builder().key(key).build());
    clients
        .call(|| request.clone().send())
        .settle(settle)
        .or_none(gone, action)
        .await
        .map(|_| ())
}

/// Now, as the user and creation tags write it.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// In-process locks, one per scope (a route table, a VPC): takes and releases on one scope by
/// bakes of this process run one at a time (other processes are handled by the tag protocol).
#[derive(Default)]
pub struct Locks(OnceLock<Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl Locks {
    pub const fn new() -> Self {
        Locks(OnceLock::new())
    }

    /// The lock for `scope`.
    pub fn of(&self, scope: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .get_or_init(Default::default)
            .lock()
            .expect("share locks")
            .entry(scope.to_owned())
            .or_default()
            .clone()
    }
}

/// Adds what a sweep could not remove to `left`; a sweep that could not even list what to remove
/// leaves `looked` (a placeholder naming where it looked).
pub fn gather(
    left: &mut Vec<Left>,
    swept: Result<Vec<Left>, CallError>,
    looked: impl FnOnce() -> Resource,
) {
    match swept {
        Ok(stuck) => left.extend(stuck),
        Err(e) => left.push(Left {
            resource: looked(),
            reason: e.to_string(),
        }),
    }
}

/// A release's answer: what it removed, or what is left and why.
pub fn outcome(removed: Vec<Resource>, left: Vec<Left>) -> Result<Vec<Resource>, Vec<Left>> {
    if left.is_empty() {
        Ok(removed)
    } else {
        Err(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USERS: Users = Users {
        prefix: "bake:x-user:",
        kind: "thing",
        settle: crate::aws::THROTTLE_BURST,
        gone: &[],
    };

    #[test]
    fn users_are_read_from_their_tags_with_when_they_joined() {
        let all = [
            tags::tag(&USERS.key("r1"), "2026-11-24T00:15:00Z"),
            tags::tag(&USERS.key("r2"), "not a time"),
            tags::tag("bake:x", "rtb-1"),
            tags::tag("Name", "bake thing"),
        ];
        assert_eq!(
            USERS.of(&all),
            vec![
                (
                    "r1".to_owned(),
                    Some(humantime::parse_rfc3339("2026-11-24T00:15:00Z").unwrap())
                ),
                ("r2".to_owned(), None),
            ]
        );
        let joined = USERS.tag("r3");
        assert_eq!(joined.key(), Some("bake:x-user:r3"));
        assert!(USERS.of(&[joined])[0].1.is_some());
        assert_eq!(crate::tags::value(&all, "bake:x"), Some("rtb-1"));
        assert_eq!(crate::tags::value(&all, "bake:y"), None);
    }

    #[test]
    fn a_scope_has_one_lock_and_scopes_do_not_share() {
        static LOCKS: Locks = Locks::new();
        assert!(Arc::ptr_eq(&LOCKS.of("rtb-1"), &LOCKS.of("rtb-1")));
        assert!(!Arc::ptr_eq(&LOCKS.of("rtb-1"), &LOCKS.of("rtb-2")));
    }
}
