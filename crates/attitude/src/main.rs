//! `attitude`: an SMTP proxy with an attitude.
//!
//! ```text
//! attitude serve [--config FILE]... [--listen ADDR] [--backend ADDR,...] [--admin ADDR] ...
//! attitude check-config [--quiet] FILE [FILE...]
//! attitude sink --listen ADDR [--maildir DIR]
//! attitude generate --out DIR
//! ```

mod admin;
mod cli;
mod config;
mod generate;
mod keys;
mod server;
mod sink;
mod stack;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Cmd, ServeArgs, SinkArgs};
use crate::config::{Config, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::CheckConfig { quiet, files } => check_config(&files, quiet),
        Cmd::Sink(args) => sink(args),
        Cmd::Generate { out } => generate::run(&out),
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

fn check_config(files: &[PathBuf], quiet: bool) -> Result<(), String> {
    let config = Config::load_files(files).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        format!("{}: {e}", names.join(" + "))
    })?;
    if !quiet {
        print!("{}", config.to_toml());
    }
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
