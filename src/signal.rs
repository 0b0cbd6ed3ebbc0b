//! The signals that stop a run (SIGINT, SIGTERM), as the exit code they end it with.

/// Resolves when the process gets SIGINT (130) or SIGTERM (143).
pub async fn interrupted() -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => 130,
        _ = term.recv() => 143,
    }
}

/// The signal's name for messages: "SIGINT" for 130, "SIGTERM" otherwise.
pub fn name(code: u8) -> &'static str {
    if code == 130 { "SIGINT" } else { "SIGTERM" }
}
