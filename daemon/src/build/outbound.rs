//! The messages a build session sends its client, with how many bytes of them wait to go out.
//! tonic polls the stream only as fast as the client reads, so a client that reads slowly (or
//! stops reading) left everything queued in the daemon: a 1 GiB `-o type=local` export sat in
//! memory whole. Bulk data (outputs, ssh traffic) now waits for room below [`MAX_QUEUED`];
//! progress events past [`MAX_QUEUED_EVENTS`] are dropped (the build goes on, and the daemon
//! logs how many a client missed); requests and the final message always go.

use kiln_api::v1::{build_server_message::Msg as ServerMsg, BuildServerMessage};
use prost::Message;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use tonic::Status;

/// Bytes of bulk data that may wait for the client.
pub(crate) const MAX_QUEUED: usize = 32 << 20;
/// Bytes of anything that may wait before progress events are dropped.
pub(crate) const MAX_QUEUED_EVENTS: usize = 2 * MAX_QUEUED;

type Item = Result<BuildServerMessage, Status>;

struct Queue {
    bytes: AtomicUsize,
    dropped_events: AtomicUsize,
    drained: Notify,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbound {
    tx: UnboundedSender<(usize, Item)>,
    queue: Arc<Queue>,
}

/// What tonic streams to the client.
pub(crate) struct OutboundStream {
    rx: UnboundedReceiver<(usize, Item)>,
    queue: Arc<Queue>,
}

pub(crate) fn channel() -> (Outbound, OutboundStream) {
    let (tx, rx) = unbounded_channel();
    let queue = Arc::new(Queue {
        bytes: AtomicUsize::new(0),
        dropped_events: AtomicUsize::new(0),
        drained: Notify::new(),
    });
    (
        Outbound {
            tx,
            queue: queue.clone(),
        },
        OutboundStream { rx, queue },
    )
}

fn gone() -> Status {
    Status::cancelled("the client went away")
}

impl Outbound {
    fn queue_item(&self, size: usize, item: Item) -> Result<(), Status> {
        self.queue.bytes.fetch_add(size, Ordering::SeqCst);
        self.tx.send((size, item)).map_err(|_| {
            self.queue.bytes.fetch_sub(size, Ordering::SeqCst);
            gone()
        })
    }

    /// Queues `msg` at once; a progress event is dropped instead when too much waits.
    pub(crate) fn send(&self, msg: ServerMsg) -> Result<(), Status> {
        let msg = BuildServerMessage { msg: Some(msg) };
        let size = msg.encoded_len();
        if matches!(msg.msg, Some(ServerMsg::Event(_)))
            && self.queue.bytes.load(Ordering::SeqCst) + size > MAX_QUEUED_EVENTS
        {
            self.queue.dropped_events.fetch_add(1, Ordering::SeqCst);
            return if self.tx.is_closed() {
                Err(gone())
            } else {
                Ok(())
            };
        }
        self.queue_item(size, Ok(msg))
    }

    /// Queues `msg` once less than [`MAX_QUEUED`] bytes wait for the client.
    pub(crate) async fn send_bulk(&self, msg: ServerMsg) -> Result<(), Status> {
        let msg = BuildServerMessage { msg: Some(msg) };
        let size = msg.encoded_len();
        loop {
            let drained = self.queue.drained.notified();
            if self.queue.bytes.load(Ordering::SeqCst) + size <= MAX_QUEUED
                || self.queue.bytes.load(Ordering::SeqCst) == 0
            {
                break;
            }
            // A client that went away (its stream dropped) must not leave this waiting for room.
            tokio::select! {
                _ = drained => {}
                _ = self.tx.closed() => return Err(gone()),
            }
        }
        self.queue_item(size, Ok(msg))
    }

    /// Queues the error that ends the session.
    pub(crate) fn fail(&self, status: Status) {
        let _ = self.queue_item(0, Err(status));
    }

    /// How many progress events a slow client missed so far.
    pub(crate) fn dropped_events(&self) -> usize {
        self.queue.dropped_events.load(Ordering::SeqCst)
    }
}

impl tokio_stream::Stream for OutboundStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((size, item))) => {
                self.queue.bytes.fetch_sub(size, Ordering::SeqCst);
                self.queue.drained.notify_waiters();
                Poll::Ready(Some(item))
            }
            other => other.map(|o| o.map(|(_, item)| item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_api::v1::{progress_event::Kind, OutputData, ProgressEvent, VertexLog};
    use std::time::Duration;
    use tokio_stream::StreamExt;

    fn chunk() -> ServerMsg {
        ServerMsg::Output(OutputData {
            output: 0,
            data: vec![0u8; 1 << 20],
            eof: false,
        })
    }

    #[tokio::test]
    async fn bulk_data_waits_for_a_slow_client_and_events_are_dropped_past_the_cap() {
        let (out, mut stream) = channel();
        let sender = out.clone();
        let sending = tokio::spawn(async move {
            for _ in 0..64 {
                sender.send_bulk(chunk()).await.unwrap();
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The client has read nothing: about MAX_QUEUED waits, not 64 MiB.
        let queued = out.queue.bytes.load(Ordering::SeqCst);
        assert!(queued <= MAX_QUEUED && queued > MAX_QUEUED / 2, "{queued}");
        assert!(!sending.is_finished());
        // Events still go while there is room for them, then are counted and dropped.
        for _ in 0..(40 << 10) {
            out.send(ServerMsg::Event(ProgressEvent {
                vertex: 1,
                kind: Some(Kind::Log(VertexLog {
                    stream: 1,
                    data: vec![0u8; 1024],
                    time_us: 0,
                })),
            }))
            .unwrap();
        }
        assert!(out.queue.bytes.load(Ordering::SeqCst) <= MAX_QUEUED_EVENTS + (2 << 10));
        assert!(out.dropped_events() > 0);
        // Read everything: the sender finishes, and all 64 chunks arrive in order.
        drop(out);
        let mut chunks = 0;
        while let Some(item) = stream.next().await {
            if matches!(item.unwrap().msg, Some(ServerMsg::Output(_))) {
                chunks += 1;
            }
            if chunks == 64 {
                break;
            }
        }
        sending.await.unwrap();
        assert_eq!(chunks, 64);
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_ends_when_the_client_goes() {
        let (out, stream) = channel();
        let sender = out.clone();
        let sending = tokio::spawn(async move {
            loop {
                if let Err(e) = sender.send_bulk(chunk()).await {
                    return e.code();
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!sending.is_finished(), "it waits for room");
        drop(stream);
        let code = tokio::time::timeout(Duration::from_secs(5), sending)
            .await
            .expect("the waiting sender ended")
            .unwrap();
        assert_eq!(code, tonic::Code::Cancelled);
    }
}
