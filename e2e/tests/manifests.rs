//! The Kubernetes semantics no engine on this machine reproduces (podman
//! ignores Services, probes, grace periods and StatefulSets), checked on
//! what each overlay of deploy/k8s renders: the Service the members dial
//! publishes the master whenever it serves, whatever must write has a
//! volume, probes ask for something the real master serves, grace periods
//! cover the drains, and the pods pass the "restricted" Pod Security
//! Standard the namespace enforces.

use cohort_e2e::{Master, grpcurl, venv_tool, workspace};
use serde_json::Value;
use std::process::Command;

/// What `kubectl kustomize` renders for `overlay`, as JSON objects. It
/// renders a copy of deploy/k8s with a throwaway token (the real one is
/// git-ignored, and tests run in parallel).
fn render(overlay: &str) -> Vec<Value> {
    let tmp = tempfile::tempdir().expect("dir");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(workspace().join("deploy/k8s"))
        .arg(tmp.path())
        .status()
        .expect("cp");
    assert!(copy.success());
    let dir = tmp.path().join("k8s/overlays").join(overlay);
    std::fs::write(dir.join("token"), "throwaway\n").expect("token");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl kustomize (kubectl is needed)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = venv_tool("python").expect("the test venv's python (PyYAML)");
    let mut to_json = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    to_json
        .stdin
        .take()
        .expect("stdin")
        .write_all(&out.stdout)
        .expect("write");
    let json = to_json.wait_with_output().expect("python output");
    serde_json::from_slice(&json.stdout).expect("json")
}

/// The object of `kind` named `name` (or, for generated ones, `name-HASH`).
fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let named = |d: &Value| {
        d["metadata"]["name"].as_str().is_some_and(|n| {
            n == name
                || n.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
    };
    docs.iter()
        .find(|d| d["kind"] == kind && named(d))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn workloads(docs: &[Value]) -> impl Iterator<Item = &Value> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// Every `key: value` of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v))
}

fn seconds(text: &str) -> u64 {
    text.trim_end_matches('s').parse().expect("whole seconds")
}

/// The overlays with one master.
const OVERLAYS: [&str; 2] = ["dev", "prod"];
/// Every overlay, the failover one (three masters, etcd) too.
const ALL_OVERLAYS: [&str; 3] = ["dev", "prod", "ha"];

#[test]
fn members_reach_the_master_through_a_service_that_publishes_it_while_not_ready() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let master = find(&docs, "StatefulSet", "cohort-master");
        // Never two masters: a StatefulSet of one, not a Deployment.
        assert_eq!(master["spec"]["replicas"], 1, "{overlay}");
        let pod_labels = &master["spec"]["template"]["metadata"]["labels"];
        for w in workloads(&docs).filter(|w| w["metadata"]["name"] != "cohort-master") {
            let c = &w["spec"]["template"]["spec"]["containers"][0];
            let url = env(c, "COHORT_MASTER").expect("COHORT_MASTER");
            let rest = url.strip_prefix("http://").expect("http:// URL");
            let (host, port) = rest.split_once(':').expect("host:port");
            let svc = find(&docs, "Service", host);
            assert_eq!(
                svc["spec"]["publishNotReadyAddresses"], true,
                "{overlay}: Service {host} must publish the master before ClusterReady"
            );
            assert!(
                selects(&svc["spec"]["selector"], pod_labels),
                "{overlay}: Service {host} does not select the master pod"
            );
            let port: u64 = port.parse().expect("port");
            assert!(
                svc["spec"]["ports"]
                    .as_array()
                    .expect("ports")
                    .iter()
                    .any(|p| p["port"] == port),
                "{overlay}: Service {host} has no port {port}"
            );
        }
    }
}

#[test]
fn whatever_writes_has_a_volume_and_grace_periods_cover_the_drains() {
    for overlay in ALL_OVERLAYS {
        let docs = render(overlay);
        let config = find(&docs, "ConfigMap", "cohort-config")["data"]["cohort.toml"]
            .as_str()
            .expect("cohort.toml")
            .to_string();
        let runs_children = |section: &str| {
            let after = config.split(&format!("[{section}]")).nth(1).unwrap_or("");
            !after
                .lines()
                .take_while(|l| !l.starts_with('['))
                .any(|l| l.replace(' ', "") == "count=0")
        };
        let drain = config
            .lines()
            .find_map(|l| l.strip_prefix("drain_timeout = "))
            .map_or(30, |v| seconds(v.trim_matches('"')));
        for w in workloads(&docs) {
            let spec = &w["spec"]["template"]["spec"];
            let name = w["metadata"]["name"].as_str().expect("name");
            let c = &spec["containers"][0];
            // The master writes its children's socket directory in /tmp,
            // and only when it runs children.
            if name == "cohort-master"
                && (runs_children("agent") || runs_children("worker"))
                && c["securityContext"]["readOnlyRootFilesystem"] == true
            {
                let tmp = c["volumeMounts"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["mountPath"] == "/tmp"));
                assert!(tmp, "{overlay}: the master runs children: it needs /tmp");
            }
            let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
                .as_array()
                .filter(|cmd| cmd.first().is_some_and(|p| p == "sleep"))
                .and_then(|cmd| cmd.get(1)?.as_str().map(seconds))
                .unwrap_or(0);
            let needed = match name {
                // SIGTERM after preStop, then the worker's drain (30 s).
                "cohort-worker" => pre_stop + drain.max(30),
                // Ends the member streams: a few seconds.
                _ => 10,
            };
            assert!(
                grace > needed,
                "{overlay}: {name} grace {grace} s does not cover {needed} s"
            );
        }
        // Node drains and rollouts take workers one at a time.
        let pdb = find(&docs, "PodDisruptionBudget", "cohort-worker");
        let worker_labels =
            &find(&docs, "Deployment", "cohort-worker")["spec"]["template"]["metadata"]["labels"];
        assert!(selects(
            &pdb["spec"]["selector"]["matchLabels"],
            worker_labels
        ));
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{overlay}");
        let workers = find(&docs, "Deployment", "cohort-worker")["spec"]["replicas"].clone();
        let master = &find(&docs, "StatefulSet", "cohort-master")["spec"]["template"]["spec"];
        let expected = env(&master["containers"][0], "COHORT_EXPECT_WORKERS").expect("expect");
        assert_eq!(
            expected,
            workers.to_string(),
            "{overlay}: the master expects another worker count than runs"
        );
    }
}

#[test]
fn pods_meet_the_restricted_standard_and_keep_tini_as_pid_1() {
    for overlay in ALL_OVERLAYS {
        let docs = render(overlay);
        let ns = find(&docs, "Namespace", "cohort");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        for w in workloads(&docs) {
            let name = &w["metadata"]["name"];
            let spec = &w["spec"]["template"]["spec"];
            assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(
                spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            for c in spec["containers"].as_array().expect("containers") {
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
                assert!(c["command"].is_null(), "{name}: `command` replaces tini");
                let image = c["image"].as_str().expect("image");
                assert!(image.contains('/'), "{name}: image {image} has no registry");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_ask_for_what_the_master_serves_before_any_member() {
    let docs = render("dev");
    let master = &find(&docs, "StatefulSet", "cohort-master")["spec"]["template"]["spec"];
    let c = &master["containers"][0];
    let Some(grpcurl_bin) = venv_tool("grpcurl") else {
        return;
    };
    // The real master, as configured there: members expected, none joined.
    let running = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--expect-workers",
        "3",
    ]);
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &c[probe]["grpc"];
        assert_eq!(p["port"], 7420, "{probe}");
        let service = p["service"].as_str().unwrap_or("");
        let request = format!("{{\"service\":\"{service}\"}}");
        let out = grpcurl(
            &grpcurl_bin,
            &[
                "-plaintext",
                "-d",
                &request,
                &running.addr,
                "grpc.health.v1.Health/Check",
            ],
        );
        assert!(
            out.contains("\"SERVING\""),
            "{probe} asks for {service:?}, which is {out} before the members come"
        );
    }
    // The workers' HTTP probe names a port the container has.
    let worker =
        &find(&docs, "Deployment", "cohort-worker")["spec"]["template"]["spec"]["containers"][0];
    let port = &worker["readinessProbe"]["httpGet"]["port"];
    let ports = worker["ports"].as_array().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == *port || p["containerPort"] == *port),
        "the worker probe's port {port} is not the container's"
    );
}

#[test]
fn the_service_monitor_scrapes_a_port_the_master_serves_metrics_on() {
    let python = venv_tool("python").expect("the test venv's python (PyYAML)");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(workspace().join("deploy/monitoring/servicemonitor.yaml"))
        .output()
        .expect("python");
    let monitor: Value = serde_json::from_slice(&out.stdout).expect("servicemonitor.yaml");
    for overlay in OVERLAYS {
        let docs = render(overlay);
        // The Service it selects is the master's, with the port it names…
        let svc = docs
            .iter()
            .find(|d| {
                d["kind"] == "Service"
                    && selects(
                        &monitor["spec"]["selector"]["matchLabels"],
                        &d["metadata"]["labels"],
                    )
            })
            .unwrap_or_else(|| panic!("{overlay}: the ServiceMonitor selects no Service"));
        let port_name = &monitor["spec"]["endpoints"][0]["port"];
        let port = svc["spec"]["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == *port_name))
            .unwrap_or_else(|| panic!("{overlay}: Service has no port {port_name}"));
        // …whose target is the master container's metrics port, on which
        // its config listens, and the pod annotations say the same.
        let master = find(&docs, "StatefulSet", "cohort-master");
        let container = &master["spec"]["template"]["spec"]["containers"][0];
        let target = container["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == port["targetPort"]))
            .unwrap_or_else(|| panic!("{overlay}: no container port {}", port["targetPort"]));
        let number = target["containerPort"].as_u64().expect("containerPort");
        let annotations = &master["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/port"], number.to_string());
        let config = find(&docs, "ConfigMap", "cohort-config");
        let toml = config["data"]["cohort.toml"].as_str().expect("cohort.toml");
        assert!(
            toml.contains(&format!(":{number}\"")),
            "{overlay}: [metrics] listen is not on {number}:\n{toml}"
        );
    }
}

#[test]
fn the_prometheus_rule_for_the_operator_has_the_alerts_prometheus_loads() {
    let python = venv_tool("python").expect("the test venv's python (PyYAML)");
    let load = |file: &str| -> Value {
        let out = Command::new(&python)
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            ])
            .arg(workspace().join("deploy/monitoring").join(file))
            .output()
            .expect("python");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let rule = load("prometheusrule.yaml");
    let alerts = load("alerts.yml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert!(alerts["groups"].as_array().is_some_and(|g| !g.is_empty()));
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "prometheusrule.yaml's groups differ from alerts.yml's: copy them over"
    );
}

/// What podman's kube play does not do for the failover overlay (it runs
/// Deployments, has no Services, PodDisruptionBudgets or scheduling):
/// three masters at once, each reachable under the name members list and
/// the name it advertises, probes that keep standbys alive but route to
/// the leader only, spread over nodes, drained one at a time; and an etcd
/// of three that finds itself and that the masters name.
#[test]
fn the_ha_overlay_runs_three_masters_members_can_each_reach_and_an_etcd_of_three() {
    let docs = render("ha");
    let sts = find(&docs, "StatefulSet", "cohort-master");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(
        spec["podManagementPolicy"], "Parallel",
        "all three start at once"
    );
    let labels = &spec["template"]["metadata"]["labels"];
    let peers_name = spec["serviceName"].as_str().expect("serviceName");
    let peers = find(&docs, "Service", peers_name);
    assert_eq!(
        peers["spec"]["clusterIP"], "None",
        "per-pod DNS names need a headless Service"
    );
    assert_eq!(
        peers["spec"]["publishNotReadyAddresses"], true,
        "standbys are never ready"
    );
    assert!(selects(&peers["spec"]["selector"], labels));
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        env(c, "COHORT_HA_ADVERTISE"),
        Some(format!("{{hostname}}.{peers_name}:7420").as_str()),
        "a StatefulSet pod's hostname is its name, resolvable under the headless Service"
    );
    assert_eq!(c["livenessProbe"]["grpc"]["service"], "liveness");
    assert_eq!(
        c["readinessProbe"]["grpc"]["service"],
        "cohort.v1.Membership"
    );
    // The Service operators dial reaches the ready master: the leader.
    let front = find(&docs, "Service", "cohort-master");
    assert_eq!(front["spec"]["publishNotReadyAddresses"], false);
    assert!(selects(&front["spec"]["selector"], labels));
    let term = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert!(selects(&term["labelSelector"]["matchLabels"], labels));
    let pdb = find(&docs, "PodDisruptionBudget", "cohort-master");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    // Members list every master pod by the name Kubernetes gives it.
    let sts_name = sts["metadata"]["name"].as_str().expect("name");
    let listed: Vec<String> = (0..3)
        .map(|i| format!("http://{sts_name}-{i}.{peers_name}:7420"))
        .collect();
    for w in workloads(&docs).filter(|w| w["kind"] == "Deployment") {
        let member = &w["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            env(member, "COHORT_MASTER"),
            Some(listed.join(",").as_str()),
            "{}",
            w["metadata"]["name"]
        );
    }
    // etcd: three that list each other, under the names the masters use.
    let etcd = find(&docs, "StatefulSet", "etcd");
    let replicas = etcd["spec"]["replicas"].as_u64().expect("replicas");
    assert_eq!(replicas, 3, "a quorum that survives one lost pod");
    let etcd_svc_name = etcd["spec"]["serviceName"].as_str().expect("serviceName");
    let etcd_svc = find(&docs, "Service", etcd_svc_name);
    assert_eq!(etcd_svc["spec"]["clusterIP"], "None");
    assert_eq!(etcd_svc["spec"]["publishNotReadyAddresses"], true);
    let urls: Vec<String> = (0..replicas)
        .map(|i| format!("http://etcd-{i}.{etcd_svc_name}:2379"))
        .collect();
    assert_eq!(env(c, "COHORT_HA_ETCD"), Some(urls.join(",").as_str()));
    let e = &etcd["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = e["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("etcd --{name}"))
    };
    let peers: Vec<String> = (0..replicas)
        .map(|i| format!("etcd-{i}=http://etcd-{i}.{etcd_svc_name}:2380"))
        .collect();
    assert_eq!(flag("initial-cluster"), peers.join(","));
    assert_eq!(flag("name"), "$(POD_NAME)");
    assert_eq!(
        flag("initial-advertise-peer-urls"),
        format!("http://$(POD_NAME).{etcd_svc_name}:2380")
    );
    let pod_name = e["env"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "POD_NAME"))
        .expect("POD_NAME");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let data = flag("data-dir");
    let mounted = e["volumeMounts"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["mountPath"] == data));
    assert!(mounted, "etcd writes {data}: it needs a volume");
    // Only the masters (and etcd's peers) reach etcd.
    let np = find(&docs, "NetworkPolicy", "etcd");
    let etcd_labels = &etcd["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &np["spec"]["podSelector"]["matchLabels"],
        etcd_labels
    ));
    let from_masters = np["spec"]["ingress"]
        .as_array()
        .expect("ingress")
        .iter()
        .any(|r| {
            r["from"][0]["podSelector"]["matchLabels"]
                .as_object()
                .is_some_and(|m| m.iter().all(|(k, v)| labels[k] == *v))
                && r["ports"][0]["port"] == 2379
        });
    assert!(from_masters, "the masters must reach etcd's client port");
}
