//! The Debian package (`make deb`, target/debian/attitude_*.deb): what it holds, lintian, and
//! an install, `check-config`, remove and purge on this machine (as root; the package is purged
//! whatever happens). Runs alone (.config/nextest.toml): it installs /usr/bin/attitude.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use attitude_test_support::{attitude_bin, require_tool};

/// The package `make deb` built (`make test` builds it before the tests).
fn package() -> PathBuf {
    let target = attitude_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let dir = target.join("debian");
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("attitude_") && n.ends_with(".deb"))
                })
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => one.clone(),
        [] => panic!(
            "no attitude_*.deb in {}: run `make deb` (make test does)",
            dir.display()
        ),
        many => panic!("several packages in {}: {many:?}", dir.display()),
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What `program args` printed, once it succeeded (panics with its output otherwise).
fn stdout_of(program: &str, args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(program: &str, args: &[&str]) -> String {
    stdout_of(program, args, run(program, args))
}

#[test]
fn the_package_holds_the_binary_conffile_unit_man_pages_and_completions_and_lintian_finds_no_error()
{
    let deb = package();
    let deb = deb.to_str().unwrap();
    let contents = ok("dpkg-deb", &["-c", deb]);
    let files: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for expected in [
        "./usr/bin/attitude",
        "./etc/attitude/attitude.toml",
        "./usr/share/man/man8/attitude.8.gz",
        "./usr/share/man/man8/attitude-serve.8.gz",
        "./usr/share/man/man8/attitude-check-config.8.gz",
        "./usr/share/bash-completion/completions/attitude",
        "./usr/share/zsh/vendor-completions/_attitude",
        "./usr/share/fish/vendor_completions.d/attitude.fish",
        "./usr/share/doc/attitude/copyright",
        "./usr/share/doc/attitude/install.md",
    ] {
        assert!(
            files.contains(&expected),
            "{expected} not in the package:\n{contents}"
        );
    }
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("/systemd/system/attitude.service")),
        "no unit in the package:\n{contents}"
    );
    let depends = ok("dpkg-deb", &["-f", deb, "Depends"]);
    assert!(depends.contains("adduser"), "Depends: {depends}");
    // The changelog's latest entry is this version.
    let version = ok("dpkg-deb", &["-f", deb, "Version"]);
    let changelog = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/debian/changelog"),
    )
    .unwrap();
    assert!(
        changelog.starts_with(&format!("attitude ({}) ", version.trim())),
        "deploy/debian/changelog does not start with version {version}"
    );
    let dir = attitude_test_support::scratch_dir("control");
    ok("dpkg-deb", &["-e", deb, dir.to_str().unwrap()]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), "/etc/attitude/attitude.toml");
    let postinst = read("postinst");
    assert!(postinst.contains("adduser --system") && postinst.contains("deb-systemd-helper"));
    assert!(
        !postinst.contains("#DEBHELPER#"),
        "the token was not replaced"
    );
    assert!(read("postrm").contains("rm -rf /var/lib/attitude"));

    let (passed, report) = attitude_test_support::run(
        Command::new(require_tool("lintian"))
            .args(["--fail-on", "error"])
            .arg(deb),
    );
    assert!(
        passed && !report.lines().any(|l| l.starts_with("E: ")),
        "lintian:\n{report}"
    );
}

/// Runs `program` as root: directly when this test is root, else through `sudo -n`.
fn root(program: &str, args: &[&str]) -> Output {
    let uid = ok("id", &["-u"]);
    if uid.trim() == "0" {
        run(program, args)
    } else {
        let mut all = vec!["-n", program];
        all.extend_from_slice(args);
        run("sudo", &all)
    }
}

fn root_ok(program: &str, args: &[&str]) -> String {
    stdout_of(program, args, root(program, args))
}

/// dpkg's state of the package: "install ok installed", "deinstall ok config-files", or None.
fn state() -> Option<String> {
    let out = run("dpkg-query", &["-W", "-f", "${Status}", "attitude"]);
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !s.is_empty() && s != "unknown ok not-installed").then_some(s)
}

/// Purges the package and removes the policy-rc.d it made, whatever the test did.
struct Cleanup {
    made_policy: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = root("dpkg", &["--purge", "attitude"]);
        if self.made_policy {
            let _ = root("rm", &["-f", "/usr/sbin/policy-rc.d"]);
        }
    }
}

#[test]
fn the_package_installs_checks_its_configuration_removes_and_purges() {
    let deb = package();
    assert!(
        state().is_none(),
        "an attitude package is installed on this machine ({:?}): this test installs and purges \
         its own, so run it where none is",
        state()
    );
    // Where systemd runs, the package would start the service: a policy-rc.d denies it (as
    // `make deps` does for the daemons it installs).
    let made_policy = !Path::new("/usr/sbin/policy-rc.d").exists();
    if made_policy {
        root_ok(
            "sh",
            &[
                "-c",
                "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d",
            ],
        );
    }
    let _cleanup = Cleanup { made_policy };

    root_ok("dpkg", &["-i", deb.to_str().unwrap()]);
    assert_eq!(state().as_deref(), Some("install ok installed"));
    let version = ok("/usr/bin/attitude", &["--version"]);
    assert!(version.starts_with("attitude "), "{version}");
    let user = ok("getent", &["passwd", "attitude"]);
    assert!(
        user.contains(":/var/lib/attitude:") && user.trim_end().ends_with("nologin"),
        "the system user: {user}"
    );

    // The service user reads the shipped configuration, and it is safe.
    let effective = root_ok(
        "runuser",
        &[
            "-u",
            "attitude",
            "--",
            "/usr/bin/attitude",
            "check-config",
            "/etc/attitude/attitude.toml",
        ],
    );
    assert!(
        effective.contains("trusted_networks = [\"127.0.0.0/8\", \"::1/128\"]")
            && effective.contains("local_domains = []"),
        "{effective}"
    );

    // The unit as installed, with its man page now on the system.
    assert!(
        Path::new("/usr/share/man/man8/attitude.8.gz").exists(),
        "dpkg did not install attitude(8): a path-exclude in /etc/dpkg/dpkg.cfg.d/ drops man \
         pages on this machine"
    );
    let unit = [
        "/usr/lib/systemd/system/attitude.service",
        "/lib/systemd/system/attitude.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("the unit is installed");
    let (verified, report) = attitude_test_support::run(
        Command::new(require_tool("systemd-analyze"))
            .arg("verify")
            .arg(unit),
    );
    assert!(
        verified && report.trim().is_empty(),
        "systemd-analyze verify {unit}:\n{report}"
    );
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/attitude.service").exists(),
        "the unit is not enabled"
    );

    // An operator's edit to the conffile survives `dpkg -r`; `dpkg -P` takes it.
    root_ok(
        "sh",
        &[
            "-c",
            "echo '# edited by the operator' >> /etc/attitude/attitude.toml",
        ],
    );
    root_ok("dpkg", &["-r", "attitude"]);
    assert_eq!(state().as_deref(), Some("deinstall ok config-files"));
    assert!(!Path::new("/usr/bin/attitude").exists());
    let kept = std::fs::read_to_string("/etc/attitude/attitude.toml").expect("conffile kept");
    assert!(kept.contains("# edited by the operator"));

    root_ok("dpkg", &["-P", "attitude"]);
    assert_eq!(state(), None);
    for gone in [
        "/etc/attitude/attitude.toml",
        "/etc/attitude",
        "/var/lib/attitude",
        "/etc/systemd/system/multi-user.target.wants/attitude.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
}
