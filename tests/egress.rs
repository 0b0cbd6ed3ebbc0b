//! The temporary NAT egress of a private builder (src/ami/egress.rs) against the lab: taken and
//! given back through the janitor, shared by bakes on one route table and removed by the last one
//! out, refused over a default route bake did not add, and found by `bake gc`'s search after a
//! run that never gave it back. Each test builds a VPC of its own (tests/support/network.rs).

mod support;

use std::time::SystemTime;

use bake::ami::egress::{self, PlanError};
use bake::aws::Clients;
use bake::config::ResourceRef;
use bake::janitor::{Janitor, Resource};
use bake::output::Progress;
use bake::resolve::{self, Subnet};
use support::Lab;
use support::network::{Network, bake_addresses, live_nat_gateways};

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

/// Takes the NAT for a new run; returns its janitor and the gateway.
async fn take(clients: &Clients, plan: &egress::Plan) -> (Janitor, String) {
    let janitor = Janitor::new(clients.clone(), bake::janitor::new_run_id());
    let nat = egress::take(clients, plan, &run_tags(&janitor), &janitor, &progress())
        .await
        .unwrap();
    (janitor, nat)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_take_creates_address_gateway_and_route_and_the_cleanup_removes_all_three() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let clients = lab.clients().await;
    let net = Network::create(&lab, "egress-one", 71).await;
    let builder = subnet(&clients, &net.private_subnet).await;
    let plan = egress::plan(&clients, &builder, None).await.unwrap();
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
    let described = lab
        .ec2
        .describe_nat_gateways()
        .nat_gateway_ids(&nat)
        .send()
        .await
        .unwrap();
    let gateway = &described.nat_gateways()[0];
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
    let clients = lab.clients().await;
    let net = Network::create(&lab, "egress-two", 72).await;
    let builder = subnet(&clients, &net.private_subnet).await;
    let plan = egress::plan(&clients, &builder, None).await.unwrap();
    // Taken at once, as two images of one `bake ami` are.
    let ((first, a), (second, b)) = tokio::join!(take(&clients, &plan), take(&clients, &plan));
    assert_eq!(a, b, "one gateway for both");
    assert_eq!(live_nat_gateways(&lab).await.len(), 1);
    assert_eq!(bake_addresses(&lab).await.len(), 1);
    assert_eq!(lab.calls("CreateNatGateway").await, 1);
    assert_eq!(lab.calls("AllocateAddress").await, 1);
    // A later bake finds the route to bake's own gateway: preflight lets it through.
    egress::plan(&clients, &builder, None).await.unwrap();

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
    match egress::plan(&clients, &builder, Some(&private)).await {
        Err(PlanError::NatSubnet(e)) => {
            assert!(
                e.to_string().contains("no route to an internet gateway"),
                "{e}"
            );
            assert_eq!(e.exit_code(), 2);
        }
        other => panic!("{other:?}"),
    }
    lab.ec2
        .create_route()
        .route_table_id(&net.private_table)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&net.igw)
        .send()
        .await
        .unwrap();
    match egress::plan(&clients, &builder, None).await {
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
    let clients = lab.clients().await;
    let net = Network::create(&lab, "egress-gc", 74).await;
    let builder = subnet(&clients, &net.private_subnet).await;
    let plan = egress::plan(&clients, &builder, None).await.unwrap();
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
    let clients = lab.clients().await;
    let net = Network::create(&lab, "egress-joiner", 75).await;
    let builder = subnet(&clients, &net.private_subnet).await;
    let plan = egress::plan(&clients, &builder, None).await.unwrap();
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
    let described = lab
        .ec2
        .describe_nat_gateways()
        .nat_gateway_ids(&nat)
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = described.nat_gateways()[0]
        .tags()
        .iter()
        .filter_map(|t| t.key())
        .collect();
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
    let clients = lab.clients().await;
    let net = Network::create(&lab, "egress-closing", 76).await;
    let builder = subnet(&clients, &net.private_subnet).await;
    let plan = egress::plan(&clients, &builder, None).await.unwrap();
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
