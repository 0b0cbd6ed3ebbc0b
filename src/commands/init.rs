//! `bake init`: writes a commented bake.toml for a workshop flow (LAMP on Amazon Linux 2023, or
//! Nginx on Debian 12), with the workshop network found in the region by its Name tags.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{Context, Outcome};
use crate::aws::{self, Clients};
use crate::config::ResourceRef;
use crate::resolve::{self, Subnet};

/// A handful of Describe calls with their retries.
const INIT_RUNS_FOR: Duration = Duration::from_secs(5 * 60);

/// The workshops' network, by Name tag: the VPC and the subnets each flow uses.
const VPC_NAME: &str = "VPC-Lab";
const PUBLIC_SUBNETS: [&str; 2] = ["Public subnet A", "Public subnet C"];
const PRIVATE_SUBNETS: [&str; 2] = ["Private subnet A", "Private subnet C"];
/// The workshops' security groups for the load balancer and the instances (bake makes them when
/// they are missing; existing ones are used).
const SECURITY_GROUPS: [&str; 2] = ["Web-ALB-SG", "ASG-Web-Inst-SG"];

/// Write a commented bake.toml for a workshop flow, with the workshop network (VPC "VPC-Lab",
/// the public and private subnets A and C) found in the region by their Name tags. Refuses to
/// overwrite a file.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The workshop flow: lamp (Apache, PHP, MariaDB on Amazon Linux 2023) or nginx (Nginx and a
    /// Flask app on Debian 12).
    #[arg(long, value_enum)]
    pub flow: Flow,
    /// The file to write; it must not exist.
    #[arg(default_value = super::DEFAULT_CONFIG)]
    pub path: PathBuf,
}

/// A workshop flow `bake init` writes a config for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    Lamp,
    Nginx,
}

/// Why `bake init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} already exists; bake init never overwrites a file: move it away or name another path", path = .path.display())]
    Exists { path: PathBuf },
    /// The workshop network is not in the region (or not as the flow needs it).
    #[error("the workshop network in {region}: {source}")]
    Network {
        region: String,
        source: Box<resolve::Error>,
    },
    #[error("cannot write {path}: {source}", path = .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// 2 for a file in the way or a network that is not there (nothing was written), 1 for a
    /// failed write or call.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Exists { .. } => 2,
            Error::Network { source, .. } => source.exit_code(),
            Error::Write { .. } => 1,
        }
    }
}

/// What `bake init` wrote and what it found.
#[derive(Debug, Serialize)]
pub struct Initialized {
    pub path: PathBuf,
    pub flow: Flow,
    pub region: String,
    pub vpc: Found,
    pub subnets: Vec<Found>,
    /// The workshop's security groups that already exist in the VPC (bake makes the others).
    pub security_groups: Vec<Found>,
}

/// A resource found by its Name tag.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub name: String,
    pub id: String,
    /// A subnet's availability zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl std::fmt::Display for Initialized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "wrote {} ({} flow, {}): VPC {} {}",
            self.path.display(),
            match self.flow {
                Flow::Lamp => "lamp",
                Flow::Nginx => "nginx",
            },
            self.region,
            self.vpc.name,
            self.vpc.id
        )?;
        for s in &self.subnets {
            let zone = s.zone.as_deref().unwrap_or_default();
            writeln!(f, "  subnet {:?} {} ({zone})", s.name, s.id)?;
        }
        for g in &self.security_groups {
            writeln!(
                f,
                "  security group {} {} (exists; bake uses it)",
                g.name, g.id
            )?;
        }
        writeln!(
            f,
            "next: bake -c {0} validate; bake -c {0} ami web; bake -c {0} rollout web",
            self.path.display()
        )
    }
}

impl Outcome for Initialized {}

impl Args {
    pub async fn run(&self, ctx: &Context) -> Result<Initialized, crate::Error> {
        // Refused before any AWS call: nothing is looked up for a file that will not be written.
        if self.path.exists() {
            return Err(Error::Exists {
                path: self.path.clone(),
            }
            .into());
        }
        let clients = ctx.clients(None, INIT_RUNS_FOR).await?;
        let network = find_network(&clients)
            .await
            .map_err(|source| Error::Network {
                region: clients.region.clone(),
                source: Box::new(source),
            })?;
        let text = config_text(self.flow, &clients.region, &network);
        // create_new: a file that appeared since the check above is not overwritten either.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists {
                    path: self.path.clone(),
                }
                .into());
            }
            Err(source) => {
                return Err(Error::Write {
                    path: self.path.clone(),
                    source,
                }
                .into());
            }
        }
        Ok(Initialized {
            path: self.path.clone(),
            flow: self.flow,
            region: clients.region.clone(),
            vpc: network.vpc.clone(),
            subnets: network
                .public
                .iter()
                .chain(&network.private)
                .cloned()
                .collect(),
            security_groups: network.security_groups.clone(),
        })
    }
}

/// The workshop network as found in the region.
#[derive(Debug, Clone)]
pub struct Network {
    pub vpc: Found,
    pub public: Vec<Found>,
    pub private: Vec<Found>,
    pub security_groups: Vec<Found>,
}

fn by_name(name: &str) -> ResourceRef {
    ResourceRef {
        id: None,
        tag: [("Name".to_owned(), name.to_owned())].into(),
    }
}

/// Finds the VPC and the four subnets by their Name tags (each exactly once), checks that the
/// subnets are in that VPC, that the public ones route to an internet gateway and are in two
/// zones (the load balancer needs two), and which of the workshop's security groups exist.
async fn find_network(clients: &Clients) -> Result<Network, resolve::Error> {
    let vpc_id = resolve::vpc(clients, &by_name(VPC_NAME)).await?;
    let mut public = Vec::new();
    for name in PUBLIC_SUBNETS {
        let subnet = subnet_in(clients, name, &vpc_id).await?;
        resolve::check_public(clients, &subnet).await?;
        public.push(found(name, subnet));
    }
    if public[0].zone == public[1].zone {
        return Err(resolve::Error::OneZone {
            zone: public[0].zone.clone().unwrap_or_default(),
        });
    }
    let mut private = Vec::new();
    for name in PRIVATE_SUBNETS {
        private.push(found(name, subnet_in(clients, name, &vpc_id).await?));
    }
    let listing = clients
        .ec2
        .describe_security_groups()
        .filters(resolve::filter("vpc-id", &vpc_id))
        .filters(resolve::filter_any("group-name", &SECURITY_GROUPS));
    let groups = clients
        .call(|| listing.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("describe security groups of {vpc_id}"))
        .await?;
    let security_groups = SECURITY_GROUPS
        .iter()
        .filter_map(|name| {
            let group = groups
                .security_groups()
                .iter()
                .find(|g| g.group_name() == Some(name))?;
            Some(Found {
                name: (*name).to_owned(),
                id: group.group_id().unwrap_or_default().to_owned(),
                zone: None,
            })
        })
        .collect();
    Ok(Network {
        vpc: Found {
            name: VPC_NAME.to_owned(),
            id: vpc_id,
            zone: None,
        },
        public,
        private,
        security_groups,
    })
}

/// The one subnet named `name`, which must be in `vpc`.
async fn subnet_in(clients: &Clients, name: &str, vpc: &str) -> Result<Subnet, resolve::Error> {
    let subnet = resolve::subnet(clients, &by_name(name)).await?;
    if subnet.vpc_id != vpc {
        return Err(resolve::Error::WrongVpc {
            subnet: format!("{} ({name:?})", subnet.id),
            found: subnet.vpc_id,
            vpc: format!("{vpc} ({VPC_NAME:?})"),
        });
    }
    Ok(subnet)
}

fn found(name: &str, subnet: Subnet) -> Found {
    Found {
        name: name.to_owned(),
        id: subnet.id,
        zone: Some(subnet.zone),
    }
}

/// The config file for `flow`: the flow's image and rollout, the network written as Name-tag
/// references (what was found noted beside them), every section commented.
pub fn config_text(flow: Flow, region: &str, network: &Network) -> String {
    // The flow's image keys and tables, how long its user data may take to serve the page, and
    // its checks.
    let (header, image, vars, timeout, verify) = match flow {
        Flow::Lamp => (LAMP_HEADER, LAMP_IMAGE, LAMP_VARS, "15m", LAMP_VERIFY),
        Flow::Nginx => (NGINX_HEADER, NGINX_IMAGE, "", "10m", NGINX_VERIFY),
    };
    let subnet_note = |f: &Found| {
        format!(
            "# {:?}: {} in {}",
            f.name,
            f.id,
            f.zone.as_deref().unwrap_or_default()
        )
    };
    let group_note = |name: &str| match network.security_groups.iter().find(|g| g.name == name) {
        Some(g) => format!("# {name} exists ({}): bake uses it", g.id),
        None => format!("# {name} does not exist yet: bake creates it"),
    };
    let mut notes = vec![format!(
        "# Found in {region} by their Name tags when this file was written:"
    )];
    notes.push(format!("# {:?}: {}", network.vpc.name, network.vpc.id));
    notes.extend(
        network
            .public
            .iter()
            .chain(&network.private)
            .map(subnet_note),
    );
    notes.extend(SECURITY_GROUPS.iter().map(|g| group_note(g)));
    format!(
        "{header}\
         #\n\
         # Check it with `bake validate`, bake the image with `bake ami web`, roll it out with\n\
         # `bake rollout web`; `bake pipeline` does all of it, unattended (see contrib/).\n\
         # Editor completion: `bake schema > bake.schema.json`, then a first line\n\
         # `#:schema ./bake.schema.json` (Taplo, Even Better TOML).\n\
         #\n\
         {notes}\n\
         \n\
         # The region bake works in unless --region, AWS_REGION or the profile's region says\n\
         # otherwise.\n\
         region = \"{region}\"\n\
         \n\
         {IMAGE}\
         {image}\
         {DEPRECATE}\
         {vars}\
         {checks}\
         {BUILDER}\
         {ROLLOUT}",
        notes = notes.join("\n"),
        checks = checks(timeout, verify),
    )
}

/// The health and verify sections, the same in both flows but for how long the user data may take
/// to serve the page and the commands that check it through SSM.
fn checks(timeout: &str, commands: &[&str]) -> String {
    let commands: String = commands.iter().map(|c| format!("  \"{c}\",\n")).collect();
    format!(
        r#"# How bake knows the user data worked: the page it must serve, and commands run through SSM.
[image.web.health]
path = "/"
port = 80
expect_status = 200
expect_body = "Immersion Day"
timeout = "{timeout}"

[image.web.verify]
commands = [
{commands}]

"#
    )
}

const LAMP_HEADER: &str = "\
# bake.toml for the LAMP flow of the AWS Immersion Day EC2 lab, written by `bake init`:
# a web server on Amazon Linux 2023 (Apache, PHP, MariaDB, the app unpacked from a URL, the
# AWS SDK for PHP), baked into a tested AMI and rolled out behind an Application Load Balancer
# (\"Web-ALB\" -> \"Web-TG\" -> Auto Scaling group \"Web-ASG\").
";

const NGINX_HEADER: &str = "\
# bake.toml for the Nginx flow of the Session Manager workshop, written by `bake init`:
# Nginx on Debian 12 in front of a small Flask app under gunicorn, baked into a tested AMI and
# rolled out behind an Application Load Balancer (\"Web-ALB\" -> \"Web-TG\" -> Auto Scaling
# group \"Web-ASG\").
";

/// The image section's heading, the same in both flows; each flow's `*_IMAGE` keys follow it.
const IMAGE: &str = r#"# The image: what it starts from, the user-data template that installs the server, and the
# AMI's name ({{ digest[:12] }} changes with any input).
[image.web]
"#;

/// What ends the `[image.web]` table in both flows, before each flow's other image tables.
const DEPRECATE: &str = r#"# deprecate_after = "90d"         # bake afresh (that day's packages) once the AMI is this old

"#;

const LAMP_IMAGE: &str = r#"base = { ssm = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64" }
template = "lamp"                 # bake's built-in LAMP template
os = "al2023"
name = "web-{{ date }}-{{ digest[:12] }}"
"#;

const LAMP_VARS: &str = r#"[image.web.vars]
# The workshop's app as a pre-signed URL: '&', '~' and '=' reach the script as one quoted word.
# A pre-signed URL expires: put your own copy of the app (an S3 object's URL) here when it does.
app_url = "https://static.us-east-1.prod.workshops.aws/88a8dca7-a449-45ef-8175-384d9646aea5/assets/immersion-day-app-php7.zip?Key-Pair-Id=K36Q2WVO3JP7QD&Policy=eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiaHR0cHM6Ly9zdGF0aWMudXMtZWFzdC0xLnByb2Qud29ya3Nob3BzLmF3cy84OGE4ZGNhNy1hNDQ5LTQ1ZWYtODE3NS0zODRkOTY0NmFlYTUvKiJ9XX0__&Signature=oxdOakwik-~DrXY6TGdj9BE3qtNd1Xu~bFlFv8xJnQIyhR5utXjmHtJoqn5mGSXhpTM~G~Q8e~5yQiJBveS2UnCzV-aRevi2t0pblyHeUjMQZKHHEZz8Escn1-s34UA-tO6RjY-glibFWpVIKZC3UB95sxvBbis58dx5CTKtqbAXmnwBFYl3R0vBby6zzYRrOKF2c03o3XLF7Y3foSJnDRRBkxwesCEvgc~7nZVP~px9xOqiwZjqBOdTATZNvigL3G9-vrhk3BGN0M67P4O5YbVzMvf~U-0HDBdwdUIgkWSrfE6y5t8qcHJ0bqd4kPvrVY3P32fti9G5Ocm0UD0dRg__"
php_sdk = true                    # install the AWS SDK for PHP, as the workshop does

"#;

/// What `[image.web.verify]` runs on the LAMP builder through SSM.
const LAMP_VERIFY: &[&str] = &[
    "systemctl is-active httpd",
    "php -v",
    "test -s /var/www/html/index.php",
];

const NGINX_IMAGE: &str = r#"base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"                # bake's built-in Nginx template
os = "debian"
name = "web-nginx-{{ date }}-{{ digest[:12] }}"
vars = { app = "flask", title = "AWS Immersion Day", message = "Nginx in front of a Python app, baked by bake." }
"#;

/// What `[image.web.verify]` runs on the Nginx builder through SSM.
const NGINX_VERIFY: &[&str] = &[
    "systemctl is-active nginx",
    "systemctl is-active bake-app",
    "curl -fsS http://127.0.0.1/ | grep -q 'Immersion Day'",
];

const BUILDER: &str = r#"# The temporary instance the image is baked on: a public subnet, the workshop's instance
# profile (it must exist and hold AmazonSSMManagedInstanceCore), the health port open to this
# machine's address only.
[image.web.builder]
instance_type = "t3.micro"
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"
allow_cidr = "auto"               # this runner's address /32

# The new AMI is booted once without user data and checked again before it counts as baked.
[image.web.test]
enabled = true

"#;

const ROLLOUT: &str = r#"# Where the image runs: an internet-facing ALB in the public subnets, the Auto Scaling group in
# the private ones, each launch template version pinned to a tested AMI, rolled out by an
# instance refresh that rolls back on failure.
[rollout.web]
image = "web"
vpc = { tag = { Name = "VPC-Lab" } }
alb_subnets = [
  { tag = { Name = "Public subnet A" } },
  { tag = { Name = "Public subnet C" } },
]
instance_subnets = [
  { tag = { Name = "Private subnet A" } },
  { tag = { Name = "Private subnet C" } },
]
launch_template = "Web"
asg = "Web-ASG"
alb = "Web-ALB"
target_group = "Web-TG"
alb_security_group = "Web-ALB-SG"           # HTTP from everyone (alb_allow_cidr)
instance_security_group = "ASG-Web-Inst-SG" # HTTP from the load balancer's group only
instance_type = "t3.micro"
instance_profile = "SSMInstanceProfile"
capacity = { min = 2, desired = 2, max = 4 }
cpu_target = 30                   # target tracking on average CPU, percent
refresh = { min_healthy = 90, warmup = "300s" }
tags = { Name = "ASG-Web-Instance" }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, id: &str, zone: Option<&str>) -> Found {
        Found {
            name: name.to_owned(),
            id: id.to_owned(),
            zone: zone.map(str::to_owned),
        }
    }

    #[test]
    fn each_flows_file_is_a_valid_config_with_its_own_timeout_and_checks() {
        let network = Network {
            vpc: found(VPC_NAME, "vpc-1", None),
            public: vec![found(PUBLIC_SUBNETS[0], "subnet-1", Some("us-east-1a"))],
            private: vec![found(PRIVATE_SUBNETS[0], "subnet-2", Some("us-east-1a"))],
            security_groups: vec![found(SECURITY_GROUPS[0], "sg-1", None)],
        };
        for (flow, timeout, verify) in [
            (Flow::Lamp, "15m", LAMP_VERIFY),
            (Flow::Nginx, "10m", NGINX_VERIFY),
        ] {
            let text = config_text(flow, "us-east-1", &network);
            crate::config::Config::parse(std::path::Path::new("bake.toml"), text.clone())
                .unwrap_or_else(|e| panic!("{flow:?}: {e}\n{text}"));
            assert_eq!(text.matches("[image.web.health]").count(), 1, "{text}");
            assert!(
                text.contains(&format!("timeout = \"{timeout}\"\n")),
                "{text}"
            );
            for command in verify {
                assert!(text.contains(&format!("  \"{command}\",\n")), "{text}");
            }
        }
    }
}
