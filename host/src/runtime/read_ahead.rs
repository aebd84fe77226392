//! A WASIp3 guest's response head waits a moment for its body, so that a small
//! response leaves in one write, with its length, instead of a head, then a chunk,
//! then the chunked end: fewer writes and wake-ups on both ends of the connection.
//!
//! A WASIp3 instance hands back its response head and writes the body from a task of
//! its own, on whichever worker thread runs the instance, so the connection often
//! finds the head without the body. (A WASIp2 guest runs in the task that writes the
//! response, so its head and first chunk already leave together.) The head waits a
//! few turns of the scheduler ([`TURNS`]), which let the instance's task run, and no
//! more than [`MAX_BYTES`] are held: a guest that streams (server-sent events, a long
//! download) gets its head out at once and streams on as before. No timer is set.

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};
use hyper::body::{Body as _, Frame};
use std::pin::Pin;
use std::task::Poll;

use crate::protocol::{self, Body};

/// How many times a response head lets other tasks run (the instance writing its
/// body among them) while its body is not ready.
pub const TURNS: u32 = 8;
/// Most body bytes read ahead of the head.
pub const MAX_BYTES: usize = 64 * 1024;
/// Most body frames read ahead of the head (empty ones add no bytes).
pub const MAX_FRAMES: usize = 64;

/// `response`, with as much of its body as is written while it yields to other tasks
/// up to `turns` times (at most [`MAX_BYTES`] in [`MAX_FRAMES`]) read before it is
/// returned. A body that ended by then becomes one complete body of known length; any
/// other goes on with what was read first.
pub async fn read_ahead(response: Response<Body>, turns: u32) -> Response<Body> {
    let (parts, mut body) = response.into_parts();
    if body.is_end_stream() {
        return Response::from_parts(parts, body);
    }
    let mut turned = 0;
    let mut read: Vec<Result<Frame<Bytes>, std::io::Error>> = Vec::new();
    let mut bytes = 0;
    let ended = loop {
        if bytes >= MAX_BYTES || read.len() >= MAX_FRAMES {
            break false;
        }
        // One poll, with this task's waker: a body not ready yet is not waited for here.
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                bytes += frame.data_ref().map_or(0, Bytes::len);
                read.push(Ok(frame));
            }
            Poll::Ready(Some(Err(error))) => {
                read.push(Err(error));
                break false;
            }
            Poll::Ready(None) => break true,
            Poll::Pending if turned < turns => {
                turned += 1;
                tokio::task::yield_now().await;
            }
            Poll::Pending => break false,
        }
    };
    let body = if ended
        && read
            .iter()
            .all(|frame| matches!(frame, Ok(f) if f.is_data()))
    {
        protocol::full(concatenate(read))
    } else if ended {
        StreamBody::new(futures::stream::iter(read)).boxed_unsync()
    } else {
        let rest = BodyStream::new(body);
        StreamBody::new(futures::stream::StreamExt::chain(
            futures::stream::iter(read),
            rest,
        ))
        .boxed_unsync()
    };
    Response::from_parts(parts, body)
}

/// The data of `frames` (all data frames) as one buffer; no copy for a single one.
fn concatenate(frames: Vec<Result<Frame<Bytes>, std::io::Error>>) -> Bytes {
    let mut data = frames
        .into_iter()
        .filter_map(|frame| frame.ok().and_then(|frame| frame.into_data().ok()));
    let Some(first) = data.next() else {
        return Bytes::new();
    };
    let Some(second) = data.next() else {
        return first;
    };
    let mut joined = BytesMut::from(&first[..]);
    joined.extend_from_slice(&second);
    for more in data {
        joined.extend_from_slice(&more);
    }
    joined.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use http_body_util::Full;
    use std::time::Duration;

    /// A body of `chunks` sent `gap` apart (or one turn of the scheduler apart, for a
    /// zero gap), then ended (or not, with `end` false).
    fn streamed(chunks: &[&'static str], gap: Duration, end: bool) -> Response<Body> {
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
        let chunks: Vec<&'static str> = chunks.to_vec();
        tokio::spawn(async move {
            for chunk in chunks {
                if gap.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(gap).await;
                }
                if sender
                    .send(Ok(Frame::data(Bytes::from(chunk))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if !end {
                std::future::pending::<()>().await;
            }
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|frame| (frame, receiver))
        });
        Response::new(StreamBody::new(stream).boxed_unsync())
    }

    async fn collected(response: Response<Body>) -> Bytes {
        response
            .into_body()
            .collect()
            .await
            .expect("the body reads to its end")
            .to_bytes()
    }

    #[tokio::test]
    async fn a_body_that_ends_within_the_wait_becomes_one_body_of_known_length() {
        let response = streamed(&["Hello, ", "world", "!\n"], Duration::ZERO, true);
        let response = read_ahead(response, TURNS).await;
        assert_eq!(response.body().size_hint().exact(), Some(14));
        assert_eq!(collected(response).await, "Hello, world!\n");
    }

    #[tokio::test]
    async fn a_streaming_body_leaves_at_once_with_nothing_lost() {
        let response = streamed(
            &["first ", "second ", "third"],
            Duration::from_millis(400),
            true,
        );
        let started = std::time::Instant::now();
        let response = read_ahead(response, TURNS).await;
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "the head did not wait for the first chunk"
        );
        assert_eq!(
            response.body().size_hint().exact(),
            None,
            "sent before the body ended"
        );
        assert_eq!(collected(response).await, "first second third");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_keeps_what_was_read_first() {
        let response = streamed(&["early"], Duration::ZERO, false);
        let response = read_ahead(response, TURNS).await;
        let mut body = response.into_body();
        let first = body.frame().await.expect("a frame").expect("no error");
        assert_eq!(first.into_data().expect("data"), "early");
        let next = tokio::time::timeout(Duration::from_millis(200), body.frame()).await;
        assert!(next.is_err(), "the body is still open");
    }

    #[tokio::test]
    async fn no_more_than_the_byte_bound_is_read_ahead() {
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = taken.clone();
        let chunk = Bytes::from(vec![b'x'; 40 * 1024]);
        let stream = futures::stream::iter([chunk.clone(), chunk.clone(), chunk])
            .map(move |data| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, std::io::Error>(Frame::data(data))
            })
            .chain(futures::stream::pending());
        let response = Response::new(StreamBody::new(stream).boxed_unsync());
        let mut body = read_ahead(response, TURNS).await.into_body();
        assert_eq!(
            taken.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "two chunks pass 64 KiB"
        );
        for _ in 0..3 {
            let frame = body.frame().await.expect("a frame").expect("no error");
            assert_eq!(frame.into_data().expect("data").len(), 40 * 1024);
        }
    }

    #[tokio::test]
    async fn a_body_of_many_empty_frames_is_read_ahead_no_further_than_the_frame_bound() {
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = taken.clone();
        let stream = futures::stream::repeat_with(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Frame::data(Bytes::new()))
        })
        .take(100_000)
        .chain(futures::stream::pending());
        let response = Response::new(StreamBody::new(stream).boxed_unsync());
        let response = read_ahead(response, TURNS).await;
        assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), MAX_FRAMES);
        assert_eq!(
            response.body().size_hint().exact(),
            None,
            "the body goes on"
        );
    }

    #[tokio::test]
    async fn an_error_in_the_body_is_kept_after_the_data_before_it() {
        let stream = futures::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err(std::io::Error::other("the guest trapped")),
        ]);
        let response = Response::new(StreamBody::new(stream).boxed_unsync());
        let mut body = read_ahead(response, TURNS).await.into_body();
        let first = body.frame().await.expect("a frame").expect("no error");
        assert_eq!(first.into_data().expect("data"), "part");
        let error = body.frame().await.expect("a frame").expect_err("the error");
        assert_eq!(error.to_string(), "the guest trapped");
    }

    #[tokio::test]
    async fn a_complete_body_is_left_as_it_is() {
        let response = Response::new(
            Full::new(Bytes::from_static(b"done"))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        let response = read_ahead(response, TURNS).await;
        assert_eq!(collected(response).await, "done");
    }
}
