//! The `kvrouter` command line: parse flags, load the config, start the workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kvrouter::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "kvrouter",
    version,
    about = "A sharding proxy for memcached and Redis fleets (twemproxy-compatible)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Configuration file (kvrouter format, or twemproxy's nutcracker.yml as-is).
    #[arg(
        short = 'c',
        long = "config",
        visible_alias = "conf-file",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(short = 't', long = "test-conf")]
    test_conf: bool,
    /// Admin HTTP listener (default 127.0.0.1:9191; config `admin.listen` also sets it).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Log level, twemproxy's scale: 4 warn, 5 notice (default), 7 debug, 8+ trace.
    #[arg(short = 'v', long = "verbose", value_name = "N", default_value_t = 5)]
    verbose: u8,
    /// Log file (reopened on SIGHUP); stderr by default.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write the process id to this file.
    #[arg(short = 'p', long = "pid-file", value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Run in the background.
    #[arg(short = 'd', long = "daemonize")]
    daemonize: bool,
    /// twemproxy's stats port: the admin listener's port.
    #[arg(short = 's', long = "stats-port", value_name = "PORT")]
    stats_port: Option<u16>,
    /// twemproxy's stats address: the admin listener's address.
    #[arg(short = 'a', long = "stats-addr", value_name = "ADDR")]
    stats_addr: Option<String>,
    /// twemproxy's stats interval (accepted and ignored).
    #[arg(short = 'i', long = "stats-interval", value_name = "MS")]
    stats_interval: Option<String>,
    /// twemproxy's mbuf size (accepted and ignored).
    #[arg(short = 'm', long = "mbuf-size", value_name = "N")]
    mbuf_size: Option<String>,
    /// twemproxy's describe-stats (accepted; see the admin API instead).
    #[arg(short = 'D', long = "describe-stats")]
    describe_stats: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print where keys live (`KEY POOL SERVER_NAME HOST:PORT`), or with --diff how many keys
    /// move between two configs.
    Keymap {
        #[arg(
            short = 'c',
            long = "config",
            visible_alias = "conf-file",
            value_name = "FILE"
        )]
        config: Option<PathBuf>,
        /// The listener whose route is followed (its listen address as written); default: the
        /// first listener.
        #[arg(long, value_name = "ADDR")]
        listener: Option<String>,
        /// Compare two configs: OLD NEW.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        diff: Option<Vec<PathBuf>>,
        /// Keys sampled by --diff.
        #[arg(long, default_value_t = 100_000)]
        sample: usize,
        keys: Vec<String>,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run(cli: Cli) -> Result<(), ExitCode> {
    if let Some(Cmd::Keymap {
        config,
        listener,
        diff,
        sample,
        keys,
    }) = cli.command
    {
        if let Some(pair) = diff {
            let (old, new) = (load(&pair[0])?, load(&pair[1])?);
            print!("{}", kvrouter::keymap::diff(&old, &new, sample));
            return Ok(());
        }
        let Some(path) = config else {
            eprintln!("kvrouter keymap: -c FILE is required (or --diff OLD NEW)");
            return Err(ExitCode::from(2));
        };
        let cfg = load(&path)?;
        return match kvrouter::keymap::keymap(&cfg, listener.as_deref(), &keys) {
            Ok(out) => {
                print!("{out}");
                Ok(())
            }
            Err(e) => {
                eprintln!("kvrouter keymap: {e}");
                Err(ExitCode::from(1))
            }
        };
    }

    let Some(path) = cli.config.clone() else {
        eprintln!("kvrouter: -c FILE is required (see --help)");
        return Err(ExitCode::from(2));
    };
    let config = load(&path)?;
    if cli.test_conf {
        if let Err(e) = kvrouter::server::check(&config) {
            eprintln!("{e}");
            return Err(ExitCode::from(1));
        }
        println!("{}", config.summary());
        return Ok(());
    }

    let admin = admin_addr(&cli, &config)?;
    if cli.daemonize {
        if let Err(e) = kvrouter::daemon::daemonize() {
            eprintln!("kvrouter: cannot daemonize: {e}");
            return Err(ExitCode::from(1));
        }
    }
    let log_file = match kvrouter::logging::init(cli.verbose, cli.output.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kvrouter: cannot open log file: {e}");
            return Err(ExitCode::from(1));
        }
    };
    for (flag, given) in [
        ("-i/--stats-interval", cli.stats_interval.is_some()),
        ("-m/--mbuf-size", cli.mbuf_size.is_some()),
        ("-D/--describe-stats", cli.describe_stats),
    ] {
        if given {
            tracing::warn!("{flag} is a twemproxy option that kvrouter accepts and ignores");
        }
    }
    if let Some(p) = &cli.pid_file {
        if let Err(e) = kvrouter::daemon::write_pid_file(p) {
            tracing::error!("cannot write pid file {}: {e}", p.display());
            return Err(ExitCode::from(1));
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("main runtime");
    let result = rt.block_on(serve(config, admin, log_file));
    if let Some(p) = &cli.pid_file {
        let _ = std::fs::remove_file(p);
    }
    result
}

fn admin_addr(cli: &Cli, config: &Config) -> Result<SocketAddr, ExitCode> {
    if let Some(a) = cli.admin {
        return Ok(a);
    }
    if cli.stats_port.is_some() || cli.stats_addr.is_some() {
        let host = cli.stats_addr.as_deref().unwrap_or("127.0.0.1");
        let port = cli.stats_port.unwrap_or(9191);
        return format!("{host}:{port}")
            .parse::<SocketAddr>()
            .or_else(|_| format!("[{host}]:{port}").parse())
            .map_err(|e| {
                eprintln!("kvrouter: bad stats address {host}:{port}: {e}");
                ExitCode::from(2)
            });
    }
    Ok(config
        .admin
        .unwrap_or_else(|| "127.0.0.1:9191".parse().expect("static address")))
}

async fn serve(
    config: Config,
    admin: SocketAddr,
    log_file: Option<kvrouter::logging::LogFile>,
) -> Result<(), ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let summary = config.summary();
    let running = kvrouter::server::start(config).map_err(|e| {
        tracing::error!("{e}");
        eprintln!("kvrouter: {e}");
        ExitCode::from(1)
    })?;
    let shared = running.shared.clone();
    let health: kvrouter::admin::HealthCheck =
        Arc::new(move || kvrouter::server::check_health(&shared));
    match kvrouter::admin::spawn(admin, health).await {
        Ok(a) => tracing::info!("admin listening on http://{a}"),
        Err(e) => {
            eprintln!("kvrouter: cannot listen on admin address {admin}: {e}");
            running.shutdown();
            return Err(ExitCode::from(1));
        }
    }
    tracing::info!("{summary}; {} worker threads", running.shared.threads);
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    let mut hup = signal(SignalKind::hangup()).expect("signal handler");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Some(f) = &log_file {
                    if let Err(e) = f.reopen() {
                        eprintln!("kvrouter: cannot reopen log file: {e}");
                    }
                }
                tracing::warn!("SIGHUP: log file reopened; config reload is not implemented yet in this version");
            }
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .ok();
    Ok(())
}
