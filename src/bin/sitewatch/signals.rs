//! Unix signals: SIGINT/SIGTERM cancel the shutdown token (a second one, a moment later, exits at
//! once), SIGHUP asks for a reload.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Exit code when a second signal cuts shutdown short (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

/// Signals this soon after the first are the same request, delivered twice: `timeout` signals
/// its child and then the child's process group, a terminal's Ctrl-C reaches every process of
/// the foreground group, a supervisor may signal the main process and then its group.
const SAME_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

/// Cancelled on the first SIGINT or SIGTERM; another one more than [`SAME_REQUEST`] later exits
/// at once.
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
        let mut first: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            match first {
                None => {
                    tracing::info!("shutdown requested (again to exit at once)");
                    first = Some(std::time::Instant::now());
                    cancel.cancel();
                }
                Some(at) if at.elapsed() < SAME_REQUEST => {
                    tracing::info!("the same shutdown request again (a moment after the first)");
                }
                Some(_) => {
                    tracing::warn!("second signal: exiting at once");
                    std::process::exit(EXIT_INTERRUPTED);
                }
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
