//! One log line per AWS call at `-v`: the service and operation, the ids it was about, AWS's
//! answer, how long it took and how many attempts the SDK made, or that bake stopped waiting for
//! an answer to a request already sent (an SDK interceptor on every client bake builds).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use tokio::time::Instant;

/// The interceptor: logs each call when it ends, at info level.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace;

/// What the log line needs from the start of a call: when it began (all its attempts included)
/// and the ids its request is about (read once serialized: the request is gone once sent).
#[derive(Debug, Clone)]
struct Traced {
    started: Instant,
    ids: Vec<String>,
}

impl Storable for Traced {
    type Storer = StoreReplace<Traced>;
}

/// A call about to be sent: when its future is dropped before it ended (a wait that raced it
/// finished first, a signal), its line says so, since AWS may have acted on it (or never seen it:
/// the SDK has no hook between writing the request and reading the answer).
#[derive(Debug)]
struct Sent {
    service: String,
    operation: String,
    ids: Vec<String>,
    started: Instant,
    ended: AtomicBool,
}

impl Storable for Sent {
    type Storer = StoreReplace<Sent>;
}

impl Drop for Sent {
    fn drop(&mut self) {
        if !self.ended.load(Ordering::Relaxed) {
            tracing::info!(
                "{}: no answer awaited (bake stopped waiting; AWS may have acted on it) in {:?}",
                call_name(&self.service, &self.operation, &self.ids),
                whole_millis(self.started.elapsed()),
            );
        }
    }
}

/// A call as its log line names it: `EC2 DescribeInstances i-1 i-2`.
fn call_name(service: &str, operation: &str, ids: &[String]) -> String {
    if ids.is_empty() {
        format!("{service} {operation}")
    } else {
        format!("{service} {operation} {}", ids.join(" "))
    }
}

/// When the call began and the ids it is about, as stored at its start (now and none when the
/// start was not seen).
fn traced(cfg: &ConfigBag) -> (Instant, Vec<String>) {
    cfg.load::<Traced>()
        .map_or((Instant::now(), Vec::new()), |t| (t.started, t.ids.clone()))
}

/// The call's service and operation, `?` where the SDK does not say.
fn operation(cfg: &ConfigBag) -> (String, String) {
    cfg.load::<Metadata>()
        .map_or(("?".to_owned(), "?".to_owned()), |m| {
            (m.service().to_owned(), m.name().to_owned())
        })
}

/// A duration to the millisecond, as the log lines show them.
fn whole_millis(took: Duration) -> Duration {
    Duration::from_millis(u64::try_from(took.as_millis()).unwrap_or(u64::MAX))
}

impl Intercept for Trace {
    fn name(&self) -> &'static str {
        "bake::aws::trace"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Traced {
            started: Instant::now(),
            ids: Vec::new(),
        });
        Ok(())
    }

    fn read_after_serialization(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes();
        if let (Some(traced), Some(body)) = (cfg.load::<Traced>(), body) {
            let ids = key_ids(body);
            let started = traced.started;
            cfg.interceptor_state().store_put(Traced { started, ids });
        }
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg.load::<Sent>().is_some() || !tracing::enabled!(tracing::Level::INFO) {
            return Ok(());
        }
        let (started, ids) = traced(cfg);
        let (service, operation) = operation(cfg);
        cfg.interceptor_state().store_put(Sent {
            service,
            operation,
            ids,
            started,
            ended: AtomicBool::new(false),
        });
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(sent) = cfg.load::<Sent>() {
            sent.ended.store(true, Ordering::Relaxed);
        }
        if !tracing::enabled!(tracing::Level::INFO) {
            return Ok(());
        }
        let (started, ids) = traced(cfg);
        let (service, operation) = operation(cfg);
        let attempts = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        let answer = match context.response() {
            Some(response) if response.status().is_success() => "ok".to_owned(),
            Some(response) => {
                let code = response.body().bytes().and_then(error_code);
                match code {
                    Some(code) => format!("{} {code}", response.status().as_u16()),
                    None => response.status().as_u16().to_string(),
                }
            }
            None => "no answer".to_owned(),
        };
        tracing::info!(
            "{}: {answer} in {:?}{}",
            call_name(&service, &operation, &ids),
            whole_millis(started.elapsed()),
            match attempts {
                0 | 1 => String::new(),
                n => format!(" ({n} attempts)"),
            }
        );
        Ok(())
    }
}

/// The ids and names a request is about, from its body: the values of top-level parameters
/// named `...Id`, `...Ids`, `...Name`, `...Names`, `...Arn` or `...Arns` (query protocols: EC2,
/// Auto Scaling, ELB, IAM; `InstanceId.1`, `Names.member.1` count; `Filter.1.Name` does not), or
/// the same top-level fields of a JSON body (SSM).
fn key_ids(body: &[u8]) -> Vec<String> {
    let key = |name: &str| {
        ["Id", "Ids", "Name", "Names", "Arn", "Arns"]
            .iter()
            .any(|end| name.ends_with(end))
    };
    if body.first() == Some(&b'{') {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) else {
            return Vec::new();
        };
        return fields
            .iter()
            .filter(|(name, _)| key(name))
            .flat_map(|(_, value)| match value {
                serde_json::Value::String(s) => vec![s.clone()],
                serde_json::Value::Array(all) => all
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
    }
    form_urlencoded::parse(body)
        .filter(|(name, _)| name.split('.').next().is_some_and(key))
        .map(|(_, value)| value.into_owned())
        .collect()
}

/// The error code in an error answer's body: `<Code>...</Code>` (query protocols) or
/// `"__type": "...#Code"` (JSON protocols).
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if let Some((_, rest)) = text.split_once("<Code>") {
        return rest.split_once("</Code>").map(|(code, _)| code.to_owned());
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let kind = value.get("__type")?.as_str()?;
    Some(kind.rsplit('#').next().unwrap_or(kind).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_dropped_after_its_request_went_out_gets_its_line() {
        use tokio::io::AsyncReadExt;
        // An endpoint that reads the request and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (received, mut arrived) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = socket.read(&mut buf).await;
            received.send(()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let lines = crate::output::Captured::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::for_tests())
            .endpoint_url(url)
            .interceptor(Trace)
            .build();
        let client = aws_sdk_ec2::Client::from_conf(config);
        let call = client.describe_images().image_ids("ami-1").send();
        tokio::select! {
            answer = call => panic!("the endpoint never answers: {answer:?}"),
            _ = arrived.recv() => {}
        }
        let logged = lines.text();
        assert!(
            logged.contains(
                "EC2 DescribeImages ami-1: no answer awaited (bake stopped waiting; AWS may have \
                 acted on it) in "
            ),
            "{logged}"
        );
    }

    #[test]
    fn a_query_request_is_about_its_ids_and_names_not_its_filters() {
        let body = b"Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1&InstanceId.2=i-2\
            &Filter.1.Name=tag%3Abake%3Arun-id&Filter.1.Value.1=r&Names.member.1=web-TG\
            &TargetGroupArn=arn%3Aaws%3Aelasticloadbalancing%3Aeu-west-1%3A1%3Atargetgroup%2Fweb";
        assert_eq!(
            key_ids(body),
            [
                "i-1",
                "i-2",
                "web-TG",
                "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/web"
            ]
        );
    }

    #[test]
    fn a_json_request_is_about_its_top_level_ids() {
        let body = br#"{"Name":"/bake/web/ami-id","InstanceIds":["i-1"],"Filters":[{"Key":"x"}]}"#;
        assert_eq!(key_ids(body), ["/bake/web/ami-id", "i-1"]);
    }

    #[test]
    fn error_codes_are_read_from_either_protocol() {
        let xml = b"<Response><Errors><Error><Code>InvalidGroup.NotFound</Code></Error></Errors>";
        assert_eq!(error_code(xml).as_deref(), Some("InvalidGroup.NotFound"));
        let json = br#"{"__type":"com.amazonaws.ssm#ParameterNotFound","message":"m"}"#;
        assert_eq!(error_code(json).as_deref(), Some("ParameterNotFound"));
        assert_eq!(error_code(b"not an error"), None);
    }
}
