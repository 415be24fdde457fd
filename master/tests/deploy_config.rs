//! The configuration files shipped in `deploy/` parse with the master's own
//! strict parser, with the values their comments promise.

use cohort_master::config::{Config, WorkerCount};
use std::path::Path;

fn deploy(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn load(toml: &str) -> Config {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("cohort.toml");
    let token = dir.path().join("token");
    std::fs::write(&cfg, toml).expect("write");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").expect("write");
    let args: Vec<String> = [
        "--config",
        cfg.to_str().expect("path"),
        "--token-file",
        token.to_str().expect("path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Config::load(&args, &|_| None).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

#[test]
fn kubernetes_configmap_toml_is_valid() {
    let yaml = deploy("k8s/configmap.yaml");
    let body: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("cohort.toml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let c = load(&body);
    assert_eq!(c.listen.to_string(), "0.0.0.0:7420");
    assert_eq!((c.agent.count, c.worker.count), (0, WorkerCount::Fixed(0)));
    assert_eq!((c.expect.agents, c.expect.workers), (1, 3));
    let workers = deploy("k8s/worker-deployment.yaml");
    assert!(
        workers.contains("replicas: 3"),
        "expect.workers matches the worker Deployment"
    );
}

#[test]
fn systemd_master_config_example_is_valid() {
    let c = load(&deploy("systemd/cohort.toml.example"));
    assert_eq!((c.expect.agents, c.expect.workers), (1, 2));
    assert!(!c.tokens.is_empty());
}
