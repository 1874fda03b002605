//! OCI image layouts (image-spec v1.1 "Image Layout") read back and checked as a registry or
//! Istio's fetcher would: every blob's digest and size, the media types, the layer's diff_id. The
//! images test checks what `make images` wrote with it; the writer is `ramp_tools::oci`, which
//! shares the media types and the digest function below.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A layout read back and checked: every blob's digest and size against its descriptor, the
/// media types, the config's diff_id against the unpacked layer.
pub struct Checked {
    pub manifest_digest: String,
    pub config: Value,
    /// The layer's files: path and bytes.
    pub files: Vec<(String, Vec<u8>)>,
}

fn blob(dir: &Path, d: &Value, media_type: &str) -> Result<Vec<u8>> {
    ensure!(
        d["mediaType"] == media_type,
        "media type {} is not {media_type}",
        d["mediaType"]
    );
    let digest = d["digest"].as_str().context("descriptor without digest")?;
    let hex = digest
        .strip_prefix("sha256:")
        .context("not a sha256 digest")?;
    let bytes = std::fs::read(dir.join("blobs/sha256").join(hex))
        .with_context(|| format!("blob {digest}"))?;
    ensure!(
        sha256_hex(&bytes) == hex,
        "blob {digest} does not hash to its name"
    );
    ensure!(
        d["size"].as_u64() == Some(bytes.len() as u64),
        "blob {digest} is {} bytes, its descriptor says {}",
        bytes.len(),
        d["size"]
    );
    Ok(bytes)
}

/// The one element of the JSON array `v` (an image of ours has one manifest and one layer).
fn only<'a>(v: &'a Value, what: &str) -> Result<&'a Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([one]) => Ok(one),
        _ => bail!("{what}: one element expected, got {v}"),
    }
}

pub fn check_layout(dir: &Path) -> Result<Checked> {
    let layout: Value = serde_json::from_slice(&std::fs::read(dir.join("oci-layout"))?)?;
    ensure!(
        layout["imageLayoutVersion"] == "1.0.0",
        "oci-layout: {layout}"
    );
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    ensure!(
        index["schemaVersion"] == 2 && index["mediaType"] == INDEX,
        "index: {index}"
    );
    let m = only(&index["manifests"], "index.manifests")?;
    let manifest_bytes = blob(dir, m, MANIFEST)?;
    let manifest: Value = serde_json::from_slice(&manifest_bytes)?;
    let config: Value = serde_json::from_slice(&blob(dir, &manifest["config"], CONFIG)?)?;
    let layer = only(&manifest["layers"], "manifest.layers")?;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob(dir, layer, LAYER)?.as_slice()).read_to_end(&mut tar)?;
    ensure!(
        config["rootfs"]["diff_ids"][0] == format!("sha256:{}", sha256_hex(&tar)),
        "the config's diff_id is not the unpacked layer's digest"
    );
    let mut files = Vec::new();
    for entry in tar::Archive::new(tar.as_slice()).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        files.push((path, bytes));
    }
    Ok(Checked {
        manifest_digest: m["digest"].as_str().unwrap_or_default().to_owned(),
        config,
        files,
    })
}
