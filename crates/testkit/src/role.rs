//! previewd's own AWS permissions, as `deploy/aws/previewd.json` grants them to its task role, held
//! against every call it makes in a test (as the fault proxy saw it): a call the role does not allow fails
//! the test, so the code and the deployment cannot drift apart.
//!
//! Actions are checked, with IAM's wildcards and without regard to case; resources and conditions are
//! not (the template scopes them to previewd's own stacks, buckets and zone, which moto does not model).

use std::sync::OnceLock;

use serde_json::Value as Json;

use crate::workspace_root;

/// The role previewd runs as in the shipped deployment.
const ROLE: &str = "TaskRole";

/// The IAM actions a call needs: the service's prefix and the operation, except where IAM names it
/// otherwise (S3's listings, batch deletion and copies).
pub fn iam_actions(service: &str, action: &str) -> Vec<String> {
    let actions: &[&str] = match (service, action) {
        // IAM has no CopyObject: it is a GetObject of the source and a PutObject of the copy.
        ("s3", "CopyObject") => &["GetObject", "PutObject"],
        _ => &[iam_name(service, action)],
    };
    let service = match service {
        // The Resource Groups Tagging API signs as `tagging`; IAM calls it `tag`.
        "tagging" => "tag",
        other => other,
    };
    actions.iter().map(|a| format!("{service}:{a}")).collect()
}

fn iam_name<'a>(service: &str, action: &'a str) -> &'a str {
    match (service, action) {
        ("s3", "ListObjectVersions") => "ListBucketVersions",
        ("s3", "ListMultipartUploads") => "ListBucketMultipartUploads",
        ("s3", "ListObjectsV2" | "HeadBucket") => "ListBucket",
        ("s3", "DeleteObjects") => "DeleteObject",
        ("s3", "HeadObject") => "GetObject",
        (_, action) => action,
    }
}

/// The actions the deployment's task role allows, as written (wildcards kept).
pub fn allowed_actions() -> &'static [String] {
    static ACTIONS: OnceLock<Vec<String>> = OnceLock::new();
    ACTIONS.get_or_init(|| {
        let path = workspace_root().join("deploy/aws/previewd.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let template: Json = serde_json::from_str(&text).expect("the deploy template is JSON");
        let role = &template["Resources"][ROLE];
        assert_eq!(role["Type"], "AWS::IAM::Role", "{ROLE} in {}", path.display());
        let mut actions = Vec::new();
        for policy in role["Properties"]["Policies"].as_array().into_iter().flatten() {
            for s in policy["PolicyDocument"]["Statement"].as_array().into_iter().flatten() {
                if s["Effect"] != "Allow" {
                    continue;
                }
                match &s["Action"] {
                    Json::String(a) => actions.push(a.clone()),
                    Json::Array(list) => actions.extend(list.iter().filter_map(|a| a.as_str().map(str::to_owned))),
                    _ => {}
                }
            }
        }
        actions
    })
}

/// Does IAM's `pattern` (with `*` and `?`) match `action`, without regard to case?
fn matches(pattern: &str, action: &str) -> bool {
    fn go(p: &[u8], a: &[u8]) -> bool {
        match (p.first(), a.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], a) || (!a.is_empty() && go(p, &a[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &a[1..]),
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => go(&p[1..], &a[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), action.as_bytes())
}

/// The IAM actions of the (service, operation) pairs that the task role does not allow, each once, sorted.
pub fn not_allowed<'a>(calls: impl IntoIterator<Item = &'a (String, String)>) -> Vec<String> {
    let allowed = allowed_actions();
    let mut missing: Vec<String> = calls
        .into_iter()
        .flat_map(|(service, action)| iam_actions(service, action))
        .filter(|a| !allowed.iter().any(|p| matches(p, a)))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_wildcards_match_as_iam_reads_them() {
        assert!(matches("s3:Get*", "s3:GetObject"));
        assert!(matches("cloudformation:describestacks", "cloudformation:DescribeStacks"));
        assert!(matches("ecs:Describe?asks", "ecs:DescribeTasks"));
        assert!(!matches("s3:Get*", "s3:PutObject"));
        assert!(!matches("s3:GetObject", "s3:GetObjectAcl"));
    }

    #[test]
    fn the_shipped_role_is_read() {
        assert!(allowed_actions().iter().any(|a| a == "cloudformation:CreateStack"), "{:?}", allowed_actions());
    }
}
