//! Naming what a request asks AWS for: its service and action (an S3 or Route53 REST call named as the
//! SDK names the operation), and the stack a CloudFormation call names.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method};

/// `(service, action)` of a request, from its credential scope and protocol.
pub(super) fn identify(
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

pub(super) fn stack_name(param: &str) -> String {
    // An id is `arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/UUID`.
    match param.strip_prefix("arn:") {
        Some(_) => param.split('/').nth(1).unwrap_or(param).to_owned(),
        None => param.to_owned(),
    }
}
