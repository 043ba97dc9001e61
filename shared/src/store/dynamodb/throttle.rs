//! The throughput cap's windows in the state table: one small item per job
//! and second (`J#<jobId>#W#<second>`), taking one conditional `ADD` per
//! reservation. A window is written only during its second and then left to
//! expire, so no item or partition carries a job's reservations for long.

use super::*;
use crate::throttle::{Reservation, Throttle, ThrottleError};

const WINDOW_SK: &str = "WINDOW";
/// A window is worthless once its second is over; TTL removes it an hour on.
const WINDOW_TTL_SECONDS: i64 = 3600;

pub fn window_pk(job: &JobId, second: i64) -> String {
    format!("{}#W#{second}", job_pk(job))
}

#[async_trait]
impl Throttle for DynamoStore {
    async fn reserve(
        &self,
        job: &JobId,
        second: i64,
        units: u64,
        cap: u64,
    ) -> Result<Reservation, ThrottleError> {
        let update = self
            .update(window_pk(job, second), WINDOW_SK)
            .update_expression("ADD used :units SET expiresAt = :expires")
            .condition_expression("attribute_not_exists(used) OR used <= :room")
            .expression_attribute_values(":units", n(units))
            .expression_attribute_values(":room", n(cap.saturating_sub(units)))
            .expression_attribute_values(":expires", n(second + WINDOW_TTL_SECONDS));
        // A refused reservation is billed too: it counts either way.
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(_) => Ok(Reservation::Granted),
            Err(e) if is_condition_failed(&e) => Ok(Reservation::Full),
            Err(e) => Err(ThrottleError::Unavailable {
                job: job.clone(),
                source: StoreError::backend("UpdateItem", e).into(),
            }),
        }
    }
}
