//! A proxy in front of moto that makes it as strict as AWS where moto is lenient, and injects faults:
//! chosen calls answered with AWS's real error documents (so the SDK's own error parsing runs), stack
//! states moto never reaches (ROLLBACK_COMPLETE, UPDATE_ROLLBACK_FAILED, a slow CREATE_IN_PROGRESS),
//! DeleteStack refused while a bucket still holds objects (DELETE_FAILED), and per-key errors inside a
//! DeleteObjects 200. It also records every call, so tests can count stack operations.
//!
//! moto is not thread-safe, where AWS handles each request whole: two stacks created at once can leave
//! one `CREATE_IN_PROGRESS` for ever (its resources' maps are mutated during iteration), and a
//! DescribeStacks creates a new stack's resources lazily, racing its CreateStack (`BucketAlreadyExists`).
//! So the proxy handles one request at a time (its own calls to moto for that request included; a delay or
//! an error it injects waits for no turn), and carries out a request it has received even when the caller
//! goes away (killed mid-call), as AWS carries out a request it has received. Tests' own clients straight
//! to moto ([`crate::TestEnv::stack`], say) are outside this, and even their reads can race previewd's
//! calls: a test uses them once previewd has settled, or while it is idle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

/// One call the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub service: String,
    pub action: String,
    /// The stack name a CloudFormation call names (by name or by id).
    pub stack: Option<String>,
    /// Answered by a fault rather than by moto.
    pub injected: bool,
    /// Keys a DeleteObjects call names (AWS takes at most 1,000).
    pub keys: usize,
    /// When the proxy received it.
    pub at: Instant,
    /// A CloudFormation call's ClientRequestToken: the same token twice is one request retried.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
struct ErrorFault {
    service: String,
    action: String,
    status: u16,
    code: String,
    message: String,
    remaining: usize,
}

#[derive(Debug, Clone)]
enum Until {
    /// Until a call of this action on the stack is passed to moto.
    Action(String),
    Time(Instant),
}

#[derive(Debug, Clone)]
struct StatusOverride {
    stack: String,
    status: String,
    reason: String,
    /// Becomes active when this action on the stack passes to moto; `None`: active now.
    after: Option<String>,
    active: bool,
    until: Until,
    /// For a `Time` bound: how long after activation.
    duration: Duration,
    /// A failed resource's event shown first in the stack's events while active: (logical id, type,
    /// reason), as CloudFormation records the cause of a rollback.
    event: Option<(String, String, String)>,
}

#[derive(Debug, Default)]
struct ProxyState {
    calls: Vec<Call>,
    /// The (service, action) of calls cleared by `reset_calls`.
    earlier: std::collections::BTreeSet<(String, String)>,
    errors: Vec<ErrorFault>,
    overrides: Vec<StatusOverride>,
    strict_bucket_deletes: bool,
    /// stack → how many more DeleteStack calls find a fresh object in its buckets first
    refill: BTreeMap<String, usize>,
    /// how many more DeleteObjects calls answer 200 with every key refused
    key_errors: usize,
    /// (service, action, delay, how many more calls): answered by moto, but only after the delay
    delays: Vec<(String, String, Duration, usize)>,
}

#[derive(Debug, Clone)]
pub struct AwsProxy {
    state: Arc<Mutex<ProxyState>>,
    upstream: String,
    client: reqwest::Client,
    /// Held while a request is handled with moto: one at a time.
    turn: Arc<tokio::sync::Mutex<()>>,
    addr: SocketAddr,
}

/// What moto answered: status, headers, the whole body.
type Answer = (StatusCode, reqwest::header::HeaderMap, Bytes);

impl AwsProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = Self {
            state: Arc::new(Mutex::new(ProxyState { strict_bucket_deletes: true, ..ProxyState::default() })),
            upstream: upstream.trim_end_matches('/').to_owned(),
            // A moto that never answers holds the turn: the SDK's own operation timeout is as long.
            client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client"),
            turn: Arc::default(),
            addr: listener.local_addr().expect("addr"),
        };
        let app = Router::new().fallback(handle).with_state(proxy.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        proxy
    }

    /// The URL to give the AWS SDK as its endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `times` calls of `service`/`action` get AWS's error document instead of an answer.
    pub fn fail(&self, service: &str, action: &str, times: usize, status: u16, code: &str, message: &str) {
        self.lock().errors.push(ErrorFault {
            service: service.into(),
            action: action.into(),
            status,
            code: code.into(),
            message: message.into(),
            remaining: times,
        });
    }

    /// `Throttling: Rate exceeded`, as CloudFormation answers a client that calls too often.
    pub fn throttle(&self, action: &str, times: usize) {
        self.fail("cloudformation", action, times, 400, "Throttling", "Rate exceeded");
    }

    /// UpdateStack answers "No updates are to be performed." (moto accepts unchanged updates).
    pub fn no_updates(&self, times: usize) {
        self.fail("cloudformation", "UpdateStack", times, 400, "ValidationError", "No updates are to be performed.");
    }

    fn override_status(
        &self,
        stack: &str,
        status: &str,
        reason: &str,
        after: Option<&str>,
        until: Until,
        duration: Duration,
    ) {
        self.lock().overrides.push(StatusOverride {
            stack: stack.into(),
            status: status.into(),
            reason: reason.into(),
            after: after.map(str::to_owned),
            active: after.is_none(),
            until,
            duration,
            event: None,
        });
    }

    /// As [`rollback_next_create`](Self::rollback_next_create), with the cause CloudFormation records: a
    /// `CREATE_FAILED` event of resource `logical_id` (of `resource_type`) saying `reason`.
    pub fn rollback_next_create_because(&self, stack: &str, logical_id: &str, resource_type: &str, reason: &str) {
        self.rollback_next_create(stack);
        let mut st = self.lock();
        if let Some(o) = st.overrides.iter_mut().rev().find(|o| o.stack == stack) {
            o.event = Some((logical_id.to_owned(), resource_type.to_owned(), reason.to_owned()));
        }
    }

    /// After the stack's next CreateStack, it shows ROLLBACK_COMPLETE (a failed create) until deleted.
    pub fn rollback_next_create(&self, stack: &str) {
        let reason = "The following resource(s) failed to create: [Service]. Rollback requested by user.";
        self.override_status(
            stack,
            "ROLLBACK_COMPLETE",
            reason,
            Some("CreateStack"),
            Until::Action("DeleteStack".into()),
            Duration::ZERO,
        );
    }

    /// After the stack's next UpdateStack, it shows UPDATE_ROLLBACK_FAILED until deleted.
    pub fn rollback_fails_after_update(&self, stack: &str) {
        let reason = "The following resource(s) failed to update: [Service].";
        self.override_status(
            stack,
            "UPDATE_ROLLBACK_FAILED",
            reason,
            Some("UpdateStack"),
            Until::Action("DeleteStack".into()),
            Duration::ZERO,
        );
    }

    /// After the stack's next CreateStack, it shows CREATE_IN_PROGRESS for `duration` (moto creates at once).
    pub fn slow_create(&self, stack: &str, duration: Duration) {
        self.override_status(
            stack,
            "CREATE_IN_PROGRESS",
            "User Initiated",
            Some("CreateStack"),
            Until::Time(Instant::now()),
            duration,
        );
    }

    /// The next `times` DeleteStack calls on the stack find an object freshly written to each of its
    /// buckets (an application still writing while it is torn down).
    pub fn refill_buckets_before_delete(&self, stack: &str, times: usize) {
        self.lock().refill.insert(stack.into(), times);
    }

    /// The next `times` DeleteObjects calls answer 200 with every key refused (`InternalError`).
    pub fn refuse_keys(&self, times: usize) {
        self.lock().key_errors = times;
    }

    /// The next `times` calls of `service`/`action` are answered only after `delay` (a slow or hung AWS
    /// endpoint: longer than the SDK's operation timeout, the caller gives up first).
    pub fn slow(&self, service: &str, action: &str, times: usize, delay: Duration) {
        self.lock().delays.push((service.into(), action.into(), delay, times));
    }

    /// Forgets the calls seen so far (to count what one pass does).
    pub fn reset_calls(&self) {
        let mut st = self.lock();
        let calls = std::mem::take(&mut st.calls);
        st.earlier.extend(calls.into_iter().map(|c| (c.service, c.action)));
    }

    /// Every (service, action) called since the proxy started, [`reset_calls`](Self::reset_calls) or not.
    pub fn actions_seen(&self) -> std::collections::BTreeSet<(String, String)> {
        let st = self.lock();
        let mut seen = st.earlier.clone();
        seen.extend(st.calls.iter().map(|c| (c.service.clone(), c.action.clone())));
        seen
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls seen from the `start`th on (a watcher's poll clones only what is new).
    pub fn calls_from(&self, start: usize) -> Vec<Call> {
        self.lock().calls.get(start..).map(<[Call]>::to_vec).unwrap_or_default()
    }

    /// How many calls of `action` on `stack` reached moto.
    pub fn count(&self, action: &str, stack: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.action == action && c.stack.as_deref() == Some(stack) && !c.injected)
            .count()
    }

    /// Sends `req` to moto and reads the whole answer; the caller holds the turn (see the module's
    /// documentation).
    async fn moto(&self, req: reqwest::RequestBuilder) -> Result<Answer, String> {
        let answer = req.send().await.map_err(|e| e.to_string())?;
        let (status, headers) = (answer.status(), answer.headers().clone());
        Ok((status, headers, answer.bytes().await.unwrap_or_default()))
    }

    /// moto's answer as text; empty when it could not be reached.
    async fn moto_text(&self, req: reqwest::RequestBuilder) -> String {
        self.moto(req).await.map(|(_, _, body)| String::from_utf8_lossy(&body).into_owned()).unwrap_or_default()
    }

    async fn upstream_form(&self, form: &[(&str, &str)]) -> String {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let req = self
            .client
            .post(format!("{}/", self.upstream))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", unsigned("cloudformation"))
            .body(body);
        self.moto_text(req).await
    }

    async fn stack_resources(&self, stack: &str, kind: &str) -> Vec<String> {
        self.logical_resources(stack, kind).await.into_iter().map(|(_, physical)| physical).collect()
    }

    /// `(logical id, physical id)` of the stack's resources of one type.
    async fn logical_resources(&self, stack: &str, kind: &str) -> Vec<(String, String)> {
        let xml = self
            .upstream_form(&[("Action", "ListStackResources"), ("StackName", stack), ("Version", "2010-05-15")])
            .await;
        blocks(&xml, "member")
            .into_iter()
            .filter(|m| first(m, "ResourceType").as_deref() == Some(kind))
            .filter_map(|m| Some((first(&m, "LogicalResourceId")?, first(&m, "PhysicalResourceId")?)))
            .collect()
    }

    /// The stack's buckets that CloudFormation deletes with it: a bucket its template retains does not
    /// block the stack's deletion, whatever it holds.
    async fn stack_buckets(&self, stack: &str) -> Vec<String> {
        let xml =
            self.upstream_form(&[("Action", "GetTemplate"), ("StackName", stack), ("Version", "2010-05-15")]).await;
        let body = first(&xml, "TemplateBody").map(|b| unescape_xml(&b)).unwrap_or_default();
        let template: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let retained = |logical: &str| {
            let policy = template["Resources"][logical]["DeletionPolicy"].as_str();
            matches!(policy, Some("Retain" | "RetainExceptOnCreate"))
        };
        self.logical_resources(stack, "AWS::S3::Bucket")
            .await
            .into_iter()
            .filter(|(logical, _)| !retained(logical))
            .map(|(_, physical)| physical)
            .collect()
    }

    /// moto deletes a stack but not its load-balancer listener rules (its rule model has no
    /// CloudFormation delete); AWS removes them, so a re-created stack can take the same priority.
    async fn delete_listener_rules(&self, rules: &[String]) {
        for rule in rules {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs([("Action", "DeleteRule"), ("RuleArn", rule.as_str()), ("Version", "2015-12-01")])
                .finish();
            let req = self
                .client
                .post(format!("{}/", self.upstream))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", unsigned("elasticloadbalancing"))
                .body(body);
            let _ = self.moto(req).await;
        }
    }

    /// Why Route53 would refuse the DELETEs of a change batch (AWS's words), if it would: moto deletes by
    /// name and type, AWS only a record whose TTL and values are exactly those given.
    async fn mismatched_delete(&self, path: &str, batch: &str) -> Option<String> {
        for change in blocks(batch, "Change").iter().filter(|c| first(c, "Action").as_deref() == Some("DELETE")) {
            let (Some(name), Some(kind)) = (first(change, "Name"), first(change, "Type")) else { continue };
            let ttl = first(change, "TTL");
            let values: Vec<String> = blocks(change, "Value").iter().map(|v| unescape_xml(v)).collect();
            let list = format!("{}?name={name}&type={kind}&maxitems=1", path.trim_end_matches('/'));
            let current = self.route53_get(&list).await;
            let found = blocks(&current, "ResourceRecordSet").into_iter().find(|r| {
                let same = |n: &str| n.trim_end_matches('.').eq_ignore_ascii_case(name.trim_end_matches('.'));
                first(r, "Name").is_some_and(|n| same(&n)) && first(r, "Type").as_deref() == Some(&kind)
            });
            let label = format!("[name='{name}', type='{kind}']");
            match found {
                None => return Some(format!("[Tried to delete resource record set {label} but it was not found]")),
                Some(r)
                    if first(&r, "TTL") != ttl
                        || blocks(&r, "Value").iter().map(|v| unescape_xml(v)).ne(values.iter().cloned()) =>
                {
                    return Some(format!(
                        "[Tried to delete resource record set {label} but the values provided do not match the current values]"
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }

    async fn route53_get(&self, path_query: &str) -> String {
        let req =
            self.client.get(format!("{}{path_query}", self.upstream)).header("authorization", unsigned("route53"));
        self.moto_text(req).await
    }

    async fn s3(&self, method: Method, path_query: &str, body: Option<&'static str>) -> String {
        let mut req = self
            .client
            .request(method, format!("{}/{path_query}", self.upstream))
            .header("authorization", unsigned("s3"));
        if let Some(b) = body {
            req = req.body(b);
        }
        self.moto_text(req).await
    }

    /// Does any bucket of the stack still hold an object version, a delete marker or an upload?
    async fn blocking_bucket(&self, stack: &str) -> Option<String> {
        for bucket in self.stack_buckets(stack).await {
            let versions = self.s3(Method::GET, &format!("{bucket}?versions"), None).await;
            let uploads = self.s3(Method::GET, &format!("{bucket}?uploads"), None).await;
            if versions.contains("<Version>") || versions.contains("<DeleteMarker>") || uploads.contains("<Upload>") {
                return Some(bucket);
            }
        }
        None
    }
}

/// `(service, action)` of a request, from its credential scope and protocol.
fn identify(
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> (String, String) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let service = auth.split("Credential=").nth(1).and_then(|c| c.split('/').nth(3)).unwrap_or("unknown").to_owned();
    let action = match service.as_str() {
        "s3" => {
            // Path-style: `/bucket` for the bucket, `/bucket/key…` for an object.
            let object = path.trim_start_matches('/').contains('/');
            match (method.as_str(), query, object) {
                ("POST", q, _) if q.contains("delete") => "DeleteObjects",
                ("GET", q, false) if q.contains("versions") => "ListObjectVersions",
                ("GET", q, false) if q.contains("uploads") => "ListMultipartUploads",
                ("GET", _, false) => "ListObjectsV2",
                ("HEAD", _, false) => "HeadBucket",
                ("DELETE", q, true) if q.contains("uploadId") => "AbortMultipartUpload",
                ("PUT", _, true) if headers.contains_key("x-amz-copy-source") => "CopyObject",
                ("PUT", _, true) => "PutObject",
                ("GET", _, true) => "GetObject",
                ("HEAD", _, true) => "HeadObject",
                ("DELETE", _, true) => "DeleteObject",
                (m, _, _) => m,
            }
            .to_owned()
        }
        "route53" => match (method.as_str(), path) {
            ("POST", p) if p.ends_with("/rrset") || p.ends_with("/rrset/") => "ChangeResourceRecordSets",
            ("GET", p) if p.ends_with("/rrset") => "ListResourceRecordSets",
            ("GET", p) if p.contains("hostedzonesbyname") => "ListHostedZonesByName",
            (m, _) => m,
        }
        .to_owned(),
        // JSON protocols (ECS, Secrets Manager): `X-Amz-Target: AmazonEC2ContainerServiceV20141113.RunTask`.
        _ => match headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
            Some(target) => target.rsplit('.').next().unwrap_or(target).to_owned(),
            None => form.get("Action").cloned().unwrap_or_default(),
        },
    };
    (service, action)
}

fn stack_name(param: &str) -> String {
    // An id is `arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/UUID`.
    match param.strip_prefix("arn:") {
        Some(_) => param.split('/').nth(1).unwrap_or(param).to_owned(),
        None => param.to_owned(),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn request_id() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0xfff),
        fastrand::u16(..0xfff),
        fastrand::u64(..1 << 48)
    )
}

fn error_document(service: &str, code: &str, message: &str) -> String {
    let id = request_id();
    match service {
        "s3" => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{id}</RequestId><HostId>{id}</HostId></Error>"
        ),
        "route53" => format!(
            "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{id}</RequestId></ErrorResponse>"
        ),
        _ => format!(
            "<ErrorResponse xmlns=\"http://cloudformation.amazonaws.com/doc/2010-05-15/\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  <RequestId>{id}</RequestId>\n</ErrorResponse>"
        ),
    }
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "text/xml")], body).into_response()
}

/// Every `<tag>…</tag>` block's inside, in order.
fn blocks(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    out
}

/// The length of the `<member>…</member>` that `xml` starts with, members inside it included.
fn member_len(xml: &str) -> Option<usize> {
    let (open, close) = ("<member>", "</member>");
    let (mut depth, mut at) = (0usize, 0usize);
    loop {
        let next_open = xml[at..].find(open).map(|i| at + i);
        let next_close = xml[at..].find(close).map(|i| at + i)?;
        match next_open {
            Some(o) if o < next_close => {
                depth += 1;
                at = o + open.len();
            }
            _ => {
                depth -= 1;
                at = next_close + close.len();
                if depth == 0 {
                    return Some(at);
                }
            }
        }
    }
}

/// A stack's `<member>` with the status (and reason) of `o` in place of its own.
fn with_status(member: &str, o: &StatusOverride) -> String {
    let mut member = member.to_owned();
    if let (Some(s), Some(e)) = (member.find("<StackStatusReason>"), member.find("</StackStatusReason>")) {
        member.replace_range(s..e + "</StackStatusReason>".len(), "");
    }
    match (member.find("<StackStatus>"), member.find("</StackStatus>")) {
        (Some(s), Some(e)) => format!(
            "{}<StackStatus>{}</StackStatus><StackStatusReason>{}</StackStatusReason>{}",
            &member[..s],
            o.status,
            o.reason,
            &member[e + "</StackStatus>".len()..]
        ),
        _ => member,
    }
}

/// The authorization header of the proxy's own calls to moto, which reads the service from the
/// credential's scope and checks no signature.
fn unsigned(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
    )
}

fn unescape_xml(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn first(xml: &str, tag: &str) -> Option<String> {
    blocks(xml, tag).into_iter().next()
}

async fn handle(State(proxy): State<AwsProxy>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let received = Instant::now();
    // In a task of its own: a caller that goes away (killed mid-call) does not cut the request short.
    match tokio::spawn(answer(proxy, parts, body, received)).await {
        Ok(response) => response,
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// What AWS would answer `parts` and `body` (received at `received`): an injected fault, or moto's answer
/// made strict.
async fn answer(proxy: AwsProxy, parts: axum::http::request::Parts, body: Bytes, received: Instant) -> Response {
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let is_form = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form: BTreeMap<String, String> =
        if is_form { form_urlencoded::parse(&body).into_owned().collect() } else { BTreeMap::new() };
    let (service, action) = identify(&parts.method, &path, &query, &parts.headers, &form);
    let stack = form.get("StackName").map(|s| stack_name(s));
    let token = form.get("ClientRequestToken").cloned();
    let keys = if action == "DeleteObjects" { String::from_utf8_lossy(&body).matches("<Key>").count() } else { 0 };
    // A call answered here, as AWS would have answered it, rather than by moto.
    let refused = || Call {
        service: service.clone(),
        action: action.clone(),
        stack: stack.clone(),
        injected: true,
        keys,
        at: received,
        token: token.clone(),
    };

    // Injected errors.
    let injected = {
        let mut st = proxy.lock();
        let hit =
            st.errors.iter_mut().find(|f| f.remaining > 0 && f.service == service && f.action == action).map(|f| {
                f.remaining -= 1;
                (f.status, f.code.clone(), f.message.clone())
            });
        if hit.is_some() {
            st.calls.push(refused());
        }
        hit
    };
    let delay = {
        let mut st = proxy.lock();
        st.delays.iter_mut().find(|d| d.3 > 0 && d.0 == service && d.1 == action).map(|d| {
            d.3 -= 1;
            d.2
        })
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if let Some((status, code, message)) = injected {
        return xml(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            error_document(&service, &code, &message),
        );
    }

    // From here on, moto is asked: one request at a time.
    let _turn = proxy.turn.clone().lock_owned().await;

    if service == "s3" && action == "DeleteObjects" {
        let refuse = {
            let mut st = proxy.lock();
            let refuse = st.key_errors > 0;
            if refuse {
                st.key_errors -= 1;
                st.calls.push(refused());
            }
            refuse
        };
        if refuse {
            let text = String::from_utf8_lossy(&body);
            let errors: String = blocks(&text, "Object")
                .iter()
                .map(|o| {
                    let version = first(o, "VersionId").map(|v| format!("<VersionId>{v}</VersionId>")).unwrap_or_default();
                    format!("<Error><Key>{}</Key>{version}<Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>", first(o, "Key").unwrap_or_default())
                })
                .collect();
            return xml(
                StatusCode::OK,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{errors}</DeleteResult>"
                ),
            );
        }
    }

    if action == "ChangeResourceRecordSets"
        && let Some(why) = proxy.mismatched_delete(&path, &String::from_utf8_lossy(&body)).await
    {
        proxy.lock().calls.push(refused());
        return xml(StatusCode::BAD_REQUEST, error_document(&service, "InvalidChangeBatch", &why));
    }

    // DeleteStack is refused, as AWS does, while a bucket of the stack still holds anything.
    if action == "DeleteStack"
        && let Some(name) = &stack
    {
        let refill = {
            let mut st = proxy.lock();
            match st.refill.get_mut(name) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        if refill {
            for bucket in proxy.stack_buckets(name).await {
                proxy
                    .s3(
                        Method::PUT,
                        &format!("{bucket}/late-write-{}.txt", fastrand::u32(..)),
                        Some("written during teardown"),
                    )
                    .await;
            }
        }
        let strict = proxy.lock().strict_bucket_deletes;
        if strict && let Some(bucket) = proxy.blocking_bucket(name).await {
            let mut st = proxy.lock();
            st.calls.push(refused());
            st.overrides.retain(|o| &o.stack != name);
            st.overrides.push(StatusOverride {
                stack: name.clone(),
                status: "DELETE_FAILED".into(),
                reason: format!("The following resource(s) failed to delete: [Bucket]. The bucket you tried to delete is not empty ({bucket})."),
                after: None,
                active: true,
                until: Until::Action("DeleteStack".into()),
                duration: Duration::ZERO,
                event: None,
            });
            let ok = format!(
                "<DeleteStackResponse xmlns=\"http://cloudformation.amazonaws.com/doc/2010-05-15/\"><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></DeleteStackResponse>",
                request_id()
            );
            return xml(StatusCode::OK, ok);
        }
    }

    let rules = match (&stack, action.as_str()) {
        (Some(name), "DeleteStack") => proxy.stack_resources(name, "AWS::ElasticLoadBalancingV2::ListenerRule").await,
        _ => vec![],
    };

    // Counted as it arrived (not when its turn came), as AWS would see it: a caller killed while moto works
    // on it still made it.
    proxy.lock().calls.push(Call {
        service: service.clone(),
        action: action.clone(),
        stack: stack.clone(),
        injected: false,
        keys,
        at: received,
        token: token.clone(),
    });

    // Forward to moto.
    let mut upstream = proxy.client.request(
        parts.method.clone(),
        format!("{}{}", proxy.upstream, parts.uri.path_and_query().map_or("/", |p| p.as_str())),
    );
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            upstream = upstream.header(k, v);
        }
    }
    let (status, headers, text) = match proxy.moto(upstream.body(body)).await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e).into_response(),
    };
    if status.is_success() && !rules.is_empty() {
        proxy.delete_listener_rules(&rules).await;
    }
    let mut text = text.to_vec();

    let mut st = proxy.lock();
    if let Some(name) = &stack
        && status.is_success()
    {
        let now = Instant::now();
        for o in st.overrides.iter_mut().filter(|o| &o.stack == name) {
            if !o.active && o.after.as_deref() == Some(action.as_str()) {
                o.active = true;
                if let Until::Time(_) = o.until {
                    o.until = Until::Time(now + o.duration);
                }
            }
        }
        st.overrides
            .retain(|o| !(o.active && &o.stack == name && matches!(&o.until, Until::Action(a) if *a == action)));
    }
    // A stack described alone or in a listing shows the state a test gave it.
    if action == "DescribeStacks" && status.is_success() {
        let now = Instant::now();
        st.overrides.retain(|o| !matches!(o.until, Until::Time(t) if o.active && t <= now));
        let active: Vec<&StatusOverride> = st.overrides.iter().filter(|o| o.active).collect();
        if !active.is_empty() {
            let body = String::from_utf8_lossy(&text).into_owned();
            let mut out = String::with_capacity(body.len());
            let mut rest = body.as_str();
            while let Some(start) = rest.find("<member>") {
                let Some(len) = member_len(&rest[start..]) else { break };
                let member = &rest[start..start + len];
                out.push_str(&rest[..start]);
                let name = first(member, "StackName");
                match active.iter().find(|o| name.as_deref() == Some(o.stack.as_str())) {
                    Some(o) if member.contains("<StackStatus>") => out.push_str(&with_status(member, o)),
                    _ => out.push_str(member),
                }
                rest = &rest[start + len..];
            }
            out.push_str(rest);
            text = out.into_bytes();
        }
    }
    // ... and its events begin with the failed resource's, when a test gave one.
    if action == "DescribeStackEvents" && status.is_success() {
        let event = stack.as_ref().and_then(|name| {
            st.overrides.iter().find(|o| o.active && &o.stack == name).and_then(|o| o.event.clone().map(|e| (name, e)))
        });
        let body = String::from_utf8_lossy(&text).into_owned();
        if let Some((name, (logical, kind, reason))) = event
            && let Some(at) = body.find("<StackEvents>")
        {
            let at = at + "<StackEvents>".len();
            let member = format!(
                "<member><EventId>previewd-test-{logical}</EventId><StackName>{name}</StackName>\
                 <LogicalResourceId>{logical}</LogicalResourceId><ResourceType>{kind}</ResourceType>\
                 <Timestamp>2026-01-01T00:00:00.000Z</Timestamp><ResourceStatus>CREATE_FAILED</ResourceStatus>\
                 <ResourceStatusReason>{}</ResourceStatusReason></member>",
                xml_escape(&reason)
            );
            text = format!("{}{member}{}", &body[..at], &body[at..]).into_bytes();
        }
    }
    drop(st);
    let mut response = Response::builder().status(status.as_u16());
    for (k, v) in &headers {
        if k != "content-length" && k != "transfer-encoding" {
            response = response.header(k.as_str(), v.as_bytes());
        }
    }
    response.body(axum::body::Body::from(text)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
