//! Logging setup: tracing to stderr or to a file that SIGHUP reopens for logrotate, with the
//! level and the file changeable by a config reload.
//!
//! Where the level comes from, first match wins: `RUST_LOG`, then `-v N` when given (twemproxy's
//! levels: up to 3 error, 4 warn, 5 and 6 info, 7 debug, 8 and above trace), then the config's
//! `log.level`, else `info`. The file: `-o FILE`, else the config's `log.file`, else stderr.
//! The format: `--log-format`, else the config's `log.format`, else text; `json` writes one
//! JSON object per line (`timestamp`, `level`, `target`, `fields` with `message`), for log
//! pipelines. Both formats are installed at start and a flag picks one, so a reload can switch.
//!
//! Client-supplied text (user names, keys, commands) goes into a line only through
//! [`untrusted`]: quoted, escaped and truncated, so a newline cannot forge a line and a 10 kB
//! name costs a few dozen bytes. Failures a client can repeat at will are logged through a
//! [`LogLimit`]: one line per interval, with the count of those left out (metrics still count
//! every one).

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Where log lines go: stderr or a file, switchable at run time.
enum Target {
    Stderr,
    File { path: PathBuf, file: File },
}

/// The shared log destination (the subscriber's writer).
#[derive(Clone)]
pub struct LogTarget(Arc<Mutex<Target>>);

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogTarget {
    fn lock(&self) -> std::sync::MutexGuard<'_, Target> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log file, if logging to one.
    pub fn path(&self) -> Option<PathBuf> {
        match &*self.lock() {
            Target::Stderr => None,
            Target::File { path, .. } => Some(path.clone()),
        }
    }

    /// Reopen the file by name (after logrotate moved it away); nothing for stderr.
    pub fn reopen(&self) -> io::Result<()> {
        let mut t = self.lock();
        if let Target::File { path, file } = &mut *t {
            *file = open_append(path)?;
        }
        Ok(())
    }
}

pub struct LogWriter(Arc<Mutex<Target>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Target::Stderr => io::stderr().write(buf),
            Target::File { file, .. } => file.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Target::Stderr => io::stderr().flush(),
            Target::File { file, .. } => file.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogTarget {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

/// How many bytes of a client-supplied string a log line shows.
pub const UNTRUSTED_MAX: usize = 64;

/// Client-supplied bytes as a log field: see [`untrusted`].
pub struct Untrusted<'a>(&'a [u8]);

/// Client-supplied bytes for a log line: in double quotes, printable ASCII as is, `"` and `\`
/// escaped, anything else as `\n`, `\r`, `\t` or `\xHH`; past [`UNTRUSTED_MAX`] bytes cut, with
/// the full length shown (`"abc"...(10240 bytes)`).
pub fn untrusted(b: &[u8]) -> Untrusted<'_> {
    Untrusted(b)
}

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        f.write_char('"')?;
        for &c in &self.0[..self.0.len().min(UNTRUSTED_MAX)] {
            match c {
                b'"' => f.write_str("\\\"")?,
                b'\\' => f.write_str("\\\\")?,
                b'\n' => f.write_str("\\n")?,
                b'\r' => f.write_str("\\r")?,
                b'\t' => f.write_str("\\t")?,
                b' '..=b'~' => f.write_char(c as char)?,
                _ => write!(f, "\\x{c:02x}")?,
            }
        }
        f.write_char('"')?;
        if self.0.len() > UNTRUSTED_MAX {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// At most one log line per interval for one kind of event a client can repeat at will (a
/// failed AUTH, a failed TLS handshake), shared by every worker, without a lock.
pub struct LogLimit {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] before which no line is written.
    next: AtomicU64,
    /// Events left out since the last line.
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimit {
    pub const fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval_ms: interval.as_millis() as u64,
            next: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// For one event: `Some(n)` when a line may be written now (`n` events were left out
    /// since the last line: log it with the line), None when this one is left out (counted).
    pub fn check(&self) -> Option<u64> {
        let now = epoch().elapsed().as_millis() as u64;
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The tracing level for twemproxy's `-v N`.
pub fn level_for_verbosity(v: u8) -> &'static str {
    match v {
        0..=3 => "error",
        4 => "warn",
        5 | 6 => "info",
        7 => "debug",
        _ => "trace",
    }
}

/// The installed logging: the filter and the destination, adjustable by reloads.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    target: LogTarget,
    /// What the command line fixed (these win over the config).
    env_filter: Option<String>,
    cli_verbosity: Option<u8>,
    cli_output: Option<PathBuf>,
    cli_format: Option<LogFormat>,
    /// The filter text in force.
    current: Mutex<String>,
    /// Lines are JSON (else text).
    json: Arc<AtomicBool>,
}

/// A log change checked and prepared (file opened) but not applied yet.
pub struct Prepared {
    filter: Option<(String, EnvFilter)>,
    /// None: the destination stays; Some(None): back to stderr; Some(Some(..)): a new file.
    file: Option<Option<(PathBuf, File)>>,
    /// The format to switch to, if it changes.
    format: Option<LogFormat>,
}

impl Logging {
    /// Install the global subscriber.
    pub fn init(
        cli_verbosity: Option<u8>,
        cli_output: Option<&Path>,
        cli_format: Option<LogFormat>,
        config: &LogConfig,
    ) -> io::Result<Logging> {
        let env_filter = std::env::var("RUST_LOG")
            .ok()
            .filter(|v| EnvFilter::try_new(v).is_ok());
        let text = filter_text(env_filter.as_deref(), cli_verbosity, config);
        let filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
        let (filter_layer, handle) = reload::Layer::new(filter);
        let file = cli_output.map(Path::to_path_buf).or(config.file.clone());
        let target = match &file {
            None => Target::Stderr,
            Some(p) => Target::File {
                path: p.clone(),
                file: open_append(p)?,
            },
        };
        let ansi = file.is_none() && io::stderr().is_terminal();
        let target = LogTarget(Arc::new(Mutex::new(target)));
        let format = cli_format.or(config.format).unwrap_or_default();
        let json = Arc::new(AtomicBool::new(format == LogFormat::Json));
        let (is_json, is_text) = (json.clone(), json.clone());
        tracing_subscriber::registry()
            .with(filter_layer)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(target.clone())
                    .with_filter(filter_fn(move |_| !is_text.load(Ordering::Relaxed))),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(target.clone())
                    .with_filter(filter_fn(move |_| is_json.load(Ordering::Relaxed))),
            )
            .init();
        Ok(Logging {
            filter: handle,
            target,
            env_filter,
            cli_verbosity,
            cli_output: cli_output.map(Path::to_path_buf),
            cli_format,
            current: Mutex::new(text),
            json,
        })
    }

    /// Check a reloaded config's `log` section and open its file; nothing changes yet.
    pub fn prepare(&self, config: &LogConfig) -> Result<Prepared, String> {
        let text = filter_text(self.env_filter.as_deref(), self.cli_verbosity, config);
        let filter = if *self.current.lock().unwrap_or_else(|e| e.into_inner()) == text {
            None
        } else {
            let f = EnvFilter::try_new(&text).map_err(|e| format!("log.level '{text}': {e}"))?;
            Some((text, f))
        };
        let file = match (&self.cli_output, &config.file) {
            (Some(_), _) => None,
            // The file was taken out of the config: back to stderr.
            (None, None) => self.target.path().map(|_| None),
            (None, Some(p)) if self.target.path().as_deref() == Some(p.as_path()) => None,
            (None, Some(p)) => Some(Some((
                p.clone(),
                open_append(p).map_err(|e| format!("cannot open log file {}: {e}", p.display()))?,
            ))),
        };
        let format = self.cli_format.or(config.format).unwrap_or_default();
        let format = (format != self.format()).then_some(format);
        Ok(Prepared {
            filter,
            file,
            format,
        })
    }

    /// The line format in force.
    pub fn format(&self) -> LogFormat {
        if self.json.load(Ordering::Relaxed) {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }

    /// Apply a prepared change.
    pub fn commit(&self, p: Prepared) {
        if let Some(f) = p.format {
            self.json.store(f == LogFormat::Json, Ordering::Relaxed);
            tracing::info!(format = f.name(), "log format changed");
        }
        if let Some((text, f)) = p.filter {
            if self.filter.reload(f).is_ok() {
                tracing::info!(filter = %text, "log level changed");
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = text;
            }
        }
        match p.file {
            Some(Some((path, file))) => {
                tracing::info!(file = %path.display(), "logging to a new file");
                *self.target.lock() = Target::File { path, file };
            }
            Some(None) => {
                *self.target.lock() = Target::Stderr;
                tracing::info!("logging to stderr");
            }
            None => {}
        }
    }

    /// Reopen the log file (SIGHUP, for logrotate).
    pub fn reopen(&self) -> io::Result<()> {
        self.target.reopen()
    }
}

fn filter_text(env: Option<&str>, cli: Option<u8>, config: &LogConfig) -> String {
    if let Some(e) = env {
        return e.to_string();
    }
    let level = match cli {
        Some(v) => level_for_verbosity(v).to_string(),
        None => config.level.clone().unwrap_or_else(|| "info".to_string()),
    };
    // The file watcher's crate says at INFO that a watch it removes at shutdown was already
    // gone: noise at the default level.
    if level == "info" {
        return "info,notify=warn".to_string();
    }
    level
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_quoted_escaped_and_cut() {
        assert_eq!(untrusted(b"bob").to_string(), "\"bob\"");
        assert_eq!(
            untrusted(b"a\nWARN forged \"x\"\\\r\t\x00\xff").to_string(),
            "\"a\\nWARN forged \\\"x\\\"\\\\\\r\\t\\x00\\xff\""
        );
        let long = untrusted(&[b'n'; 10_240]).to_string();
        assert_eq!(
            long,
            format!("\"{}\"...(10240 bytes)", "n".repeat(UNTRUSTED_MAX))
        );
        // Escapes at most quadruple the shown bytes: a line stays short whatever the input.
        assert!(untrusted(&[0u8; 10_240]).to_string().len() < 4 * UNTRUSTED_MAX + 32);
    }

    #[test]
    fn log_limit_lets_one_line_per_interval_and_counts_the_rest() {
        let limit = LogLimit::new(Duration::from_millis(200));
        assert_eq!(limit.check(), Some(0));
        for _ in 0..999 {
            assert_eq!(limit.check(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limit.check(), Some(999));
        assert_eq!(limit.check(), None);
    }

    #[test]
    fn precedence_env_then_flag_then_config() {
        let cfg = LogConfig {
            level: Some("debug".into()),
            ..LogConfig::default()
        };
        assert_eq!(filter_text(Some("trace"), Some(4), &cfg), "trace");
        assert_eq!(filter_text(None, Some(4), &cfg), "warn");
        assert_eq!(filter_text(None, None, &cfg), "debug");
        assert_eq!(
            filter_text(None, None, &LogConfig::default()),
            "info,notify=warn"
        );
    }
}
