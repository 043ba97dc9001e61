//! Input for the gzip decoder in pieces of one fixed size, whatever sizes the
//! object's body arrives in.
//!
//! The decoder drops what it decoded during a read that ends in a corrupt
//! stream error. Fed the network's pieces, the same corrupt file would then
//! fail as corrupt when the bad bytes arrive with the good ones, or on
//! whatever the good part decodes to (say, as not text) when they arrive
//! later. With fixed pieces the outcome depends on the bytes alone.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

pub(super) struct FixedChunks<R> {
    inner: R,
    buf: Box<[u8]>,
    filled: usize,
    pos: usize,
    /// `buf[pos..filled]` is being handed out; otherwise it is being filled.
    ready: bool,
    eof: bool,
    /// A read error, returned once the bytes read before it are consumed.
    error: Option<io::Error>,
}

impl<R> FixedChunks<R> {
    pub fn new(inner: R, size: usize) -> Self {
        FixedChunks {
            inner,
            buf: vec![0; size.max(1)].into_boxed_slice(),
            filled: 0,
            pos: 0,
            ready: false,
            eof: false,
            error: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for FixedChunks<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.ready && this.pos == this.filled {
            this.ready = false;
            this.filled = 0;
            this.pos = 0;
        }
        while !this.ready {
            if this.filled == this.buf.len() || this.eof || this.error.is_some() {
                this.ready = true;
                break;
            }
            let mut read = ReadBuf::new(&mut this.buf[this.filled..]);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read)) {
                Ok(()) => {
                    let n = read.filled().len();
                    this.eof = n == 0;
                    this.filled += n;
                }
                Err(e) => this.error = Some(e),
            }
        }
        if this.pos == this.filled {
            if let Some(e) = this.error.take() {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(&this.buf[this.pos..this.filled]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.filled);
    }
}

/// Required by `AsyncBufRead`; the decoder only uses the buffered side.
impl<R: AsyncRead + Unpin> AsyncRead for FixedChunks<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn pieces_are_full_whatever_the_reads_below() {
        let chunks: Vec<io::Result<bytes::Bytes>> = b"abcdefghij"
            .chunks(3)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let stream = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
        let mut rdr = FixedChunks::new(stream, 4);
        let mut pieces = Vec::new();
        loop {
            let piece = rdr.fill_buf().await.unwrap().to_vec();
            if piece.is_empty() {
                break;
            }
            rdr.consume(piece.len());
            pieces.push(piece);
        }
        assert_eq!(pieces, [&b"abcd"[..], b"efgh", b"ij"]);
    }

    #[tokio::test]
    async fn an_error_comes_after_the_bytes_read_before_it() {
        let chunks = vec![
            Ok(bytes::Bytes::from_static(b"ab")),
            Err(io::Error::other("reset")),
        ];
        let stream = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
        let mut rdr = FixedChunks::new(stream, 4);
        assert_eq!(rdr.fill_buf().await.unwrap(), b"ab");
        rdr.consume(2);
        assert_eq!(rdr.fill_buf().await.unwrap_err().to_string(), "reset");
    }
}
