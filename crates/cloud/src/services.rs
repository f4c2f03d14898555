//! Why an ECS service's tasks did not run: CloudFormation says only that the service failed (or that the
//! deployment circuit breaker was triggered); ECS keeps the service's newest events and, for about an hour,
//! its stopped tasks with the reason each stopped (`CannotPullContainerError: …`, an essential container
//! that exited, a failed health check).

use crate::{Aws, CloudError, classify};

/// Stopped tasks read for their reasons, at most (the newest first, as ECS lists them).
const STOPPED_TASKS_READ: i32 = 10;
/// A cluster's stopped tasks read to find a deleted service's, at most (one page; DescribeTasks takes as
/// many).
const CLUSTER_TASKS_READ: i32 = 100;
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
    /// cluster ECS no longer knows answers empty; a service it no longer knows, from the cluster's stopped
    /// tasks. The reasons are a help, never a condition.
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
        // The service is gone (a rolled-back create deletes it), and its tasks cannot be listed by it (or
        // are not, once it is inactive): the cluster's stopped tasks are, and each names the service that
        // started it (its group).
        let (arns, by_group) = match listed.map_err(|e| classify("ListTasks", e)) {
            Ok(out) if !out.task_arns().is_empty() => (out.task_arns().to_vec(), false),
            Ok(_) => (self.cluster_stopped_tasks(&s.cluster).await?, true),
            Err(e) if e.code() == "ServiceNotFoundException" => (self.cluster_stopped_tasks(&s.cluster).await?, true),
            Err(e) if e.code() == "ClusterNotFoundException" => return Ok(trouble),
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
        let group = format!("service:{}", s.service);
        let this = tasks.tasks().iter().filter(|t| {
            // Listed by the service, a task is its own; among the cluster's, only one naming it.
            let its = if by_group { t.group() == Some(group.as_str()) } else { t.group().is_none_or(|g| g == group) };
            its && recent(t.created_at().and_then(|c| c.to_millis().ok()), since)
        });
        for t in this.take(STOPPED_TASKS_READ as usize) {
            let reasons = t.stopped_reason().into_iter().chain(t.containers().iter().filter_map(|c| c.reason()));
            for r in reasons {
                if !trouble.stopped.iter().any(|s| s == r) {
                    trouble.stopped.push(r.to_owned());
                }
            }
        }
        Ok(trouble)
    }

    /// The cluster's stopped tasks (one page, the newest first).
    async fn cluster_stopped_tasks(&self, cluster: &str) -> Result<Vec<String>, CloudError> {
        Ok(self
            .ecs
            .list_tasks()
            .cluster(cluster)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Stopped)
            .max_results(CLUSTER_TASKS_READ)
            .send()
            .await
            .map_err(|e| classify("ListTasks", e))?
            .task_arns()
            .to_vec())
    }
}

/// Whether a task created at `created` (ms since the epoch) belongs to the operation begun at `since`: a
/// minute's leeway for clocks; either unknown, it is counted.
fn recent(created: Option<i64>, since: Option<i64>) -> bool {
    match (since, created) {
        (Some(since), Some(created)) => created >= since - 60_000,
        _ => true,
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

    #[test]
    fn only_tasks_of_the_operation_tell_why_it_failed() {
        let began = 1_000_000_000;
        assert!(recent(Some(began + 5_000), Some(began)));
        assert!(recent(Some(began - 30_000), Some(began)), "a clock a little behind");
        assert!(!recent(Some(began - 3_600_000), Some(began)), "an earlier deployment's task");
        assert!(recent(None, Some(began)) && recent(Some(0), None), "unknown: counted");
    }
}
