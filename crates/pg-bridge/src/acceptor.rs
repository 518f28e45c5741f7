//! The acceptor: a thread of its own that accepts connections and takes each through its
//! negotiation phase, then hands it to the runtime that serves clients.
//!
//! A backend that runs queries inline on the serving runtime's thread (as PGlite does) holds
//! that thread for as long as a query runs. A cancel request arrives as a new connection, so
//! accepting it there would wait for the very query it is meant to cancel. Here it is carried
//! out at once, on this thread; every other connection continues on the serving runtime once
//! its startup packet has been read.

use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::server::Listeners;
use crate::shared::Shared;
use crate::startup::{self, Greeted, Stream};
use crate::{Backend, Error};

/// The running acceptor thread.
pub(crate) struct Acceptor {
    done: oneshot::Receiver<()>,
}

impl Acceptor {
    /// Starts accepting on `listeners` (which it takes over from the calling runtime) until
    /// `stop` turns true; greeted connections go to `out`.
    pub(crate) fn spawn<B: Backend>(
        listeners: Listeners,
        shared: Arc<Shared<B>>,
        out: mpsc::UnboundedSender<Greeted>,
        stop: watch::Receiver<bool>,
    ) -> Result<Acceptor, Error> {
        let unix = listeners.unix.into_std()?;
        let tcp = listeners.tcp.map(TcpListener::into_std).transpose()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new().name("pg-bridge-accept".into()).spawn(move || {
            runtime.block_on(async move {
                match (UnixListener::from_std(unix), tcp.map(TcpListener::from_std).transpose()) {
                    (Ok(unix), Ok(tcp)) => accept(unix, tcp, shared, out, stop).await,
                    (Err(error), _) | (_, Err(error)) => tracing::error!(%error, "taking over the listeners"),
                }
            });
            let _ = done_tx.send(());
        })?;
        Ok(Acceptor { done })
    }

    /// Waits until the thread has stopped (its listeners closed).
    pub(crate) async fn stopped(self) {
        let _ = self.done.await;
    }
}

async fn accept<B: Backend>(
    unix: UnixListener,
    tcp: Option<TcpListener>,
    shared: Arc<Shared<B>>,
    out: mpsc::UnboundedSender<Greeted>,
    mut stop: watch::Receiver<bool>,
) {
    // Dropped (so aborted) when accepting stops: half-negotiated connections end with it.
    let mut greeting = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = unix.accept() => match accepted.and_then(|(stream, _)| stream.into_std()) {
                Ok(stream) => Stream::Unix(stream),
                Err(error) => {
                    tracing::warn!(%error, "accepting on the unix socket");
                    continue;
                }
            },
            accepted = accept_tcp(&tcp) => match accepted.and_then(|stream| {
                let _ = stream.set_nodelay(true);
                stream.into_std()
            }) {
                Ok(stream) => Stream::Tcp(stream),
                Err(error) => {
                    tracing::warn!(%error, "accepting on the tcp socket");
                    continue;
                }
            },
            Some(_) = greeting.join_next() => continue,
        };
        let (shared, out) = (shared.clone(), out.clone());
        greeting.spawn(async move {
            if let Some(greeted) = startup::greet(shared, stream).await {
                // The serving side is gone only when the bridge is stopping.
                let _ = out.send(greeted);
            }
        });
    }
}

async fn accept_tcp(listener: &Option<TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}
