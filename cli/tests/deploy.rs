//! The deployment files in `deploy/` are checked without a Docker engine or a cluster: they
//! parse, every container command line parses as a `switchyard` command, and the
//! configuration they carry passes `switchyard --check-config`.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

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
    let mut checked = 0;
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
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} switchyard services found");
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
    let settings =
        switchyard_runtime::Settings::from_toml(&std::fs::read_to_string(&config).unwrap())
            .unwrap();
    settings.validate().unwrap();
    let mut containers = 0;
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        if kind == "Deployment" || kind == "Job" {
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap()
            {
                check(&config, &strings(&c["args"]), &[], name);
                containers += 1;
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
    assert_eq!(containers, 5, "migrate, dispatcher and three workers");
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy("k8s/nats-values.yaml")).unwrap())
            .unwrap();
    assert_eq!(values["config"]["cluster"]["replicas"].as_u64(), Some(3));
    assert_eq!(
        values["config"]["jetstream"]["enabled"].as_bool(),
        Some(true)
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
