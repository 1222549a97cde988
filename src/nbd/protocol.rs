//! NBD wire format: constants and typed parse/encode of the fixed-size
//! messages, as defined by the NBD project's `doc/proto.md`.
//!
//! Everything here is pure (no I/O) so it can be tested byte for byte.
//! Parsers take client bytes and return typed errors; nothing here panics on
//! anything a client sends. All integers on the wire are big-endian.

use thiserror::Error;

// ---------------------------------------------------------------- magics

/// `NBDMAGIC`, first 8 bytes the server sends (a.k.a. `INIT_PASSWD`).
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second greeting word, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Prefix of every option reply in fixed newstyle negotiation.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`: prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// ------------------------------------------------------ handshake flags

/// Server handshake flag `NBD_FLAG_FIXED_NEWSTYLE`.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag `NBD_FLAG_NO_ZEROES`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag `NBD_FLAG_C_FIXED_NEWSTYLE`.
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag `NBD_FLAG_C_NO_ZEROES`.
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; any other bit closes the
/// connection (the spec says the server MUST drop it).
pub const CLIENT_FLAGS_KNOWN: u32 = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

// ------------------------------------------------------------- options

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// ------------------------------------------------------- option replies

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks an error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// ------------------------------------------------------------ info types

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------- transmission flags

pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_RESIZE: u16 = 1 << 9;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// -------------------------------------------------------------- commands

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// --------------------------------------------------------- command flags

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// ------------------------------------------------ structured reply chunks

pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

// ---------------------------------------------------------- error values

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

// ------------------------------------------------------- metadata contexts

/// `base:allocation` status flag: the extent is not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` status flag: the extent reads as zeros.
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context this server offers.
pub const META_BASE_ALLOCATION: &str = "base:allocation";

// ------------------------------------------------------------ sizes

/// Spec limit for any string (export names, descriptions, messages).
pub const MAX_STRING_LEN: usize = 4096;
/// Length of the greeting the server sends first.
pub const GREETING_LEN: usize = 18;
/// Length of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const STRUCTURED_HEADER_LEN: usize = 20;
/// Zero padding after an `NBD_OPT_EXPORT_NAME` reply unless NO_ZEROES.
pub const EXPORT_NAME_PADDING: usize = 124;

/// Client bytes that do not form a valid message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    #[error("malformed option data: {0}")]
    MalformedOption(&'static str),
}

/// Builds the 18-byte greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// The header of one client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub fn parse(bytes: &[u8; OPTION_HEADER_LEN]) -> Result<Self, ProtocolError> {
        let magic = u64::from_be_bytes(take(bytes, 0));
        if magic != IHAVEOPT {
            return Err(ProtocolError::BadOptionMagic(magic));
        }
        Ok(Self {
            option: u32::from_be_bytes(take(bytes, 8)),
            length: u32::from_be_bytes(take(bytes, 12)),
        })
    }
}

/// One option reply: header plus data, ready to write.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // Option reply data is always small and server-built (names, infos,
    // messages bounded by MAX_STRING_LEN), so it fits a u32.
    out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `NBD_REP_SERVER` data: name length, name, then a human description.
pub fn encode_rep_server(name: &str, description: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    out.extend_from_slice(&len_u32(name.len()).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(description.as_bytes());
    out
}

/// `NBD_REP_INFO` data for `NBD_INFO_EXPORT`.
pub fn encode_info_export(size: u64, transmission_flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    out
}

/// `NBD_REP_INFO` data for `NBD_INFO_NAME` / `NBD_INFO_DESCRIPTION`.
pub fn encode_info_string(info_type: u16, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len());
    out.extend_from_slice(&info_type.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// `NBD_REP_INFO` data for `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&minimum.to_be_bytes());
    out.extend_from_slice(&preferred.to_be_bytes());
    out.extend_from_slice(&maximum.to_be_bytes());
    out
}

/// `NBD_REP_META_CONTEXT` data: context id, then name.
pub fn encode_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// The reply that ends negotiation after `NBD_OPT_EXPORT_NAME`.
pub fn encode_export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + EXPORT_NAME_PADDING, 0);
    }
    out
}

/// Data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Raw bytes: the spec says UTF-8, but matching raw bytes means a
    /// non-UTF-8 name is simply an unknown export rather than a parse error.
    pub name: Vec<u8>,
    pub info_types: Vec<u16>,
}

impl InfoRequest {
    pub fn parse(data: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Cursor::new(data);
        let name = r.string()?;
        let count = r.u16()?;
        let mut info_types = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            info_types.push(r.u16()?);
        }
        r.finish()?;
        Ok(Self { name, info_types })
    }
}

/// Data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export_name: Vec<u8>,
    pub queries: Vec<Vec<u8>>,
}

impl MetaContextRequest {
    pub fn parse(data: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Cursor::new(data);
        let export_name = r.string()?;
        let count = r.u32()?;
        let mut queries = Vec::new();
        for _ in 0..count {
            queries.push(r.string()?);
        }
        r.finish()?;
        Ok(Self {
            export_name,
            queries,
        })
    }
}

/// A transmission request header (the 28 fixed bytes; a WRITE payload
/// follows on the wire and is read separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    /// Raw command type; see [`Request::command`].
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// A request type, with unknown values kept so they can be answered EINVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl Request {
    pub fn parse(bytes: &[u8; REQUEST_HEADER_LEN]) -> Result<Self, ProtocolError> {
        let magic = u32::from_be_bytes(take(bytes, 0));
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::BadRequestMagic(magic));
        }
        Ok(Self {
            flags: u16::from_be_bytes(take(bytes, 4)),
            kind: u16::from_be_bytes(take(bytes, 6)),
            cookie: u64::from_be_bytes(take(bytes, 8)),
            offset: u64::from_be_bytes(take(bytes, 16)),
            length: u32::from_be_bytes(take(bytes, 24)),
        })
    }

    pub fn command(&self) -> Command {
        match self.kind {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }
}

/// Simple reply header; for a successful READ the data follows it.
pub fn encode_simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// Structured reply chunk header; `payload_len` bytes of payload follow.
pub fn encode_structured_header(
    cookie: u64,
    flags: u16,
    reply_type: u16,
    payload_len: u32,
) -> [u8; STRUCTURED_HEADER_LEN] {
    let mut out = [0u8; STRUCTURED_HEADER_LEN];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&reply_type.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&payload_len.to_be_bytes());
    out
}

/// A complete `NBD_REPLY_TYPE_ERROR` chunk (final, DONE set).
pub fn encode_structured_error(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let message = truncate_utf8(message, MAX_STRING_LEN);
    let payload_len = 6 + message.len();
    let mut out = Vec::with_capacity(STRUCTURED_HEADER_LEN + payload_len);
    out.extend_from_slice(&encode_structured_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        len_u32(payload_len),
    ));
    out.extend_from_slice(&error.to_be_bytes());
    // truncate_utf8 bounds the message to 4096 bytes, which fits a u16.
    out.extend_from_slice(&u16::try_from(message.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out
}

/// Header and offset of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk (final);
/// `data_len` bytes of data follow it.
pub fn encode_offset_data_header(cookie: u64, offset: u64, data_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(STRUCTURED_HEADER_LEN + 8);
    out.extend_from_slice(&encode_structured_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        data_len.saturating_add(8),
    ));
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// A complete final `NBD_REPLY_TYPE_NONE` chunk.
pub fn encode_structured_none(cookie: u64) -> [u8; STRUCTURED_HEADER_LEN] {
    encode_structured_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)
}

/// A complete final `NBD_REPLY_TYPE_BLOCK_STATUS` chunk with one extent per
/// `(length, flags)` descriptor.
pub fn encode_block_status(cookie: u64, context_id: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let payload_len = 4 + 8 * extents.len();
    let mut out = Vec::with_capacity(STRUCTURED_HEADER_LEN + payload_len);
    out.extend_from_slice(&encode_structured_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        len_u32(payload_len),
    ));
    out.extend_from_slice(&context_id.to_be_bytes());
    for (length, flags) in extents {
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
    out
}

/// Reads big-endian fields from option data, failing (not panicking) when
/// the data is shorter than its own length fields claim.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.data.len() {
            return Err(ProtocolError::MalformedOption(
                "length field exceeds option data",
            ));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A 32-bit length followed by that many bytes.
    fn string(&mut self) -> Result<Vec<u8>, ProtocolError> {
        let len = usize::try_from(self.u32()?)
            .map_err(|_| ProtocolError::MalformedOption("string length overflows"))?;
        if len > MAX_STRING_LEN {
            return Err(ProtocolError::MalformedOption(
                "string longer than 4096 bytes",
            ));
        }
        Ok(self.bytes(len)?.to_vec())
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::MalformedOption(
                "trailing bytes in option data",
            ))
        }
    }
}

/// Copies `N` bytes at `at` out of a fixed-size header. Callers pass
/// constant offsets inside arrays of known length, so the slice is in range.
fn take<const N: usize, const L: usize>(bytes: &[u8; L], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// Lengths of server-built messages; saturates instead of wrapping should a
/// caller ever pass more than 4 GiB (the caller's limits make that impossible).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_flags() {
        let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn request_roundtrip_and_bad_magic() {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = Request::parse(&b).unwrap();
        assert_eq!(r.command(), Command::Write);
        assert_eq!((r.flags, r.cookie, r.offset, r.length), (1, 7, 4096, 512));
        b[0] = 0;
        assert_eq!(
            Request::parse(&b),
            Err(ProtocolError::BadRequestMagic(0x0060_9513))
        );
    }

    #[test]
    fn info_request_rejects_lies_about_lengths() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let r = InfoRequest::parse(&d).unwrap();
        assert_eq!(r.name, b"abc");
        assert_eq!(r.info_types, vec![INFO_NAME, INFO_BLOCK_SIZE]);
        // Name length beyond the data, count beyond the data, trailing bytes.
        assert!(InfoRequest::parse(&[0, 0, 0, 9, b'a']).is_err());
        assert!(InfoRequest::parse(&[0, 0, 0, 0, 0, 2, 0, 1]).is_err());
        assert!(InfoRequest::parse(&[0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(InfoRequest::parse(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn meta_context_request_parses() {
        let mut d = Vec::new();
        d.extend_from_slice(&0u32.to_be_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&15u32.to_be_bytes());
        d.extend_from_slice(b"base:allocation");
        let r = MetaContextRequest::parse(&d).unwrap();
        assert_eq!(r.queries, vec![b"base:allocation".to_vec()]);
        assert!(MetaContextRequest::parse(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn structured_error_layout() {
        let e = encode_structured_error(9, EINVAL, "bad");
        assert_eq!(&e[0..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&e[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&e[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&e[16..20], &9u32.to_be_bytes());
        assert_eq!(&e[20..24], &EINVAL.to_be_bytes());
        assert_eq!(&e[24..26], &3u16.to_be_bytes());
        assert_eq!(&e[26..], b"bad");
    }

    #[test]
    fn export_name_reply_padding() {
        assert_eq!(encode_export_name_reply(1, 1, false).len(), 134);
        assert_eq!(encode_export_name_reply(1, 1, true).len(), 10);
    }
}
