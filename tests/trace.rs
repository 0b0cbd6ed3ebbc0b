//! `-v` from the real binary: a log line per AWS call with its service, operation, answer,
//! duration and the SDK's attempts, against a small local EC2 endpoint (no lab needed).

#[path = "support/home.rs"]
mod home;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use home::bake_at_home;

/// An EC2 endpoint that answers every listing with nothing, and DescribeImages first with a
/// throttle (503), so the SDK retries it once. Returns its URL and the actions it was asked.
fn ec2_endpoint() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || serve(stream.unwrap(), &seen));
        }
    });
    (url, asked)
}

/// Answers the requests of one connection (kept alive) until the client closes it.
fn serve(stream: TcpStream, asked: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        let action = body
            .split('&')
            .find_map(|p| p.strip_prefix("Action="))
            .unwrap_or("?")
            .to_owned();
        let throttle = {
            let mut asked = asked.lock().unwrap();
            asked.push(action.clone());
            action == "DescribeImages" && asked.iter().filter(|a| **a == action).count() == 1
        };
        let (status, xml) = if throttle {
            (
                "503 Service Unavailable",
                "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow down\
                 </Message></Error></Errors><RequestID>r</RequestID></Response>"
                    .to_owned(),
            )
        } else {
            let empty = match action.as_str() {
                "DescribeInstances" => "<reservationSet/>",
                "DescribeSecurityGroups" => "<securityGroupInfo/>",
                "DescribeImages" => "<imagesSet/>",
                "DescribeSnapshots" => "<snapshotSet/>",
                "DescribeLaunchTemplates" => "<launchTemplates/>",
                _ => "",
            };
            // Auto Scaling, ELB and CloudWatch speak the query protocol: the answer in a Result.
            let query = [
                "DescribeAutoScalingGroups",
                "DescribeLoadBalancers",
                "DescribeTargetGroups",
                "DescribeAlarms",
            ]
            .contains(&action.as_str());
            (
                "200 OK",
                if query {
                    format!("<{action}Response><{action}Result/></{action}Response>")
                } else {
                    format!(
                        "<{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                         <requestId>r</requestId>{empty}</{action}Response>"
                    )
                },
            )
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{xml}",
            xml.len()
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn dash_v_logs_each_aws_call_with_its_duration_and_attempts() {
    let home = tempfile::tempdir().unwrap();
    let (endpoint, asked) = ec2_endpoint();
    let out = bake_at_home(
        home.path(),
        &["-v", "--region", "ap-northeast-2", "gc", "--dry-run"],
    )
    .env("AWS_ENDPOINT_URL", &endpoint)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let calls: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("bake::aws::trace"))
        .collect();
    // What a run left (builders, groups, images, snapshots), the stacks a killed rollout left
    // half-built (src/janitor/stack.rs), then bake's temporary NAT gateways and Elastic IPs
    // (src/ami/egress.rs), then its SSM endpoints and their groups (src/ami/endpoints.rs).
    let operations = [
        "EC2 DescribeInstances",
        "EC2 DescribeSecurityGroups",
        "EC2 DescribeImages",
        "EC2 DescribeSnapshots",
        "Auto Scaling DescribeAutoScalingGroups",
        "EC2 DescribeLaunchTemplates",
        "Elastic Load Balancing v2 DescribeLoadBalancers",
        "Elastic Load Balancing v2 DescribeTargetGroups",
        "CloudWatch DescribeAlarms",
        "EC2 DescribeNatGateways",
        "EC2 DescribeNatGateways",
        "EC2 DescribeAddresses",
        "EC2 DescribeVpcEndpoints",
        "EC2 DescribeSecurityGroups",
    ];
    assert_eq!(calls.len(), operations.len(), "one line a call:\n{stderr}");
    for (line, operation) in calls.iter().zip(operations) {
        assert!(line.contains(&format!("{operation}: ok in ")), "{line}");
        let took = line.split(" in ").nth(1).unwrap_or_default();
        assert!(
            took.starts_with(|c: char| c.is_ascii_digit()) && took.contains('s'),
            "a duration: {line}"
        );
    }
    assert!(
        calls[2].ends_with("(2 attempts)"),
        "the SDK's retry of the throttled call is counted: {}",
        calls[2]
    );
    assert_eq!(
        asked.lock().unwrap().len(),
        operations.len() + 1,
        "every call once, one of them retried"
    );
    let quiet = bake_at_home(
        home.path(),
        &["--region", "ap-northeast-2", "gc", "--dry-run"],
    )
    .env("AWS_ENDPOINT_URL", &endpoint)
    .output()
    .unwrap();
    let quiet = String::from_utf8_lossy(&quiet.stderr);
    assert!(
        !quiet.contains("bake::aws::trace"),
        "quiet without -v: {quiet}"
    );
}
