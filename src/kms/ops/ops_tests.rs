use std::sync::Arc;

use super::*;
use crate::kms::clock::SystemClock;
use crate::kms::datadir::DataDir;
use crate::kms::iam::Principal;

/// Every name the metrics label by is one `dispatch` answers (with a
/// result or a request error, never "unknown operation"), and names it does
/// not know are labelled `unknown`.
#[test]
fn every_labelled_operation_is_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, _) = Kms::init(
        &DataDir::new(dir.path()),
        "us-east-1",
        Arc::new(SystemClock),
    )
    .unwrap();
    let root = Principal::root(kms.account_id());
    let caller = Caller {
        principal: &root,
        secure_transport: true,
    };
    for operation in IMPLEMENTED {
        let mut note = AuditNote::default();
        let result = dispatch(&kms, &caller, operation, b"{}", &mut note);
        if let Err(e) = result {
            assert!(
                !matches!(
                    e.kind,
                    ErrorKind::UnknownOperation | ErrorKind::UnsupportedOperation
                ),
                "{operation}: {e:?}"
            );
        }
        assert_eq!(operation_label(operation), *operation);
    }
    assert_eq!(operation_label("Sign"), "Sign");
    assert_eq!(operation_label("MadeUp\n"), "unknown");
}
