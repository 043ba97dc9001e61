//! What a DynamoDB error says: a condition failed, the item or table is
//! busy (retried with backoff), or how a transaction was cancelled (a
//! condition, a conflict worth retrying, or an idempotency token reused).

use super::*;

pub(super) fn is_condition_failed<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|e| e.code()) == Some("ConditionalCheckFailedException")
}

/// Errors that say "not now" rather than "no": an item held by a
/// transaction, or throttling the SDK's own retries did not outlast.
/// Retried with backoff by every write path.
pub(super) fn is_busy<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    matches!(
        e.as_service_error().and_then(|e| e.code()),
        Some(
            "TransactionConflictException"
                | "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
        )
    )
}

/// How a transaction was cancelled.
pub(super) enum Cancelled {
    /// A condition failed on the item at this position.
    Condition(usize),
    /// Another transaction or write held one of the items, or throttling:
    /// the same transaction can succeed later.
    Busy,
    /// Its idempotency token was used, within DynamoDB's 10 minutes, by a
    /// request with other parameters.
    TokenReused,
}

pub(super) fn cancellation<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> Option<Cancelled> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    match e.as_service_error()? {
        E::TransactionCanceledException(c) => {
            let reasons = c.cancellation_reasons();
            if let Some(i) = reasons
                .iter()
                .position(|r| r.code() == Some("ConditionalCheckFailed"))
            {
                return Some(Cancelled::Condition(i));
            }
            // Anything else (ValidationError, ItemCollectionSizeLimitExceeded,
            // ...) would fail again the same way.
            let retryable = reasons.iter().all(|r| {
                matches!(
                    r.code(),
                    None | Some(
                        "None"
                            | "TransactionConflict"
                            | "ThrottlingError"
                            | "ProvisionedThroughputExceeded"
                    )
                )
            });
            retryable.then_some(Cancelled::Busy)
        }
        E::IdempotentParameterMismatchException(_) => Some(Cancelled::TokenReused),
        E::TransactionInProgressException(_)
        | E::ThrottlingException(_)
        | E::ProvisionedThroughputExceededException(_)
        | E::RequestLimitExceeded(_) => Some(Cancelled::Busy),
        _ => None,
    }
}

/// The position of the item a cancelled transaction found held by
/// another one, if that is why it was cancelled.
pub(super) fn conflict_at<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> Option<usize> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    match e.as_service_error()? {
        E::TransactionCanceledException(c) => c
            .cancellation_reasons()
            .iter()
            .position(|r| r.code() == Some("TransactionConflict")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    use aws_sdk_dynamodb::types::error::{
        TransactionCanceledException, TransactionConflictException,
    };
    use aws_sdk_dynamodb::types::CancellationReason;
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_types::body::SdkBody;

    fn raw() -> HttpResponse {
        HttpResponse::new(400.try_into().unwrap(), SdkBody::empty())
    }

    fn cancelled(codes: &[&str]) -> SdkError<TransactWriteItemsError, HttpResponse> {
        let reasons = codes
            .iter()
            .map(|c| CancellationReason::builder().code(*c).build())
            .collect();
        let e = TransactionCanceledException::builder()
            .set_cancellation_reasons(Some(reasons))
            .build();
        SdkError::service_error(
            TransactWriteItemsError::TransactionCanceledException(e),
            raw(),
        )
    }

    #[test]
    fn transactions_are_retried_only_when_they_can_succeed_later() {
        let kind = |codes: &[&str]| match cancellation(&cancelled(codes)) {
            Some(Cancelled::Busy) => "retry",
            Some(Cancelled::Condition(_)) => "condition",
            Some(Cancelled::TokenReused) => "token",
            None => "fail",
        };
        assert_eq!(kind(&["None", "TransactionConflict"]), "retry");
        assert_eq!(kind(&["ThrottlingError", "None"]), "retry");
        assert_eq!(
            kind(&["TransactionConflict", "ConditionalCheckFailed"]),
            "condition"
        );
        assert_eq!(kind(&["ValidationError", "None"]), "fail");
        assert_eq!(kind(&["None", "ItemCollectionSizeLimitExceeded"]), "fail");
        assert!(matches!(
            cancellation(&cancelled(&["None", "ConditionalCheckFailed"])),
            Some(Cancelled::Condition(1))
        ));
    }

    #[test]
    fn a_write_to_an_item_a_transaction_holds_is_retried() {
        let held = UpdateItemError::TransactionConflictException(
            TransactionConflictException::builder()
                .message("Transaction is ongoing for the item")
                .meta(
                    aws_smithy_types::error::ErrorMetadata::builder()
                        .code("TransactionConflictException")
                        .build(),
                )
                .build(),
        );
        assert!(is_busy(&SdkError::service_error(held, raw())));
        let condition = UpdateItemError::ConditionalCheckFailedException(
            aws_sdk_dynamodb::types::error::ConditionalCheckFailedException::builder()
                .meta(
                    aws_smithy_types::error::ErrorMetadata::builder()
                        .code("ConditionalCheckFailedException")
                        .build(),
                )
                .build(),
        );
        assert!(!is_busy(&SdkError::service_error(condition, raw())));
    }
}
