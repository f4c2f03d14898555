//! Answering a request as AWS would: an injected fault, a refusal AWS makes where moto is lenient, or
//! moto's answer, one request at a time, with the stack states a test gave shown in it.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

use super::operation::{identify, stack_name};
use super::state::{Rollback, StatusOverride, StoppedTask, Until};
use super::xml::{blocks, error_document, first, member_len, request_id, with_status, xml, xml_escape};
use super::{AwsProxy, Call};

pub(super) async fn handle(State(proxy): State<AwsProxy>, req: Request) -> Response {
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
    let timeout_minutes = form.get("TimeoutInMinutes").cloned();
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
        timeout_minutes: timeout_minutes.clone(),
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
            let reason = format!(
                "The following resource(s) failed to delete: [Bucket]. The bucket you tried to delete is not empty ({bucket})."
            );
            st.overrides.push(StatusOverride::now(name, "DELETE_FAILED", reason, "DeleteStack"));
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

    // CancelUpdateStack, during an update a test made slow: the stack goes back to what it was before it,
    // tags included, as CloudFormation's rollback does (moto has no updates in progress to cancel).
    if action == "CancelUpdateStack"
        && let Some(name) = &stack
    {
        let saved = {
            let mut st = proxy.lock();
            st.calls.push(refused());
            let now = Instant::now();
            let at = st.overrides.iter().position(|o| {
                o.active
                    && &o.stack == name
                    && o.status == "UPDATE_IN_PROGRESS"
                    && !matches!(o.until, Until::Time(t) if t <= now)
            });
            at.map(|i| st.overrides.remove(i)).map(|o| match o.rollback {
                Some(Rollback::OnCancel(saved)) => saved,
                _ => None,
            })
        };
        let Some(saved) = saved else {
            let message = "CancelUpdateStack cannot be called from current stack status";
            return xml(StatusCode::BAD_REQUEST, error_document(&service, "ValidationError", message));
        };
        if let Some(saved) = saved {
            proxy.roll_back(name, &saved).await;
        }
        let rolled_back = StatusOverride::now(name, "UPDATE_ROLLBACK_COMPLETE", String::new(), "UpdateStack");
        proxy.lock().overrides.push(rolled_back);
        let ok = format!(
            "<CancelUpdateStackResponse xmlns=\"http://cloudformation.amazonaws.com/doc/2010-05-15/\"><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></CancelUpdateStackResponse>",
            request_id()
        );
        return xml(StatusCode::OK, ok);
    }

    // An update a test made fail (or slow) is rolled back to what the stack was before it, tags included:
    // at once (failed), or when it is cancelled (slow).
    let rollback = match (&stack, action.as_str()) {
        (Some(name), "UpdateStack") => proxy
            .lock()
            .overrides
            .iter()
            .find(|o| &o.stack == name && !o.active && o.after.as_deref() == Some("UpdateStack"))
            .and_then(|o| o.rollback.clone()),
        _ => None,
    };
    let before = match (&stack, &rollback) {
        (Some(name), Some(_)) => Some(proxy.stack_state(name).await),
        _ => None,
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
        timeout_minutes: timeout_minutes.clone(),
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
    let (status, headers, text) = match proxy.moto(upstream.body(body.clone())).await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e).into_response(),
    };
    if status.is_success() && !rules.is_empty() {
        proxy.delete_listener_rules(&rules).await;
    }
    if status.is_success()
        && let (Some(name), Some(before)) = (&stack, before)
    {
        match rollback {
            Some(Rollback::Now) => proxy.roll_back(name, &before).await,
            _ => {
                let mut st = proxy.lock();
                let waiting = st
                    .overrides
                    .iter_mut()
                    .find(|o| &o.stack == name && !o.active && matches!(o.rollback, Some(Rollback::OnCancel(None))));
                if let Some(o) = waiting {
                    o.rollback = Some(Rollback::OnCancel(Some(before)));
                }
            }
        }
    }
    let mut text = text.to_vec();

    let event = {
        let mut st = proxy.lock();
        if let Some(name) = &stack
            && status.is_success()
        {
            let now = Instant::now();
            // A deleted stack shows nothing a test gave it; one activated by this call stays.
            let ends = |o: &StatusOverride| {
                o.active
                    && &o.stack == name
                    && (action == "DeleteStack" || matches!(&o.until, Until::Action(a) if *a == action))
            };
            st.overrides.retain(|o| !ends(o));
            for o in st.overrides.iter_mut().filter(|o| &o.stack == name) {
                if !o.active && o.after.as_deref() == Some(action.as_str()) {
                    o.active = true;
                    if let Until::Time(_) = o.until {
                        o.until = Until::Time(now + o.duration);
                    }
                }
            }
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
        match action.as_str() {
            "DescribeStackEvents" if status.is_success() => stack.as_ref().and_then(|name| {
                st.overrides
                    .iter()
                    .find(|o| o.active && &o.stack == name && o.event.is_some())
                    .and_then(|o| o.event.clone().map(|e| (name.clone(), o.status.clone(), e)))
            }),
            _ => None,
        }
    };
    // ... and its events begin with the failed resource's, when a test gave one (its physical id moto's).
    if let Some((name, stack_status, (logical, kind, reason))) = event {
        let physical = proxy.logical_resources(&name, &kind).await.into_iter().find(|(l, _)| *l == logical);
        let physical = physical.map(|(_, p)| format!("<PhysicalResourceId>{}</PhysicalResourceId>", xml_escape(&p)));
        let failed = if stack_status.starts_with("UPDATE") { "UPDATE_FAILED" } else { "CREATE_FAILED" };
        let body = String::from_utf8_lossy(&text).into_owned();
        if let Some(at) = body.find("<StackEvents>") {
            let at = at + "<StackEvents>".len();
            let member = format!(
                "<member><EventId>previewd-test-{logical}</EventId><StackName>{name}</StackName>\
                 <LogicalResourceId>{logical}</LogicalResourceId>{}<ResourceType>{kind}</ResourceType>\
                 <Timestamp>2026-01-01T00:00:00.000Z</Timestamp><ResourceStatus>{failed}</ResourceStatus>\
                 <ResourceStatusReason>{}</ResourceStatusReason></member>",
                physical.unwrap_or_default(),
                xml_escape(&reason)
            );
            text = format!("{}{member}{}", &body[..at], &body[at..]).into_bytes();
        }
    }
    // ECS: a service's stopped tasks, when a test gave one.
    if service == "ecs" && status.is_success() {
        let mut st = proxy.lock();
        if let Some(stopped) = st.stopped_task.as_mut()
            && let Some(answer) = stopped_tasks(&action, &body, stopped)
        {
            drop(st);
            let (status, text) = match answer {
                Ok(text) => (StatusCode::OK, text),
                Err(message) => (
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "__type": "ServiceNotFoundException", "message": message }).to_string(),
                ),
            };
            return (status, [("content-type", "application/x-amz-json-1.1")], text).into_response();
        }
    }
    let mut response = Response::builder().status(status.as_u16());
    for (k, v) in &headers {
        if k != "content-length" && k != "transfer-encoding" {
            response = response.header(k.as_str(), v.as_bytes());
        }
    }
    response.body(axum::body::Body::from(text)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// The fake stopped task's id, and another service's in the same cluster.
const STOPPED_TASK: &str = "arn:aws:ecs:us-east-1:123456789012:task/previewd-test/0123456789abcdef";
const OTHER_TASK: &str = "arn:aws:ecs:us-east-1:123456789012:task/previewd-test/fedcba9876543210";

/// ECS's answer naming the stopped task (a `ListTasks` of a service's or a cluster's stopped tasks, a
/// `DescribeTasks` of them; `Err`: the service is not found), or `None` for any other request.
fn stopped_tasks(action: &str, body: &[u8], t: &mut StoppedTask) -> Option<Result<String, String>> {
    let asked: serde_json::Value = serde_json::from_slice(body).ok()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let task = |arn: &str, group: String, reason: &str, container: &str| {
        serde_json::json!({
            "taskArn": arn,
            "group": group,
            "lastStatus": "STOPPED",
            "desiredStatus": "STOPPED",
            "stopCode": "TaskFailedToStart",
            "stoppedReason": reason,
            "createdAt": now,
            "containers": [{ "name": "app", "lastStatus": "STOPPED", "reason": container }],
        })
    };
    match action {
        "ListTasks" if asked["desiredStatus"] == "STOPPED" => match asked["serviceName"].as_str() {
            Some(service) => {
                t.service = Some(service.to_owned());
                Some(match t.service_gone {
                    true => Err(format!("Service not found: {service}")),
                    false => Ok(serde_json::json!({ "taskArns": [STOPPED_TASK] }).to_string()),
                })
            }
            None if t.service_gone => {
                Some(Ok(serde_json::json!({ "taskArns": [OTHER_TASK, STOPPED_TASK] }).to_string()))
            }
            None => None,
        },
        "DescribeTasks" if asked["tasks"].as_array()?.iter().any(|a| a == STOPPED_TASK) => {
            let service = t.service.clone().unwrap_or_else(|| "app".to_owned());
            let mut tasks = vec![task(STOPPED_TASK, format!("service:{service}"), &t.reason, &t.container_reason)];
            if t.service_gone {
                let other = "Essential container in task exited";
                tasks.insert(0, task(OTHER_TASK, "service:someone-else".into(), other, "exit code 137"));
            }
            Some(Ok(serde_json::json!({ "tasks": tasks, "failures": [] }).to_string()))
        }
        _ => None,
    }
}
