//! Audit log metrics (`crate::audit`, issue 16).

use prometheus::{IntCounterVec, Opts, Registry};

pub struct AuditMetrics {
    /// `deja_audit_lines_total{result}`: `written`, `dropped` (the queue was full), `failed`
    /// (the file could not be written).
    pub lines: IntCounterVec,
}

impl AuditMetrics {
    pub(super) fn new(registry: &Registry) -> Result<AuditMetrics, prometheus::Error> {
        let m = AuditMetrics {
            lines: IntCounterVec::new(
                Opts::new(
                    "deja_audit_lines_total",
                    "Audit log lines by result: written, dropped (queue full; requests never \
                     wait for the log), failed (write error).",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.lines.clone()))?;
        Ok(m)
    }
}
