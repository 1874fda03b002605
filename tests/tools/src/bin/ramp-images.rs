//! `make images`: OCI image layouts under target/images/, built without a container engine:
//! - `ramp-filter/`: the filter in the image format Istio's WasmPlugin (and Envoy Gateway) pull,
//!   the Docker/OCI variant: one tar+gzip layer holding `plugin.wasm`, as `FROM scratch` +
//!   `COPY plugin.wasm ./` would build it;
//! - `rampctl/`: the static (musl) controller on an empty base, running as user 65532;
//! - `ramp_filter.wasm` with `ramp_filter.wasm.sha256` beside it, for Envoy's
//!   `vm_config.code.remote` (its `sha256` is the module's).
//!
//! Prints each image's digest; with `--pin` (`make images`) also pins the filter image's in
//! istio/wasmplugin.yaml (`sha256:`, which Istio checks against the pulled image's digest). The
//! tests run it without `--pin` and compare the committed pin with what they built.

use anyhow::{bail, Context, Result};
use ramp_tests::envoy::repo_root;
use ramp_tests::oci::sha256_hex;
use ramp_tools::oci::{write_layout, LayerFile};
use serde_json::json;

fn main() -> Result<()> {
    let root = repo_root();
    let version = env!("CARGO_PKG_VERSION");
    let out = root.join("target/images");
    std::fs::create_dir_all(&out)?;
    let wasm_path = root.join("target/ramp/ramp_filter.wasm");
    let wasm = std::fs::read(&wasm_path)
        .with_context(|| format!("{}: run `make wasm` first", wasm_path.display()))?;
    let rampctl_path = root.join("target/x86_64-unknown-linux-musl/release/rampctl");
    let rampctl = std::fs::read(&rampctl_path).with_context(|| {
        format!(
            "{}: build it with `cargo build --release --target x86_64-unknown-linux-musl -p ramp-controller`",
            rampctl_path.display()
        )
    })?;
    let annotations = |title: &str| {
        json!({"org.opencontainers.image.source": "https://github.com/ramp/ramp",
               "org.opencontainers.image.title": title, "org.opencontainers.image.version": version})
    };
    let filter = write_layout(
        &out.join("ramp-filter"),
        &[LayerFile {
            path: "plugin.wasm",
            bytes: &wasm,
            mode: 0o644,
        }],
        json!({"architecture": "amd64", "os": "linux", "config": {}}),
        version,
        annotations("ramp-filter"),
    )?;
    let controller = write_layout(
        &out.join("rampctl"),
        &[LayerFile {
            path: "rampctl",
            bytes: &rampctl,
            mode: 0o755,
        }],
        json!({"architecture": "amd64", "os": "linux", "config": {
            "User": "65532:65532",
            "Entrypoint": ["/rampctl"],
            "Cmd": ["serve", "--listen", "0.0.0.0:9090", "--db", "/var/lib/ramp/ramp.db"],
            "ExposedPorts": {"9090/tcp": {}},
            "WorkingDir": "/"}}),
        version,
        annotations("rampctl"),
    )?;
    let wasm_hex = sha256_hex(&wasm);
    std::fs::write(out.join("ramp_filter.wasm"), &wasm)?;
    std::fs::write(
        out.join("ramp_filter.wasm.sha256"),
        format!("{wasm_hex}  ramp_filter.wasm\n"),
    )?;
    println!("target/images/ramp-filter  {filter}  (Istio WasmPlugin image, plugin.wasm)");
    println!("target/images/rampctl      {controller}  (static rampctl, user 65532)");
    println!("target/images/ramp_filter.wasm  sha256:{wasm_hex}");
    if std::env::args().any(|a| a == "--pin") {
        for manifest in PINNED {
            pin(&root.join(manifest), &filter)?;
            println!("{manifest} pins {filter}");
        }
    }
    Ok(())
}

/// The manifests that load the filter image, each pinning its digest.
const PINNED: [&str; 3] = [
    "istio/wasmplugin.yaml",
    "istio/gateway-api.yaml",
    "istio/envoy-gateway.yaml",
];

/// Rewrites every `sha256: <64 hex>` line of a manifest to the filter image's digest (hex).
fn pin(path: &std::path::Path, digest: &str) -> Result<()> {
    let hex = digest.trim_start_matches("sha256:");
    let text = std::fs::read_to_string(path)?;
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("sha256: ") {
            Some(old) if old.len() == 64 && old.bytes().all(|b| b.is_ascii_hexdigit()) => {
                found = true;
                format!("{}sha256: {hex}", &l[..l.len() - l.trim_start().len()])
            }
            _ => l.to_owned(),
        })
        .collect();
    if !found {
        bail!("{}: no `sha256:` line to pin", path.display());
    }
    std::fs::write(path, lines.join("\n") + "\n")?;
    Ok(())
}
