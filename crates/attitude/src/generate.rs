//! `attitude generate --out DIR`: the manual pages (`attitude(8)` and one page per subcommand,
//! `attitude-serve(8)`...) and the bash, zsh and fish completions, from the same clap
//! definitions as `--help`, so they cannot describe a flag the program does not have.

use std::fs;
use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

use crate::cli::Cli;

/// The manual's section: system administration commands and daemons.
const SECTION: &str = "8";

/// Writes `out/man/*.8` and `out/completions/{attitude.bash,_attitude,attitude.fish}`, and
/// prints what it wrote.
pub(crate) fn run(out: &Path) -> Result<(), String> {
    let man_dir = out.join("man");
    let completions = out.join("completions");
    for dir in [&man_dir, &completions] {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut written = Vec::new();
    let cmd = Cli::command();
    let main_page = man_dir.join(format!("attitude.{SECTION}"));
    write(&main_page, &main_page_text(&cmd)?)?;
    written.push(main_page);
    for sub in cmd.get_subcommands() {
        let name = format!("attitude-{}", sub.get_name());
        let page = Man::new(sub.clone().name(name.clone())).section(SECTION);
        let mut text = Vec::new();
        page.render(&mut text).map_err(|e| e.to_string())?;
        let path = man_dir.join(format!("{name}.{SECTION}"));
        write(&path, &text)?;
        written.push(path);
    }
    for (shell, file) in [
        (Shell::Bash, "attitude.bash"),
        (Shell::Zsh, "_attitude"),
        (Shell::Fish, "attitude.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "attitude", &mut text);
        let path = completions.join(file);
        write(&path, &text)?;
        written.push(path);
    }
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `attitude(8)`: clap's sections, then what a daemon's page tells beyond its flags: the
/// files, the signals and where to read on.
fn main_page_text(cmd: &clap::Command) -> Result<Vec<u8>, String> {
    let man = Man::new(cmd.clone()).section(SECTION);
    let mut text = Vec::new();
    let io = |e: std::io::Error| e.to_string();
    man.render_title(&mut text).map_err(io)?;
    man.render_name_section(&mut text).map_err(io)?;
    man.render_synopsis_section(&mut text).map_err(io)?;
    man.render_description_section(&mut text).map_err(io)?;
    man.render_options_section(&mut text).map_err(io)?;
    man.render_subcommands_section(&mut text).map_err(io)?;
    let mut extra = Roff::new();
    extra.control("SH", ["FILES"]);
    for (file, what) in [
        (
            "/etc/attitude/attitude.toml",
            "The configuration. Every key and its default: attitude check-config prints the \
             effective configuration.",
        ),
        (
            "/var/lib/attitude/",
            "The state directory: the greylist file ([greylist] file).",
        ),
        (
            "/usr/lib/systemd/system/attitude.service",
            "The systemd unit: Type=notify, reload with systemctl reload attitude.",
        ),
    ] {
        extra.control("TP", [] as [&str; 0]);
        extra.text([bold(file)]);
        extra.text([roman(what)]);
    }
    extra.control("SH", ["SIGNALS"]);
    for (signal, what) in [
        (
            "SIGHUP",
            "Read the configuration again and apply it to new sessions; running sessions keep \
             theirs. A configuration that does not validate is refused and the running one \
             stays. TLS certificates are read again too.",
        ),
        (
            "SIGTERM, SIGINT",
            "Drain: new clients get 421 for [timeouts] drain_delay, then the listeners close; \
             sessions in a transaction get [timeouts] drain_grace to finish it.",
        ),
    ] {
        extra.control("TP", [] as [&str; 0]);
        extra.text([bold(signal)]);
        extra.text([roman(what)]);
    }
    extra.control("SH", ["ENVIRONMENT"]);
    extra.text([roman(
        "Each flag of attitude serve has an environment variable (ATTITUDE_CONFIG, \
         ATTITUDE_LISTEN, ATTITUDE_BACKEND...; see attitude-serve(8)). RUST_LOG overrides \
         [log] level. With NOTIFY_SOCKET set (systemd), attitude reports READY=1 once every \
         listener is bound, RELOADING=1 and READY=1 around a reload, STOPPING=1 when the \
         drain starts, and its sessions and backends in STATUS=.",
    )]);
    extra.control("SH", ["SEE ALSO"]);
    extra.text([
        italic("attitude-serve"),
        roman("(8), "),
        italic("attitude-check-config"),
        roman("(8), "),
        italic("attitude-sink"),
        roman("(8), "),
        italic("systemd.service"),
        roman("(5); /usr/share/doc/attitude/"),
    ]);
    extra.to_writer(&mut text).map_err(io)?;
    man.render_version_section(&mut text).map_err(io)?;
    Ok(text)
}

fn write(path: &Path, text: &[u8]) -> Result<(), String> {
    fs::File::create(path)
        .and_then(|mut f| f.write_all(text))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
