//! What `corral-init` does (see `main.rs` for what it is): start or adopt the agent, forward
//! termination signals to the namespace, reap, and report how the agent ended.

use crate::init_record::InitRecord;
use crate::sys;
use core::sync::atomic::Ordering;

const STATUS_FD: i32 = 5;
const CONTROL_FD: i32 = 7;
/// The largest start record accepted on fd 7.
const MAX_START: usize = 4 << 20;
/// The most strings (program, arguments, environment) a start record may hold.
const MAX_STRINGS: usize = 1 << 16;
/// What the agent's process tells the init, instead of an errno, when the stem was not needed.
const NOT_NEEDED: i32 = i32::MIN;
const FORWARDED: [i32; 6] = [
    sys::SIGTERM,
    sys::SIGINT,
    sys::SIGHUP,
    sys::SIGQUIT,
    sys::SIGUSR1,
    sys::SIGUSR2,
];

/// One line saying what this is, for a person who runs it by hand.
const USAGE: &[u8] = b"corral-init: the first process of an agent's pid namespace, started by \
corral (usage: corral-init --adopt | --stem [UID GID] | PROGRAM [ARGS...], with the status pipe \
on fd 5); not meant to be run by hand\n";

extern "C" fn forward(sig: i32) {
    // -1 from pid 1: every process of the namespace.
    sys::kill(-1, sig);
}

fn report(record: InitRecord) {
    sys::write(STATUS_FD, &record.encode());
}

/// The agent could not be started: `errno` says why. Exits.
fn not_started(errno: i32, code: i32) -> ! {
    report(InitRecord::NotStarted { errno });
    sys::exit(code)
}

/// The NUL-terminated string at `p`, without its NUL.
///
/// # Safety
/// `p` points to a NUL-terminated string that lives as long as the process.
unsafe fn c_str(p: *const u8) -> &'static [u8] {
    let mut n = 0;
    // SAFETY: per our contract, every byte up to the NUL is readable. (Read one by one and
    // volatile: a plain loop is compiled into a call to `strlen`, which is not linked.)
    unsafe {
        while core::ptr::read_volatile(p.add(n)) != 0 {
            n += 1;
        }
        core::slice::from_raw_parts(p, n)
    }
}

fn parse_id(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    u32::try_from(v).ok()
}

/// How the agent's program is named.
#[derive(Clone, Copy)]
enum Start {
    /// Read from fd 7 when the stem is released, then run as these ids (if any).
    Stem(Option<(u32, u32)>),
    /// Our own arguments from the first on, with our environment.
    Args(*const *const u8),
}

/// Entered with the process's arguments and environment.
///
/// # Safety
/// `argv` holds `argc` NUL-terminated strings then NULL; `envp` is a NULL-terminated array of
/// NUL-terminated strings; all live as long as the process.
pub unsafe fn main(argc: usize, argv: *const *const u8, envp: *const *const u8) -> ! {
    // Run by hand (from a terminal, a script): corral always hands over fd 5 for the record.
    if sys::fcntl(STATUS_FD, sys::F_GETFD, 0) < 0 {
        sys::write(2, USAGE);
        sys::exit(2);
    }
    if argc < 2 {
        sys::write(2, USAGE);
        not_started(sys::EINVAL, 2);
    }
    // First of all: nothing of ours is readable through /proc by the agent.
    let r = sys::prctl(sys::PR_SET_DUMPABLE, 0);
    if r < 0 {
        not_started(sys::errno(r), 127);
    }
    sys::fcntl(STATUS_FD, sys::F_SETFD, sys::FD_CLOEXEC);
    for sig in FORWARDED {
        sys::signal(sig, Some(forward));
    }
    // SAFETY: argv has argc > 1 entries (checked), each a string per our contract.
    let arg = |i: usize| unsafe { (i < argc).then(|| c_str(*argv.add(i))) };
    let start = match arg(1) {
        // corral started the agent before exec'ing us: it is our child, pid 2 of the namespace
        // (the first process after its init).
        Some(b"--adopt") => wait_for(2, None),
        // A stem: its agent runs as this user (`--stem UID GID`) when it is released.
        Some(b"--stem") => {
            let ids = match (arg(2), arg(3)) {
                (None, _) => None,
                (Some(u), Some(g)) => match (parse_id(u), parse_id(g)) {
                    (Some(u), Some(g)) => Some((u, g)),
                    _ => not_started(sys::EINVAL, 2),
                },
                (Some(_), None) => not_started(sys::EINVAL, 2),
            };
            sys::fcntl(CONTROL_FD, sys::F_SETFD, sys::FD_CLOEXEC);
            Start::Stem(ids)
        }
        // SAFETY: argv has at least two entries.
        _ => Start::Args(unsafe { argv.add(1) }),
    };
    // SAFETY: envp per our contract.
    unsafe { start_agent(start, envp) }
}

/// Start the agent as our child, then wait for it. A stem's agent process is made at once and
/// made ready (default signals, no capabilities, its ids), then waits on fd 7 for its program:
/// a release costs that read and the `execve`, nothing more. Should it end before its `execve`,
/// it leaves why in a word of memory it shares with us (an errno, or `NOT_NEEDED` for the
/// stem's end of file), which its `execve` unmaps from the agent.
///
/// # Safety
/// `envp` (and `Start::Args`'s array) as in [`main`].
unsafe fn start_agent(start: Start, envp: *const *const u8) -> ! {
    let Some(word) = sys::shared_word() else {
        not_started(sys::ENOMEM, 127)
    };
    // No forwarding handler may run in the child before it resets them.
    sys::block_all(true);
    let pid = sys::fork();
    if pid == 0 {
        // SAFETY: per our contract.
        let errno = unsafe { agent(start, envp) };
        word.store(errno, Ordering::SeqCst);
        sys::exit(127);
    }
    sys::block_all(false);
    if pid < 0 {
        not_started(sys::errno(pid), 127);
    }
    if let Start::Stem(_) = start {
        // The agent's process reads it; the supervisor's end of file must reach it alone.
        sys::close(CONTROL_FD);
    }
    wait_for(pid as i32, Some(word))
}

/// In the agent's process: make it the agent's (signals, capabilities, ids), learn its program,
/// exec it. Returns the errno of what failed, or `NOT_NEEDED`.
///
/// # Safety
/// As [`start_agent`].
unsafe fn agent(start: Start, envp: *const *const u8) -> i32 {
    for sig in FORWARDED.iter().chain(&[sys::SIGPIPE]) {
        sys::signal(*sig, None);
    }
    sys::block_all(false);
    match start {
        // SAFETY: per our contract.
        Start::Args(argv) => unsafe { sys::execve(*argv, argv, envp) },
        Start::Stem(ids) => {
            // Ids or not (an unprivileged supervisor gives none: the agent is root of its user
            // namespace), no capability is left, as on the cold path.
            let e = sys::become_agent(ids);
            if e != 0 {
                return e;
            }
            match read_start() {
                Ok(Some((path, argv, env))) => {
                    let env = if env.is_null() { envp } else { env };
                    // SAFETY: read_start's arrays are NULL-terminated, of NUL-terminated
                    // strings in its buffer, which lives as long as the process.
                    unsafe { sys::execve(path, argv, env) }
                }
                Ok(None) => NOT_NEEDED,
                Err(e) => e,
            }
        }
    }
}

/// The start record's bytes, and its strings' addresses (argv, NULL, envp, NULL). Statics:
/// this program has no allocator, and only the agent's process (a copy of ours) fills them.
static mut START: [u8; MAX_START] = [0; MAX_START];
static mut POINTERS: [*const u8; MAX_STRINGS + 2] = [core::ptr::null(); MAX_STRINGS + 2];

/// Read the start record from fd 7: `argc: u32 LE, envc: u32 LE`, then `1 + argc + envc`
/// NUL-terminated strings (the program's path, its argv, then its environment). `Ok(None)` at
/// end of file before a whole record (the stem is not needed); the environment is NULL when
/// the record has none (the agent then gets ours).
fn read_start() -> Result<Option<(*const u8, *const *const u8, *const *const u8)>, i32> {
    // SAFETY: only the agent's process, single-threaded, touches this static, here, once.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(START) };
    // SAFETY: as `START`: no other reference to it exists.
    let ptrs = unsafe { &mut *core::ptr::addr_of_mut!(POINTERS) };
    let mut len = 0;
    let mut counted: Option<(usize, usize)> = None;
    let mut strings = 0; // whole strings seen so far
    let mut scanned = 8; // bytes of strings scanned for NULs
    loop {
        if let Some((argc, envc)) = counted {
            // Record each string's start as its NUL is found.
            while scanned < len && strings < 1 + argc + envc {
                let begin = scanned;
                match buf[scanned..len].iter().position(|&b| b == 0) {
                    Some(at) => {
                        let slot = match strings {
                            0 => None,
                            i if i <= argc => Some(i - 1),
                            // After argv's `argc` slots and its NULL: envp.
                            i => Some(i),
                        };
                        if let Some(s) = slot {
                            ptrs[s] = buf[begin..].as_ptr();
                        }
                        strings += 1;
                        scanned += at + 1;
                    }
                    None => break,
                }
            }
            if strings == 1 + argc + envc {
                if argc == 0 {
                    return Err(sys::EINVAL);
                }
                ptrs[argc] = core::ptr::null();
                ptrs[argc + 1 + envc] = core::ptr::null();
                let env = if envc == 0 {
                    core::ptr::null()
                } else {
                    ptrs[argc + 1..].as_ptr()
                };
                return Ok(Some((buf[8..].as_ptr(), ptrs.as_ptr(), env)));
            }
        }
        if len == buf.len() {
            return Err(sys::E2BIG);
        }
        let n = sys::read(CONTROL_FD, &mut buf[len..]);
        if n < 0 && sys::errno(n) == sys::EINTR {
            continue;
        }
        if n < 0 {
            return Err(sys::errno(n));
        }
        if n == 0 {
            return Ok(None);
        }
        len += n as usize;
        if counted.is_none() && len >= 8 {
            let argc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            let envc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if argc.saturating_add(envc) > MAX_STRINGS {
                return Err(sys::E2BIG);
            }
            counted = Some((argc, envc));
        }
    }
}

/// Reap children until `pid` (the agent) ends; report it; exit (the kernel then kills what is
/// left in the namespace). With `word` (a process we forked): what it left there when it ended
/// before its `execve` is reported instead.
fn wait_for(pid: i32, word: Option<&core::sync::atomic::AtomicI32>) -> ! {
    loop {
        match sys::wait_any() {
            Ok((r, status, [utime_ms, stime_ms, maxrss_kb])) if r == pid => {
                match word.map_or(0, |w| w.load(Ordering::SeqCst)) {
                    0 => report(InitRecord::Ended {
                        status,
                        utime_ms,
                        stime_ms,
                        maxrss_kb,
                    }),
                    NOT_NEEDED => {}
                    errno => not_started(errno, 127),
                }
                sys::exit(0)
            }
            Ok(_) => {}
            Err(sys::ECHILD) => not_started(sys::ECHILD, 1),
            Err(_) => {}
        }
    }
}
