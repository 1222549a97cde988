//! The server's side of the line framing: one request line in, one reply
//! line out (shared by the listener and a snapshot session, which also
//! writes raw chunk bytes after a reply line).

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::protocol::{MAX_REQUEST_LEN, PROTOCOL_VERSION, Reply, ReplyBody};

/// One request line without its newline; `None` at the end of the
/// stream; `Err` for a line longer than [`MAX_REQUEST_LEN`] or a read
/// error.
pub(super) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_REQUEST_LEN + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the request failed: {e}"))?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() as u64 > MAX_REQUEST_LEN {
        return Err(format!("request longer than {MAX_REQUEST_LEN} bytes"));
    }
    Ok(Some(line))
}

/// Writes `body` as one reply line.
pub(super) async fn send<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    body: ReplyBody,
) -> io::Result<()> {
    let reply = Reply {
        version: PROTOCOL_VERSION,
        body,
    };
    let mut line = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await
}
