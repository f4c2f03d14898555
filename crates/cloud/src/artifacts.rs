//! Whether a commit's artifact exists yet: an image in ECR (by tag, up to 100 tags of one repository in
//! one `BatchGetImage`, which answers a missing image as a failure beside the found ones), or an object in
//! S3 (`HeadObject`). Nothing here waits: the reconciler asks again with backoff.

use std::collections::HashSet;

use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use aws_sdk_ecr::types::ImageIdentifier;

use previewd_domain::EcrRepository;

use crate::{Aws, CloudError, CountRequests, classify};

/// Tags asked about in one `BatchGetImage` at most (ECR's limit).
const IMAGE_IDS_PER_CALL: usize = 100;

/// Every manifest type a commit's image may have been pushed as (single- and multi-platform, Docker and OCI).
const ACCEPTED_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

impl Aws {
    /// The tags among `tags` whose image the repository holds; `None` if ECR has no such repository.
    /// One call per [`IMAGE_IDS_PER_CALL`] tags, in the region the repository is in.
    pub async fn images_present(
        &self,
        repo: &EcrRepository,
        tags: &[String],
    ) -> Result<Option<HashSet<String>>, CloudError> {
        let elsewhere;
        let ecr = if repo.region == self.region {
            &self.ecr
        } else {
            elsewhere = aws_sdk_ecr::Client::from_conf(
                aws_sdk_ecr::config::Builder::from(&self.config)
                    .region(aws_sdk_ecr::config::Region::new(repo.region.clone()))
                    .interceptor(CountRequests)
                    .build(),
            );
            &elsewhere
        };
        let mut present = HashSet::new();
        for chunk in tags.chunks(IMAGE_IDS_PER_CALL) {
            let ids = chunk.iter().map(|t| ImageIdentifier::builder().image_tag(t).build()).collect();
            let out = match ecr
                .batch_get_image()
                .registry_id(&repo.registry_id)
                .repository_name(&repo.name)
                .set_image_ids(Some(ids))
                // Without these, ECR answers a multi-platform image (or one with attestations) as a
                // failure, not as found.
                .set_accepted_media_types(Some(ACCEPTED_MEDIA_TYPES.map(str::to_owned).to_vec()))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if e.code() == Some("RepositoryNotFoundException") => return Ok(None),
                Err(e) => return Err(classify("BatchGetImage", e)),
            };
            // A missing image is a failure naming its tag beside the found ones; an image found under
            // several tags may be answered once, under any of them, so what was asked and not failed is
            // what is there.
            let failed: HashSet<&str> = out.failures().iter().filter_map(|f| f.image_id()?.image_tag()).collect();
            let unnamed_failure = out.failures().iter().any(|f| f.image_id().and_then(|i| i.image_tag()).is_none());
            if !unnamed_failure {
                present.extend(chunk.iter().filter(|t| !failed.contains(t.as_str())).cloned());
            }
        }
        Ok(Some(present))
    }

    /// Whether the object exists (`HeadObject`: 404 is no).
    pub async fn object_exists(&self, bucket: &str, key: &str) -> Result<bool, CloudError> {
        match self.s3.head_object().bucket(bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(classify("HeadObject", e)),
        }
    }
}
