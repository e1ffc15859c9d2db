//! Files that are re-read when their contents change, without a restart: the TLS
//! certificate, key and client CA, and the callers file.
//!
//! Polling, not file-system events: Kubernetes updates a mounted Secret by swapping
//! a `..data` symlink in the volume's directory, which a watch on the files' own
//! paths never sees, and cert-manager or an operator may replace files in any way.
//! Reading a few small files every few seconds and comparing their digest catches
//! every kind of change and costs nothing.

use std::{io, path::PathBuf, sync::Weak, time::Duration};

use ring::digest::{Context, SHA256};

use crate::telemetry::ErrorChain;

/// What a set of files held when read, and a digest of it all.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Each file's bytes, in the order of the paths.
    pub(crate) contents: Vec<Vec<u8>>,
    /// Identifies the contents: equal digests, equal files.
    pub(crate) digest: Digest,
}

/// SHA-256 over every file, each prefixed with its length.
pub(crate) type Digest = [u8; 32];

impl Snapshot {
    /// Reads the files; the first that cannot be read is the error, named by its path.
    pub(crate) fn read(paths: &[PathBuf]) -> Result<Self, (usize, io::Error)> {
        let contents = paths
            .iter()
            .enumerate()
            .map(|(i, path)| std::fs::read(path).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::of(contents))
    }

    /// The snapshot of contents already read.
    pub(crate) fn of(contents: Vec<Vec<u8>>) -> Self {
        let mut context = Context::new(&SHA256);
        for file in &contents {
            context.update(&(file.len() as u64).to_be_bytes());
            context.update(file);
        }
        let mut digest = [0; 32];
        digest.copy_from_slice(context.finish().as_ref());
        Self { contents, digest }
    }
}

/// Re-reads `paths` every `interval` for as long as `target` lives, and hands
/// contents that differ from the last seen (`seen`, at first) to `apply`, which
/// either takes them or says why not: then `target` keeps what it had, and the
/// reason is logged once per change. `what` names the files in the log.
pub(crate) fn watch<T, F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    seen: Digest,
    target: Weak<T>,
    apply: F,
) where
    T: Send + Sync + 'static,
    F: Fn(&T, Vec<Vec<u8>>) -> Result<(), String> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut seen = seen;
        // One failure reported per distinct cause, not one per poll.
        let mut last_read_error = None;
        loop {
            tokio::time::sleep(interval).await;
            if target.strong_count() == 0 {
                return;
            }
            let read_paths = paths.clone();
            let read = tokio::task::spawn_blocking(move || Snapshot::read(&read_paths)).await;
            let snapshot = match read {
                Ok(Ok(snapshot)) => snapshot,
                Ok(Err((i, error))) => {
                    let report = format!("{}: {}", paths[i].display(), ErrorChain(&error));
                    if last_read_error.as_ref() != Some(&report) {
                        tracing::error!(
                            files = what,
                            error = %report,
                            "cannot re-read the files; the previous ones stay in use"
                        );
                        last_read_error = Some(report);
                    }
                    continue;
                }
                // The runtime is shutting down.
                Err(_) => return,
            };
            last_read_error = None;
            if snapshot.digest == seen {
                continue;
            }
            seen = snapshot.digest;
            let Some(target) = target.upgrade() else {
                return;
            };
            match apply(&target, snapshot.contents) {
                Ok(()) => tracing::info!(files = what, "files changed: reloaded"),
                Err(error) => tracing::error!(
                    files = what,
                    %error,
                    "files changed but cannot be used; the previous ones stay in use"
                ),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_tells_which_file_holds_which_bytes() {
        let a = Snapshot::of(vec![b"ab".to_vec(), b"c".to_vec()]);
        let b = Snapshot::of(vec![b"a".to_vec(), b"bc".to_vec()]);
        let again = Snapshot::of(vec![b"ab".to_vec(), b"c".to_vec()]);
        assert_ne!(a.digest, b.digest);
        assert_eq!(a.digest, again.digest);
    }
}
