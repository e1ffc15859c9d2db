//! Every upgrade and cancel leaves an audit event, whatever its outcome.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use tracing_subscriber::fmt::MakeWriter;

use crate::helpers::*;

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    /// The audit events written so far, as JSON objects.
    fn audit_events(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["target"] == "audit")
            .collect()
    }
}

// A current-thread runtime runs the server's tasks on this thread, so the
// thread's default subscriber sees the gateway's events.
#[tokio::test(flavor = "current_thread")]
async fn upgrades_and_cancels_are_audited_with_their_outcome() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("audit=info")
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut app = spawn_app().await;

    app.client
        .upgrade_service(member_upgrade("zhangsan", ""))
        .await
        .unwrap();
    app.client
        .upgrade_service(member_upgrade("wangwu", ""))
        .await
        .unwrap_err();
    app.client.cancel_upgrade(cancel()).await.unwrap();

    let events = captured.audit_events();
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("upgrade", "Ok"),
            ("upgrade", "FailedPrecondition"),
            ("cancel", "Ok")
        ]
    );
    let first = &events[0];
    assert_eq!(first["app"], "default");
    assert_eq!(first["open_kfid"], OPEN_KFID);
    assert_eq!(first["external_userid"], EXTERNAL_USERID);
    assert_eq!(first["recommended"], "member zhangsan");
    assert!(
        first["peer"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:"),
        "{first}"
    );
    assert!(
        events[2].get("recommended").is_none(),
        "a cancel recommends nobody"
    );
}
