//! The settings of the file's top level that need more than a default: each from its `PREVIEWD_*`
//! variable, else from the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use previewd_domain::{DnsZone, OwnerId};

use super::Var;

/// The address to listen on: `PREVIEWD_LISTEN`, else the file's `listen`, else 127.0.0.1:8080.
pub(super) fn listen(var: Var<'_>, from_file: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    Ok(match var("PREVIEWD_LISTEN") {
        Some(v) => {
            v.parse().with_context(|| format!("PREVIEWD_LISTEN={v:?} is not an address such as 127.0.0.1:8080"))?
        }
        None => from_file.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
    })
}

/// The ownership id stamped on every stack: `PREVIEWD_OWNER`, else the file's `owner`.
pub(super) fn owner(var: Var<'_>, from_file: Option<String>) -> anyhow::Result<Option<OwnerId>> {
    var("PREVIEWD_OWNER").or(from_file).map(|o| OwnerId::new(&o)).transpose().context("PREVIEWD_OWNER / owner")
}

/// The zone environments are named under: `PREVIEWD_DNS_ZONE`, else the file's `dns_zone`.
pub(super) fn dns_zone(var: Var<'_>, from_file: Option<String>) -> anyhow::Result<Option<DnsZone>> {
    var("PREVIEWD_DNS_ZONE").or(from_file).map(|z| DnsZone::new(&z)).transpose().context("PREVIEWD_DNS_ZONE / dns_zone")
}

/// The dashboard's address, an http(s) URL: `PREVIEWD_PUBLIC_URL`, else the file's `public_url`.
pub(super) fn public_url(var: Var<'_>, from_file: Option<String>) -> anyhow::Result<Option<String>> {
    let public_url = var("PREVIEWD_PUBLIC_URL").or(from_file);
    if let Some(u) = &public_url
        && !(u.starts_with("https://") || u.starts_with("http://"))
    {
        bail!("PREVIEWD_PUBLIC_URL (public_url) {u:?} must start with https:// or http://");
    }
    Ok(public_url)
}

/// The folder of blueprints: `PREVIEWD_STACKS_DIR`, else the file's `stacks_dir`, else `stacks`.
pub(super) fn stacks_dir(var: Var<'_>, from_file: Option<PathBuf>) -> PathBuf {
    var("PREVIEWD_STACKS_DIR").map(PathBuf::from).or(from_file).unwrap_or_else(|| PathBuf::from("stacks"))
}
