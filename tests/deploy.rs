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
            // Passing roles, running and watching a blueprint's seed task, and reading why a preview's
            // service failed are previewd's only IAM and ECS rights.
            for a in actions(doc) {
                let allowed = matches!(
                    a.as_str(),
                    "iam:PassRole" | "ecs:RunTask" | "ecs:DescribeTasks" | "ecs:DescribeServices" | "ecs:ListTasks"
                ) || !(a.starts_with("iam:") || a.starts_with("ecs:") || a.starts_with("rds:"));
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

/// The stack role may create a role (or give it rights) only with previewd's permissions boundary, and
/// every role a shipped blueprint makes carries that boundary: no template previewd renders can make a
/// role that does more than the boundary allows.
#[test]
fn preview_roles_are_made_only_within_the_boundary() {
    let t = template();
    let boundary_name = &t["Resources"]["PreviewRoleBoundary"]["Properties"]["ManagedPolicyName"]["Fn::Sub"];
    assert_eq!(boundary_name, "previewd-${Owner}-boundary");
    let want = "arn:${AWS::Partition}:iam::${AWS::AccountId}:policy/previewd-${Owner}-boundary";
    let stack_role = &t["Resources"]["PreviewStackRole"]["Properties"]["Policies"][0]["PolicyDocument"];
    let granting = ["iam:CreateRole", "iam:PutRolePolicy", "iam:AttachRolePolicy", "iam:PutRolePermissionsBoundary"];
    for s in stack_role["Statement"].as_array().expect("statements") {
        let acts = actions(&serde_json::json!({ "Statement": [s] }));
        assert!(!acts.iter().any(|a| a.contains('*') && a.starts_with("iam:")), "{acts:?}");
        if acts.iter().any(|a| granting.contains(&a.as_str())) {
            assert!(acts.iter().all(|a| granting.contains(&a.as_str())), "{acts:?} mixes in other actions");
            let condition = &s["Condition"]["StringEquals"]["iam:PermissionsBoundary"]["Fn::Sub"];
            assert_eq!(condition, want, "{s}");
        }
    }
    let in_blueprint = serde_json::json!({ "Fn::Sub": [
        "arn:${AWS::Partition}:iam::${AWS::AccountId}:policy/previewd-${Owner}-boundary",
        { "Owner": { "Previewd::Context": "owner" } }
    ] });
    let mut roles = 0;
    for blueprint in ["webapp", "beanstalk"] {
        for file in ["application.json", "environment.json"] {
            let path = root().join("stacks").join(blueprint).join(file);
            let text = std::fs::read_to_string(&path).expect("template");
            let tpl: Json = serde_json::from_str(&text).expect("JSON");
            for (name, r) in tpl["Resources"].as_object().expect("resources") {
                if r["Type"] == "AWS::IAM::Role" {
                    roles += 1;
                    assert_eq!(r["Properties"]["PermissionsBoundary"], in_blueprint, "{blueprint}/{file}: {name}");
                }
                // Under a path of their own, which previewd's own roles (named after its stack, which
                // may well begin with previewd-) never are: the stack role may pass and delete only those.
                if r["Type"] == "AWS::IAM::Role" || r["Type"] == "AWS::IAM::InstanceProfile" {
                    assert_eq!(r["Properties"]["Path"], "/previewd-preview/", "{blueprint}/{file}: {name}");
                }
            }
        }
    }
    assert!(roles >= 3, "{roles} roles");
    for (name, r) in t["Resources"].as_object().expect("resources") {
        if r["Type"] == "AWS::IAM::Role" {
            assert!(r["Properties"].get("Path").is_none(), "previewd's own {name} is outside the preview path");
        }
    }
    let text = std::fs::read_to_string(root().join("deploy/aws/previewd.json")).expect("template");
    assert!(!text.contains(":role/previewd-*"), "IAM grants on roles are scoped to /previewd-preview/");
}

/// Load balancers drop header fields that are not valid HTTP rather than pass them to the app.
#[test]
fn load_balancers_drop_invalid_header_fields() {
    let drop = serde_json::json!({ "Key": "routing.http.drop_invalid_header_fields.enabled", "Value": "true" });
    let app: Json = serde_json::from_str(
        &std::fs::read_to_string(root().join("stacks/webapp/application.json")).expect("template"),
    )
    .expect("JSON");
    for (what, lb) in
        [("previewd's", &template()["Resources"]["LoadBalancer"]), ("webapp's", &app["Resources"]["LoadBalancer"])]
    {
        let attrs = lb["Properties"]["LoadBalancerAttributes"].as_array().expect("attributes");
        assert!(attrs.contains(&drop), "{what} load balancer: {attrs:?}");
    }
}

/// The check every end-to-end test makes when it ends (see `previewd_testkit::role`) is itself sound: a
/// call the shipped role does not grant is named.
#[test]
fn a_call_the_role_does_not_grant_is_named() {
    use previewd_testkit::role::not_allowed;
    let calls = [("cloudformation".to_owned(), "CreateStack".to_owned()), ("ecs".to_owned(), "RunTask".to_owned())];
    assert_eq!(not_allowed(&calls), Vec::<String>::new());
    let calls = [("iam".to_owned(), "CreateUser".to_owned()), ("s3".to_owned(), "ListObjectVersions".to_owned())];
    assert_eq!(not_allowed(&calls), ["iam:CreateUser"]);
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

/// Every secret the task is given is one its execution role may read, and each credential previewd
/// takes from the environment is given: the dashboard's, and Prometheus's read-only one.
#[test]
fn the_task_gets_each_secret_and_may_read_it() {
    let t = template();
    let resources = t["Resources"].as_object().expect("resources");
    let task = resources.values().find(|r| r["Type"] == "AWS::ECS::TaskDefinition").expect("a task definition");
    let container = &task["Properties"]["ContainerDefinitions"][0];
    let given: Vec<(String, String)> = container["Secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .filter_map(|s| Some((s["Name"].as_str()?.to_owned(), s["ValueFrom"]["Ref"].as_str()?.to_owned())))
        .collect();
    for name in ["PREVIEWD_WEBHOOK_SECRET", "PREVIEWD_DASHBOARD_TOKEN", "PREVIEWD_METRICS_TOKEN"] {
        assert!(given.iter().any(|(n, _)| n == name), "{name} is not given: {given:?}");
    }
    let readable: Vec<String> = policies(&t)
        .iter()
        .flat_map(|(_, _, doc)| doc["Statement"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["Action"] == "secretsmanager:GetSecretValue")
        .flat_map(|s| s["Resource"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    for (name, secret) in &given {
        assert!(readable.iter().any(|r| r.ends_with(&format!(":secret:{secret}"))), "{name}: {secret} is not readable");
    }
}
