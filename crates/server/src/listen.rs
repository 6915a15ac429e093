//! The accept loop: HTTP/1.1 connections served by hyper with a header
//! timeout (which also closes idle keep-alive connections), a cap on open
//! connections, and graceful shutdown of every connection it started.
//!
//! axum's `serve` has no knobs for these, so the loop is written against
//! hyper directly, as axum's `serve-with-hyper` example does: one
//! `http1::Builder` with a tokio timer, `TowerToHyperService` around the
//! router, and `hyper_util`'s `GracefulShutdown` watching each connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;

/// How long a refused connection may take to receive its 503.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Serve `app` on `listener` until `shutdown` resolves; then stop accepting
/// and return once every connection has finished its request (idle ones
/// close at once), or after `drain`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    metrics: Arc<Metrics>,
    limits: &crate::Limits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_timeout_ms));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_refused();
            tokio::spawn(refuse(stream, limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _open = metrics.connection_opened();
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    metrics.header_timeout();
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => Ok(()),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(
                "requests still in flight after {}s of draining; exiting anyway",
                drain.as_secs()
            );
            Ok(())
        }
    }
}

/// Errors of `accept` concern one connection (reset before accepted) or
/// the process (out of file descriptors): neither stops the server, but
/// the latter gets a pause so the loop does not spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::error!("accept failed: {e}; pausing for 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answer a connection over the cap with a JSON 503 and close it, reading
/// what the client already sent so the close is not a reset.
async fn refuse(mut stream: TcpStream, cap: usize) {
    let e = ApiError::new(
        ErrorKind::TooManyConnections,
        format!("the server has {cap} connections open (--max-connections); retry shortly"),
    );
    let body = e.json_body();
    let (status, _) = e.kind.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}
