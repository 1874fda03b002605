//! OCI image layouts (image-spec v1.1 "Image Layout") written without a container engine: one
//! gzip-compressed tar layer, a config, a manifest and an index, every blob named by its sha256.
//! Deterministic (zero times, ids and gzip mtime), so the same files give the same digest on any
//! machine. The reader half checks a layout as a registry or Istio's fetcher would.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
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

/// A file in the image's one layer.
pub struct LayerFile<'a> {
    pub path: &'a str,
    pub bytes: &'a [u8],
    pub mode: u32,
}

/// The layer as an uncompressed tar (its sha256 is the config's diff_id).
fn tar_of(files: &[LayerFile<'_>]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for f in files {
        let mut header = tar::Header::new_ustar();
        header.set_path(f.path)?;
        header.set_size(f.bytes.len() as u64);
        header.set_mode(f.mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, f.bytes)?;
    }
    Ok(builder.into_inner()?)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": format!("sha256:{}", sha256_hex(bytes)), "size": bytes.len()})
}

/// Writes an OCI image layout at `dir` (replacing it): `files` as one layer, `config` (its
/// `rootfs` is filled in) and the tag `tag`. Returns the manifest's digest, `sha256:<hex>`.
pub fn write_layout(
    dir: &Path,
    files: &[LayerFile<'_>],
    mut config: Value,
    tag: &str,
    annotations: Value,
) -> Result<String> {
    let tar = tar_of(files)?;
    let layer = gzip(&tar)?;
    config["rootfs"] =
        json!({"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))]});
    let config = serde_json::to_vec(&config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(CONFIG, &config),
        "layers": [descriptor(LAYER, &layer)],
        "annotations": annotations,
    }))?;
    let mut manifest_descriptor = descriptor(MANIFEST, &manifest);
    manifest_descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [manifest_descriptor],
    }))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for blob in [&layer, &config, &manifest] {
        std::fs::write(blobs.join(sha256_hex(blob)), blob)?;
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(dir.join("index.json"), index)?;
    Ok(format!("sha256:{}", sha256_hex(&manifest)))
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
