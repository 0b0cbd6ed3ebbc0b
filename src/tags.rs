//! Every tag key bake writes or looks for, and how tags are put on what it creates: nowhere else
//! spells a key.

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

/// The name EC2's console shows.
pub const NAME: &str = "Name";
/// The run that created the resource (what cleanup and `bake gc` look for).
pub const RUN_ID: &str = "bake:run-id";
/// When it was created (RFC 3339), for `bake gc --ttl` on resources without a creation time.
pub const CREATED: &str = "bake:created";
/// The `[image.NAME]` it belongs to.
pub const IMAGE: &str = "bake:image";
/// The digest of the image's inputs.
pub const DIGEST: &str = "bake:digest";
/// On a temporary NAT gateway and its Elastic IP: the route table whose default route it serves
/// (`src/ami/egress.rs`).
pub const EGRESS: &str = "bake:egress";
/// On a temporary NAT gateway, one tag per run using it (`bake:egress-user:RUN-ID`, the value when
/// it joined, RFC 3339): the gateway goes when the last one is removed.
pub const EGRESS_USER_PREFIX: &str = "bake:egress-user:";
/// On a temporary NAT gateway its last user is removing (the value is that run's id): a run that
/// sees it does not join.
pub const EGRESS_CLOSING: &str = "bake:egress-closing";
/// On the SSM interface endpoints bake created and their security group: the VPC they serve
/// (`src/ami/endpoints.rs`).
pub const ENDPOINT: &str = "bake:endpoint";
/// On an endpoint bake created, one tag per run using it (`bake:endpoint-user:RUN-ID`, the value
/// when it joined, RFC 3339): the endpoint goes when the last one is removed.
pub const ENDPOINT_USER_PREFIX: &str = "bake:endpoint-user:";
/// On an Auto Scaling group bake rolls out to: the launch template versions it served after a
/// successful rollout or rollback, oldest first, comma-separated (`src/rollout/rollback.rs`).
pub const SERVED: &str = "bake:served";
/// On an AMI: its test stage's verdict (`pending`, `passed`, `failed`; `src/ami/test.rs`). An AMI
/// without it was baked with the test off (or before bake had one).
pub const TEST: &str = "bake:test";
/// `bake:test` of an AMI being tested (set at CreateImage): nothing takes it until its verdict, so
/// an AMI whose run was killed mid-test is never taken as tested.
pub const TEST_PENDING: &str = "pending";
/// `bake:test` of an AMI whose test instance served and passed its commands.
pub const TEST_PASSED: &str = "passed";
/// `bake:test` of an AMI whose test failed (it outlives its run only with `--keep-on-failure`).
pub const TEST_FAILED: &str = "failed";

/// Any service's tags as a map (`tags::map(x.tags().iter().map(|t| (t.key(), t.value())))`); a
/// tag without a key or value is left out.
pub fn map<'a>(
    pairs: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| Some((k?.to_owned(), v?.to_owned())))
        .collect()
}

/// The value of EC2 tag `key` among `tags`, if there is one.
pub fn value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The `bake:test` value that makes an AMI unusable (pending or failed), if its tags hold one:
/// skip-by-digest bakes anew and a rollout does not take it.
pub fn untested(tags: &[Tag]) -> Option<&str> {
    value(tags, TEST).filter(|v| [TEST_PENDING, TEST_FAILED].contains(v))
}
/// An EC2 tag.
pub fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// EC2 tags from key-value pairs.
pub fn list<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Tag> {
    pairs.into_iter().map(|(k, v)| tag(k, v)).collect()
}

/// Tags for one resource type at creation: its Name, then `tags`.
pub fn at_creation(kind: ResourceType, name: &str, tags: &[Tag]) -> TagSpecification {
    let mut all = vec![tag(NAME, name)];
    all.extend_from_slice(tags);
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(all))
        .build()
}

/// An EC2 filter on a tag's value.
pub fn filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// The tags every resource of a run carries.
pub fn of_run(run_id: &str, image: &str, digest: &str) -> Vec<Tag> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    list([
        (RUN_ID, run_id),
        (IMAGE, image),
        (DIGEST, digest),
        (CREATED, now.as_str()),
    ])
}

// What an image says about where it came from.

/// The base AMI an image was baked from.
pub const BASE_AMI: &str = "bake:base-ami";
/// The base AMI's name.
pub const BASE_NAME: &str = "bake:base-name";
/// The template an image was rendered from.
pub const TEMPLATE: &str = "bake:template";
/// The image's operating system.
pub const OS: &str = "bake:os";
/// A short digest per input of the image (`base=… builder=… health=… template=… user-data=…
/// verify=…`, [`crate::render::Inputs`]): a later bake says which input changed without a store.
pub const INPUTS: &str = "bake:inputs";
/// The bake version that baked it.
pub const VERSION: &str = "bake:version";
/// When it was baked (RFC 3339).
pub const BAKED_AT: &str = "bake:baked-at";
/// On a copy in another region: the AMI id it was copied from (the build region's image).
pub const SOURCE_AMI: &str = "bake:source-ami";
/// On a copy in another region: the region of the AMI it was copied from.
pub const SOURCE_REGION: &str = "bake:source-region";
/// The rollout a stack resource belongs to. A stack resource carries `bake:run-id` and
/// `bake:created` ([`of_stack`]) only while the run that created it builds the stack: `bake gc`
/// removes it when that run died; the run removes the two tags once the stack is whole, and a
/// later run that adopts it does the same, so `bake gc` never touches a finished stack.
pub const ROLLOUT: &str = "bake:rollout";

/// The keys of a stack resource under construction, removed once the stack is whole.
pub const STACK_PENDING: [&str; 2] = [RUN_ID, CREATED];

/// The tags of a stack resource under construction: the run building it, and when.
pub fn of_stack(run_id: &str) -> [(&'static str, String); 2] {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    [(RUN_ID, run_id.to_owned()), (CREATED, now)]
}
