//! A VPC of a test's own in the lab: an internet gateway, a public subnet routed to it and a
//! private subnet with a route table of its own (no default route), for the temporary NAT's tests.

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

use super::Lab;

/// The ids of a test's own network.
pub struct Network {
    pub vpc: String,
    pub igw: String,
    pub public_subnet: String,
    pub private_subnet: String,
    /// The private subnet's own route table.
    pub private_table: String,
    pub zone: String,
}

fn named(kind: ResourceType, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
}

impl Network {
    /// Creates it; `cidr` is a /16 (e.g. "10.70.0.0/16"), `name` prefixes the Name tags.
    pub async fn create(lab: &Lab, name: &str, second_octet: u8) -> Network {
        let ec2 = &lab.ec2;
        let vpc = ec2
            .create_vpc()
            .cidr_block(format!("10.{second_octet}.0.0/16"))
            .tag_specifications(named(ResourceType::Vpc, name))
            .send()
            .await
            .unwrap()
            .vpc
            .unwrap()
            .vpc_id
            .unwrap();
        let igw = ec2
            .create_internet_gateway()
            .send()
            .await
            .unwrap()
            .internet_gateway
            .unwrap()
            .internet_gateway_id
            .unwrap();
        ec2.attach_internet_gateway()
            .internet_gateway_id(&igw)
            .vpc_id(&vpc)
            .send()
            .await
            .unwrap();
        let zone = format!("{}a", super::REGION);
        let subnet = |cidr: String, tag: String| {
            let vpc = vpc.clone();
            let zone = zone.clone();
            async move {
                ec2.create_subnet()
                    .vpc_id(vpc)
                    .cidr_block(cidr)
                    .availability_zone(zone)
                    .tag_specifications(named(ResourceType::Subnet, &tag))
                    .send()
                    .await
                    .unwrap()
                    .subnet
                    .unwrap()
                    .subnet_id
                    .unwrap()
            }
        };
        let public_subnet = subnet(
            format!("10.{second_octet}.1.0/24"),
            format!("{name}-public"),
        )
        .await;
        let private_subnet = subnet(
            format!("10.{second_octet}.10.0/24"),
            format!("{name}-private"),
        )
        .await;
        let table = |tag: String| {
            let vpc = vpc.clone();
            async move {
                ec2.create_route_table()
                    .vpc_id(vpc)
                    .tag_specifications(named(ResourceType::RouteTable, &tag))
                    .send()
                    .await
                    .unwrap()
                    .route_table
                    .unwrap()
                    .route_table_id
                    .unwrap()
            }
        };
        let public_table = table(format!("{name}-public")).await;
        ec2.create_route()
            .route_table_id(&public_table)
            .destination_cidr_block("0.0.0.0/0")
            .gateway_id(&igw)
            .send()
            .await
            .unwrap();
        ec2.associate_route_table()
            .route_table_id(&public_table)
            .subnet_id(&public_subnet)
            .send()
            .await
            .unwrap();
        let private_table = table(format!("{name}-private")).await;
        ec2.associate_route_table()
            .route_table_id(&private_table)
            .subnet_id(&private_subnet)
            .send()
            .await
            .unwrap();
        Network {
            vpc,
            igw,
            public_subnet,
            private_subnet,
            private_table,
            zone,
        }
    }

    /// The private table's default route target (NAT gateway id, gateway id), if any.
    pub async fn default_route(&self, lab: &Lab) -> Option<String> {
        default_route_of(lab, &self.private_table).await
    }
}

/// bake's temporary NAT gateways in the lab that are not deleted, with their states.
pub async fn live_nat_gateways(lab: &Lab) -> Vec<(String, String)> {
    let out = lab.ec2.describe_nat_gateways().send().await.unwrap();
    out.nat_gateways()
        .iter()
        .filter(|n| n.tags().iter().any(|t| t.key() == Some("bake:egress")))
        .filter(|n| n.state().map(|s| s.as_str()) != Some("deleted"))
        .map(|n| {
            (
                n.nat_gateway_id().unwrap_or_default().to_owned(),
                n.state().map_or("?", |s| s.as_str()).to_owned(),
            )
        })
        .collect()
}

/// bake's Elastic IPs (allocation ids) still allocated.
pub async fn bake_addresses(lab: &Lab) -> Vec<String> {
    let out = lab
        .ec2
        .describe_addresses()
        .filters(super::filter("tag-key", "bake:egress"))
        .send()
        .await
        .unwrap();
    out.addresses()
        .iter()
        .filter_map(|a| a.allocation_id().map(str::to_owned))
        .collect()
}

/// The id of the one resource of the lab whose Name tag is `name`: a subnet or route table of the
/// Session Manager workshop's network ("my-subnet-private01", "my-route-private").
pub async fn subnet_named(lab: &Lab, name: &str) -> aws_sdk_ec2::types::Subnet {
    let out = lab
        .ec2
        .describe_subnets()
        .filters(super::filter("tag:Name", name))
        .send()
        .await
        .unwrap();
    assert_eq!(out.subnets().len(), 1, "one subnet named {name}");
    out.subnets()[0].clone()
}

/// The id of the lab's VPC whose Name tag is `name` ("My-VPC").
pub async fn vpc_named(lab: &Lab, name: &str) -> String {
    let out = lab
        .ec2
        .describe_vpcs()
        .filters(super::filter("tag:Name", name))
        .send()
        .await
        .unwrap();
    out.vpcs()[0].vpc_id().unwrap().to_owned()
}

/// The route table a subnet uses (its own, else its VPC's main one).
pub async fn table_of(lab: &Lab, subnet: &aws_sdk_ec2::types::Subnet) -> String {
    let by = |name: &str, value: &str| super::filter(name, value);
    let own = lab
        .ec2
        .describe_route_tables()
        .filters(by("association.subnet-id", subnet.subnet_id().unwrap()))
        .send()
        .await
        .unwrap();
    if let Some(t) = own.route_tables().first() {
        return t.route_table_id().unwrap().to_owned();
    }
    let main = lab
        .ec2
        .describe_route_tables()
        .filters(by("vpc-id", subnet.vpc_id().unwrap()))
        .filters(by("association.main", "true"))
        .send()
        .await
        .unwrap();
    main.route_tables()[0].route_table_id().unwrap().to_owned()
}

/// Creates a NAT gateway in `subnet` as the account or another bake process would (with `tags`),
/// with an Elastic IP of its own, and waits until it is available; returns its id.
pub async fn nat_gateway(lab: &Lab, subnet: &str, tags: Option<TagSpecification>) -> String {
    let address = lab
        .ec2
        .allocate_address()
        .domain(aws_sdk_ec2::types::DomainType::Vpc)
        .send()
        .await
        .unwrap();
    let nat = lab
        .ec2
        .create_nat_gateway()
        .subnet_id(subnet)
        .allocation_id(address.allocation_id().unwrap())
        .set_tag_specifications(tags.map(|t| vec![t]))
        .send()
        .await
        .unwrap()
        .nat_gateway
        .unwrap()
        .nat_gateway_id
        .unwrap();
    lab.wait_for(
        "the NAT gateway to be available",
        std::time::Duration::from_secs(60),
        || async {
            let out = lab
                .ec2
                .describe_nat_gateways()
                .nat_gateway_ids(&nat)
                .send()
                .await
                .unwrap();
            out.nat_gateways()[0].state().map(|s| s.as_str()) == Some("available")
        },
    )
    .await;
    nat
}

/// Adds 0.0.0.0/0 -> `nat` (a NAT gateway) or an internet gateway (`igw-…`) to `table`.
pub async fn route_default(lab: &Lab, table: &str, target: &str) {
    let request = lab
        .ec2
        .create_route()
        .route_table_id(table)
        .destination_cidr_block("0.0.0.0/0");
    let request = if target.starts_with("nat-") {
        request.nat_gateway_id(target)
    } else {
        request.gateway_id(target)
    };
    request.send().await.unwrap();
}

/// A route table's default route target, if any.
pub async fn default_route_of(lab: &Lab, table: &str) -> Option<String> {
    let out = lab
        .ec2
        .describe_route_tables()
        .route_table_ids(table)
        .send()
        .await
        .unwrap();
    out.route_tables()
        .iter()
        .flat_map(|t| t.routes())
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
        .map(|r| {
            r.nat_gateway_id()
                .or(r.gateway_id())
                .or(r.network_interface_id())
                .unwrap_or("?")
                .to_owned()
        })
}

/// Asserts the temporary NAT and the endpoints a private bake made are all gone: no gateway of
/// bake's that is not deleted, no Elastic IP of bake's, no default route in `table`, no VPC
/// endpoint that is not deleted.
pub async fn assert_no_egress_left(lab: &Lab, table: &str) {
    let gateways = live_nat_gateways(lab).await;
    assert!(gateways.is_empty(), "NAT gateways left: {gateways:?}");
    let addresses = bake_addresses(lab).await;
    assert!(addresses.is_empty(), "Elastic IPs left: {addresses:?}");
    assert_eq!(
        default_route_of(lab, table).await,
        None,
        "route left in {table}"
    );
    let endpoints = lab.ec2.describe_vpc_endpoints().send().await.unwrap();
    let live: Vec<String> = endpoints
        .vpc_endpoints()
        .iter()
        .filter(|e| {
            !matches!(
                e.state().map(|s| s.as_str()),
                Some("deleted" | "Deleted" | "deleting" | "Deleting")
            )
        })
        .map(|e| format!("{} {:?}", e.vpc_endpoint_id().unwrap_or("?"), e.state()))
        .collect();
    assert!(live.is_empty(), "VPC endpoints left: {live:?}");
}
