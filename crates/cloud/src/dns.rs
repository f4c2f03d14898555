//! Route53: each environment's name is a CNAME to its endpoint, paired (as external-dns does) with a TXT
//! record at `_previewd.<name>` that says which installation and environment own it. previewd changes or
//! deletes a name only when that marker is its own, so it never takes over or removes a record it did
//! not create.

use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType};

use crate::{Aws, CloudError, classify};

/// Short, so a re-pointed name takes effect soon; previews come and go.
const RECORD_TTL: i64 = 60;

/// The ownership marker's text:
/// `heritage=previewd,previewd/owner=<owner>,previewd/repo=<owner/name>,previewd/env=<env key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipMarker(pub String);

impl OwnershipMarker {
    pub fn new(owner: &str, repo: &str, env_key: &str) -> Self {
        Self(format!("\"heritage=previewd,previewd/owner={owner},previewd/repo={repo},previewd/env={env_key}\""))
    }

    /// The owner, repository and environment key a marker's text names; `None` for any TXT value that is
    /// not exactly a previewd marker.
    pub fn parse(value: &str) -> Option<(String, String, String)> {
        let inner = value.strip_prefix('"')?.strip_suffix('"')?;
        let mut parts = inner.split(',');
        if parts.next()? != "heritage=previewd" {
            return None;
        }
        let owner = parts.next()?.strip_prefix("previewd/owner=")?;
        let repo = parts.next()?.strip_prefix("previewd/repo=")?;
        let env = parts.next()?.strip_prefix("previewd/env=")?;
        if parts.next().is_some() {
            return None;
        }
        let marker = (owner.to_owned(), repo.to_owned(), env.to_owned());
        (Self::new(owner, repo, env).0 == value).then_some(marker)
    }
}

/// A record carrying previewd's ownership marker, as found in a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedName {
    /// The name the marker guards (without `_previewd.` and the final dot).
    pub name: String,
    pub owner: String,
    pub repo: String,
    pub env_key: String,
    /// The CNAME's target, if the name has one.
    pub target: Option<String>,
}

/// A record as Route53 holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    pub name: String,
    pub kind: String,
    pub value: String,
    pub ttl: i64,
}

/// Record changes for one name, submitted with others in one ChangeResourceRecordSets
/// ([`Aws::submit_dns`]); Route53 applies a batch whole or not at all.
#[derive(Debug, Clone)]
pub struct DnsChange(Vec<Change>);

impl DnsChange {
    /// Deletes `name` (a CNAME to `target`) and its marker, exactly as [`Aws::upsert_dns`] wrote them,
    /// without reading them first. Route53 deletes a record only when every value matches
    /// (`InvalidChangeBatch` otherwise), so this removes nothing but the pair previewd made: a name
    /// changed since, or never written, fails the whole batch and is left for [`Aws::delete_dns`].
    pub fn deletion(name: &str, target: &str, marker: &OwnershipMarker) -> Result<Self, CloudError> {
        Ok(Self(vec![
            record_change(ChangeAction::Delete, &marker_name(name), RrType::Txt, &marker.0, RECORD_TTL)?,
            record_change(ChangeAction::Delete, name, RrType::Cname, target, RECORD_TTL)?,
        ]))
    }
}

/// Error codes for a change batch whose records are not as it says: AWS's, and moto's for a DELETE
/// that names other values.
pub const MISMATCHED_CHANGE_CODES: &[&str] = &["InvalidChangeBatch", "InvalidInput"];

fn marker_name(name: &str) -> String {
    format!("_previewd.{name}")
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') { name.to_owned() } else { format!("{name}.") }
}

impl Aws {
    /// The id of the public hosted zone named `zone`.
    pub async fn hosted_zone_id(&self, zone: &str) -> Result<String, CloudError> {
        let out = self
            .route53
            .list_hosted_zones_by_name()
            .dns_name(zone)
            .send()
            .await
            .map_err(|e| classify("ListHostedZonesByName", e))?;
        out.hosted_zones()
            .iter()
            .find(|z| z.name() == fqdn(zone) && !z.config().is_some_and(|c| c.private_zone()))
            .map(|z| z.id().trim_start_matches("/hostedzone/").to_owned())
            .ok_or_else(|| {
                CloudError::terminal(
                    "ListHostedZonesByName",
                    "NoSuchHostedZone",
                    format!("no public hosted zone named {zone}"),
                )
            })
    }

    /// The record of `kind` at exactly `name`, if any.
    pub async fn dns_record(&self, zone_id: &str, name: &str, kind: RrType) -> Result<Option<DnsRecord>, CloudError> {
        let out = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone_id)
            .start_record_name(fqdn(name))
            .start_record_type(kind.clone())
            .max_items(1)
            .send()
            .await
            .map_err(|e| classify("ListResourceRecordSets", e))?;
        Ok(out
            .resource_record_sets()
            .iter()
            .find(|r| r.name().eq_ignore_ascii_case(&fqdn(name)) && r.r#type() == &kind)
            .map(|r| DnsRecord {
                name: r.name().to_owned(),
                kind: r.r#type().as_str().to_owned(),
                value: r.resource_records().iter().map(|v| v.value()).collect::<Vec<_>>().join(" "),
                ttl: r.ttl().unwrap_or(RECORD_TTL),
            }))
    }

    /// Every name in the zone that carries a previewd ownership marker (any owner's), reading every page
    /// of `ListResourceRecordSets`: one call per 300 records, however many environments.
    pub async fn marked_names(&self, zone_id: &str) -> Result<Vec<MarkedName>, CloudError> {
        let mut markers = Vec::new();
        let mut cnames = std::collections::HashMap::new();
        let mut start: Option<(String, RrType)> = None;
        loop {
            let (name, kind) = start.take().unzip();
            let out = self
                .route53
                .list_resource_record_sets()
                .hosted_zone_id(zone_id)
                .set_start_record_name(name)
                .set_start_record_type(kind)
                .send()
                .await
                .map_err(|e| classify("ListResourceRecordSets", e))?;
            for r in out.resource_record_sets() {
                let value = r.resource_records().iter().map(|v| v.value()).collect::<Vec<_>>().join(" ");
                let name = r.name().trim_end_matches('.').to_ascii_lowercase();
                match r.r#type() {
                    RrType::Txt => {
                        if let (Some(guarded), Some((owner, repo, env_key))) =
                            (name.strip_prefix("_previewd."), OwnershipMarker::parse(&value))
                        {
                            markers.push(MarkedName { name: guarded.to_owned(), owner, repo, env_key, target: None });
                        }
                    }
                    RrType::Cname => {
                        cnames.insert(name, value);
                    }
                    _ => {}
                }
            }
            if !out.is_truncated() {
                break;
            }
            match (out.next_record_name(), out.next_record_type()) {
                (Some(n), Some(t)) => start = Some((n.to_owned(), t.clone())),
                _ => {
                    return Err(CloudError::Retryable {
                        op: "ListResourceRecordSets",
                        code: "BrokenPagination".into(),
                        message: "a truncated page named no next record".into(),
                    });
                }
            }
        }
        for m in &mut markers {
            m.target = cnames.remove(&m.name);
        }
        Ok(markers)
    }

    /// Points `name` at `target` (CNAME) with our marker beside it, unless both already are exactly that
    /// (a write that changes nothing still costs a Route53 request and a propagation). Refuses a name
    /// that already has a record without our marker.
    pub async fn upsert_dns(
        &self,
        zone_id: &str,
        name: &str,
        target: &str,
        marker: &OwnershipMarker,
    ) -> Result<bool, CloudError> {
        let existing_marker = self.dns_record(zone_id, &marker_name(name), RrType::Txt).await?;
        let existing_cname = self.dns_record(zone_id, name, RrType::Cname).await?;
        match existing_marker {
            Some(m) if m.value != marker.0 => {
                return Err(CloudError::terminal(
                    "ChangeResourceRecordSets",
                    "NotOwned",
                    format!("{name} is owned by {}", m.value),
                ));
            }
            None if existing_cname.is_some() => {
                return Err(CloudError::terminal(
                    "ChangeResourceRecordSets",
                    "NotOwned",
                    format!("{name} already exists and carries no previewd ownership marker"),
                ));
            }
            Some(_) if existing_cname.as_ref().is_some_and(|c| same_target(&c.value, target)) => return Ok(false),
            _ => {}
        }
        self.change(zone_id, ChangeAction::Upsert, name, target, &marker.0).await?;
        Ok(true)
    }

    /// Removes `name` and its marker if the marker is ours; does nothing when neither exists. Returns
    /// whether anything was deleted.
    pub async fn delete_dns(&self, zone_id: &str, name: &str, marker: &OwnershipMarker) -> Result<bool, CloudError> {
        let existing_marker = self.dns_record(zone_id, &marker_name(name), RrType::Txt).await?;
        let existing_cname = self.dns_record(zone_id, name, RrType::Cname).await?;
        match (existing_marker, existing_cname) {
            (None, None) => Ok(false),
            (Some(m), _) if m.value != marker.0 => Err(CloudError::terminal(
                "ChangeResourceRecordSets",
                "NotOwned",
                format!("{name} is owned by {}", m.value),
            )),
            (None, Some(_)) => Err(CloudError::terminal(
                "ChangeResourceRecordSets",
                "NotOwned",
                format!("{name} carries no previewd ownership marker: left alone"),
            )),
            (Some(m), cname) => {
                let mut changes =
                    vec![record_change(ChangeAction::Delete, &marker_name(name), RrType::Txt, &m.value, m.ttl)?];
                if let Some(c) = cname {
                    changes.push(record_change(ChangeAction::Delete, name, RrType::Cname, &c.value, c.ttl)?);
                }
                self.submit(zone_id, changes).await?;
                Ok(true)
            }
        }
    }

    async fn change(
        &self,
        zone_id: &str,
        action: ChangeAction,
        name: &str,
        target: &str,
        marker: &str,
    ) -> Result<(), CloudError> {
        let changes = vec![
            record_change(action.clone(), &marker_name(name), RrType::Txt, marker, RECORD_TTL)?,
            record_change(action, name, RrType::Cname, target, RECORD_TTL)?,
        ];
        self.submit(zone_id, changes).await
    }

    /// Submits the changes of several names in one request (at most 1,000 records; Route53 takes a
    /// request at a time per zone, and a few a second per account).
    pub async fn submit_dns(&self, zone_id: &str, changes: Vec<DnsChange>) -> Result<(), CloudError> {
        self.submit(zone_id, changes.into_iter().flat_map(|c| c.0).collect()).await
    }

    async fn submit(&self, zone_id: &str, changes: Vec<Change>) -> Result<(), CloudError> {
        let batch = ChangeBatch::builder()
            .set_changes(Some(changes))
            .build()
            .map_err(|e| CloudError::terminal("ChangeResourceRecordSets", "Build", e.to_string()))?;
        self.route53
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| classify("ChangeResourceRecordSets", e))?;
        Ok(())
    }
}

/// Route53 answers names with a final dot; a target may be given with or without one.
fn same_target(existing: &str, wanted: &str) -> bool {
    existing.trim_end_matches('.').eq_ignore_ascii_case(wanted.trim_end_matches('.'))
}

fn record_change(action: ChangeAction, name: &str, kind: RrType, value: &str, ttl: i64) -> Result<Change, CloudError> {
    let build = |e: aws_sdk_route53::error::BuildError| {
        CloudError::terminal("ChangeResourceRecordSets", "Build", e.to_string())
    };
    let set = ResourceRecordSet::builder()
        .name(fqdn(name))
        .r#type(kind)
        .ttl(ttl)
        .resource_records(ResourceRecord::builder().value(value).build().map_err(build)?)
        .build()
        .map_err(build)?;
    Change::builder().action(action).resource_record_set(set).build().map_err(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_markers_parse() {
        let m = OwnershipMarker::new("acme", "acme/shop", "main");
        assert_eq!(OwnershipMarker::parse(&m.0), Some(("acme".into(), "acme/shop".into(), "main".into())));
        for bad in [
            "\"heritage=external-dns,external-dns/owner=default\"",
            "\"heritage=previewd,previewd/owner=acme,previewd/repo=acme/shop\"",
            "\"heritage=previewd,previewd/owner=acme,previewd/repo=acme/shop,previewd/env=main,x=y\"",
            "heritage=previewd,previewd/owner=acme,previewd/repo=acme/shop,previewd/env=main",
            "\"v=spf1 -all\"",
        ] {
            assert_eq!(OwnershipMarker::parse(bad), None, "{bad}");
        }
    }
}
