//! OCI image layouts (image-spec v1.1 "Image Layout") written without a container engine: one
//! gzip-compressed tar layer, a config, a manifest and an index, every blob named by its sha256.
//! Deterministic (zero times, ids and gzip mtime), so the same files give the same digest on any
//! machine. The reader that checks a layout is the harness's `ramp_tests::oci`.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use ramp_tests::oci::{sha256_hex, CONFIG, INDEX, LAYER, MANIFEST};
use serde_json::{json, Value};

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
