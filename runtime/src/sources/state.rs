//! Where a poll or schedule source keeps what it must remember across a restart (poll's seen
//! ids and validators, schedule's last firing): a file on the local disk (`inputbot run`), or
//! a record in the bot's compacted state topic (in a cluster, so a restarted or moved poller
//! pod resumes where the last one stopped: [`crate::bus::kafka::state`]).
//!
//! ```text
//!  source ─ load() at start ─▶ SourceState ─┬─ File: <state-dir>/<group>.<kind>.json (atomic rename)
//!         ─ save(bytes) ──────▶             └─ Store: topic record keyed <source>.<kind> (acks=all)
//! ```

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::future::BoxFuture;

/// A keyed store of source states, loaded once at start.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// The state saved last under `key`, if any.
    fn load(&self, key: &str) -> Option<Vec<u8>>;
    /// Saves `bytes` under `key`; returns once it is durable.
    fn save<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<(), String>>;
    /// Where `key` is kept, for messages.
    fn describe(&self, key: &str) -> String;
}

/// One source's state: a file, or a key of a [`StateStore`].
#[derive(Clone)]
pub enum SourceState {
    /// A file written atomically (temporary file, fsync, rename).
    File(PathBuf),
    /// A key of a shared store.
    Store {
        /// The store.
        store: Arc<dyn StateStore>,
        /// The source's key.
        key: String,
    },
}

impl std::fmt::Debug for SourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Where the sources of one bot keep their states.
#[derive(Clone)]
pub enum StateRoot {
    /// Files `<dir>/inputbot.<ns>.<bot>.<source>.<kind>.json`.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The bot's namespace.
        namespace: String,
        /// The bot's name.
        bot: String,
    },
    /// Keys `<source>.<kind>` of a shared store (the bot's state topic).
    Store(Arc<dyn StateStore>),
}

impl StateRoot {
    /// The state of source `source` of kind `kind` (`poll`, `schedule`).
    pub fn source(&self, source: &str, kind: &str) -> SourceState {
        match self {
            StateRoot::Dir {
                dir,
                namespace,
                bot,
            } => SourceState::File(dir.join(format!(
                "{}.{kind}.json",
                inputbot_api::names::consumer_group(namespace, bot, source)
            ))),
            StateRoot::Store(store) => SourceState::Store {
                store: store.clone(),
                key: format!("{source}.{kind}"),
            },
        }
    }
}

impl From<PathBuf> for SourceState {
    fn from(path: PathBuf) -> Self {
        SourceState::File(path)
    }
}

impl SourceState {
    /// Where the state is kept, for messages: the file, or the topic and key.
    pub fn describe(&self) -> String {
        match self {
            SourceState::File(p) => p.display().to_string(),
            SourceState::Store { store, key } => store.describe(key),
        }
    }

    /// The state saved last; `None` on a fresh start.
    pub fn load(&self) -> Result<Option<Vec<u8>>, String> {
        match self {
            SourceState::File(path) => match std::fs::read(path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read: {e}")),
            },
            SourceState::Store { store, key } => Ok(store.load(key)),
        }
    }

    /// Saves `bytes`; returns once they are durable.
    pub async fn save(&self, bytes: Vec<u8>) -> Result<(), String> {
        match self {
            SourceState::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    write_atomically(&path, &bytes).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| format!("the writer task failed: {e}"))?
            }
            SourceState::Store { store, key } => store.save(key, bytes).await,
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "source-state".into());
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_state_is_absent_at_first_and_then_what_was_saved_last() {
        let dir = tempfile::tempdir().unwrap();
        let state = SourceState::from(dir.path().join("sub/s.json"));
        assert_eq!(state.load().unwrap(), None);
        state.save(b"one".to_vec()).await.unwrap();
        state.save(b"two".to_vec()).await.unwrap();
        assert_eq!(state.load().unwrap().as_deref(), Some(&b"two"[..]));
        let leftovers = std::fs::read_dir(dir.path().join("sub")).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
    }
}
