//! The one error type every command returns: one line, printed by `main`
//! as `envol: <message>`.

/// A user-facing error: one line, printed as `envol: <message>`.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One line, whatever the source said.
        f.write_str(&self.0.replace('\n', " "))
    }
}

macro_rules! cli_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError(e.to_string())
            }
        }
    )*};
}
cli_error_from!(
    std::io::Error,
    String,
    crate::kms::KmsError,
    crate::kms::service::ServiceError,
    crate::kms::datadir::DataDirError,
    crate::envelope::EnvelopeError,
    crate::nbd::ExportError,
    crate::snapshot::SnapshotError
);

pub type CliResult = Result<(), CliError>;
