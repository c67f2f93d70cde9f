//! The Kubernetes manifests in `deploy/kubernetes/`, checked offline.
//!
//! Every manifest is validated by `kubernetes-validate` (the schemas of each
//! Kubernetes release, shipped with the Python package) in strict mode, so a
//! misspelt field fails, against the oldest release the manifests need
//! (1.30: the kubelet's `sleep` preStop action) and a recent one. Then the
//! facts a user relies on are read from the manifests themselves: the
//! headless Service publishes not-ready pods, the probes ask `/ready` and
//! `/alive` on the port `CLOISTER_MANAGEMENT_ADDR` sets, the advertised host
//! is the pod IP, and the pod's environment is a configuration the node
//! accepts.
//!
//! The YAML is read with Python's `yaml` (PyYAML, which `kubernetes-validate`
//! depends on), so no YAML crate is needed. Without the tool these tests
//! skip with a message; `CLOISTER_K8S_VALIDATE=required` (CI sets it, and
//! installs the package) turns the skip into a failure.

#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloister_core::Config;
use serde_json::Value;

/// The Kubernetes releases the manifests are validated against: the oldest
/// they work on and a recent one.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// What the Downward API and the Secret give the pod, as the config check
/// stands them in.
const NAMESPACE: &str = "shop";
const POD_IP: &str = "10.1.2.3";
const COOKIE: &str = "cookie-from-the-secret";

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every `*.yaml` manifest, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest in {:?}", manifest_dir());
    files
}

/// Whether `python3 -m kubernetes_validate` can run here. When it cannot:
/// false with a message, or a failure under `CLOISTER_K8S_VALIDATE=required`.
fn validator_available() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate, yaml"])
        .output();
    if probe.as_ref().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let why = match probe {
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            stderr
                .lines()
                .last()
                .unwrap_or("python3 failed")
                .to_string()
        }
        Err(error) => format!("python3: {error}"),
    };
    let required = std::env::var("CLOISTER_K8S_VALIDATE").as_deref() == Ok("required");
    assert!(
        !required,
        "CLOISTER_K8S_VALIDATE=required but kubernetes-validate cannot run: {why} \
         (python3 -m pip install kubernetes-validate)"
    );
    eprintln!(
        "SKIPPED: kubernetes-validate is not installed ({why}); \
         python3 -m pip install kubernetes-validate, or CLOISTER_K8S_VALIDATE=required to fail"
    );
    false
}

/// `kubernetes-validate --strict` on `files` against every pinned release.
fn validate(files: &[PathBuf]) -> Output {
    let mut command = Command::new("python3");
    command.args(["-m", "kubernetes_validate", "--strict"]);
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    command.args(files).output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn every_manifest_passes_strict_validation() {
    if !validator_available() {
        return;
    }
    let files = manifests();
    let output = validate(&files);
    let report = text(&output);
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{report}"
    );
    // One line per resource and release, so none was left out unread.
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        for version in KUBERNETES_VERSIONS {
            let release = version.trim_end_matches(".0");
            assert!(
                report.contains(&format!("{name} passed"))
                    && report.contains(&format!("against version {release}")),
                "no pass of {name} against {release} in:\n{report}"
            );
        }
    }
}

/// Removes a file when the test ends, however it ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_validator_refuses_a_misspelt_field() {
    // What the other test relies on: a broken manifest does not pass.
    if !validator_available() {
        return;
    }
    let service = std::fs::read_to_string(manifest_dir().join("service.yaml")).unwrap();
    let broken = service.replace("publishNotReadyAddresses", "publishNotReadyAdresses");
    assert_ne!(
        broken, service,
        "service.yaml sets publishNotReadyAddresses"
    );
    let file = TempFile(
        std::env::temp_dir().join(format!("cloister-k8s-broken-{}.yaml", std::process::id())),
    );
    std::fs::write(&file.0, broken).unwrap();
    let output = validate(std::slice::from_ref(&file.0));
    let report = text(&output);
    assert!(
        !output.status.success(),
        "a misspelt field passed:\n{report}"
    );
    assert!(report.contains("publishNotReadyAdresses"), "{report}");
}

/// Every resource in the manifests, read by Python's `yaml`.
fn resources() -> Vec<Value> {
    let script = "import json, sys, yaml\n\
        docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d is not None]\n\
        json.dump(docs, sys.stdout)";
    let output = Command::new("python3")
        .args(["-c", script])
        .args(manifests())
        .output()
        .unwrap();
    assert!(output.status.success(), "YAML: {}", text(&output));
    match serde_json::from_slice(&output.stdout).unwrap() {
        Value::Array(resources) => resources,
        other => panic!("not a list of resources: {other}"),
    }
}

/// The one resource of `kind`.
fn one<'a>(resources: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = resources.iter().filter(|r| r["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected, found {}", found.len());
    found[0]
}

/// The container's environment as the kubelet would give it: Downward API
/// fields and the Secret stood in by [`NAMESPACE`], [`POD_IP`] and
/// [`COOKIE`], and `$(NAME)` expanded from the variables defined before it
/// (as Kubernetes does; a reference to any other is left as written there,
/// so it is a failure here).
fn environment(container: &Value) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        let value = if let Some(value) = var["value"].as_str() {
            let mut value = value.to_string();
            for (earlier, earlier_value) in &env {
                value = value.replace(&format!("$({earlier})"), earlier_value);
            }
            assert!(
                !value.contains("$("),
                "{name}: unresolved reference in {value:?}"
            );
            value
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.namespace" => NAMESPACE.to_string(),
                "status.podIP" => POD_IP.to_string(),
                other => panic!("{name}: an unexpected Downward API field {other}"),
            }
        } else if var["valueFrom"]["secretKeyRef"].is_object() {
            COOKIE.to_string()
        } else {
            panic!("{name}: neither a value nor a known source: {var}");
        };
        env.push((name, value));
    }
    env
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// A probe's or a Service's port, by number or by the container port's name.
fn port(container: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    let name = port.as_str().unwrap();
    let ports = container["ports"].as_array().unwrap();
    let found = ports.iter().find(|p| p["name"] == name);
    found.unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// Sets the `CLOISTER_*` variables of `vars` for as long as it lives, with
/// every other config variable of the test process removed; puts them back
/// when dropped. This is the only test of this binary that writes the
/// environment, and the project's tool variables (which the other tests
/// read) stay untouched.
struct EnvGuard {
    saved: Vec<(OsString, OsString)>,
}

impl EnvGuard {
    fn set(vars: &[(String, String)]) -> EnvGuard {
        let ours = |key: &OsString| {
            let key = key.to_string_lossy();
            key.starts_with("CLOISTER_")
                && !cloister_core::config::TOOL_VARIABLES.contains(&key.as_ref())
        };
        let saved: Vec<(OsString, OsString)> =
            std::env::vars_os().filter(|(key, _)| ours(key)).collect();
        for (key, _) in &saved {
            std::env::remove_var(key);
        }
        for (key, value) in vars.iter().filter(|(key, _)| key.starts_with("CLOISTER_")) {
            std::env::set_var(key, value);
        }
        EnvGuard { saved }
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        let set: Vec<OsString> = std::env::vars_os()
            .map(|(key, _)| key)
            .filter(|key| {
                let key = key.to_string_lossy();
                key.starts_with("CLOISTER_")
                    && !cloister_core::config::TOOL_VARIABLES.contains(&key.as_ref())
            })
            .collect();
        for key in set {
            std::env::remove_var(key);
        }
        for (key, value) in &self.saved {
            std::env::set_var(key, value);
        }
    }
}

#[test]
fn the_manifests_do_what_the_readme_says() {
    if !validator_available() {
        return;
    }
    let resources = resources();
    let service = one(&resources, "Service");
    let pdb = one(&resources, "PodDisruptionBudget");
    let statefulset = one(&resources, "StatefulSet");
    let deployment = one(&resources, "Deployment");

    // A headless Service that lists pods before they are Ready: a node must
    // find its peers to become Ready at all.
    let service_name = service["metadata"]["name"].as_str().unwrap();
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    let selector = &service["spec"]["selector"];
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    let node_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "node")
        .expect("a Service port named `node` (for the SRV name)");

    // A StatefulSet must start its pods together: OrderedReady would wait
    // for a Ready first pod, which waits for its peers.
    assert_eq!(statefulset["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(statefulset["spec"]["serviceName"], service_name);
    // The two variants run the same pods, so what holds for one holds for
    // the other.
    assert_eq!(
        statefulset["spec"]["template"],
        deployment["spec"]["template"]
    );

    for workload in [statefulset, deployment] {
        let kind = workload["kind"].as_str().unwrap();
        let spec = &workload["spec"];
        assert_eq!(&spec["selector"]["matchLabels"], selector, "{kind}");
        assert_eq!(&spec["template"]["metadata"]["labels"], selector, "{kind}");
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["enableServiceLinks"], false, "{kind}");
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{kind}");
        let container = &containers[0];
        assert_eq!(container["image"], "cloister-node:local", "{kind}");
        let env = environment(container);

        // The advertised host is the pod's IP from the Downward API.
        let advertised = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "CLOISTER_ADVERTISED_HOST")
            .expect("CLOISTER_ADVERTISED_HOST");
        assert_eq!(
            advertised["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP",
            "{kind}"
        );
        // The cookie comes from a Secret, never from the manifest.
        let cookie = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "CLOISTER_COOKIE")
            .expect("CLOISTER_COOKIE");
        assert!(cookie["valueFrom"]["secretKeyRef"]["name"].is_string());
        assert_eq!(var(&env, "CLOISTER_LOG_FORMAT"), Some("json"), "{kind}");

        // The node accepts this environment as its configuration.
        let config = {
            let _env = EnvGuard::set(&env);
            Config::from_env()
        };
        let config = config.unwrap_or_else(|e| panic!("{kind}: the node would refuse: {e}"));
        if let Err(e) = config.check_cookie_exposure() {
            panic!("{kind}: the node would refuse to listen: {e}");
        }
        assert_eq!(
            config.sentry.service(),
            Some(format!("{service_name}.{NAMESPACE}.svc.cluster.local.").as_str()),
            "{kind}: the sentry is the headless Service"
        );
        assert_eq!(
            config.advertised_host.as_ref().map(ToString::to_string),
            Some(POD_IP.to_string())
        );
        assert_eq!(config.cookie, COOKIE);
        // Peers dial the port the Service names.
        assert_eq!(
            u64::from(config.listen_port),
            port(container, &node_port["targetPort"]),
            "{kind}"
        );
        assert_eq!(
            u64::from(config.listen_port),
            node_port["port"].as_u64().unwrap()
        );

        // The probes ask the management endpoint where the node serves it.
        let management = config
            .management_addr
            .unwrap_or_else(|| panic!("{kind}: no CLOISTER_MANAGEMENT_ADDR"));
        assert!(
            management.ip().is_unspecified(),
            "{kind}: the kubelet probes the pod IP"
        );
        for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/alive")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{kind} {probe}");
            assert_eq!(
                port(container, &get["port"]),
                u64::from(management.port()),
                "{kind} {probe}"
            );
        }

        // The cluster stays Ready through the disruptions the budget allows.
        let replicas = spec["replicas"].as_u64().unwrap();
        let unavailable = pdb["spec"]["maxUnavailable"].as_u64().unwrap();
        assert!(
            replicas - unavailable >= config.consensus as u64,
            "{kind}: {replicas} replicas less {unavailable} fall below consensus {}",
            config.consensus
        );
        assert_eq!(config.expected_size, Some(replicas as usize), "{kind}");

        // The grace period holds the preStop pause and the whole drain.
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        let drain = config.drain_timeout.as_secs_f64();
        assert!(
            grace as f64 >= pause as f64 + drain + 5.0,
            "{kind}: a grace of {grace} s does not hold a {pause} s pause, a {drain} s \
             drain and 5 s to say goodbye and stop"
        );
    }
}
