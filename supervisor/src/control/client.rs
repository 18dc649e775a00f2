//! The asking side, blocking (a verb asks once and prints): connect, send one request, read
//! the answers until the final one.

use super::proto::{Request, Response, MAX_RESPONSE};
use corral_proto::frame::{self, FrameReader};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens on the socket (no daemon, or not this one).
    #[error("no corral daemon answers on {path}: {source} (is `corral serve` running with this config?)")]
    NoDaemon {
        /// The socket.
        path: PathBuf,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The connection broke or a frame was wrong.
    #[error("control socket {path}: {source}")]
    Wire {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        source: frame::FrameError,
    },
    /// The daemon ended the conversation before its final answer.
    #[error("control socket {0}: the daemon closed the connection before answering")]
    Closed(PathBuf),
    /// The socket (or a directory above it) is not open to this user.
    #[error(
        "control socket {path}: permission denied: uid {uid} is not root nor in the socket's \
         group (`[supervisor] control_group`; the daemon admits `[supervisor] admins`)"
    )]
    Denied {
        /// The socket.
        path: PathBuf,
        /// This process's uid.
        uid: u32,
    },
}

/// A connection to the daemon, for one request.
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    reader: FrameReader<UnixStream>,
}

impl Client {
    /// Connect to the control socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ControlError> {
        let no_daemon = |source| ControlError::NoDaemon {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                ControlError::Denied {
                    path: path.to_path_buf(),
                    uid: nix::unistd::getuid().as_raw(),
                }
            } else {
                no_daemon(e)
            }
        })?;
        let read = stream.try_clone().map_err(no_daemon)?;
        Ok(Client {
            path: path.to_path_buf(),
            stream,
            reader: FrameReader::with_max(read, MAX_RESPONSE),
        })
    }

    fn wire(&self, source: frame::FrameError) -> ControlError {
        ControlError::Wire {
            path: self.path.clone(),
            source,
        }
    }

    /// Send `req`, then call `each` with every answer until the final one, which is returned.
    pub fn ask(
        mut self,
        req: &Request,
        mut each: impl FnMut(&Response),
    ) -> Result<Response, ControlError> {
        let bytes = frame::encode(req).map_err(|e| self.wire(e))?;
        // A daemon that refuses the peer answers at once and closes: the request may then not
        // go out whole (EPIPE), but the answer is there to read, and it is what to say.
        let sent = self.stream.write_all(&bytes);
        if let Err(e) = sent {
            return match self.reader.read_frame::<Response>() {
                Ok(Some(r)) => Ok(r),
                _ => Err(self.wire(e.into())),
            };
        }
        let mut last = None;
        loop {
            match self.reader.read_frame::<Response>() {
                Ok(Some(r)) if r.is_final() => return Ok(r),
                Ok(Some(r)) => {
                    each(&r);
                    last = Some(r);
                }
                // An acceptance not followed by more is the answer.
                Ok(None) => return last.ok_or_else(|| ControlError::Closed(self.path.clone())),
                Err(e) => return Err(self.wire(e)),
            }
        }
    }
}
