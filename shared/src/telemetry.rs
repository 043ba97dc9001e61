//! Tracing setup shared by the Lambda functions and the CLI. Record
//! contents are never logged at info level: they may hold personal data.

use tracing_subscriber::{fmt, EnvFilter};

/// JSON logs for CloudWatch (Lambda), level from `RUST_LOG` (default info).
pub fn init_lambda() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Human-readable logs on stderr for local runs (default warn, so the
/// progress bar and summary stay readable).
pub fn init_cli() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// An error and all its sources, `: `-separated, for logs and reports.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}
