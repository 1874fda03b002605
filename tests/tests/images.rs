//! The images `make images` writes (run it first; `make test` does): each OCI layout passes
//! `skopeo inspect` (Debian's skopeo) and a structural check of its index, manifest, config and
//! layer (digests, sizes, media types, diff_id); the filter image unpacks to a `plugin.wasm`
//! byte-identical to the built module and `istio/wasmplugin.yaml` pins its digest; the rampctl
//! image runs as a non-root user and its binary, unpacked, runs `rampctl version`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use ramp_tests::envoy::repo_root;
use ramp_tests::oci::{check_layout, sha256_hex};

/// The layout `make images` wrote under `target/images/<name>`, checked structurally and by
/// skopeo, with the one file its layer holds.
fn built_image(name: &str) -> (ramp_tests::oci::Checked, String, Vec<u8>) {
    let dir = repo_root().join("target/images").join(name);
    let image =
        check_layout(&dir).unwrap_or_else(|e| panic!("{}: run `make images`: {e}", dir.display()));
    assert_eq!(skopeo_digest(dir.to_str().unwrap()), image.manifest_digest);
    let [(file, bytes)] = image.files.as_slice() else {
        panic!(
            "one file in the layer: {:?}",
            image.files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
    };
    let (file, bytes) = (file.clone(), bytes.clone());
    (image, file, bytes)
}

fn skopeo_digest(dir: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", &format!("oci:{dir}")])
        .output()
        .expect("skopeo (make test installs Debian's package)");
    assert!(
        out.status.success(),
        "skopeo inspect oci:{dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_owned()
}

#[test]
fn the_filter_image_is_what_istio_pulls_and_is_pinned() {
    let root = repo_root();
    let (image, name, wasm) = built_image("ramp-filter");
    let built = std::fs::read(root.join("target/ramp/ramp_filter.wasm")).unwrap();
    assert_eq!(name, "plugin.wasm");
    assert!(
        wasm == built,
        "plugin.wasm is the built module, byte for byte"
    );
    for manifest in [
        "istio/wasmplugin.yaml",
        "istio/gateway-api.yaml",
        "istio/envoy-gateway.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(manifest)).unwrap();
        let pins: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("sha256: "))
            .collect();
        assert!(!pins.is_empty(), "{manifest} pins the image");
        for pinned in pins {
            assert_eq!(
                format!("sha256:{pinned}"),
                image.manifest_digest,
                "{manifest} pins the image the build makes (run `make images` and commit the pin)"
            );
        }
    }
    let sidecar =
        std::fs::read_to_string(root.join("target/images/ramp_filter.wasm.sha256")).unwrap();
    assert_eq!(
        sidecar,
        format!("{}  ramp_filter.wasm\n", sha256_hex(&built))
    );
}

#[test]
fn the_rampctl_image_is_static_non_root_and_runs() {
    let (image, name, binary) = built_image("rampctl");
    let config = &image.config["config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(config["Entrypoint"][0], "/rampctl", "{config}");
    assert_eq!(name, "rampctl");
    let unpacked = tempfile::tempdir().unwrap();
    let path = unpacked.path().join("rampctl");
    std::fs::write(&path, &binary).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&path).arg("version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("rampctl {}", env!("CARGO_PKG_VERSION"))
    );
    // Static: no program interpreter (a dynamic ELF names one in a PT_INTERP header).
    assert!(
        !binary.windows(b"ld-linux".len()).any(|w| w == b"ld-linux"),
        "rampctl in the image is statically linked"
    );
}
