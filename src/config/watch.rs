//! Watching the config file for changes (notify). The parent directory is watched, not the
//! file: editors save by writing a new file and renaming it over the old one, and Kubernetes
//! swaps a `..data` symlink, so a watch on the file itself would go stale after the first
//! change. Events are only a hint: the caller debounces them and compares the file's content.

use std::ffi::OsString;
use std::path::Path;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A live watch; dropping it stops watching.
pub struct ConfigWatch {
    _watcher: RecommendedWatcher,
    /// One message per relevant event in the config's directory.
    pub events: mpsc::UnboundedReceiver<()>,
}

/// Watch `path`'s directory for events that may have changed `path`.
pub fn watch(path: &Path) -> notify::Result<ConfigWatch> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name: Option<OsString> = path.file_name().map(|n| n.to_os_string());
    let (tx, events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return; // reading the file (our own reload does) changes nothing
        }
        let relevant = ev.paths.is_empty()
            || ev.paths.iter().any(|p| match p.file_name() {
                None => true,
                Some(f) => Some(f) == name.as_deref() || f.to_string_lossy().starts_with(".."),
            });
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(ConfigWatch {
        _watcher: watcher,
        events,
    })
}
