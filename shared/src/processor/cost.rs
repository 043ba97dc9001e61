//! What a processor's writes cost against the throughput cap
//! (`maxWriteUnitsPerSecond`), counted in DynamoDB write units. Kept apart
//! from `RecordProcessor` because only processors that write DynamoDB are
//! billed that way: one that does not offers no `WriteCost`, and its
//! records cost 0 units (the cap then never holds it back).

use super::ProcessContext;
use crate::schema::ValidRecord;

/// The write units processing a record will spend; a worker under a cap
/// reserves them before each call of the processor.
pub trait WriteCost: Send + Sync {
    /// 0 for a record the processor will not write.
    fn write_units(&self, record: &ValidRecord, ctx: &ProcessContext<'_>) -> u64;
}

/// Bills the record's values as JSON the way DynamoDB bills an item of
/// that size, one unit per started KB: for a processor of your own that
/// writes each record to DynamoDB in a shape of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSize;

impl WriteCost for JsonSize {
    fn write_units(&self, record: &ValidRecord, _ctx: &ProcessContext<'_>) -> u64 {
        let mut bytes = ByteCount(0);
        // Writing into a counter cannot fail.
        let _ = serde_json::to_writer(&mut bytes, &record.values());
        bytes.0.max(1).div_ceil(1024) as u64
    }
}

/// Counts what is written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
