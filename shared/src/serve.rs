//! An HTTP/1 server for a daemon's small endpoints (metrics, the dashboard) whose
//! connections are tasks of the daemon's [`Supervisor`](crate::supervisor::Supervisor):
//! at the stop it accepts no more, each connection finishes the request it is answering
//! (an idle one closes at once), and whatever is left at the supervisor's deadline is
//! aborted and joined with the rest. `axum::serve` spawns its connections detached instead:
//! one still open when its server was aborted outlived the daemon's stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use tokio::net::TcpListener;

use crate::supervisor::{Spawner, stopped};

/// The pause after a failed accept (out of file descriptors, say), as `axum::serve` takes:
/// a lasting failure neither spins a core nor floods the log.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until the stop; each connection is a task `name` of `tasks`.
/// Requests carry the peer's address as [`ConnectInfo<SocketAddr>`].
pub async fn serve(listener: TcpListener, app: axum::Router, tasks: Spawner, name: &'static str) {
    let mut stop = tasks.stopping();
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tasks.spawn(
                    name,
                    connection(stream, peer, app.clone(), tasks.stopping()),
                );
            }
            Err(err) => {
                tracing::warn!(server = name, error = %err, "accept failed; pausing");
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                }
            }
        }
    }
}

/// Whether a connection has been handed a request yet. At the stop hyper finishes the
/// request in progress and closes a connection idle between requests at once, but one whose
/// first request has not come (opened ahead of use, or its headers trickling in) it waits
/// for: such a one holds nothing of ours and is dropped at the stop instead.
#[derive(Debug, Clone, Default)]
pub struct FirstRequest(Arc<AtomicBool>);

impl FirstRequest {
    /// Called as each request reaches the service.
    pub fn came(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the connection is to be closed gracefully (true) or dropped at the stop.
    pub fn has_come(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// One connection until it ends; at the stop, closed after the request in progress.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use tower::ServiceExt as _;
    let first = FirstRequest::default();
    let came = first.clone();
    let service = hyper::service::service_fn(
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            came.came();
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(axum::body::Body::new))
        },
    );
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(err) = drive(connection, &first, stop, std::future::pending()).await {
        tracing::debug!(client = %peer, error = %err, "connection ended");
    }
}

/// Drives one HTTP/1 connection to its end. At the stop, or once `close` is done, it is
/// closed gracefully (the reply in progress is finished first); at the stop, one whose
/// first request has not come is dropped instead (see [`FirstRequest`]).
pub async fn drive<I, S, B>(
    connection: hyper::server::conn::http1::Connection<I, S>,
    first: &FirstRequest,
    mut stop: tokio::sync::watch::Receiver<bool>,
    close: impl Future<Output = ()>,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connection = std::pin::pin!(connection);
    let mut close = std::pin::pin!(close);
    let mut closing = false;
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            () = stopped(&mut stop), if !stopping => {
                stopping = true;
                if !first.has_come() {
                    return Ok(());
                }
                if !closing {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = close.as_mut(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::supervisor::Supervisor;

    const WITHIN: Duration = Duration::from_secs(2);

    /// A server whose `/slow` answers after `slow`, and whether that answer was finished.
    async fn slow_server(sup: &mut Supervisor, slow: Duration) -> (SocketAddr, Arc<AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicBool::new(false));
        let flag = answered.clone();
        let app = axum::Router::new().route(
            "/slow",
            axum::routing::get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                let flag = flag.clone();
                async move {
                    tokio::time::sleep(slow).await;
                    flag.store(true, Ordering::SeqCst);
                    peer.ip().to_string()
                }
            }),
        );
        let tasks = sup.spawner();
        sup.spawn_essential("test server", async move {
            serve(listener, app, tasks, "test connection").await;
            Ok(())
        });
        (addr, answered)
    }

    async fn send(addr: SocketAddr, bytes: &[u8]) -> tokio::net::TcpStream {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream
    }

    #[tokio::test]
    async fn a_request_in_flight_at_the_stop_is_answered_and_idle_connections_closed() {
        let mut sup = Supervisor::new(WITHIN);
        let (addr, answered) = slow_server(&mut sup, Duration::from_millis(300)).await;
        let mut idle = send(addr, b"").await;
        let mut busy = send(addr, b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let (signal, stop) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(sup.run_until(async {
            let _ = stop.await;
        }));
        // The request is being answered when the stop comes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        signal.send(()).unwrap();
        let started = tokio::time::Instant::now();
        let stopped = tokio::time::timeout(WITHIN * 2, run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stopped.aborted, Vec::<&str>::new());
        assert!(
            started.elapsed() < WITHIN / 2,
            "no wait for the idle connection"
        );
        assert!(answered.load(Ordering::SeqCst));
        let mut reply = String::new();
        busy.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("127.0.0.1"), "the peer is known: {reply}");
        assert_eq!(idle.read(&mut [0; 16]).await.unwrap(), 0, "closed at once");
    }

    #[tokio::test]
    async fn a_connection_still_busy_at_the_deadline_is_aborted_and_joined() {
        let mut sup = Supervisor::new(Duration::from_millis(300));
        let (addr, answered) = slow_server(&mut sup, Duration::from_secs(60)).await;
        let mut busy = send(addr, b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await;
        // A client that sends half a request and nothing more.
        let mut trickling = send(addr, b"GET / HTTP/1.1\r\nhost:").await;
        let started = tokio::time::Instant::now();
        let stopped = sup
            .run_until(tokio::time::sleep(Duration::from_millis(200)))
            .await;
        assert!(started.elapsed() < Duration::from_secs(2), "{stopped:?}");
        assert!(stopped.aborted.contains(&"test connection"), "{stopped:?}");
        assert!(!answered.load(Ordering::SeqCst));
        // Joined means dropped: both sockets are closed by the time the stop returns.
        for stream in [&mut busy, &mut trickling] {
            let mut rest = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_millis(100), stream.read_to_end(&mut rest));
            assert!(read.await.is_ok(), "closed, not left open");
        }
    }
}
