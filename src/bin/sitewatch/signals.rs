//! Unix signals: SIGINT/SIGTERM cancel the shutdown token (a second one exits at once), SIGHUP
//! asks for a reload.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Exit code when a second signal cuts shutdown short (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

/// Cancelled on the first SIGINT or SIGTERM; a second one exits at once.
pub fn shutdown() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        for count in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if count == 0 {
                tracing::info!("shutdown requested (again to exit at once)");
                cancel.cancel();
            } else {
                tracing::warn!("second signal: exiting at once");
                std::process::exit(EXIT_INTERRUPTED);
            }
        }
    });
    token
}

/// One message per SIGHUP.
pub fn reload() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot install the SIGHUP handler");
            return;
        };
        while hup.recv().await.is_some() {
            // A reload already pending covers this one too.
            let _ = tx.try_send(());
        }
    });
    rx
}
