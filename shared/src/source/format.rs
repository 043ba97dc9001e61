//! Input formats: what each one implements ([`Format`], [`Records`]), the
//! registry of them ([`FORMATS`]) and the choice of one for an input.
//!
//! The reader and its resumption (`mod.rs`, `resume.rs`) only see a format
//! through [`AnyFormat`] and [`AnyRecords`], which every [`Format`] gets
//! for free: type-erased, so that the registry can hold formats side by
//! side, and so that a record still costs no allocation on its way.

use super::{csv, ndjson, BoxRead, Ctx, Position, SourceError};
use crate::job::StagedRecord;
use crate::schema::{Definition, InputFormat};
use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::fmt;
use std::future::Future;

/// Every input format, one line each. The first is the fallback, read when
/// no format recognises the input.
const FORMATS: &[&dyn AnyFormat] = &[
    &csv::Csv, // the fallback
    &ndjson::Ndjson,
];

/// One input format. A new one is a file of `source/` with a unit struct
/// implementing this trait and a reader implementing [`Records`], its line
/// in [`FORMATS`] and its `mod` line in `mod.rs`; the reader itself names
/// no format. By convention the file also adds the format's constant to
/// `InputFormat` (as `csv.rs` adds `InputFormat::CSV`).
///
/// The reader around it decompresses the input, removes a BOM and refuses
/// what is not text before asking the formats which one the input is in;
/// it counts records against the limit and gives checkpoints, each made of
/// the record's position and the format's [`Format::State`].
pub(super) trait Format: Sync + 'static {
    /// The name a definition's `format` and a checkpoint give it.
    const NAME: &'static str;

    /// What a reader needs, besides a record's position, to resume there
    /// without reading what comes before it (CSV: its dialect and where
    /// its header ends). Stored with every checkpoint, so small, and its
    /// keys must not be one of the checkpoint's own: `o`, `l`, `r`, `f`,
    /// `z`. It must serialize as a JSON object (a struct).
    type State: Serialize + DeserializeOwned + Send;

    /// The format's reader.
    type Records: Records;

    /// Whether the input looks like this format, and how surely; the
    /// surest answer wins, see [`Detection`].
    fn detect(&self, sample: &Sample<'_>) -> Detection;

    /// Reads from the start of the content: `text` is the content past a
    /// BOM, its first bytes those of `sample`. A file-level problem that
    /// shows in the first bytes (a bad header) is best returned here.
    fn open(
        &self,
        text: Content,
        sample: &Sample<'_>,
        def: &Definition,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<(Self::Records, Self::State), SourceError>> + Send;

    /// Bytes at the start of the content a resumed reader needs besides
    /// those from the checkpoint on (CSV: up to the end of its header).
    fn head_len(&self, state: &Self::State) -> u64;

    /// Reads from a checkpoint on: `head` holds the content's first
    /// [`Format::head_len`] bytes (past a BOM, as `text` in `open`), `rest`
    /// the content from the checkpoint's record on. What it reads must be
    /// what a reader opened at the start would read from there.
    fn resume(
        &self,
        head: Content,
        rest: Content,
        state: Self::State,
        def: &Definition,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Self::Records, SourceError>> + Send;
}

/// A format's reader: its records one at a time.
pub(super) trait Records: Send + 'static {
    /// The next record and where it starts; `None` at the end. Not called
    /// again after `None` or an error.
    fn next(
        &mut self,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Option<(StagedRecord, Position)>, SourceError>> + Send;

    /// The header row as read, for a format that has one.
    fn header(&self) -> Option<&[String]> {
        None
    }
}

/// How a format recognised the input. A declared format is read without
/// asking; otherwise the surest answer wins, the format registered first on
/// a tie, and the first of all ([`FORMATS`]) when none recognises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Detection {
    No,
    /// By the first bytes of the content.
    ByContent,
    /// By the file name's extension.
    ByName,
}

/// What a format is shown of the input to recognise it.
pub(super) struct Sample<'a> {
    /// The file name, lower-case, without a `.gz` suffix.
    pub name: &'a str,
    /// The content's first bytes (after decompression, without a BOM),
    /// up to the whole content.
    pub text: &'a [u8],
    /// Whether `text` is the whole content.
    pub complete: bool,
}

impl Sample<'_> {
    /// Whether the name ends with one of `extensions` (lower-case, with
    /// their dot).
    pub fn has_extension(&self, extensions: &[&str]) -> bool {
        extensions.iter().any(|ext| self.name.ends_with(ext))
    }
}

/// Content bytes from a known position on.
pub(super) struct Content {
    pub read: BoxRead,
    /// Where the first byte of `read` is.
    pub at: Position,
}

/// The format a definition declares, else the one the input looks most
/// like.
pub(super) fn choose(declared: Option<InputFormat>, sample: &Sample<'_>) -> &'static dyn AnyFormat {
    if let Some(format) = declared {
        return of(format);
    }
    let mut best = (Detection::No, FORMATS[0]);
    for &format in FORMATS {
        let detection = format.detect(sample);
        if detection > best.0 {
            best = (detection, format);
        }
    }
    best.1
}

/// The registered format an [`InputFormat`] names.
pub(super) fn of(format: InputFormat) -> &'static dyn AnyFormat {
    find(format.name()).expect("an InputFormat names a registered format")
}

fn find(name: &str) -> Option<&'static dyn AnyFormat> {
    FORMATS.iter().copied().find(|f| f.name() == name)
}

/// The registered format called `name`.
pub fn format_named(name: &str) -> Option<InputFormat> {
    find(name).map(|f| InputFormat::registered(f.name()))
}

/// The names of every registered format, for messages.
pub fn format_names() -> Vec<&'static str> {
    FORMATS.iter().map(|f| f.name()).collect()
}

/// A format's own part of a checkpoint ([`Format::State`]): its keys and
/// values, in the order it wrote them, so that a checkpoint's JSON keeps
/// the same text from one version to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FormatState(Vec<(String, Value)>);

impl FormatState {
    fn of<T: Serialize>(state: &T) -> FormatState {
        // Through the text, which keeps the order of a struct's fields.
        let text = serde_json::to_string(state).expect("a format's state serializes");
        serde_json::from_str(&text).expect("a format's state serializes as a JSON object")
    }

    /// The state as the format's own type.
    pub fn to<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        let map = self.0.iter().cloned().collect();
        serde_json::from_value(Value::Object(map))
    }
}

impl Serialize for FormatState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for FormatState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;

        impl<'de> Visitor<'de> for Entries {
            type Value = FormatState;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a format's state, a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FormatState, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(FormatState(entries))
            }
        }

        deserializer.deserialize_map(Entries)
    }
}

/// A [`Format`] as the reader uses it: its reader type-erased into
/// [`AnyRecords`], its state into [`FormatState`].
#[async_trait]
pub(super) trait AnyFormat: Sync {
    fn name(&self) -> &'static str;

    fn detect(&self, sample: &Sample<'_>) -> Detection;

    async fn open(
        &self,
        text: Content,
        sample: &Sample<'_>,
        def: &Definition,
        ctx: &Ctx,
    ) -> Result<(AnyRecords, FormatState), SourceError>;

    /// Whether `state` is one of this format's: a checkpoint is checked
    /// when it is read.
    fn check(&self, state: &FormatState) -> Result<(), serde_json::Error>;

    fn head_len(&self, state: &FormatState) -> u64;

    async fn resume(
        &self,
        head: Content,
        rest: Content,
        state: &FormatState,
        def: &Definition,
        ctx: &Ctx,
    ) -> Result<AnyRecords, SourceError>;
}

/// A checkpoint's state as the format's own type: it was checked when the
/// checkpoint was read.
fn checked<F: Format>(state: &FormatState) -> F::State {
    state
        .to()
        .expect("a checkpoint's state is checked when it is read")
}

#[async_trait]
impl<F: Format> AnyFormat for F {
    fn name(&self) -> &'static str {
        F::NAME
    }

    fn detect(&self, sample: &Sample<'_>) -> Detection {
        Format::detect(self, sample)
    }

    async fn open(
        &self,
        text: Content,
        sample: &Sample<'_>,
        def: &Definition,
        ctx: &Ctx,
    ) -> Result<(AnyRecords, FormatState), SourceError> {
        let (records, state) = Format::open(self, text, sample, def, ctx).await?;
        Ok((AnyRecords::new(records, ctx), FormatState::of(&state)))
    }

    fn check(&self, state: &FormatState) -> Result<(), serde_json::Error> {
        state.to::<F::State>().map(drop)
    }

    fn head_len(&self, state: &FormatState) -> u64 {
        Format::head_len(self, &checked::<F>(state))
    }

    async fn resume(
        &self,
        head: Content,
        rest: Content,
        state: &FormatState,
        def: &Definition,
        ctx: &Ctx,
    ) -> Result<AnyRecords, SourceError> {
        let state = checked::<F>(state);
        let records = Format::resume(self, head, rest, state, def, ctx).await?;
        Ok(AnyRecords::new(records, ctx))
    }
}

type Read = Result<(StagedRecord, Position), SourceError>;

/// A format's [`Records`] behind one pointer. They are polled as a stream
/// that owns them, so that a record costs one dynamic call and no
/// allocation (a boxed future per record would be one each).
pub(super) struct AnyRecords {
    stream: BoxStream<'static, Read>,
    header: Option<Vec<String>>,
}

impl AnyRecords {
    fn new<R: Records>(records: R, ctx: &Ctx) -> AnyRecords {
        let header = records.header().map(<[String]>::to_vec);
        let stream = stream::unfold(
            (Box::new(records), ctx.clone()),
            |(mut records, ctx)| async move {
                // `None` at the end of the records ends the stream.
                let read = records.next(&ctx).await.transpose()?;
                Some((read, (records, ctx)))
            },
        );
        AnyRecords {
            stream: stream.boxed(),
            header,
        }
    }

    /// The next record and where it starts; `None` at the end. Not to be
    /// called again after `None` or an error.
    pub async fn next(&mut self) -> Result<Option<(StagedRecord, Position)>, SourceError> {
        self.stream.next().await.transpose()
    }

    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(declared: Option<InputFormat>, name: &str, text: &[u8]) -> &'static str {
        let name = name.to_ascii_lowercase();
        let sample = Sample {
            name: name.strip_suffix(".gz").unwrap_or(&name),
            text,
            complete: true,
        };
        choose(declared, &sample).name()
    }

    #[test]
    fn format_from_declaration_name_then_content() {
        assert_eq!(detected(Some(InputFormat::CSV), "a.ndjson", b"{}"), "csv");
        assert_eq!(detected(None, "a.JSONL.gz", b"x"), "ndjson");
        assert_eq!(detected(None, "a.csv", b"{"), "csv");
        assert_eq!(detected(None, "upload", b"  {\"a\":1}"), "ndjson");
        assert_eq!(detected(None, "upload", b"a,b"), "csv");
    }

    #[test]
    fn formats_are_found_by_name() {
        assert_eq!(format_names(), ["csv", "ndjson"]);
        assert_eq!(format_named("csv"), Some(InputFormat::CSV));
        assert_eq!(format_named("ndjson"), Some(InputFormat::NDJSON));
        assert_eq!(format_named("CSV"), None);
        for name in format_names() {
            assert_eq!(of(format_named(name).unwrap()).name(), name);
        }
    }

    #[test]
    fn a_state_keeps_the_order_of_its_fields() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct State {
            b: u8,
            a: Option<u64>,
        }
        let state = FormatState::of(&State { b: 1, a: Some(2) });
        assert_eq!(serde_json::to_string(&state).unwrap(), r#"{"b":1,"a":2}"#);
        assert_eq!(state.to::<State>().unwrap(), State { b: 1, a: Some(2) });
        let read: FormatState = serde_json::from_str(r#"{"b":1,"c":3}"#).unwrap();
        assert_eq!(read.to::<State>().unwrap(), State { b: 1, a: None });
        assert!(read.to::<(u8,)>().is_err());
    }
}
