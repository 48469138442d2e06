//! The control socket: a Unix stream socket, owner-only, served by the control thread.
//!
//! One request per connection: the client writes one JSON object on one line (`{"cmd":
//! "status"}`), the daemon answers one JSON object (`{"ok": true, "data": ...}` or `{"ok":
//! false, "error": "..."}`) and closes. Requests are untrusted: a line is read with a size
//! cap and a deadline, and anything that does not parse is answered with an error.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use vipgate::protocol::{error, parse_request, Request, REQUEST_MAX};

use crate::gateway::Gateway;

/// How long a client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// The socket's file, removed when dropped: on a clean stop and on a failed start alike.
pub(crate) struct SocketFile(PathBuf);

impl SocketFile {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the socket at `path`, owner-only. A socket file left by a daemon that is gone is
/// replaced; one that a running daemon answers on is not.
///
/// # Errors
/// One line naming the path and the problem.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, SocketFile), String> {
    let at = |e: io::Error| format!("control.socket: {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(at)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(at)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "control.socket: {}: another vipgate answers on it; stop it first or set another path",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(at)?;
    }
    let listener = UnixListener::bind(path).map_err(at)?;
    let file = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(at)?;
    listener.set_nonblocking(true).map_err(at)?;
    Ok((listener, file))
}

/// Waits up to `timeout` for a client; true if one is waiting.
pub(crate) fn wait_readable(listener: &UnixListener, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, the count says one; poll writes only its revents.
    let rc = unsafe { libc::poll(&mut fd, 1, ms) };
    rc > 0 && fd.revents & libc::POLLIN != 0
}

/// Serves every client waiting on `listener`, one request each, then returns.
pub(crate) fn serve_pending(listener: &UnixListener, gw: &Gateway<'_>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve_one(stream, gw) {
                    tracing::debug!(error = %e, "control client");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                return;
            }
        }
    }
}

/// The peer's uid (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred of that size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn serve_one(stream: UnixStream, gw: &Gateway<'_>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_DEADLINE))?;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let uid = peer_uid(&stream)?;
    let answer = if uid != 0 && uid != me {
        error(format!(
            "uid {uid} may not use the control socket; only root may"
        ))
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new((&stream).take(REQUEST_MAX));
        match reader.read_line(&mut line) {
            Ok(_) if !line.ends_with('\n') && line.len() as u64 >= REQUEST_MAX => {
                error(format!("request longer than {REQUEST_MAX} bytes"))
            }
            Ok(_) => match parse_request(line.as_bytes()) {
                Ok(req) => gw.handle(req),
                Err(e) => error(e),
            },
            Err(e) => error(format!("reading the request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    (&stream).write_all(&out)
}

/// Why the client side failed: the daemon refused (exit 1) or could not be reached (3).
#[derive(Debug)]
pub(crate) enum ClientError {
    Refused(String),
    Unreachable(String),
}

/// Sends `req` to the daemon at `path` and returns its `data`.
pub(crate) fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Value, ClientError> {
    let unreachable = |e: io::Error| {
        ClientError::Unreachable(format!(
            "cannot reach vipgate at {}: {e} (is it running? is this the control.socket of its configuration?)",
            path.display()
        ))
    };
    let mut stream = UnixStream::connect(path).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Refused(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(unreachable)?;
    let v: Value = serde_json::from_str(&answer)
        .map_err(|e| ClientError::Unreachable(format!("unreadable answer from vipgate: {e}")))?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    } else {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_string();
        Err(ClientError::Refused(msg))
    }
}
