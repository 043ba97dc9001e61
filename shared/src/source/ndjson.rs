//! The NDJSON format: lines to staged records.
//!
//! Keys are matched per object with [`Definition::field_index`] (the header's
//! name and alias rules) rather than through `resolve_header`: a key missing
//! from one object is that record's problem, not the file's. Unknown keys are
//! ignored; when two keys feed one field, the one spelled exactly like the
//! field wins.

use super::format::{Content, Detection, Format, Records, Sample};
use super::{BoxRead, Ctx, Position, SourceError};
use crate::job::{FieldIssue, StagedRecord, Values};
use crate::schema::{Definition, InputFormat};
use serde::de::IgnoredAny;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const BUFFER_BYTES: usize = 64 * 1024;

impl InputFormat {
    /// `"ndjson"`: one JSON object a line.
    pub const NDJSON: InputFormat = InputFormat::registered(Ndjson::NAME);
}

pub(super) struct Ndjson;

/// NDJSON needs nothing to resume at the start of a line. Checkpoints once
/// carried a CSV dialect whatever the format, and readers of that version
/// require its delimiter and quote: they are written (as `,` and `"`) so
/// that such a reader can still resume from a checkpoint of this one, and
/// ignored when read.
pub(super) struct State;

impl Serialize for State {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("d", &b',')?;
        map.serialize_entry("q", &b'"')?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer)?;
        Ok(State)
    }
}

impl Format for Ndjson {
    const NAME: &'static str = "ndjson";
    type State = State;
    type Records = NdjsonSource;

    /// By extension, else by a first character that opens an object.
    fn detect(&self, sample: &Sample<'_>) -> Detection {
        if sample.has_extension(&[".ndjson", ".jsonl"]) {
            return Detection::ByName;
        }
        match sample.text.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Detection::ByContent,
            _ => Detection::No,
        }
    }

    async fn open(
        &self,
        text: Content,
        _: &Sample<'_>,
        def: &Definition,
        _: &Ctx,
    ) -> Result<(NdjsonSource, State), SourceError> {
        Ok((NdjsonSource::new(text.read, def, text.at), State))
    }

    fn head_len(&self, _: &State) -> u64 {
        0
    }

    async fn resume(
        &self,
        _: Content,
        rest: Content,
        _: State,
        def: &Definition,
        _: &Ctx,
    ) -> Result<NdjsonSource, SourceError> {
        Ok(NdjsonSource::new(rest.read, def, rest.at))
    }
}

pub(super) struct NdjsonSource {
    rdr: BufReader<BoxRead>,
    line_buf: Vec<u8>,
    /// Number of the last line read.
    line: u64,
    /// Content offset of the next byte to read.
    offset: u64,
    /// Owned so that the reader is `'static`; only its name lookup is used.
    def: Definition,
}

impl Records for NdjsonSource {
    async fn next(&mut self, ctx: &Ctx) -> Result<Option<(StagedRecord, Position)>, SourceError> {
        loop {
            let offset = self.offset;
            if !self.read_line(ctx).await? {
                return Ok(None);
            }
            if self.line_buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line = self.line;
            let record = match serde_json::from_slice::<Map<String, Value>>(&self.line_buf) {
                Ok(object) if object.len() > ctx.limits.max_fields => {
                    return Err(SourceError::TooManyFields {
                        name: ctx.name.clone(),
                        line,
                        found: object.len(),
                        limit: ctx.limits.max_fields,
                    });
                }
                Ok(object) => StagedRecord {
                    line,
                    values: self.values(object).into(),
                    issue: None,
                },
                Err(e) => StagedRecord {
                    line,
                    values: Values::absent(self.def.fields.len()),
                    issue: Some(Box::new(FieldIssue::new(
                        None,
                        None,
                        format!("not a JSON object: {e}"),
                    ))),
                },
            };
            return Ok(Some((record, Position { offset, line })));
        }
    }
}

impl NdjsonSource {
    /// Lines from `at` on, which must be the start of a line.
    fn new(stream: BoxRead, def: &Definition, at: Position) -> Self {
        NdjsonSource {
            rdr: BufReader::with_capacity(BUFFER_BYTES, stream),
            line_buf: Vec::new(),
            line: at.line.saturating_sub(1),
            offset: at.offset,
            def: def.clone(),
        }
    }

    fn values(&self, object: Map<String, Value>) -> Vec<Option<String>> {
        #[derive(Clone, Copy, PartialEq, PartialOrd)]
        enum Match {
            None,
            Loose,
            Exact,
        }
        let fields = &self.def.fields;
        let mut values = vec![None; fields.len()];
        let mut matched = vec![Match::None; fields.len()];
        for (key, value) in object {
            let Some(i) = self.def.field_index(&key) else {
                continue;
            };
            let quality = if fields[i].name == key {
                Match::Exact
            } else {
                Match::Loose
            };
            if quality > matched[i] {
                matched[i] = quality;
                values[i] = text(value);
            }
        }
        values
    }

    /// Reads the next line (without its terminator) into `line_buf`; false
    /// at the end of the input. Fails as soon as the line outgrows the limit
    /// so that a file without newlines is never buffered whole.
    async fn read_line(&mut self, ctx: &Ctx) -> Result<bool, SourceError> {
        self.line_buf.clear();
        let mut any = false;
        loop {
            let buf = self.rdr.fill_buf().await.map_err(|e| ctx.io_error(e))?;
            if buf.is_empty() {
                if !any {
                    return Ok(false);
                }
                if self.line_buf.last() == Some(&b'\r') {
                    self.line_buf.pop();
                }
                if self.line_buf.len() > ctx.limits.max_row_bytes {
                    return Err(self.too_large(ctx));
                }
                self.line += 1;
                return Ok(true);
            }
            any = true;
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], true),
                None => (buf, false),
            };
            self.line_buf.extend_from_slice(chunk);
            let used = chunk.len() + usize::from(done);
            self.rdr.consume(used);
            self.offset += used as u64;
            if self.line_buf.last() == Some(&b'\r') && done {
                self.line_buf.pop();
            }
            // One byte of grace for the '\r' of a CRLF not seen yet.
            if self.line_buf.len() > ctx.limits.max_row_bytes + usize::from(!done) {
                return Err(self.too_large(ctx));
            }
            if done {
                self.line += 1;
                return Ok(true);
            }
        }
    }

    fn too_large(&self, ctx: &Ctx) -> SourceError {
        SourceError::RowTooLarge {
            name: ctx.name.clone(),
            line: self.line + 1,
            limit: ctx.limits.max_row_bytes,
        }
    }
}

/// Strings as they are, other scalars and nested values as their compact
/// JSON text.
fn text(value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}
