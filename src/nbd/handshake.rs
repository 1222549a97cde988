//! The fixed newstyle handshake, as an explicit state machine.
//!
//! ```text
//!  SendGreeting ──▶ AwaitClientFlags ──▶ Haggling ◀─┐ (option answered, incl. errors)
//!                        │ unknown flag     │ ──────┘
//!                        ▼                  ├─ EXPORT_NAME ok / GO ok ─▶ Done(Transmission)
//!                      close                ├─ ABORT (ACK sent) ────────▶ Done(Closed)
//!                                           ├─ STARTTLS (ACK sent) ─────▶ Done(StartTls)
//!                                           └─ EXPORT_NAME unknown ─────▶ error (hard disconnect)
//! ```
//!
//! After `Done(StartTls)` the caller runs the TLS handshake and calls
//! [`negotiate_over_tls`], which enters `Haggling` directly (no second
//! greeting) with every option state forgotten, as the spec requires.
//! With TLS required (FORCEDTLS), options before STARTTLS other than ABORT
//! are answered `NBD_REP_ERR_TLS_REQD`, and EXPORT_NAME disconnects.
//!
//! Every option the server does not implement is answered with
//! `NBD_REP_ERR_UNSUP` and haggling continues: the spec's baseline forbids
//! dropping a client for asking. The only hard disconnects are the ones the
//! spec prescribes (unknown client flags, bad option magic, an
//! `NBD_OPT_EXPORT_NAME` that cannot be satisfied, since it has no way to
//! carry an error) plus I/O failure. The caller bounds the whole handshake
//! with a timeout, which also bounds how long we spend discarding the data
//! of oversized options.

use std::io;
use std::sync::Arc;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::export_set::ExportSet;
use super::protocol::{
    self as p, CLIENT_FLAG_FIXED_NEWSTYLE, CLIENT_FLAG_NO_ZEROES, CLIENT_FLAGS_KNOWN,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, InfoRequest, MetaContextRequest, OPTION_HEADER_LEN,
    OptionHeader, ProtocolError,
};
use super::registry::ExportRegistry;
use super::served_export::ServedExport;

/// Largest option payload we buffer. Real options are far smaller (a name
/// of at most 4096 bytes plus a few info requests or queries); a bigger one
/// is read and thrown away, then answered `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;

/// The metadata context id we hand out for `base:allocation`.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;

/// What option haggling agreed on, for the transmission phase.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    pub export: Arc<ServedExport>,
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged: READ must be answered
    /// with structured chunks from now on.
    pub structured_replies: bool,
    /// `base:allocation` was selected for this export: BLOCK_STATUS allowed.
    pub base_allocation: bool,
}

/// How a handshake ended without error.
#[derive(Debug)]
pub(crate) enum HandshakeOutcome {
    /// Enter the transmission phase.
    Transmission(Box<Negotiated>),
    /// The client aborted (soft disconnect).
    Closed,
    /// STARTTLS was acknowledged: the TLS handshake comes next, then
    /// [`negotiate_over_tls`].
    StartTls { no_zeroes: bool },
}

/// Where a connection stands with respect to TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tls {
    /// The server has no TLS configured (NOTLS mode).
    Unavailable,
    /// TLS can be started; `required` refuses everything else until then.
    Offered { required: bool },
    /// The connection runs over TLS.
    Active,
}

/// Why a handshake ended the connection.
#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("i/o during handshake: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("client sent unknown flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("NBD_OPT_EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
    #[error("NBD_OPT_EXPORT_NAME with a {0}-byte name")]
    ExportNameTooLong(u32),
    #[error("NBD_OPT_EXPORT_NAME before TLS, which this server requires")]
    TlsRequired,
    #[error("client without fixed newstyle cannot start the TLS this server requires")]
    TlsImpossible,
}

/// The states of the handshake. Haggling carries what options set so far.
enum State {
    SendGreeting,
    AwaitClientFlags,
    Haggling(Options),
    Done(HandshakeOutcome),
}

/// Per-connection option state changed by stateful options.
struct Options {
    tls: Tls,
    /// The client presented a TLS client certificate the server verified:
    /// it may see the exports' certified descriptions.
    certified: bool,
    no_zeroes: bool,
    structured_replies: bool,
    /// Last `NBD_OPT_SET_META_CONTEXT`: the export it named and whether it
    /// selected `base:allocation`.
    meta_context: Option<(String, bool)>,
}

/// What one option did to the state machine.
enum Step {
    Continue,
    Done(HandshakeOutcome),
}

impl Options {
    fn new(tls: Tls, no_zeroes: bool) -> Self {
        Self {
            tls,
            certified: false,
            no_zeroes,
            structured_replies: false,
            meta_context: None,
        }
    }
}

/// Runs the server side of the fixed newstyle handshake on `stream`.
pub(crate) async fn negotiate<S>(
    stream: &mut S,
    exports: &ExportRegistry,
    tls: Tls,
) -> Result<HandshakeOutcome, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    run(stream, exports, State::SendGreeting, tls).await
}

/// Continues option haggling on a stream that has just completed the TLS
/// handshake after STARTTLS: no greeting, nothing remembered from before
/// but the client's handshake flags. `certified`: the client presented a
/// certificate the TLS layer verified.
pub(crate) async fn negotiate_over_tls<S>(
    stream: &mut S,
    exports: &ExportRegistry,
    no_zeroes: bool,
    certified: bool,
) -> Result<HandshakeOutcome, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut options = Options::new(Tls::Active, no_zeroes);
    options.certified = certified;
    let state = State::Haggling(options);
    run(stream, exports, state, Tls::Active).await
}

async fn run<S>(
    stream: &mut S,
    exports: &ExportRegistry,
    mut state: State,
    tls: Tls,
) -> Result<HandshakeOutcome, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        state = match state {
            State::SendGreeting => {
                send(
                    stream,
                    &p::encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES),
                )
                .await?;
                State::AwaitClientFlags
            }
            State::AwaitClientFlags => {
                let flags = stream.read_u32().await?;
                if flags & !CLIENT_FLAGS_KNOWN != 0 {
                    return Err(HandshakeError::UnknownClientFlags(flags));
                }
                // A client without C_FIXED_NEWSTYLE gets fixed-newstyle
                // replies anyway (the spec allows honouring it); old
                // clients only send EXPORT_NAME, which has no reply header.
                // Such a client cannot do TLS (the spec says NOTLS mode
                // then), so a server that requires TLS has nothing to
                // offer it.
                if flags & CLIENT_FLAG_FIXED_NEWSTYLE == 0
                    && tls == (Tls::Offered { required: true })
                {
                    return Err(HandshakeError::TlsImpossible);
                }
                State::Haggling(Options::new(tls, flags & CLIENT_FLAG_NO_ZEROES != 0))
            }
            State::Haggling(mut options) => {
                match handle_option(stream, exports, &mut options).await? {
                    Step::Continue => State::Haggling(options),
                    Step::Done(outcome) => State::Done(outcome),
                }
            }
            State::Done(outcome) => return Ok(outcome),
        };
    }
}

/// Reads one option and answers it.
async fn handle_option<S>(
    stream: &mut S,
    registry: &ExportRegistry,
    options: &mut Options,
) -> Result<Step, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The exports as they are for this option: read once per option, so
    // an attach or detach shows at the client's next option, and a
    // negotiating connection does not hold a detached export for long.
    let snapshot = registry.snapshot();
    let exports = &*snapshot;
    let mut header = [0u8; OPTION_HEADER_LEN];
    stream.read_exact(&mut header).await?;
    let OptionHeader { option, length } = OptionHeader::parse(&header)?;
    debug!(option, length, "nbd option");

    // FORCEDTLS: nothing but STARTTLS and ABORT before TLS is up, whatever
    // the option (unknown and oversized ones included).
    if options.tls == (Tls::Offered { required: true })
        && option != p::OPT_STARTTLS
        && option != p::OPT_ABORT
    {
        if option == p::OPT_EXPORT_NAME {
            // It cannot carry an error: the spec says terminate.
            return Err(HandshakeError::TlsRequired);
        }
        discard(stream, length).await?;
        let msg = "TLS is required: send NBD_OPT_STARTTLS first";
        reply_error(stream, option, p::REP_ERR_TLS_REQD, msg).await?;
        return Ok(Step::Continue);
    }

    if length > MAX_OPTION_DATA {
        if option == p::OPT_EXPORT_NAME {
            // No longer than any valid name and no way to return an error.
            return Err(HandshakeError::ExportNameTooLong(length));
        }
        discard(stream, length).await?;
        reply_error(stream, option, p::REP_ERR_TOO_BIG, "option data too large").await?;
        return Ok(Step::Continue);
    }
    // Bounded by MAX_OPTION_DATA above.
    let mut data = vec![0u8; length as usize];
    stream.read_exact(&mut data).await?;

    match option {
        p::OPT_EXPORT_NAME => export_name(stream, exports, options, &data).await,
        p::OPT_ABORT => {
            // The client may already be gone; the spec asks both sides to
            // tolerate that, so a failed ACK is not an error.
            let _ = send(stream, &p::encode_option_reply(option, p::REP_ACK, &[])).await;
            Ok(Step::Done(HandshakeOutcome::Closed))
        }
        p::OPT_LIST => {
            if !data.is_empty() {
                reply_error(
                    stream,
                    option,
                    p::REP_ERR_INVALID,
                    "NBD_OPT_LIST takes no data",
                )
                .await?;
                return Ok(Step::Continue);
            }
            let mut out = Vec::new();
            for e in exports.open() {
                let description = e.description(options.certified);
                let server = p::encode_rep_server(&e.name, description);
                out.extend(p::encode_option_reply(option, p::REP_SERVER, &server));
            }
            out.extend(p::encode_option_reply(option, p::REP_ACK, &[]));
            send(stream, &out).await?;
            Ok(Step::Continue)
        }
        p::OPT_INFO | p::OPT_GO => info_or_go(stream, exports, options, option, &data).await,
        p::OPT_STRUCTURED_REPLY => {
            if !data.is_empty() {
                let msg = "NBD_OPT_STRUCTURED_REPLY takes no data";
                reply_error(stream, option, p::REP_ERR_INVALID, msg).await?;
            } else {
                options.structured_replies = true;
                send(stream, &p::encode_option_reply(option, p::REP_ACK, &[])).await?;
            }
            Ok(Step::Continue)
        }
        p::OPT_LIST_META_CONTEXT | p::OPT_SET_META_CONTEXT => {
            meta_context(stream, exports, options, option, &data).await?;
            Ok(Step::Continue)
        }
        p::OPT_STARTTLS if options.tls != Tls::Unavailable => {
            if options.tls == Tls::Active {
                let msg = "TLS is already active";
                reply_error(stream, option, p::REP_ERR_INVALID, msg).await?;
                return Ok(Step::Continue);
            }
            if !data.is_empty() {
                let msg = "NBD_OPT_STARTTLS takes no data";
                reply_error(stream, option, p::REP_ERR_INVALID, msg).await?;
                return Ok(Step::Continue);
            }
            send(stream, &p::encode_option_reply(option, p::REP_ACK, &[])).await?;
            Ok(Step::Done(HandshakeOutcome::StartTls {
                no_zeroes: options.no_zeroes,
            }))
        }
        other => {
            // STARTTLS without TLS configured lands here too: in NOTLS mode
            // ERR_UNSUP is one of the two answers the spec allows.
            let msg = format!("option {other} is not supported by this server");
            reply_error(stream, other, p::REP_ERR_UNSUP, &msg).await?;
            Ok(Step::Continue)
        }
    }
}

async fn export_name<S>(
    stream: &mut S,
    exports: &ExportSet,
    options: &Options,
    name: &[u8],
) -> Result<Step, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(export) = exports.find(name) else {
        return Err(HandshakeError::UnknownExport(
            String::from_utf8_lossy(name).into_owned(),
        ));
    };
    let negotiated = negotiated(export, options);
    let flags = export.transmission_flags(negotiated.structured_replies);
    let reply = p::encode_export_name_reply(export.device.size(), flags, options.no_zeroes);
    send(stream, &reply).await?;
    Ok(Step::Done(HandshakeOutcome::Transmission(Box::new(
        negotiated,
    ))))
}

async fn info_or_go<S>(
    stream: &mut S,
    exports: &ExportSet,
    options: &Options,
    option: u32,
    data: &[u8],
) -> Result<Step, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = match InfoRequest::parse(data) {
        Ok(r) => r,
        Err(e) => {
            reply_error(stream, option, p::REP_ERR_INVALID, &e.to_string()).await?;
            return Ok(Step::Continue);
        }
    };
    let Some(export) = exports.find(&request.name) else {
        let msg = format!(
            "no export named {:?}",
            String::from_utf8_lossy(&request.name)
        );
        reply_error(stream, option, p::REP_ERR_UNKNOWN, &msg).await?;
        return Ok(Step::Continue);
    };

    let wants = |t: u16| request.info_types.contains(&t);
    let flags = export.transmission_flags(options.structured_replies);
    let mut out = Vec::new();
    let mut info =
        |payload: Vec<u8>| out.extend(p::encode_option_reply(option, p::REP_INFO, &payload));
    info(p::encode_info_export(export.device.size(), flags));
    if wants(p::INFO_NAME) {
        info(p::encode_info_string(p::INFO_NAME, &export.name));
    }
    let description = export.description(options.certified);
    if wants(p::INFO_DESCRIPTION) && !description.is_empty() {
        info(p::encode_info_string(p::INFO_DESCRIPTION, description));
    }
    // Sent on GO even unasked: a client that ignores it is no worse off, and
    // one that understands it learns the preferred size (the spec lets a
    // server send info the client did not request).
    if wants(p::INFO_BLOCK_SIZE) || option == p::OPT_GO {
        let s = export.device.block_sizes();
        info(p::encode_info_block_size(s.minimum, s.preferred, s.maximum));
    }
    out.extend(p::encode_option_reply(option, p::REP_ACK, &[]));
    send(stream, &out).await?;

    if option == p::OPT_GO {
        Ok(Step::Done(HandshakeOutcome::Transmission(Box::new(
            negotiated(export, options),
        ))))
    } else {
        Ok(Step::Continue)
    }
}

/// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`; we know one
/// context, `base:allocation`.
async fn meta_context<S>(
    stream: &mut S,
    exports: &ExportSet,
    options: &mut Options,
    option: u32,
    data: &[u8],
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let setting = option == p::OPT_SET_META_CONTEXT;
    if setting {
        // SET replaces the previous selection even when it fails.
        options.meta_context = None;
        if !options.structured_replies {
            let msg = "NBD_OPT_SET_META_CONTEXT needs structured replies first";
            return reply_error(stream, option, p::REP_ERR_INVALID, msg).await;
        }
    }
    let request = match MetaContextRequest::parse(data) {
        Ok(r) => r,
        Err(e) => return reply_error(stream, option, p::REP_ERR_INVALID, &e.to_string()).await,
    };
    let Some(export) = exports.find(&request.export_name) else {
        let msg = format!(
            "no export named {:?}",
            String::from_utf8_lossy(&request.export_name)
        );
        return reply_error(stream, option, p::REP_ERR_UNKNOWN, &msg).await;
    };
    let base = p::META_BASE_ALLOCATION.as_bytes();
    let matches = if setting {
        // In SET, "base:" selects nothing and unknown names are ignored.
        request.queries.iter().any(|q| q == base)
    } else {
        // In LIST, no queries means "everything" and "base:" is a wildcard.
        request.queries.is_empty() || request.queries.iter().any(|q| q == base || q == b"base:")
    };
    let mut out = Vec::new();
    if matches {
        // LIST's ids are reserved and SHOULD be zero.
        let id = if setting { BASE_ALLOCATION_ID } else { 0 };
        let ctx = p::encode_meta_context(id, p::META_BASE_ALLOCATION);
        out.extend(p::encode_option_reply(option, p::REP_META_CONTEXT, &ctx));
    }
    out.extend(p::encode_option_reply(option, p::REP_ACK, &[]));
    send(stream, &out).await?;
    if setting {
        options.meta_context = Some((export.name.clone(), matches));
    }
    Ok(())
}

fn negotiated(export: &Arc<ServedExport>, options: &Options) -> Negotiated {
    let base_allocation = matches!(
        &options.meta_context,
        Some((name, true)) if *name == export.name
    );
    Negotiated {
        export: export.clone(),
        structured_replies: options.structured_replies,
        base_allocation,
    }
}

async fn reply_error<S>(
    stream: &mut S,
    option: u32,
    error: u32,
    message: &str,
) -> Result<(), HandshakeError>
where
    S: AsyncWrite + Unpin,
{
    debug!(option, error, message, "nbd option refused");
    send(
        stream,
        &p::encode_option_reply(option, error, message.as_bytes()),
    )
    .await
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), HandshakeError> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads and drops `len` bytes, so the next option header is found where
/// the client put it.
async fn discard<S: AsyncRead + Unpin>(stream: &mut S, len: u32) -> Result<(), HandshakeError> {
    let copied = tokio::io::copy(
        &mut (&mut *stream).take(u64::from(len)),
        &mut tokio::io::sink(),
    )
    .await?;
    if copied < u64::from(len) {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}
