//! STUB (being implemented)
use crate::job::StagedRecord;
use crate::schema::{Definition, InputFormat};
pub struct OpenOptions<'a> {
    pub name: &'a str,
    pub content_encoding: Option<&'a str>,
}
pub struct RecordReader {}
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("x")]
    Io(#[source] std::io::Error),
}
impl SourceError {
    pub fn is_transient(&self) -> bool {
        true
    }
}
impl RecordReader {
    pub async fn open(
        _reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        _opts: OpenOptions<'_>,
        _def: &Definition,
    ) -> Result<RecordReader, SourceError> {
        unimplemented!()
    }
    pub async fn next_record(&mut self) -> Result<Option<StagedRecord>, SourceError> {
        unimplemented!()
    }
    pub fn records_read(&self) -> u64 {
        0
    }
    pub fn format(&self) -> InputFormat {
        InputFormat::Csv
    }
}
