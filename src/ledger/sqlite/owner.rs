//! One owner per ledger file, and noticing when the file is taken away.
//!
//! Two writers would each trust their own in-memory balances (overspending
//! together), and the second would count the first's in-flight reservations
//! as orphans. So `open` takes an exclusive advisory lock (`flock`) on the
//! database file itself: no side file that could be deleted, and the
//! operating system drops the lock when the process dies, even by `kill -9`.
//! SQLite locks with `fcntl` byte-range locks, which Linux keeps apart from
//! `flock` locks, so readers such as `viewgate usage` are not blocked. (On
//! NFS, Linux emulates `flock` with `fcntl`; a ledger in WAL mode must be on
//! a local filesystem anyway, for its shared memory.)
//!
//! `fcntl` locks belong to a process, and closing ANY descriptor of a file
//! drops all of them. So this process never opens and closes a descriptor
//! of a ledger file it serves: a second open of the same file in one process
//! is refused from a registry of held files (device and inode), looked up
//! with `stat` before any descriptor is opened; and the lock's descriptor is
//! closed only after the SQLite connection (see the writer's field order).
//!
//! While serving, a thread compares the device and inode that the path
//! names with those of the open file once a second. If the file or its
//! directory vanished or was replaced, SQLite would go on writing to a file
//! nobody can reach: the ledger turns unavailable for new spend (reserve and
//! idempotency claims answer `Unavailable`, `health` fails), and says so in
//! one error log line.

use std::collections::HashSet;
use std::fs::{File, Metadata, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use super::unavailable;
use crate::ledger::LedgerError;

/// How often the path is compared with the open file.
pub(super) const WATCH_EVERY: Duration = Duration::from_secs(1);

/// A file's identity: device and inode.
type FileId = (u64, u64);

/// The ledger files this process holds.
fn held() -> MutexGuard<'static, HashSet<FileId>> {
    static HELD: OnceLock<Mutex<HashSet<FileId>>> = OnceLock::new();
    // Each update is one set insert or remove: a panic cannot leave it half done.
    HELD.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

#[cfg(unix)]
fn identity(meta: &Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(_meta: &Metadata) -> Option<FileId> {
    // No inode to compare: no registry, and no watch.
    None
}

/// The lock on a ledger file, held while the returned value lives.
#[derive(Debug)]
pub(super) struct Ownership {
    /// The locked descriptor. Closed last: see the module notes.
    _file: File,
    id: Option<FileId>,
}

impl Ownership {
    /// A watch on the path of the file this ownership holds.
    pub(super) fn watch(&self, path: &Path) -> Watch {
        let companion = |suffix: &str| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            (PathBuf::from(name), None)
        };
        Watch {
            path: path.to_path_buf(),
            id: self.id,
            companions: Mutex::new(vec![companion("-wal"), companion("-shm")]),
            lost: OnceLock::new(),
        }
    }
}

impl Drop for Ownership {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            held().remove(&id);
        }
    }
}

/// Locks the ledger file at `path` (creating it if missing) for this open.
pub(super) fn take_ownership(path: &Path) -> Result<Ownership, LedgerError> {
    let in_use = || {
        unavailable(
            path,
            "is in use by another ledger (a viewgate process holds its lock)",
        )
    };
    // Before opening anything: closing a descriptor of a file this process
    // serves would drop SQLite's locks on it.
    let before = std::fs::metadata(path).ok().and_then(|m| identity(&m));
    if before.is_some_and(|id| held().contains(&id)) {
        return Err(in_use());
    }
    // Read-only when it exists (a lock needs no more; SQLite says whether the
    // file can be written), created otherwise.
    let file = match File::open(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path),
        opened => opened,
    }
    .map_err(|e| unavailable(path, format!("cannot open: {e}")))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(in_use()),
        Err(TryLockError::Error(e)) => {
            return Err(unavailable(path, format!("cannot lock it: {e}")));
        }
    }
    let id = file.metadata().ok().and_then(|m| identity(&m));
    if let Some(id) = id {
        // The path may have been pointed at another file since it was opened.
        let now = std::fs::metadata(path).ok().and_then(|m| identity(&m));
        if now != Some(id) {
            return Err(unavailable(path, "was replaced while it was being opened"));
        }
        if !held().insert(id) {
            return Err(in_use());
        }
    }
    Ok(Ownership { _file: file, id })
}

/// Whether the path still names the open ledger file.
#[derive(Debug)]
pub(super) struct Watch {
    path: PathBuf,
    id: Option<FileId>,
    /// SQLite's `-wal` and `-shm` files, and their identity once seen. While
    /// a connection is open they are never removed or replaced by SQLite;
    /// if someone else does it, the commits still in the write-ahead log
    /// are gone at the next start, so the ledger must stop taking spend.
    companions: Mutex<Vec<(PathBuf, Option<FileId>)>>,
    /// Set once, the first time the file is found gone; never cleared.
    lost: OnceLock<LedgerError>,
}

impl Watch {
    /// Why the ledger is unavailable, once the file was found gone.
    pub(super) fn lost(&self) -> Option<&LedgerError> {
        self.lost.get()
    }

    /// Compares the path with the open file now (one `stat`); the first
    /// time they differ, logs it and marks the ledger lost for good: a
    /// new file at the path is not the one this process has open.
    pub(super) fn check(&self) -> Result<(), LedgerError> {
        if let Some(error) = self.lost.get() {
            return Err(error.clone());
        }
        let Some(id) = self.id else {
            return Ok(());
        };
        let reason = match std::fs::metadata(&self.path) {
            Ok(meta) if identity(&meta) == Some(id) => match self.companion_gone() {
                None => return Ok(()),
                Some(reason) => reason,
            },
            Ok(_) => "was replaced by another file".to_string(),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                "was removed (or its directory was)".to_string()
            }
            Err(e) => format!("can no longer be found at its path ({e})"),
        };
        let error = unavailable(
            &self.path,
            format!(
                "{reason} while viewgate was using it; no new spend is recorded until \
                 viewgate is restarted"
            ),
        );
        if self.lost.set(error.clone()).is_ok() {
            tracing::error!(
                error = %error,
                "the ledger file is gone; misses answer 503 and /readyz fails"
            );
        }
        Err(error)
    }
}

impl Watch {
    /// Why a `-wal` or `-shm` file once seen is no longer the same file.
    fn companion_gone(&self) -> Option<String> {
        let mut companions = self.companions.lock().unwrap_or_else(|e| e.into_inner());
        for (path, seen) in companions.iter_mut() {
            let now = std::fs::metadata(&*path).ok().and_then(|m| identity(&m));
            match (*seen, now) {
                (None, now) => *seen = now,
                (Some(was), Some(now)) if was == now => {}
                (Some(_), _) => {
                    return Some(format!(
                        "lost its write-ahead file {} (removed or replaced)",
                        path.display()
                    ));
                }
            }
        }
        None
    }
}

/// The thread that checks a [`Watch`] every `every`; it ends once the
/// file is lost or the returned sender is dropped.
pub(super) fn spawn_watcher(
    watch: Arc<Watch>,
    every: Duration,
) -> std::io::Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    // Now, before any request: the write-ahead files exist once the schema
    // is in place, and are recorded as they are.
    let _ = watch.check();
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("viewgate-ledger-watch".into())
        .spawn(move || {
            // Real time, not the ledger's clock: this watches the filesystem.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                if watch.check().is_err() {
                    return;
                }
            }
        })?;
    Ok((stop, thread))
}
