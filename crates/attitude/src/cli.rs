//! The command line: `attitude serve`, `check-config`, `sink` and `generate`. The same
//! definitions make `--help`, the manual pages and the shell completions (`generate`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "attitude",
    version,
    disable_help_subcommand = true,
    about = "An SMTP proxy with an attitude",
    long_about = "An SMTP proxy with an attitude: it sits in front of one or more mail servers \
        (Postfix, Exim, any RFC 5321 server), limits connections and rates, filters what should \
        not reach them and balances the rest, and offers clients what the mail servers offer."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Run the proxy. Flags and environment variables override the configuration file.
    Serve(ServeArgs),
    /// Validate configuration files (later ones merged over earlier ones) and print the
    /// effective configuration.
    CheckConfig {
        /// Print nothing when the configuration is valid (the unit's ExecStartPre).
        #[arg(long, short)]
        quiet: bool,
        /// The TOML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a test SMTP backend that accepts and counts every message (delivers nothing).
    Sink(SinkArgs),
    /// Write the manual pages and shell completions into a directory (what a package installs).
    Generate {
        /// The directory: man pages go in DIR/man, completions in DIR/completions.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file; given several times (or comma-separated), later files are
    /// merged over earlier ones, table by table.
    #[arg(long, env = "ATTITUDE_CONFIG", value_delimiter = ',')]
    pub(crate) config: Vec<PathBuf>,
    /// SMTP listen address (IP:PORT).
    #[arg(long, env = "ATTITUDE_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Backend mail servers (IP:PORT, comma-separated), balanced per transaction.
    #[arg(long, env = "ATTITUDE_BACKEND", value_delimiter = ',')]
    pub(crate) backend: Vec<SocketAddr>,
    /// Admin HTTP address for /metrics, /healthz, /readyz (IP:PORT, or "off").
    #[arg(long, env = "ATTITUDE_ADMIN")]
    pub(crate) admin: Option<String>,
    /// Name in the greeting and EHLO reply.
    #[arg(long, env = "ATTITUDE_HOSTNAME")]
    pub(crate) hostname: Option<String>,
    /// Largest message in octets.
    #[arg(long, env = "ATTITUDE_MAX_MESSAGE_SIZE")]
    pub(crate) max_message_size: Option<u64>,
    /// Log format.
    #[arg(long, env = "ATTITUDE_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// TLS certificate chain (PEM) for STARTTLS and implicit TLS; with --tls-key.
    #[arg(long, env = "ATTITUDE_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, env = "ATTITUDE_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SinkArgs {
    /// Listen address (IP:PORT).
    #[arg(long, env = "ATTITUDE_SINK_LISTEN", default_value = "127.0.0.1:2526")]
    pub(crate) listen: SocketAddr,
    /// Also write each message to this Maildir.
    #[arg(long)]
    pub(crate) maildir: Option<PathBuf>,
    /// Name in the greeting.
    #[arg(long, default_value = "sink.localdomain")]
    pub(crate) hostname: String,
    /// Largest message in octets.
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    pub(crate) max_message_size: u64,
    /// Log format.
    #[arg(long, default_value = "text")]
    pub(crate) log_format: LogFormat,
}
