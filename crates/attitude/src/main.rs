//! `attitude`: an SMTP proxy with an attitude.
//!
//! ```text
//! attitude serve [--config FILE]... [--listen ADDR] [--backend ADDR,...] [--admin ADDR] ...
//! attitude check-config FILE [FILE...]
//! attitude sink --listen ADDR [--maildir DIR]
//! ```

mod admin;
mod config;
mod keys;
mod server;
mod sink;
mod stack;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(name = "attitude", version, about = "An SMTP proxy with an attitude")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the proxy. Flags and environment variables override the configuration file.
    Serve(ServeArgs),
    /// Validate configuration files (later ones merged over earlier ones) and print the
    /// effective configuration.
    CheckConfig {
        /// The TOML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a test SMTP backend that accepts and counts every message (delivers nothing).
    Sink(SinkArgs),
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// TOML configuration file; given several times (or comma-separated), later files are
    /// merged over earlier ones, table by table.
    #[arg(long, env = "ATTITUDE_CONFIG", value_delimiter = ',')]
    config: Vec<PathBuf>,
    /// SMTP listen address (IP:PORT).
    #[arg(long, env = "ATTITUDE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Backend mail servers (IP:PORT, comma-separated), balanced per transaction.
    #[arg(long, env = "ATTITUDE_BACKEND", value_delimiter = ',')]
    backend: Vec<SocketAddr>,
    /// Admin HTTP address for /metrics, /healthz, /readyz (IP:PORT, or "off").
    #[arg(long, env = "ATTITUDE_ADMIN")]
    admin: Option<String>,
    /// Name in the greeting and EHLO reply.
    #[arg(long, env = "ATTITUDE_HOSTNAME")]
    hostname: Option<String>,
    /// Largest message in octets.
    #[arg(long, env = "ATTITUDE_MAX_MESSAGE_SIZE")]
    max_message_size: Option<u64>,
    /// Log format.
    #[arg(long, env = "ATTITUDE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// TLS certificate chain (PEM) for STARTTLS and implicit TLS; with --tls-key.
    #[arg(long, env = "ATTITUDE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, env = "ATTITUDE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SinkArgs {
    /// Listen address (IP:PORT).
    #[arg(long, env = "ATTITUDE_SINK_LISTEN", default_value = "127.0.0.1:2526")]
    listen: SocketAddr,
    /// Also write each message to this Maildir.
    #[arg(long)]
    maildir: Option<PathBuf>,
    /// Name in the greeting.
    #[arg(long, default_value = "sink.localdomain")]
    hostname: String,
    /// Largest message in octets.
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    max_message_size: u64,
    /// Log format.
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::CheckConfig { files } => check_config(&files),
        Cmd::Sink(args) => sink(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("attitude: {message}");
            ExitCode::FAILURE
        }
    }
}

fn effective_config(args: &ServeArgs) -> Result<Config, String> {
    let mut config = if args.config.is_empty() {
        Config::default()
    } else {
        Config::load_files(&args.config).map_err(|e| e.to_string())?
    };
    if let Some(listen) = args.listen {
        if !config.listeners.is_empty() {
            return Err(
                "--listen sets the address of the one listener used without [[listeners]]; \
                 with [[listeners]] in the file, set each listener's address there"
                    .into(),
            );
        }
        config.listen = listen;
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls.cert = Some(cert.clone());
        config.tls.key = Some(key.clone());
    }
    if !args.backend.is_empty() {
        config.backend.servers = args
            .backend
            .iter()
            .map(|a| config::Server::Address(*a))
            .collect();
    }
    if let Some(admin) = &args.admin {
        config.admin = if admin == "off" {
            None
        } else {
            Some(admin.parse().map_err(|_| {
                format!("--admin {admin:?}: expected IP:PORT (e.g. 127.0.0.1:9325) or \"off\"")
            })?)
        };
    }
    if let Some(hostname) = &args.hostname {
        config.hostname = hostname.clone();
    }
    if let Some(size) = args.max_message_size {
        config.limits.max_message_size = size;
    }
    if let Some(format) = args.log_format {
        config.log.format = format;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn init_logs(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .map_err(|e| format!("log level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let config = effective_config(&args)?;
    init_logs(config.log.format, &config.log.level)?;
    let metrics = admin::install_recorder()?;
    let watch = args.config.clone();
    // A reload reads the file again and applies the same flags and environment over it.
    let load = Box::new(move || effective_config(&args));
    server::serve(config, metrics, load, watch)
}

fn check_config(files: &[PathBuf]) -> Result<(), String> {
    let config = Config::load_files(files).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        format!("{}: {e}", names.join(" + "))
    })?;
    print!("{}", config.to_toml());
    Ok(())
}

fn sink(args: SinkArgs) -> Result<(), String> {
    init_logs(args.log_format, "info")?;
    // No recorder is installed: the sink's metric handles are no-ops.
    runtime()?.block_on(sink::run(sink::SinkOptions {
        listen: args.listen,
        maildir: args.maildir,
        hostname: args.hostname,
        max_message_size: args.max_message_size,
    }))
}
