//! Error formatting shared by both halves of the pipeline.

use std::fmt;

/// Formats an error and all its sources on one line (`a: b: c`), for logs: the driver's own
/// `Display` often says only "db error" and keeps the cause in the source chain.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
