//! TCP client behaviour the network tests need and std does not offer, and the head of an HTTP response.

use std::io::BufRead;
use std::net::TcpStream;

/// SO_LINGER with a zero timeout: closing the socket sends a reset instead of a FIN, as a client that gives up does.
pub fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt reads one `struct linger` from the pointer, for an open socket.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// Reads an HTTP/1.1 response's head: the status code and Content-Length, leaving the reader at the first body byte.
pub fn read_http_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Option<u64>)> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad(format!("not an HTTP/1.1 status line: {line:?}")))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("the connection closed inside the head".into()));
        }
        if line == "\r\n" {
            return Ok((status, length));
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse().map_err(|_| bad(format!("bad {line:?}")))?);
            }
        }
    }
}
