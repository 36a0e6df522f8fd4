//! Connections the lookup thread drives itself, for the two statements every lookup runs (the
//! exact key and the in-scope search).
//!
//! Through the pool, a query goes from the calling thread to the connection's task on the
//! backend's runtime, which writes it, wakes when the answer arrives and wakes the caller: two
//! thread wake-ups besides the database's own, each tens of microseconds on a small VM where
//! the threads sleep between requests. A direct connection owns a current-thread runtime: the
//! calling (blocking) thread writes the query, waits for the answer in its own `epoll_wait` and
//! reads it, so the database's process is the only other party.
//!
//! - **Bounded**: at most `max` connections, counted in `cache.postgres.pool_size` (the pool
//!   has the rest); when all are busy a lookup takes the pool's path.
//! - **Timeouts**: a call, connecting included, is bounded by the statement timeout on the
//!   client's side too. A connection that timed out is dropped (its answer may still come);
//!   one the server answered with an error is kept (the statement is over).
//! - **Reconnects**: a connection found closed since its last use (the database restarted,
//!   an administrator ended it) is replaced once, within the same deadline.
//! - A connection is dropped on whichever thread lets it go, without blocking: its runtime is
//!   shut down in the background.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use parking_lot::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::PgError;

/// The statements a direct connection prepares when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stmt {
    Exact = 0,
    Nearest = 1,
}

type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

struct Conn {
    client: Client,
    /// The connection's I/O: polled only while one of its calls runs.
    driver: Driver,
    statements: [Statement; 2],
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Why a call failed: a closed connection may be replaced and the call retried.
enum Failure {
    Closed(PgError),
    Other(PgError),
    /// The server refused the statement; the connection is fine.
    Refused(PgError),
}

/// Polls `work` and the connection's I/O together until `work` is done, the connection ends or
/// the deadline passes.
async fn drive<T>(
    op: &'static str,
    driver: &mut Driver,
    deadline: Instant,
    work: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    let work = pin!(work);
    let both = select(work, driver.as_mut());
    match tokio::time::timeout(left, both).await {
        Err(_) => Err(Failure::Other(PgError::Timeout {
            op,
            ms: left.as_millis(),
        })),
        Ok(Either::Left((Ok(v), _))) => Ok(v),
        Ok(Either::Left((Err(e), _))) if e.is_closed() => Err(Failure::Closed(PgError::db(op)(e))),
        Ok(Either::Left((Err(e), _))) if e.as_db_error().is_some() => {
            Err(Failure::Refused(PgError::db(op)(e)))
        }
        Ok(Either::Left((Err(e), _))) => Err(Failure::Other(PgError::db(op)(e))),
        Ok(Either::Right((ended, _))) => Err(Failure::Closed(match ended {
            Err(e) => PgError::db(op)(e),
            Ok(()) => PgError::Db {
                op,
                message: "the connection was closed".into(),
            },
        })),
    }
}

pub(super) struct Direct {
    config: tokio_postgres::Config,
    /// Indexed by [`Stmt`].
    sql: [String; 2],
    idle: Mutex<Vec<Conn>>,
    /// Connections open (idle or in a call).
    open: AtomicUsize,
    max: usize,
}

impl Direct {
    /// `exact` and `nearest` are prepared on every connection.
    pub fn new(config: tokio_postgres::Config, exact: String, nearest: String, max: usize) -> Self {
        Direct {
            config,
            sql: [exact, nearest],
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// Connections open now (tests).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Opens one connection now, so the first lookup does not pay for it. Blocking.
    pub fn warm(&self, timeout: Duration) -> Result<(), PgError> {
        if !self.reserve() {
            return Ok(());
        }
        match self.connect("connect", Instant::now() + timeout) {
            Ok(c) => {
                self.idle.lock().push(c);
                Ok(())
            }
            Err(e) => {
                self.open.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Runs `which` with `params` on a direct connection, within `timeout`. `None`: every
    /// direct connection is busy (take the pool). Blocking: call it from a blocking thread.
    pub fn query(
        &self,
        op: &'static str,
        which: Stmt,
        params: &[&(dyn ToSql + Sync)],
        timeout: Duration,
    ) -> Option<Result<Vec<Row>, PgError>> {
        let deadline = Instant::now() + timeout;
        let taken = self.idle.lock().pop();
        let (mut conn, mut reused) = match taken {
            Some(c) => (c, true),
            None if self.reserve() => match self.connect(op, deadline) {
                Ok(c) => (c, false),
                Err(e) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    return Some(Err(e));
                }
            },
            None => return None,
        };
        loop {
            let Conn {
                client,
                driver,
                statements,
                runtime,
            } = &mut conn;
            // The runtime is taken only by `Drop`.
            let Some(rt) = runtime.as_ref() else {
                self.open.fetch_sub(1, Ordering::Relaxed);
                return None;
            };
            let st = &statements[which as usize];
            let out = rt.block_on(drive(op, driver, deadline, client.query(st, params)));
            match out {
                Ok(rows) => {
                    self.idle.lock().push(conn);
                    return Some(Ok(rows));
                }
                Err(Failure::Refused(e)) => {
                    self.idle.lock().push(conn);
                    return Some(Err(e));
                }
                Err(Failure::Closed(_)) if reused => {
                    // Closed while idle: one fresh connection, same deadline.
                    drop(conn);
                    reused = false;
                    conn = match self.connect(op, deadline) {
                        Ok(c) => c,
                        Err(e) => {
                            self.open.fetch_sub(1, Ordering::Relaxed);
                            return Some(Err(e));
                        }
                    };
                }
                Err(Failure::Closed(e) | Failure::Other(e)) => {
                    drop(conn);
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    return Some(Err(e));
                }
            }
        }
    }

    /// Takes a slot for one more connection, if there is one.
    fn reserve(&self) -> bool {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A new connection with its statements prepared, by `deadline`.
    fn connect(&self, op: &'static str, deadline: Instant) -> Result<Conn, PgError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PgError::Db {
                op,
                message: format!("cannot start a connection's runtime: {e}"),
            })?;
        let opened = rt.block_on(async {
            let left = deadline.saturating_duration_since(Instant::now());
            let (client, connection) =
                match tokio::time::timeout(left, self.config.connect(NoTls)).await {
                    Ok(r) => r.map_err(PgError::db(op))?,
                    Err(_) => {
                        return Err(PgError::Timeout {
                            op,
                            ms: left.as_millis(),
                        })
                    }
                };
            let mut driver: Driver = Box::pin(connection);
            let [exact, nearest] = &self.sql;
            let prepared = async {
                let exact = client.prepare(exact).await?;
                Ok::<_, tokio_postgres::Error>((exact, client.prepare(nearest).await?))
            };
            match drive(op, &mut driver, deadline, prepared).await {
                Ok((exact, nearest)) => Ok((client, driver, [exact, nearest])),
                Err(Failure::Closed(e) | Failure::Other(e) | Failure::Refused(e)) => Err(e),
            }
        });
        match opened {
            Ok((client, driver, statements)) => Ok(Conn {
                client,
                driver,
                statements,
                runtime: Some(rt),
            }),
            Err(e) => {
                rt.shutdown_background();
                Err(e)
            }
        }
    }
}
