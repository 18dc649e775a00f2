//! The listening side: bind the socket (mode 0660, its group from config), accept within a
//! bound on connections, check each peer, read one request within a size and a time bound, and
//! hand it to the daemon's [`Handler`], whose answers are written back as they come.

use super::proto::{Request, Response, MAX_REQUEST};
use crate::config::Admins;
use corral_proto::frame::{self, AsyncFrameReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// Most connections served at once; more are answered `busy` and closed.
const MAX_CONNECTIONS: usize = 128;

/// How long a client has to send its request once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers buffered for one connection; a stream whose client reads slower drops lines.
const REPLY_BUFFER: usize = 256;

/// Where the daemon's answers to one request go. Lines of a stream are sent with `try_send`
/// (a slow reader loses lines, never grows the daemon); final answers with `send`.
pub type Replies = mpsc::Sender<Response>;

/// Who is asking, from `SO_PEERCRED` (and `/proc/PID/status` for supplementary groups).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its pid, when the kernel says.
    pub pid: Option<i32>,
    /// Its supplementary groups (empty when they cannot be read).
    pub groups: Vec<u32>,
}

impl Peer {
    fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid();
        let groups = pid.map(supplementary_groups).unwrap_or_default();
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups,
        })
    }

    /// Whether this peer may use the socket: root, the daemon's own uid, a listed user, or a
    /// member of a listed group.
    pub fn admitted(&self, admins: &Admins) -> bool {
        let own = nix::unistd::getuid().as_raw();
        self.uid == 0
            || self.uid == own
            || admins.uids.contains(&self.uid)
            || admins.gids.contains(&self.gid)
            || self.groups.iter().any(|g| admins.gids.contains(g))
    }
}

/// The `Groups:` line of `/proc/PID/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What the daemon does with a request: answer on `replies` (now, or from a task it spawns).
/// The connection is closed after a final answer, or when every sender is dropped.
pub trait Handler: Send + Sync + 'static {
    /// Handle `req` from `peer` (already admitted).
    fn handle(&self, peer: &Peer, req: Request, replies: Replies);
}

/// Bind the control socket at `path`: its directory made, a stale socket of a dead daemon
/// replaced (a live one is an error), mode 0660, group `group` when given.
pub fn bind(path: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another daemon answers on it", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(std::io::Error::from)?;
    }
    Ok(listener)
}

/// Accept connections on `listener` until `closed` turns true, each checked against `admins`
/// and answered by `handler`.
pub async fn serve(
    listener: UnixListener,
    admins: watch::Receiver<Admins>,
    handler: Arc<dyn Handler>,
    mut closed: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket: accept: {e}");
                    // (Out of fds, most likely: let others finish.)
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = closed.changed() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let busy = Response::error("busy", "too many control connections; try again");
                let _ = write(&mut { stream }, &busy).await;
            });
            continue;
        };
        let handler = handler.clone();
        let admins = admins.borrow().clone();
        tokio::spawn(async move {
            connection(stream, &admins, &*handler).await;
            drop(permit);
        });
    }
}

async fn write(stream: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let bytes = frame::encode(r).map_err(std::io::Error::other)?;
    stream.write_all(&bytes).await
}

/// One connection: the peer check, one request, the answers.
async fn connection(mut stream: UnixStream, admins: &Admins, handler: &dyn Handler) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("control socket: cannot read the peer's credentials: {e}");
            return;
        }
    };
    if !peer.admitted(admins) {
        tracing::warn!(
            peer_uid = peer.uid,
            peer_pid = peer.pid.unwrap_or(0),
            "control socket: request refused: uid {} is not in [supervisor] admins",
            peer.uid
        );
        let msg = format!(
            "uid {} may not use this control socket (see [supervisor] admins)",
            peer.uid
        );
        let _ = write(&mut stream, &Response::error("denied", msg)).await;
        return;
    }
    let (read, mut write_half) = stream.into_split();
    let mut reader = AsyncFrameReader::new(read, MAX_REQUEST);
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_frame::<Request>()).await {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let r = Response::error("bad_request", format!("unreadable request: {e}"));
            if let Ok(bytes) = frame::encode(&r) {
                let _ = write_half.write_all(&bytes).await;
            }
            return;
        }
        Err(_) => return,
    };
    tracing::debug!(peer_uid = peer.uid, request = ?req, "control request");
    let (tx, mut rx) = mpsc::channel(REPLY_BUFFER);
    handler.handle(&peer, req, tx);
    while let Some(r) = rx.recv().await {
        let last = r.is_final();
        let Ok(bytes) = frame::encode(&r) else { return };
        if write_half.write_all(&bytes).await.is_err() {
            return; // the client left
        }
        if last {
            return;
        }
    }
}
