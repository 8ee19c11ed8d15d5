//! The revocation list as the relay follows it: `wharf-relay token revoke` and the admin API
//! write it (also while relays run; `wharf_store::revocations` keeps it); a relay re-reads it
//! when it changed, and open connections holding a revoked token are closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
pub use wharf_store::revocations::{RevocationError, RevocationStore, Revocations, Revoked};

/// Loads the list from `store` and re-reads it every `poll` when it changed, until `stop`;
/// the receiver always holds the latest list.
pub async fn watch(
    store: RevocationStore,
    poll: Duration,
    stop: CancellationToken,
) -> Result<watch::Receiver<Arc<Revocations>>, RevocationError> {
    let mut version = store.data_version().await?;
    let (tx, rx) = watch::channel(Arc::new(store.load().await?));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let reread = async {
                let now = store.data_version().await?;
                if now == version {
                    return Ok::<_, RevocationError>(None);
                }
                version = now;
                store.load().await.map(Some)
            };
            match reread.await {
                Ok(Some(list)) => {
                    tx.send_if_modified(|old| {
                        let changed = **old != list;
                        if changed {
                            tracing::info!("revocation list changed");
                            *old = Arc::new(list);
                        }
                        changed
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot re-read the revocation list"),
            }
        }
        store.close().await;
    });
    Ok(rx)
}
