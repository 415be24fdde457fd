//! The configuration's sources, precedence and error messages.

use super::*;
use std::collections::HashMap;
use std::time::Duration;

/// The configuration from flags and environment; what it was loaded from
/// (`args`, kept for a reload) is checked once, then left out so that
/// configurations compare by what they say.
fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut c = Config::load(&args, &move |k| env.get(k).cloned())?;
    assert_eq!(c.args, args);
    c.args.clear();
    Ok(c)
}

fn write(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), text).expect("write");
    f
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = load(&[], &[]).expect("defaults");
    assert_eq!(c.listen.to_string(), "127.0.0.1:7420");
    assert_eq!(c.agent.count, 1);
    assert_eq!(c.worker.count, WorkerCount::Auto);
    assert_eq!(c.health.suspect_after, Duration::from_secs(3));
    assert_eq!(c.restart.backoff_initial, Duration::from_millis(200));
}

#[test]
fn help_shows_each_default_from_the_one_place_it_is_written() {
    let help = Layer::command().render_help().to_string();
    let mut shown = 0;
    for arg in Layer::command().get_arguments() {
        let (Some(long), Some(text)) = (arg.get_long(), arg.get_help()) else {
            continue;
        };
        let text = text.to_string();
        let Some(default) = text
            .rsplit_once("[default: ")
            .and_then(|(_, d)| d.strip_suffix(']'))
        else {
            continue;
        };
        assert!(help.contains(&format!("[default: {default}]")), "--{long}");
        // Given as a flag, the default shown changes nothing.
        let flag = format!("--{long}={default}");
        let c = load(&[flag.as_str()], &[]).unwrap_or_else(|e| panic!("{flag}: {e}"));
        assert_eq!(c, Config::default(), "{flag}");
        shown += 1;
    }
    assert!(shown >= 28, "only {shown} flags show a default");
    assert!(
        help.contains("How often members heartbeat [default: 1s]"),
        "{help}"
    );
}

#[test]
fn flags_win_over_env_which_wins_over_file() {
    let f = write("listen = \"127.0.0.1:1\"\n[expect]\nworkers = 1\n[worker]\ncount = 3\n");
    let path = f.path().to_str().expect("utf-8 path");
    let c = load(&["--config", path], &[]).expect("file");
    assert_eq!(c.listen.port(), 1);
    assert_eq!(c.worker.count, WorkerCount::Fixed(3));
    let c = load(&["--config", path], &[("COHORT_LISTEN", "127.0.0.1:2")]).expect("env");
    assert_eq!(c.listen.port(), 2);
    let c = load(
        &["--config", path, "--listen=127.0.0.1:3"],
        &[("COHORT_LISTEN", "127.0.0.1:2")],
    )
    .expect("flag");
    assert_eq!(c.listen.port(), 3);
    assert_eq!(c.expect.workers, 1);
}

#[test]
fn unknown_keys_and_flags_are_named() {
    let f = write("[health]\nheartbeat = \"1s\"\n");
    let err = load(&["--config", f.path().to_str().expect("path")], &[])
        .expect_err("unknown key")
        .to_string();
    assert!(err.contains("heartbeat"), "{err}");
    let err = load(&["--bogus"], &[])
        .expect_err("unknown flag")
        .to_string();
    assert!(err.contains("--bogus"), "{err}");
}

#[test]
fn bad_values_name_their_source() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--listen", "nope"], &[], "--listen"),
        (&[], &[("COHORT_DEAD_AFTER", "10")], "COHORT_DEAD_AFTER"),
        (&["--agent-count", "2"], &[], "0 or 1"),
        (&["--suspect-after", "20s"], &[], "health.dead_after"),
        (&["--worker-count", "many"], &[], "auto"),
        (&["--listen", "0.0.0.0:7420"], &[], "--insecure"),
        (&["--overflow", "shed"], &[], "\"block\" or \"drop\""),
        (&[], &[("COHORT_OVERFLOW", "Drop")], "COHORT_OVERFLOW"),
    ];
    let f = write("[auth]\ntoken_file = \"/nonexistent/cohort/token\"\n");
    let err = load(&["--config", f.path().to_str().expect("path")], &[])
        .expect_err("missing token file")
        .to_string();
    assert!(err.contains("/nonexistent/cohort/token"), "{err}");
    let err = load(&[], &[("COHORT_TOKEN", "short")])
        .expect_err("short")
        .to_string();
    assert!(err.contains("COHORT_TOKEN") && err.contains("16"), "{err}");
    for (args, env, needle) in cases {
        let err = load(args, env).expect_err(needle).to_string();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(load(&["--listen", "0.0.0.0:0", "--insecure"], &[]).is_ok());
    let c = load(&["--overflow", "drop"], &[]).expect("drop mode");
    assert_eq!(c.messaging.overflow, Overflow::Drop);
    let tokens = write("0123456789abcdef0123\n");
    let path = tokens.path().to_str().expect("path");
    let c = load(&["--listen", "0.0.0.0:0", "--token-file", path], &[]).expect("token allows it");
    assert_eq!(c.tokens.len(), 1);
    let c = load(
        &["--token-file", path],
        &[("COHORT_TOKEN", "fedcba9876543210fedc")],
    )
    .expect("both");
    assert_eq!(c.tokens.len(), 2);
}

#[test]
fn every_valued_flag_has_an_environment_twin() {
    let twins: Vec<String> = layer::env_twins().into_iter().map(|(v, _)| v).collect();
    for var in [
        "COHORT_CONFIG",
        "COHORT_LISTEN",
        "COHORT_AGENT_COUNT",
        "COHORT_WORKER_COUNT",
        "COHORT_EXPECT_WORKERS",
        "COHORT_DEAD_AFTER",
        "COHORT_START_TIMEOUT",
        "COHORT_QUEUE_MESSAGES",
        "COHORT_OVERFLOW",
        "COHORT_MAX_CONNECTIONS",
        "COHORT_TOKEN_FILE",
        "COHORT_LISTENER",
    ] {
        assert!(twins.iter().any(|t| t == var), "{var} in {twins:?}");
    }
    assert!(!twins.iter().any(|t| t.starts_with("COHORT_TLS_")));
    let c = load(
        &[],
        &[
            ("COHORT_START_TIMEOUT", "2s"),
            ("COHORT_QUEUE_MESSAGES", "7"),
        ],
    )
    .expect("env");
    assert_eq!(c.restart.start_timeout, Duration::from_secs(2));
    assert_eq!(c.messaging.queue_messages, 7);
}

#[test]
fn the_readme_configuration_is_the_default_one() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Configuration")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a toml block under ## Configuration");
    let f = write(section);
    let c = load(&["--config", f.path().to_str().expect("path")], &[]).expect("parses");
    assert_eq!(c, Config::default());
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("s").is_err());
}

#[test]
fn ha_runs_no_local_members_and_names_what_it_needs() {
    let etcd = "--ha-etcd=http://127.0.0.1:2379,http://127.0.0.2:2379";
    let c = load(&[etcd], &[]).expect("ha");
    let ha = c.ha.as_ref().expect("on");
    assert_eq!(ha.etcd.len(), 2);
    assert_eq!(
        (ha.prefix.as_str(), ha.lease_ttl),
        ("cohort", Duration::from_secs(2))
    );
    assert_eq!((c.agent.count, c.worker.count), (0, WorkerCount::Fixed(0)));
    assert_eq!(ha.advertised(c.listen), "127.0.0.1:7420");
    // Explicit counts of 0 are fine; above 0 are refused, naming the key.
    load(&[etcd, "--agent-count=0", "--worker-count=0"], &[]).expect("zero");
    let err = load(&[etcd, "--worker-count=2"], &[]).expect_err("children");
    assert!(
        err.to_string()
            .starts_with("worker.count: must be 0 with [ha]"),
        "{err}"
    );
    let f = write("[agent]\ncount = 1\n[ha]\netcd = [\"http://e:2379\"]\n");
    let err = load(&["--config", f.path().to_str().expect("path")], &[]).expect_err("agent");
    assert!(
        err.to_string()
            .starts_with("agent.count: must be 0 with [ha]"),
        "{err}"
    );
    let err = load(&[etcd, "--ha-lease-ttl=1500ms"], &[]).expect_err("ttl");
    assert!(
        err.to_string()
            .starts_with("ha.lease_ttl: must be whole seconds"),
        "{err}"
    );
    let err = load(&[etcd, "--listen=0.0.0.0:7420", "--insecure"], &[]).expect_err("advertise");
    assert!(
        err.to_string().starts_with("ha.advertise: is required"),
        "{err}"
    );
    let c = load(
        &[
            etcd,
            "--listen=0.0.0.0:7420",
            "--insecure",
            "--ha-advertise=m1:7420",
        ],
        &[("COHORT_HA_PREFIX", "shop")],
    )
    .expect("advertised");
    let ha = c.ha.expect("on");
    assert_eq!(
        (ha.advertised(c.listen), ha.prefix.as_str()),
        ("m1:7420".into(), "shop")
    );
    let c = load(&[etcd, "--ha-advertise={hostname}.peers:7420"], &[]).expect("template");
    let shown = c.ha.expect("on").advertised(c.listen);
    assert_eq!(shown, format!("{}.peers:7420", cohort_process::hostname()));
    let err = load(&["--ha-etcd=127.0.0.1:2379"], &[]).expect_err("url");
    assert!(err.to_string().starts_with("ha.etcd: "), "{err}");
}

#[test]
fn members_expected_of_an_app_come_from_the_file_the_environment_or_flags() {
    let f = write("[expect]\napps = { web = 2, queue = 1 }\n");
    let path = f.path().to_str().expect("path");
    let c = load(&["--config", path], &[]).expect("file");
    let of = |c: &Config| -> Vec<(String, u32)> {
        c.expect
            .apps
            .iter()
            .map(|a| (a.app.clone(), a.count))
            .collect()
    };
    assert_eq!(of(&c), [("queue".into(), 1), ("web".into(), 2)]);
    // A flag adds to the file's, or changes one of them.
    let c = load(
        &[
            "--config",
            path,
            "--expect-app",
            "web=3",
            "--expect-app",
            "api=1",
        ],
        &[],
    )
    .expect("flags");
    assert_eq!(
        of(&c),
        [("api".into(), 1), ("queue".into(), 1), ("web".into(), 3)]
    );
    let c = load(&[], &[("COHORT_EXPECT_APP", "web=4")]).expect("env");
    assert_eq!(of(&c), [("web".into(), 4)]);
    let err = load(&["--expect-app", "web"], &[]).expect_err("no count");
    assert!(err.to_string().contains("APP=N"), "{err}");
    let f = write("[expect]\napps = { \"has space\" = 1 }\n");
    let err = load(&["--config", f.path().to_str().expect("path")], &[]).expect_err("bad app");
    assert!(err.to_string().contains("letters, digits"), "{err}");
}

#[test]
fn apps_read_their_env_file_and_the_sections_run_nothing_unless_asked() {
    let dir = tempfile::tempdir().expect("dir");
    let env_file = dir.path().join("web.env");
    std::fs::write(&env_file, "# comment\nPORT=80\nMODE=\"from file\"\n").expect("write");
    let text = format!(
        r#"
[[app]]
name = "web"
command = ["node", "server.js"]
join = "wrap"
count = 4
env = {{ MODE = "from table" }}
env_file = "{}"
listeners = ["http"]
max_rss = "512MiB"
depends_on = ["migrate"]
health = {{ http = "/healthz", interval = "2s" }}

[[app]]
name = "migrate"
command = ["sh", "-c", "exit 0"]
restart = "never"
"#,
        env_file.display()
    );
    let f = write(&text);
    let c = load(&["--config", f.path().to_str().expect("path")], &[]).expect("apps");
    assert_eq!((c.agent.count, c.worker.count), (0, WorkerCount::Fixed(0)));
    let web = &c.apps[0];
    assert_eq!(
        (web.name.as_str(), web.join, web.count),
        ("web", Join::Wrap, WorkerCount::Fixed(4))
    );
    // The file's lines, then the table's: the table wins when set later.
    let env: Vec<(&str, &str)> = web
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("PORT", "80"),
            ("MODE", "from file"),
            ("MODE", "from table")
        ]
    );
    assert_eq!(web.max_rss, Some(512 << 20));
    let health = web.health.as_ref().expect("health");
    assert_eq!(health.probe, Probe::Http("/healthz".into()));
    assert_eq!(
        (health.interval, health.timeout, health.failures),
        (Duration::from_secs(2), Duration::from_secs(1), 3)
    );
    let migrate = &c.apps[1];
    assert_eq!(
        (migrate.restart, migrate.count),
        (RestartMode::Never, WorkerCount::Fixed(1))
    );
    // An explicit [worker] count still runs the section's app beside them.
    let c = load(
        &[
            "--config",
            f.path().to_str().expect("path"),
            "--worker-count=2",
        ],
        &[],
    )
    .expect("worker");
    assert_eq!(c.worker.count, WorkerCount::Fixed(2));
}

#[test]
fn a_bad_set_of_apps_is_refused_naming_the_app() {
    let app = |name: &str, extra: &str| {
        format!("[[app]]\nname = \"{name}\"\ncommand = [\"x\"]\n{extra}\n")
    };
    let cases = [
        (
            app("web", "") + &app("web", ""),
            "app web: name: is the name of another [[app]]",
        ),
        (
            app("worker", ""),
            "app worker: name: is the name of the [agent] or [worker] section's app",
        ),
        (
            app("web", "depends_on = [\"db\"]"),
            "app web: depends_on: \"db\" is no app",
        ),
        (
            app("a", "depends_on = [\"b\"]") + &app("b", "depends_on = [\"a\"]"),
            "app a: depends_on: is a cycle: a → b → a",
        ),
        (
            app("web", "depends_on = [\"web\"]"),
            "is a cycle: web → web",
        ),
        (
            app("web", "listeners = [\"grpc\"]"),
            "app web: listeners: \"grpc\" is no [[listener]] (listeners: http)",
        ),
        (
            app("web", "env_file = \"/nonexistent/web.env\""),
            "app web: env_file: cannot read /nonexistent/web.env",
        ),
        (
            app("web", "restart = \"sometimes\""),
            "unknown variant `sometimes`",
        ),
        (app("web", "port = 80"), "unknown field `port`"),
        (
            app("web", "count = 100000"),
            "app web: count: must be at most 4096",
        ),
        (
            app("web", "health = { http = \"healthz\" }"),
            "app web: health.http: \"healthz\": give a path such as /healthz",
        ),
        (
            app("web", "health = { http = \"/h\", exec = [\"true\"] }"),
            "app web: health: give either http",
        ),
        (
            app("web", "health = { exec = [\"true\"], failures = 0 }"),
            "failures at least 1",
        ),
        (
            app("web", "health = { exec = [\"true\"], interval = \"1ms\" }"),
            "interval must be at least 10ms",
        ),
        (app("a b", ""), "app.name"),
        (
            app("web", "[ha]\netcd = [\"http://e:2379\"]"),
            "app: [[app]] tables cannot go with [ha]",
        ),
    ];
    for (text, want) in cases {
        let f = write(&text);
        let err = load(&["--config", f.path().to_str().expect("path")], &[]).expect_err(&text);
        assert!(err.to_string().contains(want), "{text}\n→ {err}");
    }
}

#[test]
fn the_readme_apps_example_is_a_valid_configuration() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Apps: several programs from one file")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a toml block under ## Apps");
    let env_file = write("A=1\n");
    let text = section.replace("/etc/web.env", env_file.path().to_str().expect("path"));
    let f = write(&text);
    let c =
        load(&["--config", f.path().to_str().expect("path")], &[]).expect("the README's example");
    let names: Vec<&str> = c.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["migrate", "web", "api", "queue"]);
}
