//! The proxy's own calls to moto: forwarding a request and reading the whole answer, and the look-ups
//! (a stack's resources and buckets, a bucket's contents, Route53 records) that make moto as strict as AWS.

use axum::body::Bytes;
use axum::http::{Method, StatusCode};

use super::AwsProxy;
use super::xml::{blocks, first, unescape_xml};

/// What moto answered: status, headers, the whole body.
type Answer = (StatusCode, reqwest::header::HeaderMap, Bytes);

impl AwsProxy {
    /// Sends `req` to moto and reads the whole answer; the caller holds the turn (see the proxy module's
    /// documentation).
    pub(super) async fn moto(&self, req: reqwest::RequestBuilder) -> Result<Answer, String> {
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

    pub(super) async fn stack_resources(&self, stack: &str, kind: &str) -> Vec<String> {
        self.logical_resources(stack, kind).await.into_iter().map(|(_, physical)| physical).collect()
    }

    /// `(logical id, physical id)` of the stack's resources of one type.
    pub(super) async fn logical_resources(&self, stack: &str, kind: &str) -> Vec<(String, String)> {
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
    pub(super) async fn stack_buckets(&self, stack: &str) -> Vec<String> {
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

    /// The stack's template and tags as moto holds them, to roll an update back to.
    pub(super) async fn stack_state(&self, stack: &str) -> (String, Vec<(String, String)>) {
        let template =
            self.upstream_form(&[("Action", "GetTemplate"), ("StackName", stack), ("Version", "2010-05-15")]).await;
        let body = first(&template, "TemplateBody").map(|b| unescape_xml(&b)).unwrap_or_default();
        let described =
            self.upstream_form(&[("Action", "DescribeStacks"), ("StackName", stack), ("Version", "2010-05-15")]).await;
        let tags = blocks(&described, "Tags")
            .first()
            .map(|t| {
                blocks(t, "member")
                    .iter()
                    .filter_map(|m| Some((unescape_xml(&first(m, "Key")?), unescape_xml(&first(m, "Value")?))))
                    .collect()
            })
            .unwrap_or_default();
        (body, tags)
    }

    /// Puts the stack back to `state` (a template and tags), as CloudFormation's rollback of a failed
    /// update does.
    pub(super) async fn roll_back(&self, stack: &str, (body, tags): &(String, Vec<(String, String)>)) {
        let mut form = vec![
            ("Action".to_owned(), "UpdateStack".to_owned()),
            ("StackName".to_owned(), stack.to_owned()),
            ("TemplateBody".to_owned(), body.clone()),
            ("Version".to_owned(), "2010-05-15".to_owned()),
        ];
        for (i, (k, v)) in tags.iter().enumerate() {
            form.push((format!("Tags.member.{}.Key", i + 1), k.clone()));
            form.push((format!("Tags.member.{}.Value", i + 1), v.clone()));
        }
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.upstream_form(&pairs).await;
    }

    /// moto deletes a stack but not its load-balancer listener rules (its rule model has no
    /// CloudFormation delete); AWS removes them, so a re-created stack can take the same priority.
    pub(super) async fn delete_listener_rules(&self, rules: &[String]) {
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
    pub(super) async fn mismatched_delete(&self, path: &str, batch: &str) -> Option<String> {
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

    pub(super) async fn s3(&self, method: Method, path_query: &str, body: Option<&'static str>) -> String {
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
    pub(super) async fn blocking_bucket(&self, stack: &str) -> Option<String> {
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

/// The authorization header of the proxy's own calls to moto, which reads the service from the
/// credential's scope and checks no signature.
fn unsigned(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
    )
}
