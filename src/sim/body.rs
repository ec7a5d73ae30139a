//! The body of every simulator response: a whole buffer, or one that is cut
//! short on purpose (the `cut_short` fault).
//!
//! A cut body announces the full length (its size hint is exact, so hyper
//! sends `Content-Length` of the whole answer), yields about half of it, then
//! fails: hyper then closes the connection (HTTP/1.1) or resets the stream
//! (HTTP/2), and the client is left with a body shorter than announced.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The error a response body or the service fails with to make hyper drop
/// the connection without (the rest of) an answer: the reset and hang
/// faults, a cut body, shutdown during a delayed request.
#[derive(Debug)]
pub(crate) struct Dropped(pub(crate) &'static str);

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for Dropped {}

/// A response body of the simulator.
#[derive(Debug)]
pub(crate) struct SimBody {
    state: State,
    /// Length announced in the size hint: the whole answer's, even when cut.
    announced: u64,
}

#[derive(Debug)]
enum State {
    /// The rest of a whole body; `None` once sent.
    Whole(Option<Bytes>),
    /// The head of a cut body (`None` once sent), and whether the body has
    /// already paused once after it.
    Cut { head: Option<Bytes>, paused: bool },
}

impl SimBody {
    /// A complete body.
    pub(crate) fn full(bytes: Bytes) -> Self {
        SimBody {
            announced: bytes.len() as u64,
            state: State::Whole((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// An empty body.
    pub(crate) fn empty() -> Self {
        SimBody::full(Bytes::new())
    }

    /// A body that announces `bytes.len()` but delivers only the first half
    /// (at least one byte short of the whole), then fails.
    pub(crate) fn cut_short(bytes: Bytes) -> Self {
        let announced = bytes.len() as u64;
        let head = bytes.slice(..bytes.len() / 2);
        SimBody {
            announced,
            state: State::Cut {
                head: Some(head),
                paused: false,
            },
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Dropped;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Dropped>>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Whole(rest) => Poll::Ready(rest.take().map(|b| Ok(Frame::data(b)))),
            State::Cut { head, paused } => {
                if let Some(head) = head.take().filter(|h| !h.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(head))));
                }
                if !*paused {
                    // Pause once so the connection flushes the head to the
                    // socket before the failure below closes it; failing at
                    // once would drop the buffered head with the connection.
                    *paused = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(Dropped("body cut short by injected fault"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.announced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn whole_body_is_sent_at_once() {
        let body = SimBody::full(Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(body.size_hint().exact(), Some(7));
        let collected = body.collect().await.expect("whole").to_bytes();
        assert_eq!(&collected[..], b"{\"a\":1}");
        assert!(SimBody::empty().is_end_stream());
    }

    #[tokio::test]
    async fn cut_body_announces_everything_and_fails_after_half() {
        let mut body = SimBody::cut_short(Bytes::from(vec![b'x'; 100]));
        assert_eq!(body.size_hint().exact(), Some(100));
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().map(|d| d.len()).ok(), Some(50));
        assert!(!body.is_end_stream());
        let second = body.frame().await.expect("a frame");
        assert!(second.is_err(), "the body must fail, not end");
    }
}
