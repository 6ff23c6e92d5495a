//! The deployment files: every stockflow command in `docker-compose.yml` is accepted by the
//! binary (`--check-config`, with the service's environment), the services agree with each
//! other (bucket, topic, brokers, feeds, metrics ports), and `--check-config` itself rejects
//! what a real start would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The compose file with its anchors merged.
fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("docker-compose.yml");
    let mut value: Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
    value.apply_merge().expect("merge keys");
    value
}

/// Compose's `${VAR:-default}` interpolation, with every variable unset (a fresh checkout).
fn interpolate(s: &str) -> String {
    let re = regex::Regex::new(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}").expect("regex");
    re.replace_all(s, |c: &regex::Captures| c.get(1).map_or("", |m| m.as_str()).to_owned()).into_owned()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| interpolate(x.as_str().expect("a string argument"))).collect())
        .unwrap_or_default()
}

/// A service's command and environment.
struct Service {
    command: Vec<String>,
    env: BTreeMap<String, String>,
}

fn service(compose: &Value, name: &str) -> Service {
    let s = &compose["services"][name];
    assert!(!s.is_null(), "no service {name}");
    let env = s["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => interpolate(s),
                        Value::Number(n) => n.to_string(),
                        other => panic!("{name}: environment value {other:?}"),
                    };
                    (k.as_str().expect("key").to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    Service { command: strings(&s["command"]), env }
}

/// The services that run the stockflow image.
fn stockflow_services(compose: &Value) -> Vec<String> {
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("stockflow")))
        .map(|(k, _)| k.as_str().expect("name").to_owned())
        .collect()
}

fn check(args: &[String], env: &BTreeMap<String, String>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(args)
        .arg("--check-config")
        .env_clear()
        .envs(env)
        .output()
        .expect("run stockflow")
}

fn ok(args: &[String], env: &BTreeMap<String, String>) -> String {
    let out = check(args, env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} rejected: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("stockflow: configuration ok: "), "{stdout}");
    stdout
}

/// The value after `flag` in a command.
fn flag<'a>(command: &'a [String], flag: &str) -> &'a str {
    let i = command.iter().position(|a| a == flag).unwrap_or_else(|| panic!("no {flag} in {command:?}"));
    &command[i + 1]
}

#[test]
fn every_compose_command_is_accepted() {
    let compose = compose();
    let names = stockflow_services(&compose);
    for expected in ["simulate", "ingest", "job"] {
        assert!(names.iter().any(|n| n == expected), "no stockflow service {expected}");
    }
    for name in &names {
        let s = service(&compose, name);
        ok(&s.command, &s.env);
    }

    let job = service(&compose, "job");
    let said = ok(&job.command, &job.env);
    assert!(said.contains("job -w 4 -n 1 -p 0"), "{said}");
    assert!(said.contains("lake s3://stockflow/lake") && said.contains("metrics on 0.0.0.0:9100"), "{said}");

    // Ingest reads the simulator without a token and Finnhub with one.
    let ingest = service(&compose, "ingest");
    let simulate = service(&compose, "simulate");
    let port = flag(&simulate.command, "--listen").rsplit_once(':').expect("port").1;
    assert_eq!(flag(&ingest.command, "--fallback-url"), format!("ws://simulate:{port}"));
    assert!(ok(&ingest.command, &ingest.env).contains(&format!("from ws://simulate:{port}")));
    let mut with_token = ingest.env.clone();
    with_token.insert("FINNHUB_TOKEN".into(), "a-token".into());
    assert!(ok(&ingest.command, &with_token).contains("from wss://ws.finnhub.io"));
}

#[test]
fn the_services_agree_with_each_other() {
    let compose = compose();
    let job = service(&compose, "job");
    let ingest = service(&compose, "ingest");

    // The bucket minio-init makes is the job's lake; the S3 endpoint is the minio service.
    let lake = &job.env["STOCKFLOW_LAKE"];
    let bucket = lake.strip_prefix("s3://").and_then(|r| r.split('/').next()).expect("an s3:// lake");
    let init = strings(&compose["services"]["minio-init"]["command"]).join(" ");
    assert!(init.contains(&format!("mc mb --ignore-existing local/{bucket}")), "{init}");
    assert_eq!(job.env["STOCKFLOW_S3_ENDPOINT"], "http://minio:9000");
    let minio_env = service(&compose, "minio").env;
    assert_eq!(job.env["AWS_ACCESS_KEY_ID"], minio_env["MINIO_ROOT_USER"]);
    assert_eq!(job.env["AWS_SECRET_ACCESS_KEY"], minio_env["MINIO_ROOT_PASSWORD"]);

    // The topic kafka-init creates is the one ingest writes and the job reads, on the
    // listener the broker advertises.
    let topic_init = strings(&compose["services"]["kafka-init"]["command"]);
    let topic = flag(&topic_init, "--topic");
    assert_eq!(flag(&job.command, "--topic"), topic);
    assert_eq!(
        ingest.command.iter().position(|a| a == "--topic").map(|i| ingest.command[i + 1].as_str()).unwrap_or("trades"),
        topic
    );
    let advertised = &service(&compose, "kafka").env["KAFKA_ADVERTISED_LISTENERS"];
    for s in [&job, &ingest] {
        let brokers = flag(&s.command, "--brokers");
        assert!(advertised.ends_with(&format!("//{brokers}")), "{brokers} is not what kafka advertises ({advertised})");
    }

    // Prometheus scrapes the job and ingest where they serve metrics.
    let prometheus: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus.yml")).expect("prometheus.yml"),
    )
    .expect("valid YAML");
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape configs")
        .iter()
        .flat_map(|c| strings(&c["static_configs"][0]["targets"]))
        .collect();
    for (name, s) in [("job", &job), ("ingest", &ingest)] {
        let port = flag(&s.command, "--metrics-addr").rsplit_once(':').expect("port").1;
        assert!(targets.contains(&format!("{name}:{port}")), "prometheus does not scrape {name}:{port}: {targets:?}");
    }
    let mounted = strings(&compose["services"]["prometheus"]["volumes"]);
    assert!(mounted.iter().any(|v| v.starts_with("./deploy/prometheus.yml:")), "{mounted:?}");

    // The image runs the binary the Dockerfile builds.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked --bin stockflow"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["stockflow"]"#));
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "the build context must leave target/ out");
}

#[test]
fn check_config_rejects_what_a_start_would() {
    let env = BTreeMap::new();
    let job = |extra: &[&str]| -> Vec<String> {
        ["--brokers", "kafka:9092", "--lake", "s3://bucket/lake"].iter().chain(extra).map(|s| s.to_string()).collect()
    };
    ok(&job(&[]), &env);
    for (args, says) in [
        (job(&["-w", "0"]), "-w must be at least 1"),
        (job(&["-n", "2"]), "-n > 1 needs a host file"),
        (job(&["-X", "no.such.property=1"]), "No such configuration property"),
        (job(&["--bars", "90s"]), "not a multiple"),
        (vec!["--lake".into(), "ftp://host/lake".into()], "ftp://host/lake"),
        (vec!["ingest".into(), "--brokers".into(), "kafka:9092".into()], "no symbols"),
        (vec!["ingest".into(), "--symbols".into(), "AAPL".into()], "FINNHUB_TOKEN is not set"),
    ] {
        let out = check(&args, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line, got {err}");
        assert!(err.contains(says), "{args:?}: expected '{says}' in {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
