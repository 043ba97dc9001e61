//! The `JobStore` conformance suite against the DynamoDB store on the
//! emulator, one fresh table per case.

bulk_import::conformance_tests!(integration_tests::fresh_store());
