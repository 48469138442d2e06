//! Network namespaces that remove themselves, veth pairs inside them, processes and threads
//! that run in them.
//!
//! Every namespace and temporary directory gets a name made of a tag, the process id and a
//! per-process counter, so parallel tests (threads of one process or several processes) never
//! meet. Interfaces live inside their namespace, so their names only need to be unique there.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::poll::poll_until;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// How long [`Netns`]'s drop waits for killed processes to leave the namespace.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Attempts at a free name before giving up (a stale namespace of a dead process whose pid
/// we now have may hold one).
const NAME_ATTEMPTS: u32 = 64;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Tags become part of file and namespace names: keep them to letters, digits, `-` and `_`.
fn check_tag(tag: &str) -> io::Result<()> {
    if tag.is_empty()
        || tag.len() > 32
        || !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tag {tag:?}: expected 1 to 32 letters, digits, '-' or '_'"),
        ));
    }
    Ok(())
}

/// Checks an interface name the way the kernel will (1 to 15 bytes, no '/', ':' or blank).
///
/// # Errors
/// `InvalidInput` naming the bad name.
pub fn check_ifname(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?}: expected 1 to {MAX_IFNAME} bytes without '/', ':' or blanks"),
        ))
    }
}

/// The name a [`Netns`] with this tag and counter value gets in this process.
pub fn netns_name(tag: &str, counter: u32) -> String {
    format!("vg{tag}-{}-{counter}", std::process::id())
}

/// A network namespace created with `ip netns add`, with loopback up and IPv6 disabled.
/// Dropping it kills the processes still inside and deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `vg<tag>-<pid>-<counter>`.
    ///
    /// # Errors
    /// A bad tag, or `ip` failing (its stderr is in the message).
    pub fn new(tag: &str) -> io::Result<Netns> {
        check_tag(tag)?;
        for _ in 0..NAME_ATTEMPTS {
            let name = netns_name(tag, next_id());
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .stdin(Stdio::null())
                .output()?;
            if out.status.success() {
                // From here on, drop removes it whatever fails next.
                let ns = Netns { name };
                ns.setup()?;
                return Ok(ns);
            }
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("File exists") {
                return Err(other(format!(
                    "`ip netns add {name}` failed ({}): {}",
                    out.status,
                    err.trim()
                )));
            }
        }
        Err(other(format!(
            "no free namespace name for tag {tag} after {NAME_ATTEMPTS} attempts"
        )))
    }

    fn setup(&self) -> io::Result<()> {
        self.exec(&["ip", "link", "set", "lo", "up"])?;
        // `default` first, so interfaces created later start with IPv6 off.
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
    }

    /// The namespace's name (for `ip netns exec NAME`, `ip -n NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command that runs `args` in the namespace: `ip -n NAME ...` for `ip` itself (no
    /// extra process), `ip netns exec NAME ...` for anything else.
    fn command(&self, args: &[&str]) -> io::Result<Command> {
        let Some((first, rest)) = args.split_first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty command line",
            ));
        };
        let mut cmd = Command::new("ip");
        if *first == "ip" {
            cmd.args(["-n", &self.name]).args(rest);
        } else {
            cmd.args(["netns", "exec", &self.name]).args(args);
        }
        cmd.stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs a command in the namespace and waits for it.
    ///
    /// # Errors
    /// It could not start, or it exited non-zero: the message has the command line, the exit
    /// status and the command's stderr.
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        let out = self.exec_unchecked(args)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(other(format!(
                "`{}` in namespace {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Runs a command in the namespace and returns its output whatever its exit status.
    ///
    /// # Errors
    /// It could not start.
    pub fn exec_unchecked(&self, args: &[&str]) -> io::Result<Output> {
        self.command(args)?.output()
    }

    /// Starts a command in the namespace (`ip netns exec`, which execs it: the guard's pid is
    /// the command's own). Its stdout and stderr go to files the guard reads.
    ///
    /// # Errors
    /// The output files or the process could not be created.
    pub fn spawn(&self, args: &[&str]) -> io::Result<ChildGuard> {
        self.spawn_with_env(args, &[])
    }

    /// [`Netns::spawn`] with extra environment variables.
    ///
    /// # Errors
    /// As [`Netns::spawn`].
    pub fn spawn_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> io::Result<ChildGuard> {
        if args.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty command line",
            ));
        }
        // Always `ip netns exec` (never `ip -n`), which execs the command: the guarded pid
        // is then the command's own, and signals reach it.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null());
        let dir = TempDir::new("child")?;
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        cmd.stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .envs(env.iter().copied());
        let child = cmd.spawn()?;
        Ok(ChildGuard {
            child,
            status: None,
            label: format!("`{}` in {}", args.join(" "), self.name),
            stdout,
            stderr,
            _dir: dir,
        })
    }

    /// Runs `f` on a new thread that has joined the namespace (`setns`), so sockets it opens
    /// live there. Returns once the thread is in the namespace.
    ///
    /// # Errors
    /// The namespace could not be opened or joined, or the thread not started.
    pub fn enter_thread<F, T>(&self, f: F) -> io::Result<NsThread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = File::open(Path::new("/run/netns").join(&self.name))?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                // SAFETY: setns on a valid namespace fd changes this thread's network
                // namespace only; no memory is involved.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                let entered = if r == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                };
                drop(file);
                let ok = entered.is_ok();
                // The receiver waits for this message; if it is gone, nobody wants `f`.
                if tx.send(entered).is_err() || !ok {
                    return None;
                }
                Some(f())
            })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(NsThread {
                handle,
                ns: self.name.clone(),
            }),
            Ok(Err(e)) => {
                // Reap the thread; it ends without running `f`.
                let _ = handle.join();
                Err(other(format!("setns into {}: {e}", self.name)))
            }
            Err(_) => {
                let _ = handle.join();
                Err(other(format!(
                    "thread for {} ended before setns",
                    self.name
                )))
            }
        }
    }

    /// Runs `f` in the namespace on a thread and waits for it. A panic in `f` is resumed here.
    ///
    /// # Errors
    /// As [`Netns::enter_thread`].
    pub fn run<F, T>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.enter_thread(f)?.join()
    }

    /// Sets a sysctl of the namespace, `key` in dotted form (`net.ipv4.ip_forward`). Interface
    /// names with dots are not supported in `key`.
    ///
    /// # Errors
    /// The key does not exist or the value is refused.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        if key.contains('/') || key.contains("..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("sysctl key {key:?}"),
            ));
        }
        // /proc/sys/net resolves against the network namespace of the opening thread.
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_string();
        let key = key.to_string();
        let name = self.name.clone();
        self.run(move || {
            fs::write(&path, value.as_bytes())
                .map_err(|e| other(format!("sysctl {key}={value} in {name}: {e}")))
        })?
    }

    /// Reads a sysctl of the namespace (dotted key), trimmed.
    ///
    /// # Errors
    /// The key does not exist.
    pub fn read_sysctl(&self, key: &str) -> io::Result<String> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(move || fs::read_to_string(path).map(|s| s.trim().to_string()))?
    }

    /// Process ids whose network namespace this is (`ip netns pids`).
    ///
    /// # Errors
    /// `ip` failed.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(other(format!(
                "`ip netns pids {}`: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    fn kill_all(&self) -> Result<(), String> {
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        poll_until(KILL_WAIT, "processes to leave the namespace", || {
            let pids = self.pids().unwrap_or_default();
            let mut any = false;
            for pid in pids.into_iter().filter(|&p| p > 0 && p != me) {
                any = true;
                // SAFETY: kill has no memory effects; a pid that already exited yields ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            !any
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.kill_all() {
            eprintln!("vipgate-netns: {}: {e}", self.name);
        }
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "vipgate-netns: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("vipgate-netns: `ip netns del {}`: {e}", self.name),
        }
    }
}

/// Creates a veth pair directly in two namespaces: `a_if` in `a`, `b_if` in `b`, each end with
/// `queues` RX and TX queues. Both ends start down.
///
/// # Errors
/// A bad interface name, zero queues, or `ip` failing.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str, queues: u32) -> io::Result<()> {
    check_ifname(a_if)?;
    check_ifname(b_if)?;
    if queues == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a veth needs at least one queue",
        ));
    }
    let q = queues.to_string();
    a.exec(&[
        "ip",
        "link",
        "add",
        a_if,
        "numrxqueues",
        &q,
        "numtxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
        "numrxqueues",
        &q,
        "numtxqueues",
        &q,
    ])
    .map(drop)
}

/// A thread running inside a namespace (see [`Netns::enter_thread`]).
#[derive(Debug)]
pub struct NsThread<T> {
    handle: JoinHandle<Option<T>>,
    ns: String,
}

impl<T> NsThread<T> {
    /// Waits for the thread and returns what its closure returned. A panic in it is resumed
    /// in the caller, so a failed assertion inside reads as the test's own.
    ///
    /// # Errors
    /// Never in practice: the thread was known to be in the namespace before this existed.
    pub fn join(self) -> io::Result<T> {
        match self.handle.join() {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(other(format!("thread in {} did not run", self.ns))),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// True once the closure has returned (or panicked).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// A process started by [`Netns::spawn`]: killed (SIGKILL) and reaped when dropped, its
/// stdout and stderr kept in files until then.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    status: Option<ExitStatus>,
    label: String,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

impl ChildGuard {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited (reaping it).
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits at most `timeout` for it to exit.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let mut err = None;
        let _ = poll_until(timeout, &self.label.clone(), || match self.try_wait() {
            Ok(s) => s.is_some(),
            Err(e) => {
                err = Some(e);
                true
            }
        });
        match err {
            Some(e) => Err(e),
            None => Ok(self.status),
        }
    }

    /// Sends `signal` unless it has already exited (and been reaped, so the pid is still
    /// ours while we signal it).
    ///
    /// # Errors
    /// `kill` failed.
    pub fn signal(&mut self, signal: i32) -> io::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id()).map_err(|e| other(e.to_string()))?;
        // SAFETY: kill has no memory effects; the child is not reaped, so the pid is ours.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// What it wrote on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// What it wrote on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// A short description: the command line and namespace.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends `signal`, waits at most `grace` for the exit, and returns the exit status with
    /// everything it wrote.
    ///
    /// # Errors
    /// It did not exit in time (it is then killed; the message has its stderr), or waiting
    /// failed.
    pub fn stop(mut self, signal: i32, grace: Duration) -> io::Result<Output> {
        self.signal(signal)?;
        match self.wait_timeout(grace)? {
            Some(status) => Ok(Output {
                status,
                stdout: read_bytes(&self.stdout),
                stderr: read_bytes(&self.stderr),
            }),
            None => {
                self.kill_and_reap();
                Err(other(format!(
                    "{} did not exit within {:.1} s of signal {signal}; killed. stderr:\n{}",
                    self.label,
                    grace.as_secs_f64(),
                    self.stderr_so_far()
                )))
            }
        }
    }

    fn kill_and_reap(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.try_wait();
        self.kill_and_reap();
    }
}

fn read_bytes(path: &Path) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    buf
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&read_bytes(path)).into_owned()
}

/// A directory under the system's temporary directory, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `vipgate-<tag>-<pid>-<counter>`.
    ///
    /// # Errors
    /// A bad tag, or the directory could not be created.
    pub fn new(tag: &str) -> io::Result<TempDir> {
        check_tag(tag)?;
        for _ in 0..NAME_ATTEMPTS {
            let path = std::env::temp_dir().join(format!(
                "vipgate-{tag}-{}-{}",
                std::process::id(),
                next_id()
            ));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(other(format!(
            "no free temporary directory name for tag {tag}"
        )))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// True if this process can run the system tests: it is root and `ip netns add` works. When
/// not, prints a loud `SKIP:` line with the reason on stderr (once per caller, naming the
/// calling test's thread), so a skipped run cannot pass for a tested one.
pub fn require_root_and_netns() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(probe_netns) {
        Ok(()) => true,
        Err(why) => {
            let test = std::thread::current()
                .name()
                .unwrap_or("this test")
                .to_string();
            let msg = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIP: {test}: system test NOT RUN: {why}\n\
                 !!! Run as root on a machine where `ip netns add` works.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            // Straight to the stderr stream, not eprintln!: the test harness captures the
            // output of passing tests, and a skip must show even then.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
            false
        }
    }
}

fn probe_netns() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".to_string());
    }
    Netns::new("probe")
        .map(drop)
        .map_err(|e| format!("cannot create a network namespace: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_carry_tag_and_pid() {
        let names: HashSet<String> = (0..100).map(|_| netns_name("t", next_id())).collect();
        assert_eq!(names.len(), 100);
        let pid = std::process::id().to_string();
        for n in &names {
            assert!(n.starts_with("vgt-"), "{n}");
            assert!(n.contains(&format!("-{pid}-")), "{n}");
        }
    }

    #[test]
    fn counter_is_unique_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..250).map(|_| next_id()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "id {id} handed out twice");
            }
        }
        assert_eq!(all.len(), 1000);
    }

    #[test]
    fn tags_and_interface_names_are_checked() {
        assert!(check_tag("gw").is_ok());
        assert!(check_tag("h-1_a").is_ok());
        assert!(check_tag("").is_err());
        assert!(check_tag("a/b").is_err());
        assert!(check_tag("a b").is_err());
        assert!(check_ifname("vg-priv").is_ok());
        assert!(check_ifname("123456789012345").is_ok());
        assert!(check_ifname("1234567890123456").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("eth0:1").is_err());
        assert!(check_ifname("a b").is_err());
    }

    #[test]
    fn temp_dirs_are_unique_and_removed() {
        let a = TempDir::new("unit").unwrap();
        let b = TempDir::new("unit").unwrap();
        assert_ne!(a.path(), b.path());
        fs::write(a.path().join("f"), b"x").unwrap();
        let pa = a.path().to_path_buf();
        drop(a);
        assert!(!pa.exists());
        assert!(b.path().is_dir());
    }
}
