//! Emptying a bucket so CloudFormation can delete it: every object version and delete marker, which AWS
//! refuses to delete a bucket with, and, when asked, every unfinished multipart upload. AWS documents
//! uploads as blocking a bucket's deletion only for directory buckets, so a teardown aborts them only
//! once a deletion has failed (the test proxy takes the stricter reading and refuses them).

use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use crate::{Aws, CloudError, classify};

/// DeleteObjects takes at most 1,000 keys a call.
const DELETE_BATCH: usize = 1_000;
/// Keys whose deletion failed inside a 200 answer are retried this many times before giving up.
const KEY_RETRIES: usize = 3;

/// One step of emptying deletes at most this many batches of 1,000 keys (a few seconds of work), so a
/// bucket of millions of objects never holds its environment's reconcile for minutes: the reconciler
/// takes another step, and other environments get their turn in between.
pub const EMPTY_STEP_BATCHES: usize = 10;

/// What emptying a bucket did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmptyReport {
    pub versions_deleted: usize,
    pub uploads_aborted: usize,
    /// Nothing is left: the bucket (if it exists) is empty. `false`: more steps are needed.
    pub done: bool,
}

impl Aws {
    /// Takes one step of emptying `bucket`: aborts unfinished uploads (with `uploads`), then deletes
    /// object versions and delete markers, at most `max_batches` DeleteObjects calls of at most 1,000 keys
    /// each (one per listed page). A bucket that does not exist is already empty.
    pub async fn empty_bucket(
        &self,
        bucket: &str,
        max_batches: usize,
        uploads: bool,
    ) -> Result<EmptyReport, CloudError> {
        let mut report = EmptyReport::default();
        if uploads {
            match self.abort_uploads(bucket, &mut report).await {
                Err(e) if e.code() == "NoSuchBucket" => {
                    report.done = true;
                    return Ok(report);
                }
                other => other?,
            }
        }
        // Each page listed is deleted before the next listing, so every listing starts from the front:
        // a marker would name a version just deleted (moto then answers an empty, final page, and the
        // bucket would be called empty with a thousand versions left).
        for _ in 0..max_batches.max(1) {
            let out = match self.s3.list_object_versions().bucket(bucket).send().await {
                Ok(out) => out,
                Err(e) => match classify("ListObjectVersions", e) {
                    e if e.code() == "NoSuchBucket" => {
                        report.done = true;
                        return Ok(report);
                    }
                    e => return Err(e),
                },
            };
            let mut ids: Vec<ObjectIdentifier> = Vec::new();
            let versions = out.versions().iter().map(|v| (v.key(), v.version_id()));
            let markers = out.delete_markers().iter().map(|m| (m.key(), m.version_id()));
            for (key, version) in versions.chain(markers) {
                if let Some(key) = key {
                    let id = ObjectIdentifier::builder().key(key).set_version_id(version.map(str::to_owned)).build();
                    ids.push(id.map_err(|e| CloudError::terminal("DeleteObjects", "Build", e.to_string()))?);
                }
            }
            for batch in ids.chunks(DELETE_BATCH) {
                report.versions_deleted += self.delete_batch(bucket, batch.to_vec()).await?;
            }
            if out.is_truncated() != Some(true) {
                report.done = true;
                return Ok(report);
            }
        }
        Ok(report)
    }

    /// Deletes one batch; keys refused inside a 200 answer are tried again, then reported.
    async fn delete_batch(&self, bucket: &str, mut ids: Vec<ObjectIdentifier>) -> Result<usize, CloudError> {
        let total = ids.len();
        for attempt in 0..=KEY_RETRIES {
            let delete = Delete::builder()
                .set_objects(Some(ids.clone()))
                .quiet(true)
                .build()
                .map_err(|e| CloudError::terminal("DeleteObjects", "Build", e.to_string()))?;
            let out = self
                .s3
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| classify("DeleteObjects", e))?;
            let failed: Vec<(String, Option<String>, String)> = out
                .errors()
                .iter()
                .map(|e| {
                    (
                        e.key().unwrap_or_default().to_owned(),
                        e.version_id().map(str::to_owned),
                        format!("{}: {}", e.code().unwrap_or("?"), e.message().unwrap_or("")),
                    )
                })
                .collect();
            if failed.is_empty() {
                return Ok(total);
            }
            tracing::warn!(bucket, attempt, failed = failed.len(), first = %failed[0].2, "some keys were not deleted");
            if attempt == KEY_RETRIES {
                return Err(CloudError::Retryable {
                    op: "DeleteObjects",
                    code: "KeysNotDeleted".to_owned(),
                    message: format!(
                        "{} keys of {bucket} could not be deleted, e.g. {:?}: {}",
                        failed.len(),
                        failed[0].0,
                        failed[0].2
                    ),
                });
            }
            ids.retain(|id| failed.iter().any(|(k, v, _)| k == id.key() && v.as_deref() == id.version_id()));
        }
        Ok(total)
    }

    async fn abort_uploads(&self, bucket: &str, report: &mut EmptyReport) -> Result<(), CloudError> {
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let out = self
                .s3
                .list_multipart_uploads()
                .bucket(bucket)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(upload_marker.clone())
                .send()
                .await
                .map_err(|e| classify("ListMultipartUploads", e))?;
            for u in out.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    match self.s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(id).send().await {
                        Ok(_) => report.uploads_aborted += 1,
                        Err(e) => match classify("AbortMultipartUpload", e) {
                            e if e.code() == "NoSuchUpload" => {}
                            e => return Err(e),
                        },
                    }
                }
            }
            if out.is_truncated() == Some(true) {
                key_marker = out.next_key_marker().map(str::to_owned);
                upload_marker = out.next_upload_id_marker().map(str::to_owned);
            } else {
                return Ok(());
            }
        }
    }
}
