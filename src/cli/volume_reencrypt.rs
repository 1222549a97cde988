//! `envol volume reencrypt VOLUME [--key KEY] [--max-rate R]`: here when
//! nobody has the volume attached, else inside the server that has, through
//! its control socket (as `volume grow`: the command tries the volume's
//! lock first, and only a refusal because another attachment holds it
//! sends it to the server).
//!
//! Online, the command asks the KMS first under its own credentials (see
//! `envelope::reencrypt::new_key_for_server`: a caller the key policy
//! refuses stops here), hands the server the new wrapped key, and follows
//! the server's progress through `status` until it is done. The
//! re-encryption is the server's: Ctrl-C (or a lost connection) ends only
//! the following, and `envol volume reencrypt` again follows it again.

use std::time::Duration;

use base64::Engine;

use super::control::{ControlArgs, as_attached, ask_holder, unexpected};
use super::error::{CliError, CliResult};
use super::key_change::print_key_change;
use super::runtime::runtime;
use super::target::{KmsArgs, human_size};
use crate::control::{self, Command, NewDataKey, ReencryptionInfo, ReplyBody};
use crate::envelope::reencrypt::{self, ReencryptOptions, ReencryptRefusal};
use crate::envelope::{self, VolumeAddress};
use crate::keys::aws::AwsKeyClient;
use crate::snapshot::progress::Progress;

/// How often the command asks the server how far it is.
const POLL_EVERY: Duration = Duration::from_millis(500);

pub(super) struct ReencryptArgs<'a> {
    pub volume: &'a VolumeAddress,
    pub key: Option<&'a str>,
    pub max_rate: Option<u64>,
    pub quiet: bool,
    pub kms: &'a KmsArgs,
    pub control: &'a ControlArgs,
}

pub(super) fn run(args: ReencryptArgs<'_>) -> CliResult {
    if args.max_rate == Some(0) {
        return Err(CliError("--max-rate must be more than 0".into()));
    }
    let volume = args.volume;
    let rt = runtime()?;
    let client = rt.block_on(async {
        AwsKeyClient::new(&args.kms.target())
            .await
            .map_err(|e| CliError(e.to_string()))
    })?;
    let mut bar: Option<(Progress, u64)> = None;
    let mut on_step = |p: crate::volume::reencryption::Progress| {
        let (bar, shown) = bar.get_or_insert_with(|| {
            let bar = Progress::new(
                format!("re-encrypting {volume}"),
                p.total_bytes(),
                args.quiet,
            );
            (bar, 0)
        });
        bar.add(p.done_bytes().saturating_sub(*shown));
        *shown = p.done_bytes();
    };
    let result = rt.block_on(reencrypt::reencrypt(
        &client,
        volume,
        ReencryptOptions {
            key: args.key,
            max_rate: args.max_rate,
        },
        &mut on_step,
    ));
    if let Some((bar, _)) = &bar {
        bar.finish();
    }
    let done = match result {
        Ok(done) => done,
        Err(ReencryptRefusal::Failed(e)) => return Err(CliError::from(e)),
        Err(ReencryptRefusal::Attached(refusal)) => {
            return through_server(&args, &rt, &client, &refusal);
        }
    };
    let sb = &done.superblock;
    say!("Re-encrypted {volume} under a new data key");
    print_key_change(&done.old_key_arn, sb);
    if done.resumed_at > 0 {
        say!(
            "  resumed at {} of {}",
            human_size(done.resumed_at),
            human_size(sb.size)
        );
    }
    say!(
        "  superblock sequence {}; the old wrapped key is removed from both copies",
        sb.sequence
    );
    Ok(())
}

/// The volume is attached elsewhere: the caller's KMS checks, then the
/// server at `--control` runs it; this follows it to its end.
fn through_server(
    args: &ReencryptArgs<'_>,
    rt: &tokio::runtime::Runtime,
    client: &AwsKeyClient,
    refusal: &dyn std::fmt::Display,
) -> CliResult {
    let volume = args.volume;
    let path = args.control.path()?;
    let sb = envelope::inspect(volume)?
        .best()
        .map_err(|e| CliError(format!("{volume}: {e}")))?
        .clone();
    let new_key = rt
        .block_on(reencrypt::new_key_for_server(client, volume, &sb, args.key))
        .map_err(CliError::from)?;
    let command = Command::Reencrypt {
        volume: as_attached(volume)?,
        new_key: new_key.map(|k| NewDataKey {
            key_arn: k.key_arn,
            wrapped_key: base64::engine::general_purpose::STANDARD.encode(&k.wrapped_key),
            key_check: hex::encode(k.key_check),
        }),
        max_rate: args.max_rate,
    };
    let reply = ask_holder(&path, command, refusal)?;
    let ReplyBody::ReencryptStarted {
        name,
        new_key_arn,
        resumed_at,
        total_bytes,
        already_running,
        ..
    } = reply
    else {
        return Err(unexpected(&reply));
    };
    let what = if already_running {
        "following the re-encryption already running"
    } else if resumed_at > 0 {
        "resumed"
    } else {
        "started"
    };
    say!(
        "{volume}: re-encryption {what} in the server at {} (export {name}), at {} of {}; Ctrl-C stops following it, not the server",
        path.display(),
        human_size(resumed_at),
        human_size(total_bytes)
    );
    let bar = Progress::new(format!("re-encrypting {volume}"), total_bytes, args.quiet);
    bar.add(resumed_at);
    let mut shown = resumed_at;
    let outcome = loop {
        std::thread::sleep(POLL_EVERY);
        let info = match control::call(&path, Command::Status) {
            Ok(ReplyBody::Status { exports }) => exports
                .into_iter()
                .find(|e| e.name == name)
                .and_then(|e| e.reencryption)
                .map(|r| *r),
            Ok(other) => break Err(format!("unexpected reply from the server: {other:?}")),
            Err(e) => {
                break Err(format!(
                    "lost the server ({e}); its re-encryption resumes with `envol volume reencrypt {volume}`"
                ));
            }
        };
        let Some(ReencryptionInfo {
            state,
            done_bytes,
            message,
            ..
        }) = info
        else {
            break Err(format!(
                "export {name} was detached during the re-encryption; `envol volume reencrypt {volume}` resumes it"
            ));
        };
        bar.add(done_bytes.saturating_sub(shown));
        shown = shown.max(done_bytes);
        match state.as_str() {
            "done" => break Ok(()),
            "stopped" => break Err(message.unwrap_or_else(|| "re-encryption stopped".into())),
            _ => {}
        }
    };
    bar.finish();
    outcome.map_err(CliError)?;
    let now = envelope::inspect(volume)?
        .best()
        .map_err(|e| CliError(format!("{volume}: {e}")))?
        .clone();
    say!("Re-encrypted {volume} under a new data key, online (export {name})");
    print_key_change(&sb.key_arn, &now);
    if now.key_arn != new_key_arn {
        say!("  note: the server reported {new_key_arn}");
    }
    say!(
        "  superblock sequence {}; the old wrapped key is removed from both copies",
        now.sequence
    );
    Ok(())
}
