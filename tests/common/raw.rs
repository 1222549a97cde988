//! A minimal raw-socket NBD client for protocol tests. Its constants are
//! written out from `doc/proto.md` independently of the server's
//! `protocol.rs`, so a wrong constant there cannot make these tests agree.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub const IHAVEOPT: u64 = 0x49484156454F5054;
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const FLAG_FUA: u16 = 1;
pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const TFLAG_HAS_FLAGS: u16 = 1;
pub const TFLAG_READ_ONLY: u16 = 2;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub struct Raw {
    pub s: UnixStream,
}

/// One option reply.
#[derive(Debug)]
pub struct OptReply {
    pub option: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// One transmission reply (simple or structured chunk).
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple {
        cookie: u64,
        error: u32,
    },
    Chunk {
        cookie: u64,
        flags: u16,
        kind: u16,
        payload: Vec<u8>,
    },
}

impl Raw {
    /// Connects, checks the greeting and sends `client_flags`.
    pub fn connect(s: UnixStream, client_flags: u32) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = Self { s };
        let mut g = [0u8; 18];
        r.s.read_exact(&mut g).unwrap();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(
            u16::from_be_bytes([g[16], g[17]]),
            0b11,
            "FIXED_NEWSTYLE|NO_ZEROES"
        );
        r.s.write_all(&client_flags.to_be_bytes()).unwrap();
        r
    }

    pub fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    pub fn read_opt_reply(&mut self) -> OptReply {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            u64::from_be_bytes(h[0..8].try_into().unwrap()),
            0x3e889045565a9
        );
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0; len as usize];
        self.s.read_exact(&mut data).unwrap();
        OptReply {
            option: u32::from_be_bytes(h[8..12].try_into().unwrap()),
            kind: u32::from_be_bytes(h[12..16].try_into().unwrap()),
            data,
        }
    }

    /// Sends `option`, returns every reply up to and including the final one
    /// (ACK or an error).
    pub fn option(&mut self, option: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_option(option, data);
        let mut replies = Vec::new();
        loop {
            let r = self.read_opt_reply();
            assert_eq!(r.option, option);
            let last = r.kind == REP_ACK || r.kind & 0x8000_0000 != 0;
            replies.push(r);
            if last {
                return replies;
            }
        }
    }

    /// NBD_OPT_GO on `name` with the given info requests; returns
    /// (size, transmission flags, all replies). Panics unless it ends in ACK.
    pub fn go(&mut self, name: &str, infos: &[u16]) -> (u64, u16, Vec<OptReply>) {
        let replies = self.option(OPT_GO, &info_data(name, infos));
        assert_eq!(
            replies.last().unwrap().kind,
            REP_ACK,
            "GO failed: {replies:?}"
        );
        let export = replies
            .iter()
            .find(|r| r.kind == REP_INFO && r.data[0..2] == [0, 0])
            .expect("NBD_INFO_EXPORT");
        assert_eq!(export.data.len(), 12);
        let size = u64::from_be_bytes(export.data[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(export.data[10..12].try_into().unwrap());
        (size, flags, replies)
    }

    pub fn request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut m = Vec::with_capacity(28 + payload.len());
        m.extend_from_slice(&0x25609513u32.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&length.to_be_bytes());
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
    }

    /// Reads one reply header (and a structured chunk's payload). A simple
    /// READ reply's data must then be read by the caller with `read_data`.
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply()
            .expect("connection closed before a reply")
    }

    /// Like `read_reply`, but `None` if the server closed the connection
    /// where a reply would start.
    pub fn try_read_reply(&mut self) -> Option<Reply> {
        let mut magic = [0u8; 4];
        match self.s.read_exact(&mut magic) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("reading a reply: {e}"),
        }
        Some(match u32::from_be_bytes(magic) {
            0x67446698 => {
                let mut h = [0u8; 12];
                self.s.read_exact(&mut h).unwrap();
                Reply::Simple {
                    error: u32::from_be_bytes(h[0..4].try_into().unwrap()),
                    cookie: u64::from_be_bytes(h[4..12].try_into().unwrap()),
                }
            }
            0x668e33ef => {
                let mut h = [0u8; 16];
                self.s.read_exact(&mut h).unwrap();
                let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
                let mut payload = vec![0; len as usize];
                self.s.read_exact(&mut payload).unwrap();
                Reply::Chunk {
                    flags: u16::from_be_bytes(h[0..2].try_into().unwrap()),
                    kind: u16::from_be_bytes(h[2..4].try_into().unwrap()),
                    cookie: u64::from_be_bytes(h[4..12].try_into().unwrap()),
                    payload,
                }
            }
            other => panic!("bad reply magic {other:#x}"),
        })
    }

    pub fn read_data(&mut self, len: usize) -> Vec<u8> {
        let mut d = vec![0; len];
        self.s.read_exact(&mut d).unwrap();
        d
    }

    /// Reads and drops everything up to EOF; the byte count, or the error
    /// (such as the read timeout) that came first.
    pub fn read_to_eof(&mut self) -> std::io::Result<usize> {
        let mut rest = Vec::new();
        self.s.read_to_end(&mut rest)
    }

    /// True once the server has closed the connection (EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

/// Data of NBD_OPT_INFO / NBD_OPT_GO.
pub fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// Data of NBD_OPT_{LIST,SET}_META_CONTEXT.
pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}
