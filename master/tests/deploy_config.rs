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
    load_with(toml, &|_| None)
}

fn load_with(toml: &str, env: &dyn Fn(&str) -> Option<String>) -> Config {
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
    Config::load(&args, env).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

#[test]
fn kubernetes_config_is_valid_and_runs_no_local_members() {
    // The worker count comes from the environment, which the overlays set
    // from the worker Deployment's replicas (e2e/tests/manifests.rs).
    let env = |k: &str| (k == "COHORT_EXPECT_WORKERS").then(|| "3".to_string());
    let c = load_with(&deploy("k8s/base/cohort.toml"), &env);
    assert_eq!(c.listen.to_string(), "0.0.0.0:7420");
    assert_eq!((c.agent.count, c.worker.count), (0, WorkerCount::Fixed(0)));
    assert_eq!((c.expect.agents, c.expect.workers), (1, 3));
}

#[test]
fn systemd_master_config_example_is_valid() {
    let c = load(&deploy("systemd/cohort.toml.example"));
    assert_eq!((c.expect.agents, c.expect.workers), (1, 2));
    assert!(!c.tokens.is_empty());
}
