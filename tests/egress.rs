//! The temporary NAT egress of a private builder (src/ami/egress.rs) against the lab: taken and
//! given back through the janitor, shared by bakes on one route table and removed by the last one
//! out, refused over a default route bake did not add, and found by `bake gc`'s search after a
//! run that never gave it back. The module's tests build a VPC of their own
//! (tests/support/network.rs); the bakes run in the Session Manager workshop's network of the lab
//! ("My-VPC", "my-subnet-private01/02" sharing "my-route-private", no NAT, no endpoints).

mod support;

use std::process::Output;
use std::time::{Duration, SystemTime};

use bake::ami::egress::{self, PlanError};
use bake::aws::Clients;
use bake::config::ResourceRef;
use bake::janitor::{Janitor, Resource};
use bake::output::Progress;
use bake::resolve::{self, Subnet};
use support::network::{
    Network, assert_no_egress_left, bake_addresses, default_route_of, live_nat_gateways,
    nat_gateway, route_default, subnet_named, table_of,
};
use support::output::{stderr, stdout};
use support::{Lab, Scratch};

async fn subnet(clients: &Clients, id: &str) -> Subnet {
    let r = ResourceRef {
        id: Some(id.to_owned()),
        tag: Default::default(),
    };
    resolve::subnet(clients, &r).await.unwrap()
}

fn progress() -> Progress {
    Progress::new(&indicatif::MultiProgress::new(), "egress")
}

fn run_tags(janitor: &Janitor) -> Vec<aws_sdk_ec2::types::Tag> {
    bake::tags::of_run(janitor.run_id(), "egress", "0123456789abcdef")
}

/// A network of the test's own and the plan preflight makes for its private subnet.
async fn planned(lab: &Lab, name: &str, second_octet: u8) -> (Clients, Network, egress::Plan) {
    let clients = lab.clients().await;
    let net = Network::create(lab, name, second_octet).await;
    let builder = subnet(&clients, &net.private_subnet).await;
    let plan = egress::plan(&clients, &builder, &routing(&clients, &builder).await, None)
        .await
        .unwrap();
    (clients, net, plan)
}

/// The NAT gateway as the lab describes it.
async fn gateway(lab: &Lab, nat: &str) -> aws_sdk_ec2::types::NatGateway {
    let out = lab
        .ec2
        .describe_nat_gateways()
        .nat_gateway_ids(nat)
        .send()
        .await
        .unwrap();
    out.nat_gateways()[0].clone()
}

/// Takes the NAT for a new run; returns its janitor and the gateway.
async fn take(clients: &Clients, plan: &egress::Plan) -> (Janitor, String) {
    let janitor = Janitor::new(clients.clone(), bake::janitor::new_run_id());
    let nat = egress::take(clients, plan, &run_tags(&janitor), &janitor, &progress())
        .await
        .unwrap();
    (janitor, nat)
}

/// How the builder subnet routes today, as preflight reads it before planning the egress.
async fn routing(
    clients: &bake::aws::Clients,
    builder: &bake::resolve::Subnet,
) -> bake::resolve::Routing {
    bake::resolve::routing(clients, builder)
        .await
        .expect("read the builder subnet's routing")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_take_creates_address_gateway_and_route_and_the_cleanup_removes_all_three() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let (clients, net, plan) = planned(&lab, "egress-one", 71).await;
    assert_eq!(plan.table, net.private_table);
    assert_eq!(plan.nat_subnet, net.public_subnet, "found by its route");
    assert_eq!(net.default_route(&lab).await, None);

    let (janitor, nat) = take(&clients, &plan).await;
    assert_eq!(net.default_route(&lab).await.as_deref(), Some(nat.as_str()));
    assert_eq!(
        live_nat_gateways(&lab).await,
        vec![(nat.clone(), "available".to_owned())]
    );
    let addresses = bake_addresses(&lab).await;
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    let gateway = gateway(&lab, &nat).await;
    assert_eq!(gateway.subnet_id(), Some(net.public_subnet.as_str()));
    let tag = |key: &str| {
        gateway
            .tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_owned)
    };
    assert_eq!(
        tag("bake:egress").as_deref(),
        Some(net.private_table.as_str())
    );
    assert_eq!(tag("bake:run-id").as_deref(), Some(janitor.run_id()));
    assert!(tag(&format!("bake:egress-user:{}", janitor.run_id())).is_some());

    let removed = janitor.clean_recorded().await.unwrap();
    assert!(
        removed.contains(&Resource::NatGateway(nat.clone())),
        "{removed:?}"
    );
    assert!(
        removed.contains(&Resource::Route(net.private_table.clone())),
        "{removed:?}"
    );
    assert!(
        removed.contains(&Resource::Address(addresses[0].clone())),
        "{removed:?}"
    );
    assert_eq!(net.default_route(&lab).await, None, "route removed");
    assert!(live_nat_gateways(&lab).await.is_empty(), "gateway deleted");
    assert!(bake_addresses(&lab).await.is_empty(), "address released");
    // A second cleanup (a signal after the first) finds nothing left to do.
    assert!(janitor.clean().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_on_one_route_table_share_one_gateway_removed_by_the_last_one_out() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let (clients, net, plan) = planned(&lab, "egress-two", 72).await;
    // Taken at once, as two images of one `bake ami` are.
    let ((first, a), (second, b)) = tokio::join!(take(&clients, &plan), take(&clients, &plan));
    assert_eq!(a, b, "one gateway for both");
    assert_eq!(live_nat_gateways(&lab).await.len(), 1);
    assert_eq!(bake_addresses(&lab).await.len(), 1);
    assert_eq!(lab.calls("CreateNatGateway").await, 1);
    assert_eq!(lab.calls("AllocateAddress").await, 1);
    // A later bake finds the route to bake's own gateway: preflight lets it through.
    let builder = subnet(&clients, &net.private_subnet).await;
    egress::plan(&clients, &builder, &routing(&clients, &builder).await, None)
        .await
        .unwrap();

    first.clean_recorded().await.unwrap();
    assert_eq!(
        net.default_route(&lab).await.as_deref(),
        Some(a.as_str()),
        "the second run still sends through it"
    );
    assert_eq!(live_nat_gateways(&lab).await.len(), 1);
    second.clean_recorded().await.unwrap();
    assert_eq!(net.default_route(&lab).await, None);
    assert!(live_nat_gateways(&lab).await.is_empty());
    assert!(bake_addresses(&lab).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_with_its_own_default_route_is_refused_and_a_public_nat_subnet_is_checked() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let clients = lab.clients().await;
    let net = Network::create(&lab, "egress-refused", 73).await;
    let builder = subnet(&clients, &net.private_subnet).await;
    // builder.nat_subnet naming the private subnet: not public.
    let private = ResourceRef {
        id: Some(net.private_subnet.clone()),
        tag: Default::default(),
    };
    match egress::plan(
        &clients,
        &builder,
        &routing(&clients, &builder).await,
        Some(&private),
    )
    .await
    {
        Err(PlanError::NatSubnet(e)) => {
            assert!(
                e.to_string().contains("no route to an internet gateway"),
                "{e}"
            );
            assert_eq!(e.exit_code(), 2);
        }
        other => panic!("{other:?}"),
    }
    route_default(&lab, &net.private_table, &net.igw).await;
    match egress::plan(&clients, &builder, &routing(&clients, &builder).await, None).await {
        Err(PlanError::Route(e)) => {
            let text = e.to_string();
            assert!(text.contains(&net.private_table), "{text}");
            assert!(text.contains(&net.igw), "{text}");
            assert_eq!(e.exit_code(), 2);
        }
        other => panic!("{other:?}"),
    }
    // A take that finds such a route (it appeared after preflight) stops without touching it.
    let janitor = Janitor::new(clients.clone(), bake::janitor::new_run_id());
    let plan = egress::Plan {
        table: net.private_table.clone(),
        subnet: net.private_subnet.clone(),
        nat_subnet: net.public_subnet.clone(),
    };
    let err = egress::take(&clients, &plan, &run_tags(&janitor), &janitor, &progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&net.igw), "{err}");
    janitor.clean().await.unwrap();
    assert_eq!(
        net.default_route(&lab).await.as_deref(),
        Some(net.igw.as_str())
    );
    assert_eq!(lab.calls("AllocateAddress").await, 0);
    assert_eq!(lab.calls("CreateNatGateway").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_killed_run_held_is_found_by_tag_and_removed_by_gc_but_a_live_share_is_kept() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let (clients, net, plan) = planned(&lab, "egress-gc", 74).await;
    // The run is "killed": its janitor never runs.
    let (_killed, nat) = take(&clients, &plan).await;
    let address = bake_addresses(&lab).await;
    // A cutoff before the run joined: its share is still live, gc keeps it.
    let before = SystemTime::now() - std::time::Duration::from_secs(3600);
    assert!(
        egress::find_left(&clients, before)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        egress::remove_left(&clients, before)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(live_nat_gateways(&lab).await.len(), 1);

    // Tags carry seconds: a cutoff a second later than the join counts it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let now = SystemTime::now();
    let found = egress::find_left(&clients, now).await.unwrap();
    let mut want = vec![
        Resource::NatGateway(nat.clone()),
        Resource::Address(address[0].clone()),
        Resource::Route(net.private_table.clone()),
    ];
    want.sort();
    assert_eq!(found, want);
    let removed = egress::remove_left(&clients, now).await.unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert_eq!(net.default_route(&lab).await, None);
    assert!(live_nat_gateways(&lab).await.is_empty());
    assert!(bake_addresses(&lab).await.is_empty());
}

/// Tags a gateway as another process's bake would.
async fn tag_gateway(lab: &Lab, nat: &str, key: &str, value: &str) {
    lab.ec2
        .create_tags()
        .resources(nat)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(key)
                .value(value)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_leaver_keeps_the_gateway_for_a_run_that_joined_from_another_process() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let (clients, net, plan) = planned(&lab, "egress-joiner", 75).await;
    let (janitor, nat) = take(&clients, &plan).await;
    // Another bake process joined: its user tag is on the gateway.
    let joined = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    tag_gateway(
        &lab,
        &nat,
        "bake:egress-user:20261124t000000-abcdef",
        &joined,
    )
    .await;
    let removed = janitor.clean_recorded().await.unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(net.default_route(&lab).await.as_deref(), Some(nat.as_str()));
    assert_eq!(live_nat_gateways(&lab).await.len(), 1);
    assert_eq!(bake_addresses(&lab).await.len(), 1);
    let gateway = gateway(&lab, &nat).await;
    let keys: Vec<&str> = gateway.tags().iter().filter_map(|t| t.key()).collect();
    assert!(
        !keys.iter().any(|k| k.contains(janitor.run_id())),
        "the leaver's tag is gone: {keys:?}"
    );
    assert!(!keys.contains(&"bake:egress-closing"), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joiner_that_finds_the_gateway_closing_waits_for_it_to_go_and_makes_its_own() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let (clients, net, plan) = planned(&lab, "egress-closing", 76).await;
    let (_leaver, old) = take(&clients, &plan).await;
    // The last user (another process) is removing it: its closing tag is on.
    tag_gateway(&lab, &old, "bake:egress-closing", "20261124t000000-abcdef").await;
    let joiner = {
        let clients = clients.clone();
        let plan = plan.clone();
        tokio::spawn(async move { take(&clients, &plan).await })
    };
    // The joiner backs off: it never keeps its tag on the closing gateway.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!joiner.is_finished(), "it waits for the route to go");
    // The leaver finishes: route, then gateway.
    lab.ec2
        .delete_route()
        .route_table_id(&net.private_table)
        .destination_cidr_block("0.0.0.0/0")
        .send()
        .await
        .unwrap();
    lab.ec2
        .delete_nat_gateway()
        .nat_gateway_id(&old)
        .send()
        .await
        .unwrap();
    let (janitor, new) = joiner.await.unwrap();
    assert_ne!(new, old, "a gateway of its own");
    assert_eq!(net.default_route(&lab).await.as_deref(), Some(new.as_str()));
    janitor.clean_recorded().await.unwrap();
    assert_eq!(net.default_route(&lab).await, None);
    assert!(
        live_nat_gateways(&lab)
            .await
            .iter()
            .all(|(id, _)| *id != new),
        "the joiner's gateway is gone"
    );
}

/// One image on a private builder in the workshop's network with a temporary NAT and the SSM
/// endpoints created for the bake: `template` "nginx" installs packages from the mirror, "quick"
/// none (only the agent, downloaded).
fn private_image(name: &str, subnet: &str, template: &str, body: &str) -> String {
    let vars = match template {
        "nginx" => format!("{{ app = \"flask\", title = \"{body}\" }}"),
        _ => format!("{{ body = \"{body}\" }}"),
    };
    format!(
        r#"
[image.{name}]
base = {{ ssm = "/aws/service/debian/release/bookworm/latest/amd64" }}
template = "{template}"
os = "debian"
vars = {vars}

[image.{name}.builder]
subnet = {{ tag = {{ Name = "{subnet}" }} }}
instance_profile = "MySSMRoleForServiceInstance"
access = "private"
egress = "nat"
endpoints = "create"

[image.{name}.health]
expect_body = "{body}"
timeout = "10m"

[image.{name}.verify]
commands = ["test -d /srv/www || systemctl is-active nginx"]
"#
    )
}

fn private_config(images: &[String]) -> String {
    format!("templates_dir = \"templates\"\n{}", images.concat())
}

/// The apt proxy's traffic so far (the lab's stand-in for the internet's package mirror).
async fn mirror_traffic(lab: &Lab) -> u64 {
    let info = lab.info().await;
    let proxy = &info["apt_proxy"];
    ["hits", "mirror_fetches", "passed_through"]
        .iter()
        .map(|k| proxy[*k].as_u64().unwrap_or(0))
        .sum()
}

/// When the lab logged the first and the last `action` (seconds since the epoch, as the request
/// log has it).
async fn call_span(lab: &Lab, action: &str) -> (f64, f64) {
    lab.requests()
        .await
        .iter()
        .filter(|r| r["action"] == action)
        .filter_map(|r| r["time"].as_f64())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(first, last), t| {
            (first.min(t), last.max(t))
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_private_example_installs_its_packages_through_the_temporary_nat_and_removes_it() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let private01 = subnet_named(&lab, "my-subnet-private01").await;
    let table = table_of(&lab, &private01).await;
    assert_eq!(
        default_route_of(&lab, &table).await,
        None,
        "no NAT to begin with"
    );
    // The example, unchanged: the workshop's Nginx + Flask on a private builder.
    let example = support::repo().join("examples/nginx-flask-private.toml");
    let before = mirror_traffic(&lab).await;
    let out = lab
        .bake_ok(&["-c", example.to_str().unwrap(), "ami", "web"])
        .await;
    assert!(stdout(&out).starts_with("ami-"), "{}", stdout(&out));
    assert!(
        mirror_traffic(&lab).await > before,
        "the builder fetched its packages from the mirror"
    );
    assert_eq!(lab.calls("AllocateAddress").await, 1);
    assert_eq!(lab.calls("CreateNatGateway").await, 1);
    // The route existed before the builder launched and went only after its image was made.
    let routed = call_span(&lab, "CreateRoute").await.0;
    assert!(routed < call_span(&lab, "RunInstances").await.0);
    assert!(call_span(&lab, "CreateImage").await.1 < call_span(&lab, "DeleteRoute").await.0);
    assert!(
        call_span(&lab, "DeleteNatGateway").await.0 < call_span(&lab, "ReleaseAddress").await.0
    );
    assert_no_egress_left(&lab, &table).await;
    lab.assert_nothing_left(&[stdout(&out).trim()], &[]).await;
}

/// Bakes the private "nginx" image in the workshop's network and sends `sig` during its package
/// install; returns its config, the builder subnet's route table and how bake ended.
async fn interrupt_install(lab: &Lab, sig: &str) -> (Scratch, String, Output) {
    let private01 = subnet_named(lab, "my-subnet-private01").await;
    let table = table_of(lab, &private01).await;
    let scratch = Scratch::new(&private_config(&[private_image(
        "web",
        "my-subnet-private01",
        "nginx",
        "Private Day",
    )]));
    let before = mirror_traffic(lab).await;
    let args = ["-c", &scratch.config(), "ami", "web"];
    let out = lab
        .interrupt_when(
            &args,
            sig,
            "the package install",
            Duration::from_secs(300),
            || async { mirror_traffic(lab).await > before },
        )
        .await;
    (scratch, table, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_during_the_package_install_leaves_no_nat_address_route_or_endpoint() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let (_scratch, table, out) = interrupt_install(&lab, "INT").await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(lab.calls("CreateNatGateway").await, 1);
    assert_no_egress_left(&lab, &table).await;
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_the_package_install_leaves_what_gc_removes() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let (scratch, table, out) = interrupt_install(&lab, "KILL").await;
    assert_eq!(out.status.code(), None, "killed by a signal");
    let nats = live_nat_gateways(&lab).await;
    assert_eq!(nats.len(), 1, "a killed bake leaves its gateway: {nats:?}");
    assert_eq!(
        default_route_of(&lab, &table).await.as_deref(),
        Some(nats[0].0.as_str())
    );
    // gc finds what EC2 lists by tag, and EC2 lists a new instance only after a moment (eventual
    // consistency; seconds in the lab): wait until it does, as tests/ami.rs does.
    lab.wait_until_builders_listed().await;
    // Tags carry whole seconds: let the run's be in the past for --ttl 0s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    lab.bake_ok(&["-c", &scratch.config(), "gc", "--ttl", "2h"])
        .await;
    assert_eq!(
        live_nat_gateways(&lab).await.len(),
        1,
        "a young run's gateway is kept"
    );
    let dry = lab
        .bake_ok(&["-c", &scratch.config(), "gc", "--ttl", "0s", "--dry-run"])
        .await;
    let listed = stdout(&dry);
    assert!(
        listed.contains(&format!("would delete NAT gateway {}", nats[0].0)),
        "{listed}"
    );
    assert!(
        listed.contains("would delete Elastic IP eipalloc-"),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("would delete route 0.0.0.0/0 in {table}")),
        "{listed}"
    );
    lab.bake_ok(&["-c", &scratch.config(), "gc", "--ttl", "0s"])
        .await;
    assert_no_egress_left(&lab, &table).await;
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_private_images_baked_at_once_share_one_nat_removed_after_both() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let private01 = subnet_named(&lab, "my-subnet-private01").await;
    let private02 = subnet_named(&lab, "my-subnet-private02").await;
    let table = table_of(&lab, &private01).await;
    assert_eq!(
        table,
        table_of(&lab, &private02).await,
        "one route table for both"
    );
    let scratch = Scratch::new(&private_config(&[
        private_image("one", "my-subnet-private01", "quick", "private page 1"),
        private_image("two", "my-subnet-private02", "quick", "private page 2"),
    ]));
    let out = lab
        .bake_ok(&["-c", &scratch.config(), "ami", "one", "two"])
        .await;
    // "IMAGE AMI-ID" a line when several images are asked for.
    let amis: Vec<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    assert_eq!(amis.len(), 2, "{}", stdout(&out));
    assert!(amis.iter().all(|a| a.starts_with("ami-")), "{amis:?}");
    assert_eq!(
        lab.calls("CreateNatGateway").await,
        1,
        "one gateway for both"
    );
    assert_eq!(lab.calls("AllocateAddress").await, 1);
    assert_eq!(lab.calls("CreateRoute").await, 1);
    assert_eq!(lab.calls("DeleteNatGateway").await, 1);
    // Removed after both images were made.
    assert!(call_span(&lab, "CreateImage").await.1 < call_span(&lab, "DeleteRoute").await.0);
    assert_no_egress_left(&lab, &table).await;
    let kept: Vec<&str> = amis.iter().map(String::as_str).collect();
    lab.assert_nothing_left(&kept, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_table_with_its_own_default_route_is_refused_at_preflight_with_nothing_created() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let private01 = subnet_named(&lab, "my-subnet-private01").await;
    let table = table_of(&lab, &private01).await;
    // The account's own NAT gateway (not bake's) already serves the table.
    let public = subnet_named(&lab, "my-subnet-public01").await;
    let nat = nat_gateway(&lab, public.subnet_id().unwrap(), None).await;
    route_default(&lab, &table, &nat).await;
    let calls_before = lab.requests().await.len();
    let scratch = Scratch::new(&private_config(&[private_image(
        "web",
        "my-subnet-private01",
        "quick",
        "refused",
    )]));
    let out = lab
        .bake_refused(&["-c", &scratch.config(), "ami", "web"])
        .await;
    let text = stderr(&out);
    assert!(text.contains(&table), "{text}");
    assert!(text.contains(&nat), "{text}");
    assert!(text.contains("image.web.builder.egress"), "{text}");
    let created: Vec<String> = lab.requests().await[calls_before..]
        .iter()
        .filter_map(|r| r["action"].as_str())
        .filter(|a| {
            a.starts_with("Create")
                || a.starts_with("Allocate")
                || a.starts_with("Run")
                || a.starts_with("Authorize")
        })
        .map(str::to_owned)
        .collect();
    assert!(created.is_empty(), "nothing created: {created:?}");
    assert_eq!(
        default_route_of(&lab, &table).await.as_deref(),
        Some(nat.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_creator_that_loses_the_route_race_joins_the_winner_and_removes_its_own_gateway() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // Gateways take 4 s to become available: long enough for the other process to route first.
    lab.control("latency", serde_json::json!({ "nat_gateway_available": 4 }))
        .await;
    let (clients, net, plan) = planned(&lab, "egress-race", 77).await;
    let loser = {
        let clients = clients.clone();
        let plan = plan.clone();
        tokio::spawn(async move { take(&clients, &plan).await })
    };
    // Another bake process creates its gateway at the same time and routes first.
    let other_run = "20261124t000000-0a0b0c";
    let joined = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let tags = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::Natgateway)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("bake:egress")
                .value(&net.private_table)
                .build(),
        )
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(format!("bake:egress-user:{other_run}"))
                .value(&joined)
                .build(),
        )
        .build();
    let winner = nat_gateway(&lab, &net.public_subnet, Some(tags)).await;
    assert!(!loser.is_finished(), "its own gateway is still pending");
    route_default(&lab, &net.private_table, &winner).await;

    let (janitor, nat) = loser.await.unwrap();
    assert_eq!(nat, winner, "the loser sends through the winner's gateway");
    assert_eq!(
        net.default_route(&lab).await.as_deref(),
        Some(winner.as_str())
    );
    let all = lab.ec2.describe_nat_gateways().send().await.unwrap();
    let own: Vec<(String, String)> = all
        .nat_gateways()
        .iter()
        .filter(|n| n.nat_gateway_id() != Some(winner.as_str()))
        .filter(|n| n.tags().iter().any(|t| t.key() == Some("bake:egress")))
        .map(|n| {
            (
                n.nat_gateway_id().unwrap().to_owned(),
                n.state().unwrap().as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(own[0].1, "deleted", "its own gateway is removed: {own:?}");
    assert_eq!(
        bake_addresses(&lab).await,
        Vec::<String>::new(),
        "its own address is released (the winner's carries no bake tag here)"
    );
    // The loser leaves: the other process still uses the gateway.
    let removed = janitor.clean_recorded().await.unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(
        net.default_route(&lab).await.as_deref(),
        Some(winner.as_str())
    );
}

/// EC2 clients answered by `rules` (aws-smithy-mocks), for answers the lab does not give.
fn mocked(rules: &[&aws_smithy_mocks::Rule]) -> Clients {
    use aws_smithy_mocks::{MockResponseInterceptor, RuleMode, create_mock_http_client};
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for rule in rules {
        interceptor = interceptor.with_rule(rule);
    }
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("ap-northeast-2"))
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
            aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "mock"),
        ))
        .http_client(create_mock_http_client())
        .build();
    let mut clients = Clients::from_sdk(&sdk);
    clients.ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&sdk)
            .interceptor(interceptor)
            .build(),
    );
    clients
}

#[tokio::test(start_paused = true)]
async fn gc_releases_the_address_once_the_deleted_gateway_lets_go_of_it() {
    use aws_sdk_ec2::operation::delete_nat_gateway::DeleteNatGatewayOutput;
    use aws_sdk_ec2::operation::delete_route::DeleteRouteOutput;
    use aws_sdk_ec2::operation::describe_addresses::DescribeAddressesOutput;
    use aws_sdk_ec2::operation::describe_nat_gateways::DescribeNatGatewaysOutput;
    use aws_sdk_ec2::operation::describe_route_tables::DescribeRouteTablesOutput;
    use aws_sdk_ec2::operation::release_address::{ReleaseAddressError, ReleaseAddressOutput};
    use aws_sdk_ec2::types::{
        NatGateway, NatGatewayAddress, NatGatewayState, Route, RouteTable, Tag,
    };
    use aws_smithy_mocks::mock;
    use support::mocks::meta;

    let gateway = |state: NatGatewayState| {
        NatGateway::builder()
            .nat_gateway_id("nat-1")
            .state(state)
            .nat_gateway_addresses(
                NatGatewayAddress::builder()
                    .allocation_id("eipalloc-1")
                    .build(),
            )
            .tags(Tag::builder().key("bake:egress").value("rtb-1").build())
            .tags(
                Tag::builder()
                    .key("bake:egress-user:20260101t000000-abcdef")
                    .value("2026-01-01T00:00:00Z")
                    .build(),
            )
            .build()
    };
    let listed = mock!(aws_sdk_ec2::Client::describe_nat_gateways)
        .match_requests(|r| r.nat_gateway_ids().is_empty())
        .then_output(move || {
            DescribeNatGatewaysOutput::builder()
                .nat_gateways(gateway(NatGatewayState::Available))
                .build()
        });
    let watched = mock!(aws_sdk_ec2::Client::describe_nat_gateways)
        .match_requests(|r| r.nat_gateway_ids() == ["nat-1"])
        .then_output(move || {
            DescribeNatGatewaysOutput::builder()
                .nat_gateways(gateway(NatGatewayState::Deleted))
                .build()
        });
    let table = mock!(aws_sdk_ec2::Client::describe_route_tables).then_output(|| {
        DescribeRouteTablesOutput::builder()
            .route_tables(
                RouteTable::builder()
                    .route_table_id("rtb-1")
                    .routes(
                        Route::builder()
                            .destination_cidr_block("0.0.0.0/0")
                            .nat_gateway_id("nat-1")
                            .build(),
                    )
                    .build(),
            )
            .build()
    });
    let route = mock!(aws_sdk_ec2::Client::delete_route)
        .then_output(|| DeleteRouteOutput::builder().build());
    let delete = mock!(aws_sdk_ec2::Client::delete_nat_gateway).then_output(|| {
        DeleteNatGatewayOutput::builder()
            .nat_gateway_id("nat-1")
            .build()
    });
    let in_use = || {
        ReleaseAddressError::generic(meta(
            "InvalidIPAddress.InUse",
            "Address 100.64.0.9 is in use.",
        ))
    };
    let release = mock!(aws_sdk_ec2::Client::release_address)
        .sequence()
        .error(in_use)
        .times(2)
        .output(|| ReleaseAddressOutput::builder().build())
        .build();
    let addresses = mock!(aws_sdk_ec2::Client::describe_addresses)
        .then_output(|| DescribeAddressesOutput::builder().build());
    let clients = mocked(&[
        &listed, &watched, &table, &route, &delete, &release, &addresses,
    ]);
    let removed = egress::remove_left(&clients, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(
        removed,
        vec![
            Resource::Route("rtb-1".into()),
            Resource::NatGateway("nat-1".into()),
            Resource::Address("eipalloc-1".into()),
        ]
    );
    assert_eq!(route.num_calls(), 1);
    assert_eq!(delete.num_calls(), 1);
    assert_eq!(
        release.num_calls(),
        3,
        "asked again while the gateway held the address, not given up"
    );
}
