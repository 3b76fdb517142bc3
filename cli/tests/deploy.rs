//! The deployment files in `deploy/` are checked without a Docker engine or a cluster: they
//! parse, every container command line parses as a `switchyard` command, and the
//! configuration they carry passes `switchyard --check-config`.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

mod common;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join(file)
}

/// Runs `switchyard --config CONFIG --check-config ARGS…` and asserts it succeeds.
fn check(config: &Path, args: &[String], env: &[(String, String)], what: &str) {
    let mut all = vec!["--check-config"];
    all.extend(args.iter().map(String::as_str));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = common::switchyard(config, &all, &env).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: `switchyard {}` fails: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of `--NAME VALUE` or `--NAME=VALUE` in a command line.
fn flag(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let eq = format!("{long}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == long {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_owned)
        }
    })
}

/// The address `switchyard api ARGS…` serves `/v1` and `/healthz` on: `--listen`, else
/// `[api] listen` of the configuration.
fn api_listen(args: &[String], settings: &switchyard_runtime::Settings) -> SocketAddr {
    flag(args, "listen").map_or(settings.api.listen, |a| a.parse().unwrap())
}

fn settings_of(config: &Path) -> switchyard_runtime::Settings {
    let settings =
        switchyard_runtime::Settings::from_toml(&std::fs::read_to_string(config).unwrap()).unwrap();
    settings.validate().unwrap();
    settings
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_commands_and_config_are_valid() {
    let text = std::fs::read_to_string(deploy("compose.yaml")).unwrap();
    let mut doc: Value = serde_yaml::from_str(&text).unwrap();
    doc.apply_merge().unwrap();
    let config = deploy("switchyard.compose.toml");
    let services = doc["services"].as_mapping().unwrap();
    let mut checked = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if svc["image"].as_str() != Some("switchyard:latest") {
            continue;
        }
        let args = strings(&svc["command"]);
        assert!(!args.is_empty(), "{name} has no command");
        let env: Vec<(String, String)> = svc["environment"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap().to_owned(),
                            v.as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        check(&config, &args, &env, name);
        checked.push(name.to_owned());
    }
    assert!(
        checked.len() >= 7,
        "only {checked:?} switchyard services found"
    );
    assert!(
        checked.iter().any(|n| n == "api"),
        "no api service: {checked:?}"
    );
    // The Batch API listens beyond the container's loopback, publishes that port and its
    // healthcheck asks /healthz on it.
    let api = &doc["services"]["api"];
    let args = strings(&api["command"]);
    assert_eq!(args.first().map(String::as_str), Some("api"), "{args:?}");
    let listen = api_listen(&args, &settings_of(&config));
    assert!(
        listen.ip().is_unspecified(),
        "the api listens on {listen}: other containers cannot reach it"
    );
    let published = strings(&api["ports"]);
    assert!(
        published
            .iter()
            .any(|p| p.rsplit(':').next() == Some(listen.port().to_string().as_str())),
        "the api's port {} is not published: {published:?}",
        listen.port()
    );
    let health = strings(&api["healthcheck"]["test"]).join(" ");
    assert!(
        health.contains("/healthz") && health.contains(&listen.port().to_string()),
        "the api's healthcheck does not ask /healthz on port {}: {health:?}",
        listen.port()
    );
    if let Some(metrics) = flag(&args, "metrics-listen") {
        let metrics: SocketAddr = metrics.parse().unwrap();
        assert!(metrics.ip().is_unspecified(), "api metrics on {metrics}");
        assert_ne!(metrics.port(), listen.port());
    }
    // The NATS nodes form one cluster.
    for n in 1..=3 {
        let cmd = strings(&doc["services"][format!("nats-{n}").as_str()]["command"]).join(" ");
        assert!(
            cmd.contains("-js") && cmd.contains("--cluster_name switchyard"),
            "nats-{n}: {cmd}"
        );
    }
}

#[test]
fn kubernetes_manifests_are_valid() {
    let text = std::fs::read_to_string(deploy("k8s/switchyard.yaml")).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    std::fs::write(
        &config,
        config_map["data"]["switchyard.toml"].as_str().unwrap(),
    )
    .unwrap();
    let settings = settings_of(&config);
    let mut containers = 0;
    let mut api_deployments = 0;
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        if kind == "Deployment" || kind == "Job" {
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap()
            {
                let args = strings(&c["args"]);
                check(&config, &args, &[], name);
                containers += 1;
                if kind == "Deployment" && args.first().map(String::as_str) == Some("api") {
                    check_api_deployment(doc, c, &args, &settings, &docs);
                    api_deployments += 1;
                }
            }
        }
        if kind == "ScaledObject" {
            let meta = &doc["spec"]["triggers"][0]["metadata"];
            let consumer = meta["consumer"].as_str().unwrap();
            let tier = consumer.strip_prefix("worker_").unwrap();
            assert!(
                settings.tiers.contains_key(tier),
                "{name} scales on unknown tier {tier}"
            );
            assert_eq!(
                meta["stream"].as_str().unwrap(),
                settings.topology().work_stream()
            );
            assert_eq!(consumer, settings.topology().worker_consumer(tier));
        }
    }
    assert_eq!(containers, 6, "migrate, dispatcher, api and three workers");
    assert_eq!(api_deployments, 1, "one Deployment runs `switchyard api`");
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy("k8s/nats-values.yaml")).unwrap())
            .unwrap();
    assert_eq!(values["config"]["cluster"]["replicas"].as_u64(), Some(3));
    assert_eq!(
        values["config"]["jetstream"]["enabled"].as_bool(),
        Some(true)
    );
}

/// The number of the container port `port` names (a number or a port's name).
fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().unwrap();
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// The API's Deployment: replicas, probes on /healthz where the command listens (HTTPS when
/// the configuration names a certificate, mounted from a Secret), its metrics port, a
/// Service in front of it.
fn check_api_deployment(
    doc: &Value,
    c: &Value,
    args: &[String],
    settings: &switchyard_runtime::Settings,
    docs: &[Value],
) {
    let name = doc["metadata"]["name"].as_str().unwrap();
    assert!(
        doc["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "{name}: one replica"
    );
    let listen = api_listen(args, settings);
    assert!(
        listen.ip().is_unspecified(),
        "{name} listens on {listen}: the kubelet and the Service cannot reach it"
    );
    let tls = settings.api.tls_cert.is_some();
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some("/healthz"), "{name}: {probe}");
        assert_eq!(
            container_port(c, &get["port"]),
            u64::from(listen.port()),
            "{name}: {probe} asks another port than {listen}"
        );
        let scheme = get["scheme"].as_str().unwrap_or("HTTP");
        assert_eq!(
            scheme,
            if tls { "HTTPS" } else { "HTTP" },
            "{name}: {probe} (tls_cert set: {tls})"
        );
    }
    // The certificate and key the configuration names are in a mounted Secret.
    let pod = &doc["spec"]["template"]["spec"];
    for file in [&settings.api.tls_cert, &settings.api.tls_key]
        .into_iter()
        .flatten()
    {
        let mount = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| Path::new(file).starts_with(m["mountPath"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {file}"));
        let volume = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert!(
            volume["secret"]["secretName"].as_str().is_some(),
            "{name}: {file} is not from a Secret"
        );
    }
    // Metrics: the port the command serves them on is a container port, and the one the
    // pods are scraped on.
    let metrics: SocketAddr = flag(args, "metrics-listen")
        .map(|a| a.parse().unwrap())
        .or(settings.metrics.listen)
        .unwrap_or_else(|| panic!("{name} serves no metrics"));
    let port = u64::from(metrics.port());
    assert_eq!(container_port(c, &Value::from("metrics")), port, "{name}");
    assert_eq!(
        doc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str()),
        "{name}"
    );
    // A Service selects the pods and reaches the API's port.
    let labels = &doc["spec"]["template"]["metadata"]["labels"];
    let service = docs
        .iter()
        .find(|d| {
            d["kind"] == "Service"
                && d["spec"]["selector"]
                    .as_mapping()
                    .is_some_and(|s| s.iter().all(|(k, v)| labels[k.as_str().unwrap()] == *v))
        })
        .unwrap_or_else(|| panic!("no Service selects {name}"));
    assert!(
        service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| container_port(c, &p["targetPort"]) == u64::from(listen.port())),
        "the Service of {name} does not reach port {}",
        listen.port()
    );
}

#[test]
fn the_dockerfile_builds_the_one_binary() {
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(text.contains("cargo build --release --locked --bin switchyard"));
    assert!(text.contains("ENTRYPOINT [\"switchyard\"]"));
    assert_eq!(text.lines().filter(|l| l.starts_with("FROM ")).count(), 2);
}

use serde::Deserialize as _;
