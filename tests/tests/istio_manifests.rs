//! The manifests under `istio/` against the CRD schemas Istio publishes (vendored in `istio/crds/`),
//! the way `kubectl apply --validate=strict` would check them, and the WasmPlugin's `pluginConfig`
//! against Ramp's own config validation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use ramp_tests::envoy::repo_root;
use serde_json::Value;

fn crd_dir() -> PathBuf {
    std::env::var_os("RAMP_ISTIO_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("istio/crds"))
}

fn yaml(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap()
}

/// Kubernetes prunes unknown fields, strict validation rejects them: close every object schema that
/// lists its properties and does not preserve unknown fields, so a misspelt field fails here too.
fn close_objects(schema: &mut Value) {
    if let Some(obj) = schema.as_object_mut() {
        let preserves = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if obj.contains_key("properties") && !preserves && !obj.contains_key("additionalProperties")
        {
            obj.insert("additionalProperties".into(), Value::Bool(false));
        }
        for v in obj.values_mut() {
            close_objects(v);
        }
    } else if let Some(arr) = schema.as_array_mut() {
        arr.iter_mut().for_each(close_objects);
    }
}

/// Validates `manifest` against the served version of `crd` and returns the error messages.
fn violations(crd_file: &str, manifest: &Value) -> Vec<String> {
    let crd = yaml(crd_dir().join(crd_file));
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
    assert_eq!(manifest["kind"].as_str(), Some(kind));
    let (group, version) = manifest["apiVersion"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    assert_eq!(crd["spec"]["group"].as_str(), Some(group));
    let served = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version && v["served"] == true)
        .unwrap_or_else(|| panic!("{kind} {version} is not served"));
    let mut schema = served["schema"]["openAPIV3Schema"].clone();
    close_objects(&mut schema);
    // apiVersion, kind and metadata are checked by the API server itself, not by the CRD schema.
    for implicit in ["apiVersion", "kind"] {
        schema["properties"][implicit] = serde_json::json!({"type": "string"});
    }
    schema["properties"]["metadata"] = serde_json::json!({"type": "object"});
    let validator = jsonschema::validator_for(&schema).unwrap();
    validator
        .iter_errors(manifest)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn manifest(name: &str) -> Value {
    yaml(repo_root().join("istio").join(name))
}

#[test]
fn manifests_match_istio_crd_schemas() {
    for (file, crd) in [
        ("wasmplugin.yaml", "wasmplugins.extensions.istio.io.yaml"),
        (
            "virtualservice.yaml",
            "virtualservices.networking.istio.io.yaml",
        ),
        (
            "destinationrule.yaml",
            "destinationrules.networking.istio.io.yaml",
        ),
    ] {
        let errors = violations(crd, &manifest(file));
        assert!(errors.is_empty(), "{file}: {errors:#?}");
    }
}

/// The documents of a multi-document manifest.
fn documents(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("istio").join(name)).unwrap();
    text.split("\n---\n")
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect()
}

/// The vendored CRD of a kind.
fn crd_of(kind: &str) -> &'static str {
    match kind {
        "WasmPlugin" => "wasmplugins.extensions.istio.io.yaml",
        "Gateway" => "gateways.gateway.networking.k8s.io.yaml",
        "HTTPRoute" => "httproutes.gateway.networking.k8s.io.yaml",
        "EnvoyExtensionPolicy" => "envoyextensionpolicies.gateway.envoyproxy.io.yaml",
        "Telemetry" => "telemetries.telemetry.istio.io.yaml",
        other => panic!("no vendored CRD for {other}"),
    }
}

/// The attachment examples (Gateway API, Envoy Gateway, Istio Telemetry) against their CRDs, and
/// against each other: the WasmPlugin targets the Gateway, the HTTPRoute routes the arms Ramp
/// picks by the header it sets, the EnvoyExtensionPolicy targets that route, and both configs
/// are configs the filter accepts.
#[test]
fn the_attachment_examples_match_their_crds_and_each_other() {
    let mut by_kind = std::collections::BTreeMap::new();
    for file in ["gateway-api.yaml", "envoy-gateway.yaml", "telemetry.yaml"] {
        for doc in documents(file) {
            let kind = doc["kind"].as_str().unwrap().to_owned();
            let errors = violations(crd_of(&kind), &doc);
            assert!(errors.is_empty(), "{file} {kind}: {errors:#?}");
            by_kind.insert(kind, doc);
        }
    }
    let (gateway, plugin, route, policy) = (
        &by_kind["Gateway"],
        &by_kind["WasmPlugin"],
        &by_kind["HTTPRoute"],
        &by_kind["EnvoyExtensionPolicy"],
    );
    assert_eq!(
        plugin["spec"]["targetRefs"][0]["name"],
        gateway["metadata"]["name"]
    );
    assert!(
        plugin["spec"].get("selector").is_none(),
        "targetRefs, not a selector"
    );
    assert_eq!(
        route["spec"]["parentRefs"][0]["name"],
        gateway["metadata"]["name"]
    );
    assert_eq!(
        policy["spec"]["targetRefs"][0]["name"],
        route["metadata"]["name"]
    );
    for config in [
        &plugin["spec"]["pluginConfig"],
        &policy["spec"]["wasm"][0]["config"],
    ] {
        let rollout =
            ramp_filter::config::Rollout::from_json(&serde_json::to_vec(config).unwrap()).unwrap();
        let rules = route["spec"]["rules"].as_array().unwrap();
        let header = &rules[0]["matches"][0]["headers"][0];
        assert_eq!(header["name"], rollout.routing_header.as_str());
        assert_eq!(header["value"], rollout.arms[1].name.as_str());
        assert!(
            rules.last().unwrap().get("matches").is_none(),
            "the last rule catches requests without an arm"
        );
    }
    let telemetry = &by_kind["Telemetry"];
    let over = &telemetry["spec"]["metrics"][0]["overrides"][0];
    assert_eq!(over["match"]["metric"], "REQUEST_COUNT");
    assert!(over["tagOverrides"]["ramp_arm"]["value"]
        .as_str()
        .unwrap()
        .contains("x-ramp-arm"));
}

#[test]
fn the_schema_check_catches_misspelt_and_mistyped_fields() {
    let mut bad = manifest("wasmplugin.yaml");
    bad["spec"]["failStrategy"] = "FAIL_SOMETIMES".into();
    bad["spec"]["pluginConfg"] = serde_json::json!({});
    let errors = violations("wasmplugins.extensions.istio.io.yaml", &bad);
    assert!(
        errors.iter().any(|e| e.contains("FAIL_SOMETIMES")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("pluginConfg")),
        "{errors:#?}"
    );
}

#[test]
fn plugin_config_is_a_valid_ramp_config_and_subsets_match_arms() {
    let plugin = manifest("wasmplugin.yaml");
    let json = serde_json::to_vec(&plugin["spec"]["pluginConfig"]).unwrap();
    let rollout = ramp_filter::config::Rollout::from_json(&json).unwrap();
    let dr = manifest("destinationrule.yaml");
    let subsets: Vec<&str> = dr["spec"]["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let arms: Vec<&str> = rollout.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(subsets, arms);
    let vs = manifest("virtualservice.yaml");
    let routes = vs["spec"]["http"].as_array().unwrap();
    assert_eq!(
        routes[0]["match"][0]["headers"][&rollout.routing_header]["exact"],
        "v2"
    );
    assert!(
        routes.last().unwrap().get("match").is_none(),
        "last route must catch requests without an arm"
    );
    assert_eq!(
        routes.last().unwrap()["route"][0]["destination"]["subset"],
        arms[rollout.baseline]
    );
}

/// The controller's manifests agree with the WasmPlugin that points at them: the cluster name is
/// Istio's `outbound|<port>||<service FQDN>` for the Service, the container listens on that port on
/// every interface, its store is on the persistent volume, and the token comes from the Secret.
#[test]
fn the_controller_manifests_match_the_plugins_controller_section() {
    let text = std::fs::read_to_string(repo_root().join("istio/rampctl.yaml")).unwrap();
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    let of = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap();
    let (service, set, secret) = (of("Service"), of("StatefulSet"), of("Secret"));
    let fqdn = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    let plugin = manifest("wasmplugin.yaml");
    let ctl = &plugin["spec"]["pluginConfig"]["controller"];
    assert_eq!(ctl["cluster"], format!("outbound|{port}||{fqdn}"));
    assert_eq!(ctl["authority"], format!("{fqdn}:{port}"));
    assert_eq!(set["spec"]["replicas"], 1, "SQLite: one writer");
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &args[..3],
        &["serve", "--listen", &format!("0.0.0.0:{port}")[..]]
    );
    let db = args[args.iter().position(|a| *a == "--db").unwrap() + 1];
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert!(db.starts_with(mount), "{db} is on the volume {mount}");
    assert_eq!(
        container["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        secret["metadata"]["name"]
    );
    assert_eq!(container["env"][0]["name"], "RAMPCTL_SERVE_TOKEN");
    assert_eq!(container["env"][1]["name"], "RAMPCTL_REPORT_TOKEN");
    assert_eq!(container["env"][2]["name"], "RAMPCTL_METRICS_TOKEN");
    // Every key the container reads is in the Secret.
    for env in container["env"].as_array().unwrap() {
        let key = &env["valueFrom"]["secretKeyRef"]["key"];
        assert!(
            !secret["stringData"][key.as_str().unwrap()].is_null(),
            "{key:?} is not in the Secret"
        );
    }
    // The token variable the filter reads is one the plugin passes into its VM.
    let token_env = ctl["token_env"].as_str().unwrap();
    assert!(
        plugin["spec"]["vmConfig"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == token_env),
        "{token_env} is not in vmConfig.env"
    );
    assert_eq!(
        set["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
}

/// Issue 21: the replicas' Deployment (istio/rampctl-replicas.yaml) is selected by rampctl.yaml's
/// Service, runs more than one replica on no volume, reads the connection string from its Secret
/// (never from the arguments), and the tokens from the same Secret as the StatefulSet.
#[test]
fn the_replicas_deployment_reads_its_store_from_a_secret_behind_the_same_service() {
    let docs = |file: &str| -> Vec<Value> {
        std::fs::read_to_string(repo_root().join(file))
            .unwrap()
            .split("\n---\n")
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect()
    };
    let (single, replicas) = (
        docs("istio/rampctl.yaml"),
        docs("istio/rampctl-replicas.yaml"),
    );
    let of = |docs: &[Value], kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap().clone();
    let (service, set) = (of(&single, "Service"), of(&single, "StatefulSet"));
    let (deployment, store) = (of(&replicas, "Deployment"), of(&replicas, "Secret"));
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() > 1);
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--db") || a.starts_with("--store")),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.contains("postgres://")), "{args:?}");
    let env = container["env"].as_array().unwrap();
    let store_env = env.iter().find(|e| e["name"] == "RAMPCTL_STORE").unwrap();
    let key = &store_env["valueFrom"]["secretKeyRef"];
    assert_eq!(key["name"], store["metadata"]["name"]);
    assert!(store["stringData"][key["key"].as_str().unwrap()]
        .as_str()
        .unwrap()
        .starts_with("postgres://"));
    let set_env = &set["spec"]["template"]["spec"]["containers"][0]["env"];
    for e in set_env.as_array().unwrap() {
        assert!(env.contains(e), "{e} is not in the Deployment");
    }
    assert_eq!(
        container["image"],
        set["spec"]["template"]["spec"]["containers"][0]["image"]
    );
}
