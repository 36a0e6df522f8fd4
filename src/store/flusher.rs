//! The store's background flusher: one std thread that makes sled's buffered writes durable
//! every `flush_every`, and once more when the store is dropped. It owns nothing but a handle
//! to the database's [`Durable`] flush; it never runs on the async runtime and never outlives
//! the store.

use super::watermark::Durable;
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub(crate) struct Flusher {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(db: Arc<Durable>, every: Duration) -> std::io::Result<Flusher> {
        let (stop, stopped) = bounded::<()>(1);
        let handle = std::thread::Builder::new()
            .name("deja-store-flush".to_string())
            .spawn(move || loop {
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = db.flush() {
                            tracing::error!(error = %e, "store flush failed");
                        }
                    }
                    // Stop requested or the store is gone: one last flush, then exit.
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                        if let Err(e) = db.flush() {
                            tracing::error!(error = %e, "final store flush failed");
                        }
                        return;
                    }
                }
            })?;
        Ok(Flusher {
            stop: Some(stop),
            handle: Some(handle),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                tracing::error!("store flusher thread panicked");
            }
        }
    }
}
