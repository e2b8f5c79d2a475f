//! The `redward` binary: command line, logging, runtime, exit codes. The only place that uses
//! `anyhow`; everything else returns typed errors.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use redward::config::{self, LogFormat};

/// Exit status for a configuration that cannot be used (sysexits EX_CONFIG); systemd and
/// operators can tell it from a crash.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "redward",
    version,
    about = "A TLS-terminating, authenticating proxy that makes an exposed Redis safe"
)]
struct Cli {
    /// Run with this configuration file (YAML).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and certificates, print a summary, and exit.
    Check,
    /// Write a development CA and server certificate (ca.crt, ca.key, server.crt, server.key).
    GenCerts {
        /// Directory to write into.
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Read a password on stdin and print the `#<sha256>` rule for it.
    HashPassword,
    /// Convert an stunnel configuration to redward YAML on stdout; warnings on stderr.
    FromStunnel {
        /// The stunnel configuration file, e.g. /etc/stunnel/redis.conf.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::GenCerts { out, names }) => {
            match redward::tls::generate_dev_certs(&out, &names) {
                Ok(c) => {
                    println!(
                        "wrote {}, {}, {}, {}",
                        c.ca_cert.display(),
                        c.ca_key.display(),
                        c.server_cert.display(),
                        c.server_key.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, &e),
            }
        }
        Some(Command::HashPassword) => {
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                return fail(1, &e);
            }
            let pw = input.strip_suffix('\n').unwrap_or(&input);
            let pw = pw.strip_suffix('\r').unwrap_or(pw);
            println!("#{}", redward::acl::hash_password(pw.as_bytes()));
            ExitCode::SUCCESS
        }
        Some(Command::FromStunnel { file }) => {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => return fail(EXIT_CONFIG, &format!("{}: {e}", file.display())),
            };
            let conversion = redward::stunnel::convert_named(&text, &file.display().to_string());
            print!("{}", conversion.yaml);
            for w in &conversion.warnings {
                eprintln!("redward: warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Some(Command::Check) => {
            let Some(path) = cli.config else {
                return fail(2, &"check needs --config FILE");
            };
            check(&path)
        }
        None => {
            let Some(path) = cli.config else {
                return fail(2, &"--config FILE is required (see --help)");
            };
            run(&path)
        }
    }
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("redward: {e}");
    ExitCode::from(code)
}

/// What `redward check` says the upstream is: one address, the master Sentinels name, a
/// cluster found from seeds, or a cluster node beside which redward sits.
fn describe_upstream(upstream: &redward::config::UpstreamConfig) -> String {
    match &upstream.sentinel {
        Some(s) => format!(
            "the master Sentinel names `{}` (Sentinels {}; redward confirms with ROLE, follows \
             +switch-master, re-checks every 5 s)",
            s.master,
            s.addresses
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => match &upstream.cluster {
            Some(c) => format!(
                "a Redis Cluster found from seeds {} (CLUSTER SHARDS, re-read every 5 s); a \
                 listener per node on {}:{}-{}, announced as {}; node addresses dialled only \
                 within {}; entry listeners go to the node that last answered",
                c.seeds
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.bind,
                c.ports.0,
                c.ports.1,
                c.announce_host,
                if c.allow.is_empty() {
                    "the seeds' own addresses".to_owned()
                } else {
                    c.allow
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            None if !upstream.cluster_announce.is_empty() => format!(
                "{} (a cluster node; MOVED/ASK and CLUSTER replies name {})",
                upstream.addr,
                upstream
                    .cluster_announce
                    .iter()
                    .map(|((h, p), (ah, ap))| format!("{h}:{p} as {ah}:{ap}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => upstream.addr.to_string(),
        },
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => return fail(EXIT_CONFIG, &e),
    };
    for (index, l) in cfg.listeners.iter().enumerate() {
        if let Some(t) = &l.tls {
            if let Err(source) = redward::tls::server_config(t) {
                return fail(EXIT_CONFIG, &redward::StartError::Tls { index, source });
            }
        }
        let tls = if l.tls.is_some() { "tls" } else { "plaintext" };
        let proxy = match &l.proxy_protocol {
            redward::config::ProxyProtocol::Off => String::new(),
            redward::config::ProxyProtocol::AnyPeer => ", PROXY header from any peer".to_owned(),
            redward::config::ProxyProtocol::Trusted(nets) => format!(
                ", PROXY header from {}",
                nets.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        println!("listener {}: {tls}{proxy}", l.addr);
    }
    if let Err(e) = redward::upstream::Connector::new(&cfg.upstream) {
        return fail(EXIT_CONFIG, &redward::StartError::UpstreamTls(e));
    }
    let upstream = describe_upstream(&cfg.upstream);
    println!(
        "upstream {}{}, {}",
        upstream,
        if cfg.upstream.tls.is_some() {
            " (tls)"
        } else {
            ""
        },
        match cfg.upstream.shared_connections {
            0 => "a connection per client".to_owned(),
            1 => "1 shared connection".to_owned(),
            n => format!("{n} shared connections"),
        }
    );
    // What each user may do, as ACL LIST shows it (password hashes left out).
    let mut users: Vec<&redward::acl::User> = cfg.users.iter().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    for u in users {
        let line = redward::acl::describe(u)
            .split(' ')
            .filter(|t| !t.starts_with('#'))
            .collect::<Vec<_>>()
            .join(" ");
        println!("{line}");
    }
    for w in cfg.warnings() {
        println!("warning: {w}");
    }
    println!("config OK");
    ExitCode::SUCCESS
}

fn run(path: &std::path::Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) if e.names_unknown_command() => match learn_then_load(path) {
            // A rule names a command the built-in Redis 7.0 table lacks (HEXPIRE, a Valkey or
            // module command): the server behind may know it. Ask it, then read the file again.
            Some(Ok(cfg)) => cfg,
            Some(Err(e)) => return fail(EXIT_CONFIG, &e),
            None => return fail(EXIT_CONFIG, &e),
        },
        Err(e) => return fail(EXIT_CONFIG, &e),
    };
    init_logging(&cfg);
    let workers = match cfg.workers {
        0 => default_workers(),
        n => n,
    };
    // One worker runs everything on this thread: no cross-thread wake-ups at all.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        // Before binding: a signal during start-up must drain, not kill.
        let signals = redward::shutdown::Signals::install()?;
        let server = redward::Server::bind(&cfg)
            .await?
            .reload_from(path.to_owned());
        // Listeners are bound: tell systemd (Type=notify) we are ready.
        redward::notify::ready();
        server
            .run(async {
                signals.first().await;
                redward::notify::stopping();
            })
            .await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_CONFIG, &e),
    }
}

/// Learns the server behind (`upstream:` of the file at `path`), then loads the file again
/// with its command table in force. `None`: the server could not be asked (the first error
/// stands).
fn learn_then_load(path: &std::path::Path) -> Option<Result<redward::Config, config::ConfigError>> {
    let upstream = config::load_upstream(path).ok()?;
    let connector = redward::upstream::Connector::new(&upstream).ok()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime
        .block_on(redward::learn::learn(&connector, upstream.connect_timeout))
        .ok()?;
    Some(config::load(path))
}

/// Half the cores, at least one: redward usually shares its host with Redis (a sidecar, or the
/// Redis host itself), whose main thread needs a core of its own. Measured on 2 cores: one
/// worker costs ~15% less CPU per request than two (`scripts/bench.sh`, README).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn init_logging(cfg: &redward::Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cfg.log_level.as_deref().unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(cfg.log_color.enabled())
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
