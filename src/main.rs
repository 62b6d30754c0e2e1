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
    long_version = long_version(),
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
    /// Log level, twemproxy's scale: 0-3 error, 4 warn, 5-6 info (twemproxy's notice and
    /// info), 7 debug, 8+ trace. Default: the config's `log.level`, else info. RUST_LOG wins.
    #[arg(short = 'v', long = "verbose", value_name = "N")]
    verbose: Option<u8>,
    /// Log file (reopened on SIGHUP); default: the config's `log.file`, else stderr.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Log line format: text, or json (one JSON object per line); default: the config's
    /// `log.format`, else text.
    #[arg(long = "log-format", value_name = "FORMAT", value_parser = kvrouter::config::LogFormat::parse)]
    log_format: Option<kvrouter::config::LogFormat>,
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
        /// Keys sampled by --diff when no keys are given (progress on stderr every million).
        #[arg(long, default_value_t = 100_000)]
        sample: usize,
        /// Keys to place (with --diff: compare, one line per key); `-` reads them from stdin,
        /// one per line.
        keys: Vec<String>,
    },
    /// Print the kvrouter-format equivalent of a config (e.g. a nutcracker.yml): same pools,
    /// listeners and key placement.
    Convert {
        /// The config to convert (either format).
        file: PathBuf,
    },
}

/// `--version`: the version, then what `kvrouter_build_info` says.
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let labels = kvrouter::server::metrics::build_labels();
        let rest: Vec<String> = labels[1..]
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!("{} ({})", labels[0].1, rest.join(", "))
    })
}

/// Where the config is looked for when no `-c` is given: kvrouter's own path, then
/// twemproxy's (so a `nutcracker.service` that starts the binary with no arguments works).
const DEFAULT_CONFIGS: [&str; 2] = [
    "/etc/kvrouter/kvrouter.yml",
    "/etc/nutcracker/nutcracker.yml",
];

/// For tests only: a `:`-separated list that replaces [`DEFAULT_CONFIGS`], so the search can
/// be exercised without writing to /etc.
const TEST_DEFAULT_CONFIGS_ENV: &str = "KVROUTER_TEST_DEFAULT_CONFIGS";

fn default_candidates() -> Vec<PathBuf> {
    match std::env::var_os(TEST_DEFAULT_CONFIGS_ENV) {
        Some(list) => std::env::split_paths(&list).collect(),
        None => DEFAULT_CONFIGS.iter().map(PathBuf::from).collect(),
    }
}

/// The first candidate that is an existing file.
fn first_existing(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

fn keymap(
    config: Option<PathBuf>,
    listener: Option<String>,
    diff: Option<Vec<PathBuf>>,
    sample: usize,
    keys: Vec<String>,
) -> Result<(), ExitCode> {
    use kvrouter::keymap::{self, Mapper};
    use std::io::{BufRead, Write};
    let fail = |e: String| {
        eprintln!("kvrouter keymap: {e}");
        ExitCode::from(1)
    };
    let stdin = keys.iter().any(|k| k == "-");
    if stdin && keys.len() > 1 {
        eprintln!(
            "kvrouter keymap: `-` (keys on stdin) cannot be mixed with keys on the command line"
        );
        return Err(ExitCode::from(2));
    }
    let (old, new) = match &diff {
        Some(pair) => (load(&pair[0])?, Some(load(&pair[1])?)),
        None => {
            let Some(path) = config else {
                eprintln!("kvrouter keymap: -c FILE is required (or --diff OLD NEW)");
                return Err(ExitCode::from(2));
            };
            (load(&path)?, None)
        }
    };
    if keys.is_empty() {
        if let Some(new) = &new {
            let mut progress = |pool: &str, done: usize| {
                eprintln!("kvrouter keymap: pool {pool}: {done}/{sample} keys compared");
            };
            print!("{}", keymap::diff(&old, new, sample, &mut progress));
            return Ok(());
        }
        eprintln!(
            "kvrouter keymap: no keys given: name them (KEY...), or `-` to read one per line from stdin"
        );
        return Err(ExitCode::from(2));
    }
    let mut a = Mapper::new(&old, listener.as_deref()).map_err(fail)?;
    let mut b = match &new {
        Some(n) => Some(Mapper::new(n, listener.as_deref()).map_err(fail)?),
        None => None,
    };
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut one = |key: &[u8]| -> Result<(), String> {
        let pa = a.place(key)?;
        let written = match &mut b {
            None => keymap::write_line(&mut out, key, &pa),
            Some(b) => keymap::write_diff_line(&mut out, key, &pa, &b.place(key)?),
        };
        written.map_err(|e| format!("writing the output: {e}"))
    };
    let result = if stdin {
        let mut input = std::io::stdin().lock();
        let mut line = Vec::with_capacity(256);
        let mut result = Ok(());
        loop {
            line.clear();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    result = Err(format!("reading stdin: {e}"));
                    break;
                }
            }
            let key = line.strip_suffix(b"\n").unwrap_or(&line);
            let key = key.strip_suffix(b"\r").unwrap_or(key);
            if key.is_empty() {
                continue;
            }
            if let Err(e) = one(key) {
                result = Err(e);
                break;
            }
        }
        result
    } else {
        keys.iter().try_for_each(|k| one(k.as_bytes()))
    };
    let result = result.and_then(|()| out.flush().map_err(|e| format!("writing the output: {e}")));
    match result {
        // `keymap ... | head`: the reader is gone, nothing more to say.
        Err(e) if e.contains("Broken pipe") => Ok(()),
        Err(e) => Err(fail(e)),
        Ok(()) => Ok(()),
    }
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
        return keymap(config, listener, diff, sample, keys);
    }
    if let Some(Cmd::Convert { file }) = cli.command {
        let config = load(&file)?;
        print!("{}", kvrouter::config::convert::to_native_yaml(&config));
        return Ok(());
    }

    let (path, defaulted) = match cli.config.clone() {
        Some(p) => (p, false),
        None => match first_existing(&default_candidates()) {
            Some(p) => (p, true),
            None => {
                let tried: Vec<String> = default_candidates()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                eprintln!(
                    "kvrouter: no -c FILE given and no config at the default paths ({}); see --help",
                    tried.join(", ")
                );
                return Err(ExitCode::from(2));
            }
        },
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
    let logging = match kvrouter::logging::Logging::init(
        cli.verbose,
        cli.output.as_deref(),
        cli.log_format,
        &config.log,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kvrouter: cannot open log file: {e}");
            return Err(ExitCode::from(1));
        }
    };
    if defaulted {
        tracing::info!(config = %path.display(), "no -c given: using {}", path.display());
    }
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
    let admin_from_cli =
        cli.admin.is_some() || cli.stats_port.is_some() || cli.stats_addr.is_some();
    let result = rt.block_on(serve(path, config, admin, admin_from_cli, logging));
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
    path: PathBuf,
    config: Config,
    admin: SocketAddr,
    admin_from_cli: bool,
    logging: kvrouter::logging::Logging,
) -> Result<(), ExitCode> {
    use kvrouter::server::{self, inspect};
    use tokio::signal::unix::{signal, SignalKind};
    let summary = config.summary();
    // Watch before the listeners open, so a change made once they accept is never missed.
    let mut watch = match kvrouter::config::watch::watch(&path) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch {} for changes: reload with SIGHUP", path.display());
            None
        }
    };
    let mut last_text = std::fs::read_to_string(&path).unwrap_or_default();
    let registry = kvrouter::admin::metrics::registry();
    let mut running = server::start(config, Some(&registry)).map_err(|e| {
        tracing::error!("{e}");
        eprintln!("kvrouter: {e}");
        ExitCode::from(1)
    })?;
    let shared = running.shared.clone();
    let api = kvrouter::admin::AdminApi {
        health: {
            let s = shared.clone();
            Arc::new(move || server::check_health(&s))
        },
        metrics: {
            let s = shared.clone();
            Arc::new(move || {
                inspect::refresh_gauges(&s);
                kvrouter::admin::metrics::render(&registry)
            })
        },
        pools: {
            let s = shared.clone();
            Arc::new(move || inspect::pools_json(&s))
        },
        config: {
            let s = shared.clone();
            Arc::new(move || s.current().config.to_json_redacted())
        },
        token: {
            let s = shared.clone();
            Arc::new(move || s.current().config.admin_token.clone())
        },
        hotkeys: {
            let s = shared.clone();
            Arc::new(move || server::hot::hotkeys_json(&s))
        },
    };
    match kvrouter::admin::spawn(admin, api).await {
        Ok(a) => tracing::info!("admin listening on http://{a}"),
        Err(e) => {
            eprintln!("kvrouter: cannot listen on admin address {admin}: {e}");
            running.shutdown();
            return Err(ExitCode::from(1));
        }
    }
    tracing::info!("{summary}; {} worker threads", running.shared.threads);
    for l in &running.shared.current().config.listeners {
        let protocol = match l.protocol {
            kvrouter::config::Protocol::Memcache => "memcache",
            kvrouter::config::Protocol::Redis => "redis",
        };
        let pools = l.route.pools().join(", ");
        tracing::info!(
            listen = %l.listen,
            protocol,
            pools = %pools,
            "proxy listening"
        );
    }
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    let mut hup = signal(SignalKind::hangup()).expect("signal handler");
    let reloader = Reloader {
        path: &path,
        admin_from_cli,
        logging: &logging,
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = logging.reopen() {
                    eprintln!("kvrouter: cannot reopen log file: {e}");
                }
                reloader.reload(&mut running, &mut last_text, "SIGHUP", true);
            }
            Some(()) = async { watch.as_mut()?.events.recv().await }, if watch.is_some() => {
                // Debounce: editors and `kubectl apply` touch the directory several times.
                let events = &mut watch.as_mut().expect("guarded").events;
                loop {
                    tokio::select! {
                        e = events.recv() => if e.is_none() { break },
                        _ = tokio::time::sleep(RELOAD_DEBOUNCE) => break,
                    }
                }
                reloader.reload(&mut running, &mut last_text, "config file changed", false);
            }
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .ok();
    Ok(())
}

/// How long the config directory must stay quiet before a change is reloaded.
const RELOAD_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(200);

struct Reloader<'a> {
    path: &'a std::path::Path,
    admin_from_cli: bool,
    logging: &'a kvrouter::logging::Logging,
}

impl Reloader<'_> {
    /// Load, validate and swap in the config file. `always`: reload even when the file's text
    /// is what was last loaded (SIGHUP); a file change with the same text is no reload.
    fn reload(
        &self,
        running: &mut kvrouter::server::Running,
        last_text: &mut String,
        why: &str,
        always: bool,
    ) {
        let text = match std::fs::read_to_string(self.path) {
            Ok(t) => Ok(t),
            Err(e) if !always && e.kind() == std::io::ErrorKind::NotFound => {
                // Mid-rename, or removed: the next event (or SIGHUP) tells.
                tracing::debug!("config file {} is gone for now", self.path.display());
                return;
            }
            Err(e) => Err(format!("{}: cannot read: {e}", self.path.display())),
        };
        if let Ok(t) = &text {
            if !always && t == last_text {
                return;
            }
            last_text.clone_from(t);
        }
        let result = (|| {
            let text = text?;
            let config = Config::parse(self.path, &text).map_err(|e| e.to_string())?;
            let active = running.shared.current();
            if !self.admin_from_cli && config.admin != active.config.admin {
                return Err(format!(
                    "{}: admin.listen changed: this needs a restart (reload refused, the running config stays)",
                    self.path.display()
                ));
            }
            let prepared = self.logging.prepare(&config.log)?;
            let summary = running.reload(config)?;
            self.logging.commit(prepared);
            Ok(summary)
        })();
        running.count_reload(result.is_ok());
        match result {
            Ok(summary) => {
                tracing::info!("config reloaded ({why}): {summary}");
                for p in &summary.pools_changed {
                    tracing::info!(
                        pool = %p.pool,
                        added = ?p.added,
                        removed = ?p.removed,
                        moved_fraction = p.moved.unwrap_or(0.0),
                        "{p}"
                    );
                }
            }
            Err(e) => tracing::error!(
                "config reload failed ({why}); still serving the previous config: {e}"
            ),
        }
    }
}
