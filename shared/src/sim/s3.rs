//! The simulated S3 of uploads: versioned objects read whole or by byte
//! range, each a CSV generated on the fly (rows of one width, so any range
//! is computed, not stored: a file of ten million rows costs no memory).
//! A GET answers after a drawn latency and then streams at `bytes_per_sec`,
//! the rate one orchestrator reads, parses and validates at (its CPU, which
//! virtual time does not otherwise see).

use super::World;
use crate::job::SourceRef;
use crate::objects::{
    ByteRange, ObjectBody, ObjectError, ObjectHead, ObjectSource, ObjectVersions,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// The header of every generated file (`examples/users.json`'s columns).
pub const HEADER: &str = "email,full name,age,plan,country,city,signup_date,score,active\n";

/// A generated users file: `rows` rows; every `invalid_every`-th row
/// (counting from 1; 0: none) has an address without `@`, which fails
/// validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    pub rows: u64,
    pub invalid_every: u64,
}

impl Generated {
    /// Row `i` (0-based), newline included; every row is `ROW_WIDTH` long.
    pub fn row(&self, i: u64) -> String {
        let at = if self.is_invalid(i) { '#' } else { '@' };
        format!(
            "u{i:012}{at}example.com,User {i:012},{:02},pro,GB,London,2024-01-02,{:02}.5,true\n",
            20 + i % 60,
            i % 100
        )
    }

    pub fn is_invalid(&self, i: u64) -> bool {
        self.invalid_every > 0 && (i + 1) % self.invalid_every == 0
    }

    /// Rows that pass validation.
    pub fn valid_rows(&self) -> u64 {
        self.rows - self.rows.checked_div(self.invalid_every).unwrap_or(0)
    }

    pub fn len(&self) -> u64 {
        HEADER.len() as u64 + self.rows * row_width()
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The row an email of this file names.
    pub fn row_of(email: &str) -> Option<u64> {
        email.get(1..13)?.parse().ok()
    }
}

pub fn row_width() -> u64 {
    Generated {
        rows: 1,
        invalid_every: 0,
    }
    .row(0)
    .len() as u64
}

struct Object {
    file: Generated,
    head: ObjectHead,
}

pub struct SimS3 {
    world: Arc<World>,
    objects: Mutex<HashMap<(String, String), Object>>,
    /// How fast a GET's body arrives (and is consumed).
    pub bytes_per_sec: f64,
    gets: std::sync::atomic::AtomicU64,
}

impl SimS3 {
    pub fn new(world: Arc<World>, bytes_per_sec: f64) -> SimS3 {
        SimS3 {
            world,
            objects: Mutex::default(),
            bytes_per_sec,
            gets: Default::default(),
        }
    }

    /// Uploads `file` as `bucket/key`, a new version; returns its head.
    pub fn put(&self, bucket: &str, key: &str, file: Generated, now_secs: i64) -> ObjectHead {
        let mut objects = self.objects.lock().unwrap();
        let n = objects.len() + 1;
        let head = ObjectHead {
            version_id: Some(format!("v{n:06}")),
            etag: format!("{n:032x}"),
            last_modified: now_secs,
        };
        objects.insert(
            (bucket.to_owned(), key.to_owned()),
            Object {
                file,
                head: head.clone(),
            },
        );
        head
    }

    pub fn gets(&self) -> u64 {
        self.gets.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl ObjectSource for SimS3 {
    async fn open(&self, source: &SourceRef) -> Result<ObjectBody, ObjectError> {
        self.open_range(source, ByteRange::from(0)).await
    }

    async fn open_range(
        &self,
        source: &SourceRef,
        range: ByteRange,
    ) -> Result<ObjectBody, ObjectError> {
        let (first, _) = self.world.round_trip();
        tokio::time::sleep(first * 4).await;
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.world
            .trace("s3", "GetObject", &format!("{source} {range:?}"));
        let file = {
            let objects = self.objects.lock().unwrap();
            let object = objects
                .get(&(source.bucket.clone(), source.key.clone()))
                .filter(|o| o.head.version() == source.version)
                .ok_or_else(|| ObjectError::NotFound(source.to_string()))?;
            object.file
        };
        let len = file.len();
        if range.start > len {
            return Err(ObjectError::RangeNotSatisfiable(source.to_string()));
        }
        let end = range.end.map_or(len, |end| end.clamp(range.start, len));
        Ok(ObjectBody {
            size: Some((end - range.start) as i64),
            content_encoding: None,
            reader: Box::new(Stream {
                file,
                at: range.start,
                end,
                bytes_per_sec: self.bytes_per_sec,
                began: (range.start, tokio::time::Instant::now()),
                pacing: None,
            }),
        })
    }
}

#[async_trait]
impl ObjectVersions for SimS3 {
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectHead>, ObjectError> {
        let (out, back) = self.world.round_trip();
        tokio::time::sleep(out + back).await;
        self.world
            .trace("s3", "HeadObject", &format!("{bucket}/{key}"));
        let objects = self.objects.lock().unwrap();
        Ok(objects
            .get(&(bucket.to_owned(), key.to_owned()))
            .map(|o| o.head.clone()))
    }
}

/// A generated body, paced: each chunk handed out is followed by the time
/// it takes at `bytes_per_sec`, counted from the start of the stream (the
/// timer's millisecond would otherwise round up every small read's wait).
struct Stream {
    file: Generated,
    at: u64,
    end: u64,
    bytes_per_sec: f64,
    /// Where the stream started, and when.
    began: (u64, tokio::time::Instant),
    pacing: Option<Pin<Box<tokio::time::Sleep>>>,
}

const CHUNK: u64 = 64 * 1024;

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(pacing) = self.pacing.as_mut() {
            if pacing.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pacing = None;
        }
        if self.at >= self.end || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let want = (self.end - self.at).min(buf.remaining() as u64).min(CHUNK);
        let start = self.at;
        let header = HEADER.len() as u64;
        let width = row_width();
        let mut written = 0u64;
        while written < want {
            let pos = start + written;
            let (text, offset) = if pos < header {
                (HEADER.to_owned(), pos)
            } else {
                let row = (pos - header) / width;
                (self.file.row(row), (pos - header) % width)
            };
            let take = (text.len() as u64 - offset).min(want - written);
            buf.put_slice(&text.as_bytes()[offset as usize..(offset + take) as usize]);
            written += take;
        }
        self.at += written;
        if self.bytes_per_sec.is_finite() && self.bytes_per_sec > 0.0 {
            let (from, at) = self.began;
            let due = at + Duration::from_secs_f64((self.at - from) as f64 / self.bytes_per_sec);
            self.pacing = Some(Box::pin(tokio::time::sleep_until(due)));
        }
        Poll::Ready(Ok(()))
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn any_range_of_a_generated_file_is_its_bytes() {
        let world = World::new(super::super::SimConfig::exact(1));
        let s3 = SimS3::new(world, 1e6);
        let file = Generated {
            rows: 50,
            invalid_every: 7,
        };
        let head = s3.put("b", "k.csv", file, 0);
        let source = SourceRef {
            bucket: "b".into(),
            key: "k.csv".into(),
            version: head.version(),
        };
        let whole: String = (0..50).map(|i| file.row(i)).collect();
        let whole = format!("{HEADER}{whole}");
        assert_eq!(whole.len() as u64, file.len());
        let mut body = String::new();
        let mut object = s3.open(&source).await.unwrap();
        object.reader.read_to_string(&mut body).await.unwrap();
        assert_eq!(body, whole);
        let mut part = String::new();
        let mut object = s3
            .open_range(
                &source,
                ByteRange {
                    start: 100,
                    end: Some(1000),
                },
            )
            .await
            .unwrap();
        object.reader.read_to_string(&mut part).await.unwrap();
        assert_eq!(part, whole[100..1000]);
        assert!(file.is_invalid(6) && !file.is_invalid(7));
        assert_eq!(file.valid_rows(), 43);
        assert_eq!(Generated::row_of(&file.row(42)[..24]), Some(42));
    }
}
