//! Why an ECS service's tasks did not run: CloudFormation says only that the service failed (or that the
//! deployment circuit breaker was triggered); ECS keeps the service's newest events and, for about an hour,
//! its stopped tasks with the reason each stopped (`CannotPullContainerError: …`, an essential container
//! that exited, a failed health check).

use crate::{Aws, CloudError, classify};

/// Stopped tasks read for their reasons, at most (the newest first, as ECS lists them).
const STOPPED_TASKS_READ: i32 = 10;
/// Service events kept, at most.
const SERVICE_EVENTS_KEPT: usize = 3;

/// A service named by its ARN: `arn:aws:ecs:REGION:ACCOUNT:service/CLUSTER/SERVICE` (the long form every
/// service created since 2021 has; the old short form names no cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub cluster: String,
    pub service: String,
}

impl ServiceRef {
    pub fn from_arn(arn: &str) -> Option<Self> {
        let resource = arn.strip_prefix("arn:")?.splitn(5, ':').nth(4)?;
        let mut parts = resource.strip_prefix("service/")?.split('/');
        let (cluster, service) = (parts.next()?, parts.next()?);
        (parts.next().is_none() && !cluster.is_empty() && !service.is_empty())
            .then(|| Self { cluster: cluster.to_owned(), service: service.to_owned() })
    }
}

/// What ECS says of a service's failed tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTrouble {
    /// Distinct reasons its stopped tasks stopped (the task's, and each container's that gave one).
    pub stopped: Vec<String>,
    /// Its newest events (`(service x) has started 1 tasks: …`).
    pub events: Vec<String>,
}

impl Aws {
    /// Why the service's tasks created since `since` (ms since the epoch; a minute's leeway for clocks)
    /// stopped, and its newest events: an earlier deployment's stopped tasks are not this one's cause. A
    /// service or cluster ECS no longer knows answers empty: the reasons are a help, never a condition.
    pub async fn service_trouble(&self, s: &ServiceRef, since: Option<i64>) -> Result<ServiceTrouble, CloudError> {
        let mut trouble = ServiceTrouble::default();
        let described = self
            .ecs
            .describe_services()
            .cluster(&s.cluster)
            .services(&s.service)
            .send()
            .await
            .map_err(|e| classify("DescribeServices", e))?;
        if let Some(svc) = described.services().first() {
            trouble.events =
                svc.events().iter().filter_map(|e| e.message()).take(SERVICE_EVENTS_KEPT).map(str::to_owned).collect();
        }
        let listed = self
            .ecs
            .list_tasks()
            .cluster(&s.cluster)
            .service_name(&s.service)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Stopped)
            .max_results(STOPPED_TASKS_READ)
            .send()
            .await;
        let arns = match listed.map_err(|e| classify("ListTasks", e)) {
            Ok(out) => out.task_arns().to_vec(),
            // The service is gone (a rolled-back create deletes it): its tasks cannot be listed by it.
            Err(e) if matches!(e.code(), "ServiceNotFoundException" | "ClusterNotFoundException") => {
                return Ok(trouble);
            }
            Err(e) => return Err(e),
        };
        if arns.is_empty() {
            return Ok(trouble);
        }
        let tasks = self
            .ecs
            .describe_tasks()
            .cluster(&s.cluster)
            .set_tasks(Some(arns))
            .send()
            .await
            .map_err(|e| classify("DescribeTasks", e))?;
        let recent = |t: &&aws_sdk_ecs::types::Task| match (since, t.created_at().and_then(|c| c.to_millis().ok())) {
            (Some(since), Some(created)) => created >= since - 60_000,
            _ => true,
        };
        for t in tasks.tasks().iter().filter(recent) {
            let reasons = t.stopped_reason().into_iter().chain(t.containers().iter().filter_map(|c| c.reason()));
            for r in reasons {
                if !trouble.stopped.iter().any(|s| s == r) {
                    trouble.stopped.push(r.to_owned());
                }
            }
        }
        Ok(trouble)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_named_by_its_long_arn_only() {
        assert_eq!(
            ServiceRef::from_arn("arn:aws:ecs:eu-west-1:123456789012:service/previews/pd-web-feat"),
            Some(ServiceRef { cluster: "previews".into(), service: "pd-web-feat".into() })
        );
        for arn in [
            "arn:aws:ecs:eu-west-1:123456789012:service/pd-web-feat",
            "arn:aws:ecs:eu-west-1:123456789012:task/previews/abc",
            "pd-web-feat",
            "arn:aws:ecs:eu-west-1:123456789012:service/a/b/c",
        ] {
            assert_eq!(ServiceRef::from_arn(arn), None, "{arn}");
        }
    }
}
