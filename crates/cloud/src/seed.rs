//! What seeding a new environment asks of AWS: objects put or copied into its bucket, the database
//! password from the secret its stack created (Secrets Manager), and one-off ECS tasks.

use aws_sdk_ecs::types::{AssignPublicIp, AwsVpcConfiguration, ContainerOverride, LaunchType, NetworkConfiguration};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use previewd_domain::Secret;

use crate::{Aws, CloudError, classify};

/// A one-off task as ECS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// `PROVISIONING` … `RUNNING` … `STOPPED`.
    pub last_status: String,
    /// The named container's exit code, once it has one.
    pub exit_code: Option<i32>,
    /// Why the task or the container stopped, as ECS says.
    pub reason: Option<String>,
}

impl TaskState {
    pub fn stopped(&self) -> bool {
        self.last_status == "STOPPED"
    }
}

/// A one-off task to run: a task definition with the named container's command replaced.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub cluster: String,
    pub task_definition: String,
    pub container: String,
    pub command: Vec<String>,
    /// Fargate networking; empty subnets: the task definition's own (EC2 launch type).
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
    /// Shown by ECS as who started the task (at most 128 characters).
    pub started_by: String,
    /// ECS starts one task per token (at most 64 characters): a retried request starts no second.
    pub client_token: String,
}

impl Aws {
    /// Puts one object.
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<(), CloudError> {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .set_content_type(content_type.map(str::to_owned))
            .body(body.into())
            .send()
            .await
            .map_err(|e| classify("PutObject", e))?;
        Ok(())
    }

    /// Copies every object under `from_prefix` of `from_bucket` to `to_prefix` + the rest of its key in
    /// `to_bucket`; returns how many.
    pub async fn copy_prefix(
        &self,
        from_bucket: &str,
        from_prefix: &str,
        to_bucket: &str,
        to_prefix: &str,
    ) -> Result<usize, CloudError> {
        let objects: Vec<_> = self
            .s3
            .list_objects_v2()
            .bucket(from_bucket)
            .prefix(from_prefix)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| classify("ListObjectsV2", e))?;
        let mut copied = 0;
        for key in objects.iter().flat_map(|page| page.contents()).filter_map(|o| o.key()) {
            let rest = key.strip_prefix(from_prefix).unwrap_or(key).trim_start_matches('/');
            let source = format!("{from_bucket}/{}", encode_key(key));
            self.s3
                .copy_object()
                .bucket(to_bucket)
                .key(format!("{to_prefix}{rest}"))
                .copy_source(source)
                .send()
                .await
                .map_err(|e| classify("CopyObject", e))?;
            copied += 1;
        }
        Ok(copied)
    }

    /// The secret's string value (RDS keeps a managed master password as JSON with `username` and
    /// `password`).
    pub async fn secret_string(&self, secret_id: &str) -> Result<Secret, CloudError> {
        let out = self
            .secrets
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| classify("GetSecretValue", e))?;
        let value = out
            .secret_string()
            .ok_or_else(|| CloudError::terminal("GetSecretValue", "NoSecretString", "the secret holds no string"))?;
        Ok(Secret::new(value.to_owned()))
    }

    /// Starts a one-off task; returns its ARN.
    pub async fn run_task(&self, req: &TaskRequest) -> Result<String, CloudError> {
        let mut call = self
            .ecs
            .run_task()
            .cluster(&req.cluster)
            .task_definition(&req.task_definition)
            .count(1)
            .client_token(req.client_token.chars().take(64).collect::<String>())
            .started_by(req.started_by.chars().take(128).collect::<String>())
            .overrides(
                aws_sdk_ecs::types::TaskOverride::builder()
                    .container_overrides(
                        ContainerOverride::builder()
                            .name(&req.container)
                            .set_command(Some(req.command.clone()))
                            .build(),
                    )
                    .build(),
            );
        if !req.subnets.is_empty() {
            let vpc = AwsVpcConfiguration::builder()
                .set_subnets(Some(req.subnets.clone()))
                .set_security_groups(Some(req.security_groups.clone()))
                .assign_public_ip(if req.assign_public_ip { AssignPublicIp::Enabled } else { AssignPublicIp::Disabled })
                .build()
                .map_err(|e| CloudError::terminal("RunTask", "InvalidParameter", e.to_string()))?;
            call = call
                .launch_type(LaunchType::Fargate)
                .network_configuration(NetworkConfiguration::builder().awsvpc_configuration(vpc).build());
        }
        let out = call.send().await.map_err(|e| classify("RunTask", e))?;
        if let Some(f) = out.failures().first() {
            let reason = f.reason().unwrap_or("no reason given");
            return Err(CloudError::terminal("RunTask", "TaskFailedToStart", format!("{reason} ({:?})", f.detail())));
        }
        out.tasks()
            .first()
            .and_then(|t| t.task_arn())
            .map(str::to_owned)
            .ok_or_else(|| CloudError::terminal("RunTask", "NoTask", "ECS started no task"))
    }

    /// The task's state; a task ECS no longer knows is reported as stopped with no exit code.
    pub async fn describe_task(&self, cluster: &str, task: &str, container: &str) -> Result<TaskState, CloudError> {
        let out = self
            .ecs
            .describe_tasks()
            .cluster(cluster)
            .tasks(task)
            .send()
            .await
            .map_err(|e| classify("DescribeTasks", e))?;
        let Some(t) = out.tasks().first() else {
            return Ok(TaskState {
                last_status: "STOPPED".to_owned(),
                exit_code: None,
                reason: Some("ECS no longer knows the task".to_owned()),
            });
        };
        let c = t.containers().iter().find(|c| c.name() == Some(container));
        Ok(TaskState {
            last_status: t.last_status().unwrap_or_default().to_owned(),
            exit_code: c.and_then(|c| c.exit_code()),
            reason: c.and_then(|c| c.reason()).or(t.stopped_reason()).map(str::to_owned),
        })
    }
}

/// An S3 key in a `CopySource`: URL-encoded, slashes kept.
fn encode_key(key: &str) -> String {
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');
    utf8_percent_encode(key, KEEP).to_string()
}
