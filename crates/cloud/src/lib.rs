//! AWS as previewd uses it: CloudFormation stacks, emptying S3 buckets, and Route53 records with an
//! ownership marker. Every call goes through the real aws-sdk clients, so tests against moto (and the
//! fault-injecting proxy in `testkit`) exercise the SDK's own request signing, retries and error parsing.
//!
//! Errors come in classes the reconciler branches on ([`CloudError::is_retryable`]); "no updates are to
//! be performed" is not an error at all ([`UpdateOutcome::NoChanges`]). Throttling and 5xx answers are
//! retried inside the SDK first (standard retry mode: exponential backoff with jitter).

mod artifacts;
mod dns;
mod s3;
mod seed;
mod services;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_cloudformation as cfn;
use aws_sdk_cloudformation::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudformation::types::{Capability, Tag};
use previewd_domain::{EMPTY_ON_DELETE_MARK, EMPTY_ON_DELETE_OUTPUT};

pub use dns::{DnsChange, DnsRecord, MISMATCHED_CHANGE_CODES, MarkedName, OwnershipMarker};
pub use s3::{EMPTY_STEP_BATCHES, EmptyReport};
pub use seed::{TaskRequest, TaskState};
pub use services::{ServiceRef, ServiceTrouble};

/// Attempts per AWS call, first included, before the error reaches the reconciler (which then requeues
/// with its own, longer backoff).
pub const SDK_MAX_ATTEMPTS: u32 = 5;
/// One AWS call, retries included, may take this long; CloudFormation's own work is waited for by
/// polling, never inside one call.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// How an AWS call failed, as far as the caller's next move goes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    /// Throttling, a 5xx answer, a timeout or a lost connection, still failing after the SDK's retries:
    /// try again later.
    #[error("{op}: temporarily failing ({code}): {message}")]
    Retryable { op: &'static str, code: String, message: String },
    /// AWS refused the request; retrying the same request will not help.
    #[error("{op}: {code}: {message}")]
    Terminal { op: &'static str, code: String, message: String },
}

impl CloudError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, CloudError::Retryable { .. })
    }

    /// AWS failing rather than asking previewd to slow down or wait: a 5xx answer, an internal error.
    /// (Throttling, an operation already under way, a timeout or a lost connection are not.)
    pub fn is_fault(&self) -> bool {
        match self {
            CloudError::Retryable { code, .. } => {
                code.starts_with("HTTP5")
                    || matches!(code.as_str(), "InternalError" | "InternalFailure" | "ServiceUnavailable")
            }
            CloudError::Terminal { .. } => false,
        }
    }

    pub fn code(&self) -> &str {
        match self {
            CloudError::Retryable { code, .. } | CloudError::Terminal { code, .. } => code,
        }
    }

    fn terminal(op: &'static str, code: &str, message: impl Into<String>) -> Self {
        CloudError::Terminal { op, code: code.to_owned(), message: message.into() }
    }
}

/// Error codes AWS uses for "slow down" and "try again".
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
];

pub(crate) fn classify<E>(op: &'static str, err: SdkError<E, cfn::config::http::HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().unwrap_or("").to_owned();
    let status = err.raw_response().map(|r| r.status().as_u16());
    let message = err.message().map(str::to_owned).unwrap_or_else(|| DisplayErrorContext(&err).to_string());
    // "Stack … is in UPDATE_IN_PROGRESS state and can not be updated": another replica (or a person) is
    // already changing it; once that is done the same request may well go through.
    let busy = code == "ValidationError" && message.contains("_IN_PROGRESS state");
    let transient =
        matches!(err, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_))
            || status.is_some_and(|s| s >= 500)
            || RETRYABLE_CODES.contains(&code.as_str())
            || busy;
    let code =
        if code.is_empty() { status.map_or_else(|| "NoResponse".to_owned(), |s| format!("HTTP{s}")) } else { code };
    if transient { CloudError::Retryable { op, code, message } } else { CloudError::Terminal { op, code, message } }
}

/// How CloudFormation's ValidationError says there is no such stack.
const NO_STACK: &str = "does not exist";

/// Pages of a stack's events read, at most, to find the beginning of its last operation (100 events a
/// page: a stack of some hundred resources).
const STACK_EVENT_PAGES_MAX: usize = 5;

/// A stack as CloudFormation describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    pub id: String,
    pub name: String,
    pub status: String,
    pub reason: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
    /// When it was created, and when its last update began, in ms since the epoch.
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

impl Stack {
    /// As [`previewd_domain::StackStatus::in_progress`]: `…_IN_PROGRESS`, or an emulator's `…_PENDING`.
    pub fn in_progress(&self) -> bool {
        self.status.ends_with("_IN_PROGRESS") || self.status.ends_with("_PENDING")
    }

    pub fn stack_status(&self) -> previewd_domain::StackStatus {
        self.status.parse().unwrap_or_else(|never| match never {})
    }

    /// When its last operation began: its last update, else its creation.
    pub fn changed_at(&self) -> Option<i64> {
        self.updated_at.or(self.created_at)
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// Every live stack of the account and region, as one DescribeStacks walk read them.
#[derive(Debug, Clone, Default)]
pub struct StackListing {
    pub stacks: Vec<Stack>,
    /// The pages it took: what the next listing will cost.
    pub pages: usize,
}

/// A stack to create or update.
#[derive(Debug, Clone)]
pub struct StackRequest {
    pub name: String,
    pub template: Template,
    pub tags: Vec<(String, String)>,
    /// Makes a retried request idempotent: CloudFormation ignores a second request with the same token.
    pub token: String,
    /// The role CloudFormation assumes to create the stack's resources (RoleARN), if any.
    pub role_arn: Option<String>,
    /// How long a create may take before CloudFormation fails it (`TimeoutInMinutes`, whole minutes, at
    /// least one); an update has no such limit (see [`Aws::cancel_update`]).
    pub timeout: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
pub enum Template {
    Body(String),
    Url(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    Started,
    /// "No updates are to be performed": the stack already is what was asked for.
    NoChanges,
}

/// One line of a stack's event history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackEvent {
    pub id: String,
    pub timestamp: String,
    pub logical_id: String,
    pub resource_type: String,
    /// The resource's own id (an ECS service's ARN), once it has one.
    pub physical_id: Option<String>,
    pub status: String,
    pub reason: Option<String>,
}

/// A CreateStack or UpdateStack call (two builder types with the same setters) for `req`: name, token,
/// IAM capabilities, tags and the template by body or by URL.
macro_rules! stack_call {
    ($builder:expr, $req:expr) => {{
        let req: &StackRequest = $req;
        let call = $builder
            .stack_name(&req.name)
            .client_request_token(&req.token)
            .set_role_arn(req.role_arn.clone())
            .capabilities(Capability::CapabilityIam)
            .capabilities(Capability::CapabilityNamedIam)
            .set_tags(Some(tags(&req.tags)));
        match &req.template {
            Template::Body(b) => call.template_body(b),
            Template::Url(u) => call.template_url(u),
        }
    }};
}

/// The AWS clients, built once from one configuration.
#[derive(Debug, Clone)]
pub struct Aws {
    cfn: cfn::Client,
    pub(crate) s3: aws_sdk_s3::Client,
    pub(crate) route53: aws_sdk_route53::Client,
    pub(crate) secrets: aws_sdk_secretsmanager::Client,
    pub(crate) ecs: aws_sdk_ecs::Client,
    /// ECR in this configuration's region; another region's is built when an image names it.
    pub(crate) ecr: aws_sdk_ecr::Client,
    /// The configuration every client was built from.
    pub(crate) config: aws_config::SdkConfig,
    region: String,
}

impl Aws {
    /// Builds the clients from the usual AWS environment (`AWS_REGION`, `AWS_ENDPOINT_URL`, the
    /// credential chain) with standard retries and a bounded operation timeout.
    pub async fn from_env() -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS))
            .timeout_config(TimeoutConfig::builder().operation_timeout(OPERATION_TIMEOUT).build())
            .load()
            .await;
        Self::new(&config)
    }

    pub fn new(config: &aws_config::SdkConfig) -> Self {
        // An emulator or a proxy answers on one host: address buckets by path, not by subdomain.
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(config.endpoint_url().is_some())
            .interceptor(CountRequests)
            .build();
        Self {
            cfn: cfn::Client::from_conf(cfn::config::Builder::from(config).interceptor(CountRequests).build()),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            route53: aws_sdk_route53::Client::from_conf(
                aws_sdk_route53::config::Builder::from(config).interceptor(CountRequests).build(),
            ),
            secrets: aws_sdk_secretsmanager::Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(config).interceptor(CountRequests).build(),
            ),
            ecs: aws_sdk_ecs::Client::from_conf(
                aws_sdk_ecs::config::Builder::from(config).interceptor(CountRequests).build(),
            ),
            ecr: aws_sdk_ecr::Client::from_conf(
                aws_sdk_ecr::config::Builder::from(config).interceptor(CountRequests).build(),
            ),
            region: config.region().map_or_else(|| "us-east-1".to_owned(), |r| r.to_string()),
            config: config.clone(),
        }
    }

    /// The stack, or `None` if CloudFormation knows no live stack by that name or id.
    pub async fn describe_stack(&self, name_or_id: &str) -> Result<Option<Stack>, CloudError> {
        let out = match self.cfn.describe_stacks().stack_name(name_or_id).send().await {
            Ok(out) => out,
            Err(e) if e.code() == Some("ValidationError") && e.message().is_some_and(|m| m.contains(NO_STACK)) => {
                return Ok(None);
            }
            Err(e) => return Err(classify("DescribeStacks", e)),
        };
        Ok(out.stacks().first().map(stack_from).filter(|s| s.status != "DELETE_COMPLETE"))
    }

    /// Every live stack in the account and region, reading every page of `DescribeStacks`: one call per
    /// page, however many environments. Complete or an error: a stack it lacks does not exist.
    pub async fn list_stacks(&self) -> Result<StackListing, CloudError> {
        let mut pages = self.cfn.describe_stacks().into_paginator().send();
        let mut listing = StackListing::default();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("DescribeStacks", e))?;
            listing.pages += 1;
            listing.stacks.extend(page.stacks().iter().map(stack_from).filter(|s| s.status != "DELETE_COMPLETE"));
        }
        Ok(listing)
    }

    /// Starts creating a stack; returns its id. A stack of that name that already exists is an error of
    /// code `AlreadyExistsException`, which the caller resolves by describing it.
    pub async fn create_stack(&self, req: &StackRequest) -> Result<String, CloudError> {
        let minutes = req.timeout.map(|t| t.as_secs().div_ceil(60).clamp(1, i32::MAX as u64) as i32);
        let call = stack_call!(self.cfn.create_stack(), req).set_timeout_in_minutes(minutes);
        let out = call.send().await.map_err(|e| classify("CreateStack", e))?;
        Ok(out.stack_id().unwrap_or(&req.name).to_owned())
    }

    /// Cancels the stack's update in progress (CloudFormation rolls it back); `false` when there is none
    /// to cancel (it ended meanwhile).
    pub async fn cancel_update(&self, stack: &str, token: &str) -> Result<bool, CloudError> {
        match self.cfn.cancel_update_stack().stack_name(stack).client_request_token(token).send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.code() == Some("ValidationError")
                    && e.message().is_some_and(|m| m.contains("cannot be called from current stack status")) =>
            {
                Ok(false)
            }
            Err(e) => Err(classify("CancelUpdateStack", e)),
        }
    }

    /// Starts updating a stack. "No updates are to be performed" is success ([`UpdateOutcome::NoChanges`]).
    pub async fn update_stack(&self, req: &StackRequest) -> Result<UpdateOutcome, CloudError> {
        let call = stack_call!(self.cfn.update_stack(), req);
        match call.send().await {
            Ok(_) => Ok(UpdateOutcome::Started),
            Err(e)
                if e.code() == Some("ValidationError")
                    && e.message().is_some_and(|m| m.contains("No updates are to be performed")) =>
            {
                Ok(UpdateOutcome::NoChanges)
            }
            Err(e) => Err(classify("UpdateStack", e)),
        }
    }

    /// Starts deleting a stack (by id, so a newer stack of the same name is never hit).
    /// `role_arn`: the role CloudFormation assumes to delete the resources (the one that created them).
    pub async fn delete_stack(&self, id: &str, token: &str, role_arn: Option<&str>) -> Result<(), CloudError> {
        self.cfn
            .delete_stack()
            .stack_name(id)
            .client_request_token(token)
            .set_role_arn(role_arn.map(str::to_owned))
            .send()
            .await
            .map_err(|e| classify("DeleteStack", e))?;
        Ok(())
    }

    /// The physical ids of the stack's resources of one type (e.g. `AWS::S3::Bucket`).
    pub async fn stack_resources(&self, stack: &str, resource_type: &str) -> Result<Vec<String>, CloudError> {
        Ok(self.resources(stack, resource_type).await?.into_iter().map(|(_, physical)| physical).collect())
    }

    /// `(logical id, physical id)` of the stack's resources of one type that still exist.
    async fn resources(&self, stack: &str, resource_type: &str) -> Result<Vec<(String, String)>, CloudError> {
        let resources = self
            .cfn
            .list_stack_resources()
            .stack_name(stack)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| classify("ListStackResources", e))?;
        Ok(resources
            .iter()
            .filter(|r| r.resource_type() == Some(resource_type))
            .filter(|r| r.resource_status().is_none_or(|s| s.as_str() != "DELETE_COMPLETE"))
            .filter_map(|r| Some((r.logical_resource_id()?.to_owned(), r.physical_resource_id()?.to_owned())))
            .collect())
    }

    /// The buckets CloudFormation deletes with `stack` (DeletionPolicy `Delete`, its default), which must
    /// be emptied first; a bucket the template retains keeps what it holds. Read from the stack's
    /// [`EMPTY_ON_DELETE_OUTPUT`] when previewd rendered one (no call: the stack's description has it)
    /// and `trust_output`; otherwise from its template (GetTemplate) and its resources
    /// (ListStackResources). After a deletion failed, the caller asks CloudFormation itself: a bucket the
    /// rendered template did not show (one a macro made) is found that way.
    pub async fn buckets_to_empty(&self, stack: &Stack, trust_output: bool) -> Result<Vec<String>, CloudError> {
        if trust_output && let Some(listed) = stack.outputs.get(EMPTY_ON_DELETE_OUTPUT).and_then(|v| emptied_buckets(v))
        {
            return Ok(listed);
        }
        let out = self.cfn.get_template().stack_name(&stack.id).send().await.map_err(|e| classify("GetTemplate", e))?;
        let deleted = buckets_deleted_with_stack(out.template_body().unwrap_or_default());
        let buckets = self.resources(&stack.id, BUCKET).await?;
        Ok(buckets
            .into_iter()
            .filter(|(logical, _)| deleted.as_ref().is_none_or(|d| d.contains(logical)))
            .map(|(_, physical)| physical)
            .collect())
    }

    /// The stack's newest events, newest first (one page: enough to show progress).
    pub async fn stack_events(&self, stack: &str) -> Result<Vec<StackEvent>, CloudError> {
        self.events_back_to_operation(stack, 1).await
    }

    /// The stack's events, newest first, back to the beginning of its last operation (at most
    /// [`STACK_EVENT_PAGES_MAX`] pages): what failed in it, or what was still in progress when it was
    /// stopped, may lie on any page before that.
    pub async fn operation_events(&self, stack: &str) -> Result<Vec<StackEvent>, CloudError> {
        self.events_back_to_operation(stack, STACK_EVENT_PAGES_MAX).await
    }

    /// A page at a time, at most `pages`, until the page that holds the stack's own CREATE_, UPDATE_ or
    /// DELETE_IN_PROGRESS.
    async fn events_back_to_operation(&self, stack: &str, pages: usize) -> Result<Vec<StackEvent>, CloudError> {
        let mut events = Vec::new();
        let mut next = None;
        for _ in 0..pages {
            let out = self
                .cfn
                .describe_stack_events()
                .stack_name(stack)
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| classify("DescribeStackEvents", e))?;
            let began = out.stack_events().iter().any(|e| {
                e.logical_resource_id() == e.stack_name()
                    && matches!(
                        e.resource_status().map(|s| s.as_str()),
                        Some("CREATE_IN_PROGRESS" | "UPDATE_IN_PROGRESS" | "DELETE_IN_PROGRESS")
                    )
            });
            events.extend(out.stack_events().iter().map(|e| StackEvent {
                id: e.event_id().unwrap_or_default().to_owned(),
                timestamp: e.timestamp().map(|t| t.to_string()).unwrap_or_default(),
                logical_id: e.logical_resource_id().unwrap_or_default().to_owned(),
                resource_type: e.resource_type().unwrap_or_default().to_owned(),
                physical_id: e.physical_resource_id().filter(|p| !p.is_empty()).map(str::to_owned),
                status: e.resource_status().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                reason: e.resource_status_reason().map(str::to_owned),
            }));
            next = out.next_token().map(str::to_owned);
            if began || next.is_none() {
                break;
            }
        }
        Ok(events)
    }

    /// Uploads a template too large for a TemplateBody and returns the URL CloudFormation reads it from.
    pub async fn upload_template(&self, bucket: &str, key: &str, body: String) -> Result<String, CloudError> {
        self.put_object(bucket, key, body.into_bytes(), Some("application/json")).await?;
        // The virtual-hosted form CloudFormation reads from (an emulator resolves it in its own S3).
        Ok(format!("https://{bucket}.s3.{}.amazonaws.com/{key}", self.region))
    }
}

/// Counts every attempt of every AWS call (the SDK's retries included) into
/// `previewd_aws_requests_total{service, operation, outcome}`, throttling apart.
#[derive(Debug)]
struct CountRequests;

/// Error codes that say "slow down", as they appear in an error answer's body.
const THROTTLE_MARKS: &[&str] =
    &["Throttl", "SlowDown", "RequestLimitExceeded", "TooManyRequests", "PriorRequestNotComplete"];

/// How an answer to `operation` is counted: `ok`, `throttled`, `not_found`, `client_error` or
/// `server_error`. `not_found` is the answer to a look-up previewd makes to learn whether something
/// exists (is the stack gone yet? has CI put the commit's bundle?): asked on purpose, not a request it got
/// wrong. Anything else missing (a hosted zone, the template bucket, an image repository) is a mistake to
/// see, and stays a `client_error`. (ECR's BatchGetImage answers a missing image among its 200's
/// `failures`: `ok`.)
fn request_outcome(operation: &str, status: u16, body: &str) -> &'static str {
    match (operation, status) {
        (_, s) if s < 400 => "ok",
        (_, 429) => "throttled",
        _ if THROTTLE_MARKS.iter().any(|m| body.contains(m)) => "throttled",
        ("DescribeStacks", 400) if body.contains(NO_STACK) => "not_found",
        ("HeadObject", 404) => "not_found",
        (_, s) if s < 500 => "client_error",
        _ => "server_error",
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_after_attempt(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_cloudformation::config::RuntimeComponents,
        cfg: &mut aws_sdk_cloudformation::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let (service, operation) = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or(("unknown", "unknown"), |m| (m.service(), m.name()));
        let outcome = context.response().map_or("no_response", |r| {
            let body = r.body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
            request_outcome(operation, r.status().as_u16(), &body)
        });
        let labels = previewd_metrics::AwsLabels {
            service: service.to_ascii_lowercase().replace(" ", ""),
            operation: operation.to_owned(),
            outcome: outcome.to_owned(),
        };
        previewd_metrics::METRICS.aws_requests.get_or_create(&labels).inc();
        Ok(())
    }
}

const BUCKET: &str = "AWS::S3::Bucket";

/// The bucket names an [`EMPTY_ON_DELETE_OUTPUT`] value lists (`previewd,<bucket>,…`); `None` for any
/// other text.
fn emptied_buckets(value: &str) -> Option<Vec<String>> {
    let mut parts = value.split(',');
    (parts.next() == Some(EMPTY_ON_DELETE_MARK)).then(|| parts.filter(|b| !b.is_empty()).map(str::to_owned).collect())
}

/// The logical ids of a template's buckets that go with the stack (DeletionPolicy `Delete` or none);
/// `None` when the template is not JSON previewd can read (then every bucket is taken to go, as
/// CloudFormation's default has it).
fn buckets_deleted_with_stack(body: &str) -> Option<std::collections::HashSet<String>> {
    let template: serde_json::Value = serde_json::from_str(body).ok()?;
    let resources = template.get("Resources")?.as_object()?;
    Some(
        resources
            .iter()
            .filter(|(_, r)| r.get("Type").and_then(|t| t.as_str()) == Some(BUCKET))
            .filter(|(_, r)| r.get("DeletionPolicy").is_none_or(|p| p.as_str() == Some("Delete")))
            .map(|(logical, _)| logical.clone())
            .collect(),
    )
}

fn tags(pairs: &[(String, String)]) -> Vec<Tag> {
    pairs.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn stack_from(s: &cfn::types::Stack) -> Stack {
    Stack {
        id: s.stack_id().unwrap_or_default().to_owned(),
        name: s.stack_name().unwrap_or_default().to_owned(),
        status: s.stack_status().map(|st| st.as_str().to_owned()).unwrap_or_default(),
        reason: s.stack_status_reason().map(str::to_owned),
        tags: s.tags().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect(),
        outputs: s
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
            .collect(),
        created_at: s.creation_time().and_then(|t| t.to_millis().ok()),
        updated_at: s.last_updated_time().and_then(|t| t.to_millis().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::request_outcome;

    #[test]
    fn what_previewd_asks_on_purpose_is_not_found_and_other_missing_things_are_client_errors() {
        let gone = "<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code>\
                    <Message>Stack with id previewd-acme-shop-x does not exist</Message></Error></ErrorResponse>";
        assert_eq!(request_outcome("DescribeStacks", 400, gone), "not_found");
        assert_eq!(request_outcome("HeadObject", 404, ""), "not_found");
        // A missing hosted zone, template bucket or image repository is a mistake to see.
        assert_eq!(request_outcome("ListResourceRecordSets", 404, "<Code>NoSuchHostedZone</Code>"), "client_error");
        assert_eq!(request_outcome("PutObject", 404, "<Code>NoSuchBucket</Code>"), "client_error");
        let repo = r#"{"__type":"RepositoryNotFoundException"}"#;
        assert_eq!(request_outcome("BatchGetImage", 400, repo), "client_error");
        let invalid = "<Code>ValidationError</Code><Message>Template format error</Message>";
        assert_eq!(request_outcome("DescribeStacks", 400, invalid), "client_error");
        let slow = "<Code>Throttling</Code><Message>Rate exceeded</Message>";
        assert_eq!(request_outcome("CreateStack", 400, slow), "throttled");
        assert_eq!(request_outcome("CreateStack", 503, "<Code>ServiceUnavailable</Code>"), "server_error");
        assert_eq!(request_outcome("CreateStack", 200, ""), "ok");
    }
}
