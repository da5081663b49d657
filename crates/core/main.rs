//! The `sniroute` command line: argument parsing, logging set-up and exit
//! codes. Everything else lives in the library crates.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use config::{Config, ConfigSource};

#[derive(Parser, Debug)]
#[command(
    name = "sniroute",
    version,
    about = "TLS SNI passthrough router: one port, many Kubernetes API servers, TLS end to end",
    after_help = "Config source, in order: --config FILE, $SNIROUTE_CONFIG (a path), \
$SNIROUTE_CONFIG_YAML (the YAML itself), /etc/sniroute/sniroute.yaml. --config or \
$SNIROUTE_CONFIG may be an http:// or https:// URL (https: $SNIROUTE_CONFIG_CA names the \
CA file to trust).\n\
Reload the config with `kill -HUP <pid>`; upgrade the binary with `kill -USR2 <pid>`; \
stop gracefully with SIGTERM."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SNIROUTE_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log level or filter (e.g. `info`, `debug`, `sniroute::access=warn,info`);
    /// overrides RUST_LOG. Default: RUST_LOG, else `info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the router.
    Run {
        /// Config file (YAML), or an http:// or https:// URL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The binary `kill -USR2` starts to take over (default: the one
        /// running, from the path it was started from).
        #[arg(long, value_name = "PATH")]
        upgrade_binary: Option<PathBuf>,
    },
    /// Validate the config and print the resolved routing table; needs no
    /// network (but to fetch a config URL). Exit status 1 on error.
    Check {
        /// Config file (YAML), or an http:// or https:// URL.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Ask the configured discovery sources (Marathon, Mesos) once and
    /// print the routing table that would result: each discovered route,
    /// its endpoints, the tasks left out and why, label routes and their
    /// issues. Changes nothing; starts no listener. Exit status 1 when a
    /// source did not sync in time (its last error is printed).
    Discover {
        /// Config file (YAML), or an http:// or https:// URL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How long to wait for every source's first full sync.
        #[arg(long, default_value = "30s", value_parser = parse_timeout)]
        timeout: Duration,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Upgrade the running sniroute's binary (`SIGUSR2`) and wait for the
    /// outcome, followed on its admin endpoint (which the config must
    /// have). Exit status 1 if the upgrade failed: the old process then
    /// serves on.
    Upgrade {
        /// Config file (YAML) or URL of the running router: where its admin
        /// endpoint is.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin endpoint's address, instead of reading the config.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// The PID meant; nothing is sent when the admin endpoint is served
        /// by another process. Default: the PID the admin endpoint reports.
        #[arg(long)]
        pid: Option<u32>,
        /// How long to wait for the outcome.
        #[arg(long, default_value = "90s", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// Print what a ClientHello says (SNI, ALPN, versions) as JSON: feed it
    /// the first bytes a client sent, e.g. saved from a packet capture.
    InspectHello {
        /// File with the raw bytes; `-` or nothing for standard input.
        file: Option<PathBuf>,
        /// Size limit, as `limits.max_client_hello_bytes`.
        #[arg(long, default_value_t = clienthello::DEFAULT_MAX_CLIENT_HELLO_BYTES)]
        max_bytes: usize,
    },
    /// Write or merge a kubeconfig context that reaches a route's API server
    /// through sniroute, like `dcos kubernetes cluster kubeconfig`.
    Kubeconfig(Box<kubeconfig::cli::Args>),
    /// Start the router with an embedded config and two local demo TLS
    /// clusters under a throwaway CA, and print commands to try.
    Demo {
        /// Where the router listens.
        #[arg(long, default_value = "127.0.0.1:16443")]
        listen: SocketAddr,
        /// Where the admin endpoint listens.
        #[arg(long, default_value = "127.0.0.1:16090")]
        admin: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    match cli.command {
        Command::Run {
            config,
            upgrade_binary,
        } => {
            // First, while this is the only thread: take the sockets
            // systemd passed (socket activation) and clear LISTEN_*.
            let inherited = match router::Inherited::from_env() {
                Ok(inherited) => inherited,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("sniroute: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let source = ConfigSource::resolve(config.as_deref(), |k| std::env::var(k).ok());
            run_router(source, inherited, upgrade_binary)
        }
        Command::Check { config } => {
            let source = ConfigSource::resolve(config.as_deref(), |k| std::env::var(k).ok());
            match load_config(&source) {
                Ok(config) => {
                    print!("{}", config::render(&config));
                    println!("{}: OK", source.display_name());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Discover {
            config,
            timeout,
            json,
        } => {
            let source = ConfigSource::resolve(config.as_deref(), |k| std::env::var(k).ok());
            discover(&source, timeout, json)
        }
        Command::Upgrade {
            config,
            admin,
            pid,
            timeout,
        } => {
            let admin = match admin {
                Some(admin) => admin,
                None => {
                    let source =
                        ConfigSource::resolve(config.as_deref(), |k| std::env::var(k).ok());
                    match load_config(&source)
                        .map_err(|e| e.to_string())
                        .and_then(|c| router::admin_address(&c))
                    {
                        Ok(admin) => admin,
                        Err(e) => {
                            eprintln!("sniroute upgrade: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
            };
            match router::request_upgrade(admin, pid, timeout) {
                Ok(u) => {
                    println!(
                        "upgraded: PID {} took over from PID {} (sniroute {}); PID {} drains and exits",
                        u.new_pid, u.old_pid, u.version, u.old_pid
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sniroute upgrade: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::InspectHello { file, max_bytes } => inspect_hello(file, max_bytes),
        Command::Demo { listen, admin } => demo(listen, admin),
        Command::Kubeconfig(args) => match kubeconfig::cli::run(*args, |k| std::env::var(k).ok()) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sniroute kubeconfig: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Reads the config once: a file, `$SNIROUTE_CONFIG_YAML`, or a URL
/// (fetched, on a runtime of its own).
fn load_config(source: &ConfigSource) -> Result<Config, config::ConfigError> {
    match source {
        ConfigSource::Url { .. } => {
            let rt = runtime();
            let loaded = rt.block_on(router::load_config(source));
            rt.shutdown_background();
            loaded
        }
        _ => Config::load(source),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sniroute: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

fn run_router(
    source: ConfigSource,
    inherited: router::Inherited,
    upgrade_binary: Option<PathBuf>,
) -> ExitCode {
    // The control plane (signals, reload, admin endpoint, discovery,
    // health checks) runs on this thread; connections are served by the
    // worker threads `router::run` starts (`workers` in the config), each
    // with a runtime of its own.
    let control = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sniroute: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match control.block_on(router::run(source, inherited, upgrade_binary)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sniroute: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match config::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn discover(source: &ConfigSource, timeout: Duration, json: bool) -> ExitCode {
    let config = match load_config(source) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = runtime();
    let result = rt.block_on(router::discover(&config, timeout));
    // A request still in flight (a DNS lookup on a blocking thread) must
    // not hold the exit up.
    rt.shutdown_background();
    match result {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            if report.complete() {
                ExitCode::SUCCESS
            } else {
                eprintln!("sniroute discover: a discovery source did not sync within the timeout");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sniroute discover: {}: {e}", source.display_name());
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "demo")]
fn demo(listen: SocketAddr, admin: SocketAddr) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("sniroute-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("sniroute demo: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let rt = runtime();
    let result = rt.block_on(async {
        let demo = demo::Demo::start(&dir, listen, admin)
            .await
            .map_err(|e| format!("cannot start the demo clusters: {e}"))?;
        let config = Config::from_yaml_str(&demo.config_yaml, "embedded demo config")
            .map_err(|e| e.to_string())?;
        let path = dir.join("sniroute-demo.yaml");
        std::fs::write(&path, &demo.config_yaml)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("{}", config::render(&config));
        eprintln!("{}", demo.instructions);
        eprintln!("Press Ctrl-C to stop.\n");
        router::run(ConfigSource::File(path), router::Inherited::none(), None)
            .await
            .map_err(|e| e.to_string())
    });
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sniroute demo: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "demo"))]
fn demo(_listen: SocketAddr, _admin: SocketAddr) -> ExitCode {
    eprintln!(
        "sniroute demo: this sniroute was built without the demo (cargo feature `demo`).\n\
         Build one with it from the source tree: `cargo run --release -- demo`\n\
         (the feature is on by default; `--no-default-features` leaves it out)."
    );
    ExitCode::FAILURE
}

fn inspect_hello(file: Option<PathBuf>, max_bytes: usize) -> ExitCode {
    let bytes = match file.as_deref() {
        None => read_stdin(),
        Some(p) if p.as_os_str() == "-" => read_stdin(),
        Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())),
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sniroute inspect-hello: {e}");
            return ExitCode::FAILURE;
        }
    };
    match router::inspect_hello(&bytes, max_bytes) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sniroute inspect-hello: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_stdin() -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| format!("standard input: {e}"))?;
    Ok(buf)
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|e| {
        eprintln!("sniroute: invalid log level or filter: {e}; using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
