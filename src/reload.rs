//! Files that are re-read when their contents change, without a restart: the TLS
//! certificate, key and client CA, the callers file, the suites' corps files and
//! the apps file.
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
/// contents that differ from the last applied (`seen`, at first) to `apply`, which
/// either takes them or says why not: then `target` keeps what it had, the reason
/// is logged once per version and reason, and the same contents are tried again
/// at the next poll. A version can be refused for something outside its own
/// files (a callers file granting an app that a corps file, not yet re-read, is
/// about to add; an app moving from one file to another): retrying until it is
/// taken makes the order in which the files are polled irrelevant. `what` names
/// the files in the log.
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
        let mut last_refusal: Option<(Digest, String)> = None;
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
                // Back to what is in use: a refused version coming again is news.
                last_refusal = None;
                continue;
            }
            let Some(target) = target.upgrade() else {
                return;
            };
            match apply(&target, snapshot.contents) {
                Ok(()) => {
                    seen = snapshot.digest;
                    last_refusal = None;
                    tracing::info!(files = what, "files changed: reloaded");
                }
                // `seen` stays: the next poll tries these contents again.
                Err(error) => {
                    let refusal = (snapshot.digest, error);
                    if last_refusal.as_ref() != Some(&refusal) {
                        tracing::error!(
                            files = what,
                            error = %refusal.1,
                            "files changed but cannot be used; the previous ones stay in use \
                             (tried again at every check)"
                        );
                        last_refusal = Some(refusal);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use super::*;

    /// What a watch was asked to apply.
    #[derive(Default)]
    struct Target {
        refuse: AtomicBool,
        tries: AtomicUsize,
        applied: AtomicUsize,
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen within 5 s");
    }

    #[tokio::test]
    async fn a_refused_version_is_tried_again_until_it_is_taken() {
        let dir = std::env::temp_dir().join(format!("reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file");
        std::fs::write(&path, "v2").unwrap();
        let target = Arc::new(Target::default());
        target.refuse.store(true, Ordering::SeqCst);
        let watched = Arc::downgrade(&target);
        watch(
            "test",
            vec![path],
            Duration::from_millis(10),
            Snapshot::of(vec![b"v1".to_vec()]).digest,
            watched,
            |target: &Target, _| {
                target.tries.fetch_add(1, Ordering::SeqCst);
                if target.refuse.load(Ordering::SeqCst) {
                    return Err("refused for now".to_owned());
                }
                target.applied.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        );
        // The file did not change again, yet its refused version is tried again.
        until("a second try", || target.tries.load(Ordering::SeqCst) >= 3).await;
        assert_eq!(target.applied.load(Ordering::SeqCst), 0);

        // Whatever refused it is gone: taken once, then left alone.
        target.refuse.store(false, Ordering::SeqCst);
        until("the version taken", || {
            target.applied.load(Ordering::SeqCst) == 1
        })
        .await;
        let tries = target.tries.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(target.tries.load(Ordering::SeqCst), tries);
        assert_eq!(target.applied.load(Ordering::SeqCst), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_digest_tells_which_file_holds_which_bytes() {
        let a = Snapshot::of(vec![b"ab".to_vec(), b"c".to_vec()]);
        let b = Snapshot::of(vec![b"a".to_vec(), b"bc".to_vec()]);
        let again = Snapshot::of(vec![b"ab".to_vec(), b"c".to_vec()]);
        assert_ne!(a.digest, b.digest);
        assert_eq!(a.digest, again.digest);
    }
}
