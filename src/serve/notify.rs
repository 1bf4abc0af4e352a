//! systemd's readiness protocol (`Type=notify`), written by hand: one
//! datagram `READY=1` to the Unix socket named in `$NOTIFY_SOCKET`. Nothing
//! happens outside systemd (the variable is unset). An abstract socket
//! name (`@...`) is not supported: systemd uses a path unless configured
//! otherwise, and the daemon then just logs that it could not notify.

use std::os::unix::net::UnixDatagram;

/// Tells systemd the daemon is ready (recovered and accepting the feed).
pub fn ready() {
    send("READY=1\nSTATUS=accepting the feed\n");
}

/// Tells systemd the daemon is stopping (SIGTERM received).
pub fn stopping() {
    send("STOPPING=1\n");
}

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = UnixDatagram::unbound().and_then(|socket| socket.send_to(message.as_bytes(), &path));
    if let Err(e) = sent {
        tracing::warn!(socket = ?path, "cannot notify systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_one_datagram_to_the_named_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // The variable is read per call; this test is the only one that sets it.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        super::ready();
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 128];
        let n = socket.recv(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"READY=1\n"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    }
}
