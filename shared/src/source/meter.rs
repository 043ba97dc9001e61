//! Byte bookkeeping underneath the CSV parser: where each record starts (as a
//! line number) and how far the parser has read into the current row.
//!
//! csv-async reports a record's position as the parser state at the end of the
//! previous record, so blank lines, the `\n` of a CRLF and lone-CR line breaks
//! would all shift the numbers. The parser sits on its own read-ahead buffer,
//! so the meter keeps the bytes of the current row until the parser says where
//! the row ended ([`Meter::finish_row`]), counting line breaks as it goes.
//! It also knows where each row starts in the content, which is what a
//! checkpoint records.

use super::Position;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// The error the meter fails a read with once the current row is provably
/// longer than the limit; the CSV source turns it back into `RowTooLarge`.
#[derive(Debug)]
pub(super) struct RowOverflow {
    pub line: u64,
}

impl fmt::Display for RowOverflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "row starting at line {} exceeds the row size limit",
            self.line
        )
    }
}

impl std::error::Error for RowOverflow {}

pub(super) struct Meter<R> {
    inner: R,
    /// Bytes `[base, read_total)` not yet accounted to a finished row; the
    /// live part starts at `start` (earlier bytes await compaction).
    window: Vec<u8>,
    start: usize,
    base: u64,
    read_total: u64,
    /// Line breaks before `base`: each `\n`, and each `\r` not followed by `\n`.
    breaks: u64,
    /// The last accounted byte was `\r`; whether it was a break depends on the
    /// byte after it.
    pending_cr: bool,
    /// Offset and line of the first byte of the row being read, once seen.
    row_start: Option<(u64, u64)>,
    /// Bytes past the row start after which the row is certainly too long.
    max_distance: u64,
    /// Content offset of the first byte read (past a BOM, or a checkpoint's).
    origin: u64,
}

impl<R> Meter<R> {
    /// `slack` must cover the parser's read-ahead (its buffer capacity), so
    /// that a row within `max_row_bytes` never trips the guard. `at` is where
    /// the first byte read lies in the content; a resumed reader starts at
    /// the first byte of a row, where no `\r` is pending.
    pub fn new(inner: R, max_row_bytes: usize, slack: usize, at: Position) -> Self {
        Meter {
            inner,
            window: Vec::new(),
            start: 0,
            base: 0,
            read_total: 0,
            breaks: at.line.saturating_sub(1),
            pending_cr: false,
            row_start: None,
            max_distance: (max_row_bytes as u64).saturating_add(slack as u64 + 2),
            origin: at.offset,
        }
    }

    /// Line of the first byte of the row being read (the line after the last
    /// break read so far when the row has not started yet).
    pub fn row_line(&self) -> u64 {
        match self.row_start {
            Some((_, line)) => line,
            None => self.breaks + u64::from(self.pending_cr) + 1,
        }
    }

    /// The parser finished a row at stream offset `end` (its terminator
    /// included). Returns where the row starts (content offset of its first
    /// byte, and line) and its length in bytes without the terminator.
    pub fn finish_row(&mut self, end: u64) -> (Position, u64) {
        // `settle` stopped `base` at the row's first byte.
        let start = Position {
            offset: self.origin + self.base,
            line: self.row_line(),
        };
        let n = end.saturating_sub(self.base).min(self.live_len() as u64) as usize;
        let row = &self.window[self.start..self.start + n];
        let content = row.iter().rposition(|b| !is_eol(*b)).map_or(0, |i| i + 1);
        count_breaks(row, &mut self.breaks, &mut self.pending_cr);
        self.start += n;
        self.base += n as u64;
        self.row_start = None;
        self.settle();
        (start, content as u64)
    }

    /// The content offset of a stream offset.
    pub fn content_offset(&self, stream_offset: u64) -> u64 {
        self.origin + stream_offset
    }

    fn live_len(&self) -> usize {
        self.window.len() - self.start
    }

    /// Accounts leading line breaks between rows (blank lines, the `\n` of a
    /// CRLF) until the first byte of the next row shows up.
    fn settle(&mut self) {
        while self.row_start.is_none() && self.start < self.window.len() {
            let b = self.window[self.start];
            if is_eol(b) {
                count_break(&mut self.breaks, &mut self.pending_cr, b);
                self.start += 1;
                self.base += 1;
            } else {
                if std::mem::take(&mut self.pending_cr) {
                    self.breaks += 1;
                }
                self.row_start = Some((self.base, self.breaks + 1));
            }
        }
        if self.start == self.window.len() {
            self.window.clear();
            self.start = 0;
        }
    }

    fn accept(&mut self, new: &[u8]) -> io::Result<()> {
        if self.start > 0 && self.start >= self.window.len() / 2 {
            self.window.drain(..self.start);
            self.start = 0;
        }
        self.window.extend_from_slice(new);
        self.read_total += new.len() as u64;
        self.settle();
        match self.row_start {
            Some((offset, line)) if self.read_total - offset > self.max_distance => {
                Err(io::Error::other(RowOverflow { line }))
            }
            _ => Ok(()),
        }
    }
}

fn is_eol(b: u8) -> bool {
    b == b'\n' || b == b'\r'
}

/// [`count_break`] over a whole slice: one vectorised search for the
/// breaks, which a typical row has one of, at its end.
fn count_breaks(bytes: &[u8], breaks: &mut u64, pending_cr: &mut bool) {
    let Some(&first) = bytes.first() else {
        return;
    };
    if std::mem::take(pending_cr) && first != b'\n' {
        *breaks += 1;
    }
    for at in memchr::memchr2_iter(b'\n', b'\r', bytes) {
        if bytes[at] == b'\n' {
            *breaks += 1;
            continue;
        }
        match bytes.get(at + 1) {
            Some(b'\n') => {}
            Some(_) => *breaks += 1,
            None => *pending_cr = true,
        }
    }
}

fn count_break(breaks: &mut u64, pending_cr: &mut bool, b: u8) {
    if std::mem::take(pending_cr) && b != b'\n' {
        *breaks += 1;
    }
    match b {
        b'\n' => *breaks += 1,
        b'\r' => *pending_cr = true,
        _ => {}
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Meter<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        Poll::Ready(this.accept(&buf.filled()[before..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in `piece`-sized reads and finishes rows at `ends`.
    fn rows(input: &[u8], piece: usize, ends: &[u64]) -> Vec<(u64, u64)> {
        let mut m = Meter::new((), 1000, 0, Position::START);
        let mut fed = 0;
        let mut out = Vec::new();
        for &end in ends {
            while (fed as u64) < end {
                let to = (fed + piece).min(input.len());
                m.accept(&input[fed..to]).unwrap();
                fed = to;
            }
            let (start, len) = m.finish_row(end);
            out.push((start.line, len));
        }
        out
    }

    #[test]
    fn lines_skip_blank_lines_and_count_every_break_style() {
        // "a\n" | "\n\nb\r" | "\nc\r" | "d"  (CRLF, lone CR, blank lines)
        let input = b"a\n\n\nb\r\nc\rd";
        let ends = [2, 6, 9, 10];
        for piece in 1..=input.len() {
            assert_eq!(
                rows(input, piece, &ends),
                vec![(1, 1), (4, 1), (5, 1), (6, 1)]
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn breaks_counted_over_slices_are_those_counted_a_byte_at_a_time(
            input in proptest::collection::vec(
                proptest::sample::select(b"ab\r\n".to_vec()), 0..40
            ),
            cut in 0usize..40,
        ) {
            let (mut one, mut cr_one) = (0, false);
            input.iter().for_each(|&b| count_break(&mut one, &mut cr_one, b));
            let (mut all, mut cr_all) = (0, false);
            let (head, tail) = input.split_at(cut.min(input.len()));
            count_breaks(head, &mut all, &mut cr_all);
            count_breaks(tail, &mut all, &mut cr_all);
            proptest::prop_assert_eq!((one, cr_one), (all, cr_all));
        }
    }

    #[test]
    fn breaks_inside_a_row_move_the_next_row() {
        let input = b"\"x\r\ny\"\n\"\r\"\nz";
        assert_eq!(rows(input, 3, &[7, 11, 12]), vec![(1, 6), (3, 3), (5, 1)]);
    }

    #[test]
    fn rows_start_where_their_first_byte_is_counted_from_the_origin() {
        let at = Position {
            offset: 100,
            line: 7,
        };
        let mut m = Meter::new((), 1000, 0, at);
        m.accept(b"a\r\n\r\nb\rc").unwrap();
        let starts: Vec<Position> = [2, 7, 8].iter().map(|&end| m.finish_row(end).0).collect();
        let expected =
            [(100, 7), (105, 9), (107, 10)].map(|(offset, line)| Position { offset, line });
        assert_eq!(starts, expected);
    }

    #[test]
    fn guard_trips_only_past_the_limit_plus_slack() {
        let mut m = Meter::new((), 10, 4, Position::START);
        m.accept(b"\n\nabcdefghij").unwrap();
        m.accept(b"klmnop").unwrap();
        let err = m.accept(b"q").unwrap_err();
        let overflow = err.get_ref().and_then(|e| e.downcast_ref::<RowOverflow>());
        assert_eq!(overflow.map(|o| o.line), Some(3));
    }
}
