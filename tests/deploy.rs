//! deploy/: the CloudFormation template that runs previewd itself passes cfn-lint, and its IAM policies
//! pass an IAM linter (`parliament`, pinned in deploy/requirements-dev.txt). previewd's own roles have no
//! finding at all, and never hold IAM (beyond passing the stack role), ECS or RDS rights; the
//! CloudFormation service role, broad by design (it creates what preview stacks hold, under names not
//! known in advance), has nothing above LOW.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool from the project's `.venv`, else the PATH.
fn tool(name: &str) -> PathBuf {
    let venv = root().join(".venv/bin").join(name);
    if venv.is_file() { venv } else { name.into() }
}

fn template() -> Json {
    serde_json::from_str(&std::fs::read_to_string(root().join("deploy/aws/previewd.json")).expect("template"))
        .expect("JSON")
}

/// A policy document with CloudFormation's functions replaced by plausible values, as the linter needs.
fn resolve(v: &Json) -> Json {
    let sample = |name: &str| match name {
        "AWS::Partition" => "aws",
        "AWS::Region" => "us-east-1",
        "AWS::AccountId" => "123456789012",
        "BucketPrefix" => "previewd-",
        "HostedZoneId" => "Z0123456789ABCDEFGHIJ",
        "ConfigParameter" => "previewd/config",
        _ => "sample",
    };
    match v {
        Json::Object(m) if m.contains_key("Fn::Sub") => {
            let text = m["Fn::Sub"].as_str().expect("a Fn::Sub string");
            let mut out = String::new();
            let mut rest = text;
            while let Some(start) = rest.find("${") {
                let end = rest[start..].find('}').expect("closed") + start;
                out.push_str(&rest[..start]);
                out.push_str(sample(&rest[start + 2..end]));
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            Json::from(out)
        }
        Json::Object(m) if m.contains_key("Ref") => Json::from(format!(
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}",
            m["Ref"].as_str().expect("ref")
        )),
        Json::Object(m) if m.contains_key("Fn::GetAtt") => {
            Json::from(format!("arn:aws:iam::123456789012:role/{}", m["Fn::GetAtt"][0].as_str().expect("name")))
        }
        Json::Object(m) if m.contains_key("Fn::If") => resolve(&m["Fn::If"][1]),
        Json::Object(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), resolve(v))).collect()),
        Json::Array(items) => Json::Array(items.iter().map(resolve).collect()),
        other => other.clone(),
    }
}

/// Every inline policy of every role: (role, policy name, resolved document).
fn policies(t: &Json) -> Vec<(String, String, Json)> {
    let mut found = Vec::new();
    for (name, r) in t["Resources"].as_object().expect("resources") {
        if r["Type"] != "AWS::IAM::Role" {
            continue;
        }
        for p in r["Properties"]["Policies"].as_array().into_iter().flatten() {
            found.push((
                name.clone(),
                p["PolicyName"].as_str().expect("name").to_owned(),
                resolve(&p["PolicyDocument"]),
            ));
        }
    }
    found
}

fn actions(doc: &Json) -> Vec<String> {
    let mut all = Vec::new();
    for s in doc["Statement"].as_array().expect("statements") {
        match &s["Action"] {
            Json::String(a) => all.push(a.clone()),
            Json::Array(list) => all.extend(list.iter().filter_map(|a| a.as_str().map(str::to_owned))),
            other => panic!("unexpected Action {other}"),
        }
    }
    all
}

#[test]
fn the_deploy_template_passes_cfn_lint() {
    let out =
        Command::new(tool("cfn-lint")).arg(root().join("deploy/aws/previewd.json")).output().expect("cfn-lint runs");
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn previewds_policies_pass_parliament_and_hold_least_privilege() {
    let t = template();
    let found = policies(&t);
    assert_eq!(found.len(), 3, "{found:?}");
    for (role, name, doc) in &found {
        let service_role = role == "PreviewStackRole";
        let mut cmd = Command::new(tool("parliament"));
        cmd.arg("--string").arg(doc.to_string());
        if service_role {
            cmd.args(["--minimum_severity", "MEDIUM"]);
        }
        let out = cmd.output().expect("parliament runs");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && report.trim().is_empty(), "{role}/{name}: parliament found:\n{report}");
        if !service_role {
            for a in actions(doc) {
                let allowed =
                    a == "iam:PassRole" || !(a.starts_with("iam:") || a.starts_with("ecs:") || a.starts_with("rds:"));
                assert!(allowed, "{role}/{name} holds {a}");
            }
        }
    }
    // previewd's own CloudFormation rights are on its own stacks only (DescribeStacks of every stack is
    // how the fleet observer lists them; AWS offers no narrower resource for it).
    let task = &found.iter().find(|(r, _, _)| r == "TaskRole").expect("the task role").2;
    for s in task["Statement"].as_array().expect("statements") {
        let resource = s["Resource"].to_string();
        let acts = s["Action"].to_string();
        if acts.contains("cloudformation:CreateStack") {
            assert!(resource.contains(":stack/previewd-*/*"), "{resource}");
        }
        if acts.contains("route53:ChangeResourceRecordSets") {
            assert!(resource.contains("hostedzone/Z0123456789ABCDEFGHIJ"), "{resource}");
        }
        if resource == "\"*\"" {
            assert!(
                acts == "\"cloudformation:DescribeStacks\"" || acts == "\"route53:ListHostedZonesByName\"",
                "{acts} on *"
            );
        }
    }
}

#[test]
fn parliament_catches_a_bad_policy() {
    // The linter is really consulted: a policy granting everything is reported.
    let bad = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket"}]}"#;
    let out = Command::new(tool("parliament")).arg("--string").arg(bad).output().expect("parliament runs");
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "a GetObject on a bucket (not its objects) is a finding"
    );
}
