//! Watching files the way they change in production: by their directories (Kubernetes replaces
//! a mounted ConfigMap or Secret by swapping a symlink in the directory; editors and deployment
//! tools write a new file and rename it), so the files' own inodes are not what to watch.

use std::path::{Path, PathBuf};

/// Why files cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// No watcher could be made.
    #[error("cannot watch the {what}: {source}")]
    Start {
        /// What the files are.
        what: String,
        /// Cause.
        source: notify::Error,
    },
    /// A directory cannot be watched.
    #[error("cannot watch {} for {what} changes: {source}", .dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What the files are.
        what: String,
        /// Cause.
        source: notify::Error,
    },
}

/// Calls `on_change` for every change (not mere reads) in the directories of `files`. Watching
/// stops when the returned watcher is dropped. `what` names the files in errors.
pub fn directories_of(
    files: &[&Path],
    what: &str,
    on_change: impl Fn() + Send + 'static,
) -> Result<notify::RecommendedWatcher, WatchError> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            on_change();
        }
    })
    .map_err(|source| WatchError::Start {
        what: what.to_owned(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = files.iter().map(|p| directory_of(p)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Directory {
                dir: dir.clone(),
                what: what.to_owned(),
                source,
            })?;
    }
    Ok(watcher)
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
