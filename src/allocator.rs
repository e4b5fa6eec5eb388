//! What an allocator (gralloc) links: charge on behalf, push and release, each bounded by a
//! per-call deadline, none of them failing because the service is away.
//!
//! The service is never on the allocation's critical path while it is unavailable. A call
//! answers within its deadline with the service's answer, a typed refusal (`OVER_LIMIT`: free the
//! buffer and fail the allocation), or [`Answer::Deferred`]: the service is not registered yet,
//! died under the call, or did not answer in time — the allocation proceeds. A deferred charge
//! (the buffer, its owner's pid and start time) waits in a bounded queue and is replayed by a
//! background worker once the service is back; one whose buffer nobody else holds any more, or
//! whose owner is gone, is dropped. Whatever the queue cannot replay (overflow, a refusal at
//! replay, this process dying) the service catches up itself at its next reconcile, by the
//! one-payer rules (`catchup`).
//!
//! Threads: the caller's thread only hands the call to an idle call worker and waits on a
//! channel for at most the deadline; a call worker may stay blocked in a hung service, and when
//! every worker is blocked calls are deferred at once. The connector thread (re)connects with
//! backoff — the only loop that polls, and never on the caller's thread — and replays the queue.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::binder::aidl::vendor::chargetransfer::{ChargeInfo::ChargeInfo, ErrorCode::ErrorCode};
use crate::client::{Client, ClientError, Result};
use crate::kernel::procfs::ProcFs;

/// A quarter of a 60 Hz frame (16.7 ms): what a charge may add to an allocation on a device.
/// Emulated (TCG) lanes scale it by [`TCG_SCALE`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(4);
/// How much slower a binder call is in the QEMU/TCG lanes than on a device (≈250 µs against
/// ≈25 µs for a null call).
pub const TCG_SCALE: u32 = 10;
/// Deferred charges kept for replay; past it the oldest is dropped (the service catches it up).
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
/// Call workers: calls in flight at once. When all are blocked in a hung service, further calls
/// are deferred without waiting.
const CALL_WORKERS: usize = 4;
/// Reconnection backoff: first retry, and the longest pause between two attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// How to reach the service.
#[derive(Clone, Debug)]
pub enum Transport {
    /// The kernel binder driver and its service manager (the device name, or the default).
    Binder(Option<String>),
    /// Binder's RPC transport on a unix socket (host tier).
    Rpc(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Options {
    /// The longest a call keeps the caller's thread. It waits for the answer for 7/8 of it and
    /// leaves the rest for its own wake-up, so a loaded CPU does not push it past the deadline.
    pub deadline: Duration,
    pub queue_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { deadline: DEFAULT_DEADLINE, queue_capacity: DEFAULT_QUEUE_CAPACITY }
    }
}

/// Why a call did not get the service's answer; the allocation proceeds either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Not registered yet (boot) or not reconnected yet (restart).
    NotConnected,
    /// The service died under the call.
    Died,
    /// No answer within the deadline.
    DeadlinePassed,
    /// Every call worker is still blocked in earlier calls.
    Busy,
}

/// The answer to a call that did not fail.
#[derive(Clone, Debug)]
pub enum Answer<T> {
    Done(T),
    /// The service is unavailable; a charge or push is queued for replay (see the module docs).
    Deferred(Unavailable),
}

impl<T> Answer<T> {
    /// Why the call was deferred; `None` when the service answered.
    pub fn unavailable(&self) -> Option<Unavailable> {
        match self {
            Answer::Done(_) => None,
            Answer::Deferred(why) => Some(*why),
        }
    }
}

/// Counters since start, for logs, tests and the VTS summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub calls: u64,
    pub deferred: u64,
    pub replayed: u64,
    /// Dropped from the queue because nobody but the queue held the buffer any more.
    pub dropped_gone: u64,
    /// Dropped because the owner exited (or its pid now names another process).
    pub dropped_owner_gone: u64,
    /// Dropped because the service refused the replay (e.g. OVER_LIMIT: caught up over the limit).
    pub dropped_refused: u64,
    /// Dropped because the queue was full.
    pub dropped_overflow: u64,
    pub connects: u64,
}

/// "Make `owner` pay for `buffer`", kept while the service is away.
struct Deferred {
    /// A duplicate of the allocator's fd: the service inspects the buffer itself.
    buffer: OwnedFd,
    inode: u64,
    owner: i32,
    /// The owner's start time when the charge was deferred (None where /proc hides it).
    owner_start: Option<u64>,
}

type Job = Box<dyn FnOnce() + Send>;

struct Shared {
    transport: Transport,
    options: Options,
    conn: Mutex<Option<Arc<Client>>>,
    queue: Mutex<VecDeque<Deferred>>,
    stats: Mutex<Stats>,
    /// Wakes the connector: the connection was lost, or a charge was queued.
    wake: Condvar,
    woken: Mutex<bool>,
    stop: AtomicBool,
    idle_workers: AtomicUsize,
    /// Connections the caller's threads let go of, dropped by the connector: the last reference
    /// to a binder proxy releases it in the driver, which must not happen on an allocating thread.
    retired: Mutex<Vec<Arc<Client>>>,
    /// 1 while the connector replays an entry it took off the queue: still pending.
    replaying: AtomicUsize,
    proc: ProcFs,
}

/// The allocator's handle on the service. Creating it never blocks; see the module docs.
pub struct AllocatorClient {
    shared: Arc<Shared>,
    jobs: Mutex<mpsc::Sender<Job>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops a real-time policy the connector inherited from the thread that started the client
/// (SurfaceFlinger's main thread runs SCHED_FIFO): reconnecting and replaying are background work,
/// and at the caller's own FIFO priority they would keep the CPU from the allocating thread
/// itself, since equal FIFO priorities do not preempt each other. rustix has no
/// sched_setscheduler, hence libc.
fn in_background() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler of the calling thread (0) reads `param` only during the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) } != 0 {
        debug!("connector keeps its scheduling policy: {}", std::io::Error::last_os_error());
    }
}

fn inode_of(fd: BorrowedFd<'_>) -> Result<u64> {
    Ok(rustix::fs::fstat(fd).map_err(std::io::Error::from)?.st_ino)
}

/// The dma-buf's file reference count from our fdinfo, less our own fd: 0 means nobody else
/// holds the buffer (no fd, no mapping, no importer). `None` for files without a `count:` line.
fn other_references(fd: BorrowedFd<'_>) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let count: u64 = text.lines().find_map(|l| l.strip_prefix("count:"))?.trim().parse().ok()?;
    Some(count.saturating_sub(1))
}

impl Shared {
    fn connect(&self) -> Result<Client> {
        let client = match &self.transport {
            Transport::Binder(device) => Client::connect_binder(device.as_deref(), Duration::ZERO)?,
            Transport::Rpc(socket) => Client::connect_rpc(socket)?,
        };
        // A handle the service manager still holds for a service that just died looks up fine.
        client.service().ping().map_err(ClientError::from)?;
        Ok(client)
    }

    fn connection(&self) -> Option<Arc<Client>> {
        lock(&self.conn).clone()
    }

    /// Forgets `dead` (unless a newer connection replaced it already) and wakes the connector.
    fn lost(&self, dead: &Arc<Client>) {
        let mut conn = lock(&self.conn);
        let gone = if conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, dead)) { conn.take() } else { None };
        drop(conn);
        if let Some(c) = gone {
            self.retire(c);
        }
        self.notify();
    }

    fn retire(&self, client: Arc<Client>) {
        lock(&self.retired).push(client);
    }

    fn notify(&self) {
        *lock(&self.woken) = true;
        self.wake.notify_all();
    }

    fn sleep(&self, at_most: Duration) {
        let woken = lock(&self.woken);
        let (mut woken, _) = self.wake.wait_timeout_while(woken, at_most, |w| !*w).unwrap_or_else(|p| p.into_inner());
        *woken = false;
    }

    fn defer(&self, entry: Deferred) {
        let mut queue = lock(&self.queue);
        queue.retain(|d| d.inode != entry.inode);
        if queue.len() >= self.options.queue_capacity.max(1) {
            queue.pop_front();
            lock(&self.stats).dropped_overflow += 1;
        }
        queue.push_back(entry);
        drop(queue);
        self.notify();
    }

    fn owner_alive(&self, d: &Deferred) -> bool {
        match (d.owner_start, u32::try_from(d.owner)) {
            (Some(start), Ok(pid)) => self.proc.starttime(pid).is_ok_and(|now| now == start),
            _ => true,
        }
    }

    /// Replays queued charges in order until the queue is empty or the service goes away.
    fn replay(&self, client: &Arc<Client>) {
        loop {
            let Some(d) = self.take_next() else { return };
            self.replay_one(client, d);
            self.replaying.store(0, Ordering::Release);
            if self.connection().is_none() {
                return;
            }
        }
    }

    fn take_next(&self) -> Option<Deferred> {
        let mut queue = lock(&self.queue);
        let d = queue.pop_front()?;
        self.replaying.store(1, Ordering::Release);
        Some(d)
    }

    /// Replays one entry; dropped when its buffer or its owner is gone, or the service refuses.
    fn replay_one(&self, client: &Arc<Client>, d: Deferred) {
        if other_references(d.buffer.as_fd()) == Some(0) {
            lock(&self.stats).dropped_gone += 1;
            return;
        }
        if !self.owner_alive(&d) {
            lock(&self.stats).dropped_owner_gone += 1;
            return;
        }
        // The service may have caught the buffer up to another holder meanwhile: the owner
        // the allocator named takes it over with a (trusted) push.
        let result = match client.charge_for(&d.buffer, d.owner) {
            Err(e) if e.code() == Some(ErrorCode::ALREADY_CHARGED) => client.transfer(&d.buffer, d.owner),
            r => r,
        };
        match result {
            Ok(_) => lock(&self.stats).replayed += 1,
            Err(ClientError::Refused { message, .. }) => {
                debug!("replay of buffer {} for pid {} refused: {message}", d.inode, d.owner);
                lock(&self.stats).dropped_refused += 1;
            }
            Err(e) => {
                debug!("replay interrupted: {e}");
                lock(&self.queue).push_front(d);
                self.lost(client);
            }
        }
    }

    /// The connector: connects with backoff while there is no connection, replays the queue
    /// when there is, and otherwise sleeps until woken.
    fn run_connector(&self) {
        in_background();
        let mut backoff = BACKOFF_MIN;
        while !self.stop.load(Ordering::Relaxed) {
            drop(std::mem::take(&mut *lock(&self.retired)));
            let client = match self.connection() {
                Some(c) => c,
                None => match self.connect() {
                    Ok(c) => {
                        let c = Arc::new(c);
                        *lock(&self.conn) = Some(Arc::clone(&c));
                        lock(&self.stats).connects += 1;
                        info!("connected to the charge service; {} deferred charges to replay", self.pending());
                        backoff = BACKOFF_MIN;
                        c
                    }
                    Err(e) => {
                        debug!("charge service unavailable: {e}");
                        self.sleep(backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            if self.pending() > 0 {
                self.replay(&client);
            } else {
                self.sleep(Duration::from_secs(1));
            }
        }
    }

    fn pending(&self) -> usize {
        let queue = lock(&self.queue);
        queue.len() + self.replaying.load(Ordering::Acquire)
    }
}

impl AllocatorClient {
    /// Starts the connector and the call workers; returns at once, connected or not.
    pub fn start(transport: Transport, options: Options) -> AllocatorClient {
        let shared = Arc::new(Shared {
            transport,
            options,
            conn: Mutex::new(None),
            queue: Mutex::new(VecDeque::new()),
            stats: Mutex::new(Stats::default()),
            wake: Condvar::new(),
            woken: Mutex::new(false),
            stop: AtomicBool::new(false),
            idle_workers: AtomicUsize::new(CALL_WORKERS),
            replaying: AtomicUsize::new(0),
            retired: Mutex::new(Vec::new()),
            proc: ProcFs::new("/proc"),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..CALL_WORKERS {
            let (rx, shared) = (Arc::clone(&rx), Arc::clone(&shared));
            std::thread::Builder::new()
                .name(format!("charge-call-{i}"))
                .spawn(move || loop {
                    let job = lock(&rx).recv();
                    let Ok(job) = job else { return };
                    job();
                    shared.idle_workers.fetch_add(1, Ordering::AcqRel);
                })
                .expect("spawn a charge call worker");
        }
        let connector = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("charge-connect".into())
            .spawn(move || connector.run_connector())
            .expect("spawn the charge service connector");
        AllocatorClient { shared, jobs: Mutex::new(tx) }
    }

    pub fn deadline(&self) -> Duration {
        self.shared.options.deadline
    }

    /// Runs `call` on an idle worker and waits for it within `deadline`.
    fn call<T: Send + 'static>(
        &self,
        deadline: Duration,
        call: impl FnOnce(&Client) -> Result<T> + Send + 'static,
    ) -> Result<std::result::Result<T, Unavailable>> {
        let started = Instant::now();
        lock(&self.shared.stats).calls += 1;
        let Some(client) = self.shared.connection() else { return Ok(Err(Unavailable::NotConnected)) };
        let claimed = self.shared.idle_workers.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if claimed.is_err() {
            return Ok(Err(Unavailable::Busy));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let worker_client = Arc::clone(&client);
        let job: Job = Box::new(move || {
            let _ = tx.send(call(&worker_client));
        });
        if lock(&self.jobs).send(job).is_err() {
            return Ok(Err(Unavailable::Busy));
        }
        let wait = (deadline * 7 / 8).saturating_sub(started.elapsed());
        let answer = rx.recv_timeout(wait);
        let dead = matches!(answer, Ok(Err(ClientError::Binder(_) | ClientError::Connect(_))));
        if dead {
            self.shared.lost(&client);
        }
        self.shared.retire(client);
        match answer {
            Ok(Ok(v)) => Ok(Ok(v)),
            Ok(Err(ClientError::Binder(e) | ClientError::Connect(e))) => {
                debug!("charge service call failed below the service: {e}");
                Ok(Err(Unavailable::Died))
            }
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => Ok(Err(Unavailable::DeadlinePassed)),
            Err(RecvTimeoutError::Disconnected) => Ok(Err(Unavailable::Died)),
        }
    }

    /// Queues "`owner` pays for `buffer`" for replay.
    fn defer(&self, buffer: BorrowedFd<'_>, inode: u64, owner: i32) -> Result<()> {
        let owner_start = u32::try_from(owner).ok().and_then(|pid| self.shared.proc.starttime(pid).ok());
        let buffer = buffer.try_clone_to_owned()?;
        lock(&self.shared.stats).deferred += 1;
        self.shared.defer(Deferred { buffer, inode, owner, owner_start });
        Ok(())
    }

    /// Makes `owner` pay for `buffer` with `call`, or queues that for replay.
    fn charge_with(
        &self,
        buffer: BorrowedFd<'_>,
        owner: i32,
        deadline: Duration,
        call: impl FnOnce(&Client, OwnedFd) -> Result<ChargeInfo> + Send + 'static,
    ) -> Result<Answer<ChargeInfo>> {
        let inode = inode_of(buffer)?;
        let fd = buffer.try_clone_to_owned()?;
        match self.call(deadline, move |c| call(c, fd))? {
            Ok(info) => Ok(Answer::Done(info)),
            Err(why) => {
                self.defer(buffer, inode, owner)?;
                Ok(Answer::Deferred(why))
            }
        }
    }

    /// Charges `buffer` to `owner` (the app the allocation is for). `Err` with a typed refusal
    /// means: free the buffer and fail the allocation (OVER_LIMIT), or a caller bug.
    pub fn charge_on_behalf(&self, buffer: impl AsFd, owner: i32) -> Result<Answer<ChargeInfo>> {
        self.charge_on_behalf_within(buffer, owner, self.deadline())
    }

    /// [`Self::charge_on_behalf`] with this call's own deadline.
    pub fn charge_on_behalf_within(
        &self,
        buffer: impl AsFd,
        owner: i32,
        deadline: Duration,
    ) -> Result<Answer<ChargeInfo>> {
        self.charge_with(buffer.as_fd(), owner, deadline, move |c, fd| c.charge_for(&fd, owner))
    }

    /// Pushes the charge of `buffer` to `to` (the compositor's hop). Deferred like a charge: the
    /// replay makes `to` pay.
    pub fn transfer(&self, buffer: impl AsFd, to: i32) -> Result<Answer<ChargeInfo>> {
        self.transfer_within(buffer, to, self.deadline())
    }

    pub fn transfer_within(&self, buffer: impl AsFd, to: i32, deadline: Duration) -> Result<Answer<ChargeInfo>> {
        self.charge_with(buffer.as_fd(), to, deadline, move |c, fd| c.transfer(&fd, to))
    }

    /// Releases the charge of `inode` and forgets any deferred charge of it. While the service
    /// is away nothing is queued: it releases freed buffers itself (owner death, reconcile).
    pub fn release(&self, inode: u64) -> Result<Answer<()>> {
        self.release_within(inode, self.deadline())
    }

    pub fn release_within(&self, inode: u64, deadline: Duration) -> Result<Answer<()>> {
        lock(&self.shared.queue).retain(|d| d.inode != inode);
        let arg = i64::try_from(inode).map_err(|_| ClientError::Refused {
            code: ErrorCode::INVALID_ARGUMENT,
            message: format!("inode {inode} out of range"),
        })?;
        Ok(match self.call(deadline, move |c| c.release(arg))? {
            Ok(()) => Answer::Done(()),
            Err(why) => Answer::Deferred(why),
        })
    }

    /// Deferred charges waiting for replay.
    pub fn pending(&self) -> usize {
        self.shared.pending()
    }

    pub fn connected(&self) -> bool {
        self.shared.connection().is_some()
    }

    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }
}

impl Drop for AllocatorClient {
    /// Stops the connector at its next wake-up; a worker blocked in a call ends with it.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.notify();
        if self.shared.pending() > 0 {
            warn!("{} deferred charges left for the service to catch up", self.shared.pending());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_before_the_service_exists_is_deferred_at_once_and_queued() {
        let dir = tempfile::tempdir().unwrap();
        let client = AllocatorClient::start(Transport::Rpc(dir.path().join("none.sock")), Options::default());
        let buffer = rustix::fs::memfd_create("b", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let started = Instant::now();
        let answer = client.charge_on_behalf(&buffer, std::process::id() as i32).unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(answer.unavailable(), Some(Unavailable::NotConnected));
        assert_eq!(client.pending(), 1);
        // Charging the same buffer again replaces its entry; releasing it forgets it.
        client.charge_on_behalf(&buffer, std::process::id() as i32).unwrap();
        assert_eq!(client.pending(), 1);
        let inode = inode_of(buffer.as_fd()).unwrap();
        assert_eq!(client.release(inode).unwrap().unavailable(), Some(Unavailable::NotConnected));
        assert_eq!(client.pending(), 0);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_charge() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options { queue_capacity: 2, ..Options::default() };
        let client = AllocatorClient::start(Transport::Rpc(dir.path().join("none.sock")), options);
        let buffers: Vec<OwnedFd> =
            (0..3).map(|_| rustix::fs::memfd_create("b", rustix::fs::MemfdFlags::CLOEXEC).unwrap()).collect();
        for b in &buffers {
            client.charge_on_behalf(b, 1).unwrap();
        }
        assert_eq!(client.pending(), 2);
        assert_eq!(client.stats().dropped_overflow, 1);
        let kept: Vec<u64> = lock(&client.shared.queue).iter().map(|d| d.inode).collect();
        let newest: Vec<u64> = buffers[1..].iter().map(|b| inode_of(b.as_fd()).unwrap()).collect();
        assert_eq!(kept, newest);
    }

    #[test]
    fn files_without_a_reference_count_are_never_taken_for_gone() {
        let memfd = rustix::fs::memfd_create("b", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert_eq!(other_references(memfd.as_fd()), None);
    }
}
