//! The orchestrator's side: spawns client processes as given uids in Android-style per-app
//! cgroups (`uid_<uid>/pid_<pid>`), hands buffers between them like binder would (pidfd_getfd,
//! then SCM_RIGHTS), and reads the kernel's own numbers for cross-checks.

use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use chargetransfer::client::Client;
use chargetransfer::kernel::cgroupfs::CgroupFs;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// Uids of the roles, as on Android.
pub const AID_SYSTEM: u32 = 1000;
pub const AID_GRAPHICS: u32 = 1003;

pub struct Env {
    pub exe: PathBuf,
    pub cgroup: CgroupFs,
    pub rpc: Option<PathBuf>,
    pub binder: Option<String>,
    /// The service name under test (children connect to the same).
    pub instance: String,
    pub client: Client,
    /// The lane loaded an SELinux policy with Android's domain names: clients run in the domain
    /// of their role ([`domain_of`]) unless a case picks another.
    pub selinux: bool,
}

/// The SELinux domain a client of `uid` runs in, as on Android: the allocator and the
/// compositor in theirs (both trusted by config/policy.json), everyone else as an app.
pub fn domain_of(uid: u32) -> &'static str {
    match uid {
        AID_GRAPHICS => "hal_graphics_allocator_default",
        AID_SYSTEM => "surfaceflinger",
        _ => "untrusted_app",
    }
}

/// The full context of a domain in the lane's policy (`vts/lane/selinux/policy.conf`).
pub fn context_of(domain: &str) -> String {
    format!("u:r:{domain}:s0")
}

/// Where a refused command failed: the ErrorCode number and message.
#[derive(Debug)]
pub struct Refusal {
    pub code: i32,
    pub message: String,
}

pub struct Child {
    pub pid: u32,
    pub uid: u32,
    pub cgroup: String,
    process: std::process::Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    control: UnixStream,
}

impl Env {
    /// Enables memory and dmem down to `cgroup`, as Android's cgroups.json does for the app
    /// hierarchy, so the per-process cgroup has its own memory.* and dmem.* files.
    fn delegate_controllers(&self, cgroup: &str) -> Result<(), String> {
        let mut path = String::new();
        let parents: Vec<&str> = cgroup.trim_start_matches('/').split('/').collect();
        for component in &parents[..parents.len().saturating_sub(1)] {
            path.push('/');
            path.push_str(component);
            let available = self.cgroup.controllers(&path).map_err(|e| e.to_string())?;
            let wanted: Vec<&str> =
                ["memory", "dmem"].into_iter().filter(|c| available.iter().any(|a| a == c)).collect();
            self.cgroup.enable_controllers(&path, &wanted).map_err(|e| format!("{path}: {e}"))?;
        }
        Ok(())
    }

    /// Spawns a client as `uid` in `/uid_<uid>/pid_<pid>` (or `cgroup_override`), in the SELinux
    /// domain of its role where the lane has SELinux.
    pub fn spawn(&self, uid: u32, cgroup_override: Option<&str>) -> Result<Child, String> {
        self.spawn_in(uid, cgroup_override, self.selinux.then(|| domain_of(uid)))
    }

    /// [`Env::spawn`] in the SELinux domain `domain` (`None`: the orchestrator's own).
    pub fn spawn_in(&self, uid: u32, cgroup_override: Option<&str>, domain: Option<&str>) -> Result<Child, String> {
        self.spawn_with(uid, cgroup_override, domain, false)
    }

    /// [`Env::spawn`] for an app that never calls the HAL: it opens the binder driver only to
    /// serve and call other apps (see handoff_cases).
    pub fn spawn_without_hal(&self, uid: u32) -> Result<Child, String> {
        self.spawn_with(uid, None, self.selinux.then(|| domain_of(uid)), true)
    }

    fn spawn_with(
        &self,
        uid: u32,
        cgroup_override: Option<&str>,
        domain: Option<&str>,
        without_hal: bool,
    ) -> Result<Child, String> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
        rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--child")
            .env("CT_CONTROL_FD", theirs.as_raw_fd().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, uid);
        if let Some(rpc) = &self.rpc {
            cmd.env("CT_RPC", rpc);
        }
        if let Some(b) = &self.binder {
            cmd.env("CT_BINDER", b);
        }
        if let Some(domain) = domain {
            cmd.env("CT_SECURITY_CONTEXT", context_of(domain));
        }
        cmd.env("CT_INSTANCE", &self.instance);
        if without_hal {
            cmd.env("CT_NO_HAL", "1");
        }
        let mut process = cmd.spawn().map_err(|e| format!("spawn {}: {e}", self.exe.display()))?;
        drop(theirs);
        let pid = process.id();
        let cgroup = cgroup_override.map_or_else(|| format!("/uid_{uid}/pid_{pid}"), str::to_string);
        self.cgroup.create(&cgroup).map_err(|e| e.to_string())?;
        self.delegate_controllers(&cgroup)?;
        self.cgroup.add_proc(&cgroup, pid).map_err(|e| e.to_string())?;
        let stdin = process.stdin.take().expect("piped");
        let stdout = BufReader::new(process.stdout.take().expect("piped"));
        let mut child = Child { pid, uid, cgroup, process, stdin, stdout, control: ours };
        child.cmd("start").map_err(|r| format!("child {pid} could not connect: {}", r.message))?;
        Ok(child)
    }
}

impl Child {
    /// Sends one command and returns the fields after `ok`.
    pub fn cmd(&mut self, line: &str) -> Result<Vec<String>, Refusal> {
        self.send(line)?;
        self.reply(line)
    }

    /// Sends one command without waiting for its reply (read it with [`Self::reply`]), so the
    /// orchestrator can act while the child is in the call.
    pub fn send(&mut self, line: &str) -> Result<(), Refusal> {
        writeln!(self.stdin, "{line}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| Refusal { code: -1, message: format!("pid {} stdin: {e}", self.pid) })
    }

    /// The reply to the command `line` sent earlier.
    pub fn reply(&mut self, line: &str) -> Result<Vec<String>, Refusal> {
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).map_err(|e| Refusal { code: -1, message: e.to_string() })?;
        let mut words = reply.split_whitespace();
        match words.next() {
            Some("ok") => Ok(words.map(str::to_string).collect()),
            Some("err") => {
                let code = words.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                Err(Refusal { code, message: words.collect::<Vec<_>>().join(" ") })
            }
            _ => Err(Refusal { code: -1, message: format!("pid {} said {reply:?} to {line:?}", self.pid) }),
        }
    }

    /// `cmd` for commands that must succeed.
    pub fn ok(&mut self, line: &str) -> Result<Vec<String>, String> {
        self.cmd(line)
            .map_err(|r| format!("pid {} uid {}: {line:?} refused: code {} {}", self.pid, self.uid, r.code, r.message))
    }

    /// Allocates a dma-buf: (slot, inode).
    pub fn alloc(&mut self, heap: &str, size: u64) -> Result<(usize, u64), String> {
        let r = self.ok(&format!("alloc {heap} {size}"))?;
        Ok((r[0].parse().map_err(|_| "slot")?, r[1].parse().map_err(|_| "inode")?))
    }

    /// Hands the buffer in `slot` to `to` (as binder would): returns the receiver's slot.
    pub fn give(&mut self, slot: usize, to: &mut Child) -> Result<usize, String> {
        let raw: i32 = self.ok(&format!("fdnum {slot}"))?[0].parse().map_err(|_| "fdnum")?;
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(self.pid as i32).ok_or("pid")?,
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| format!("pidfd_open: {e}"))?;
        let fd: OwnedFd = rustix::process::pidfd_getfd(&pidfd, raw, rustix::process::PidfdGetfdFlags::empty())
            .map_err(|e| format!("pidfd_getfd: {e}"))?;
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        let fds = [fd.as_fd()];
        anc.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(&to.control, &[IoSlice::new(b"f")], &mut anc, SendFlags::empty())
            .map_err(|e| format!("sendmsg: {e}"))?;
        drop(fd);
        Ok(to.ok("recv")?[0].parse().map_err(|_| "slot")?)
    }

    /// Asks the client to exit on its own (closing its fds as a normal exit does) and reaps it.
    pub fn exit(mut self) -> u32 {
        let _ = self.send("exit");
        let _ = self.process.wait();
        self.pid
    }

    /// The child is gone (crashed or killed): its replies will never come.
    pub fn exited(&mut self) -> bool {
        self.process.try_wait().ok().flatten().is_some()
    }

    pub fn kill(mut self) -> u32 {
        self.sigkill();
        self.pid
    }

    /// SIGKILLs and reaps the process, keeping the handle (for a seat refilled later).
    pub fn sigkill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
