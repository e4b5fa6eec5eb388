//! The day: seven steps played on the simulated phone through the accountant, each printed with
//! what happened and the ledger's per-cgroup, per-pool table.
//!
//! Every buffer the service hears of is first created in the tree (an fdinfo file of the process
//! holding it) and read back through the procfs adapter, the demo's stand-in for the fd a binder
//! call carries. What a step reports about the ledger is read from the ledger, never assumed.

use std::path::Path;
use std::time::Duration;

use super::phone::{
    Phone, Proc, APPS, CAMERA_APP, CAMERA_HAL, CODEC, GAME, GRALLOC, MAPS, MIB, PAGE, PROCESSES, SURFACEFLINGER,
};
use super::plot::{self, Series};
use super::Transcript;
use crate::accountant::{uid_cgroup, Accountant, Config};
use crate::autoconfig::{probe, Autoconfig};
use crate::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;
use crate::daemon::autoconfigure;
use crate::dump::owner_table;
use crate::error::code_name;
use crate::error::Error;
use crate::identity::Caller;
use crate::journal::Durability;
use crate::ledger::{BufferInfo, Counter, Inode, MEMCG_POOL, UNLIMITED};
use crate::permission::Op;
use crate::policy::format_bytes;
use crate::policy::{Policy, TrustRule};

/// Short names of the steps, for the plot's axis and the summary.
pub const STEPS: [&str; 7] = ["boot", "maps tiles", "double hop", "over limit", "camera", "game dies", "reconcile"];

const fn page_round(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE) * PAGE
}

/// A map tile: 1024x1024 RGBA.
const TILE: u64 = 4 * MIB;
/// The game's window: 1080x2400 RGBA8888.
const WINDOW: u64 = page_round(1080 * 2400 * 4);
/// A texture pack.
const TEXTURES: u64 = 128 * MIB;
/// A camera frame: 4000x3000 YUV420.
const FRAME: u64 = page_round(4000 * 3000 * 3 / 2);
/// The game never gets this many texture packs: the budget refuses one long before.
const MAX_TEXTURE_PACKS: usize = 64;

/// The demo phone's platform makes SurfaceFlinger a client of the HAL (the system_ext policy and
/// SurfaceFlinger change the README's Android section describes), so its domain is trusted on top
/// of the shipped policy, which trusts only what vendor policy can make a client.
const PLATFORM_CLIENTS: &str =
    r#"{"trusted": {"contexts": ["hal_graphics_allocator_default", "hal_camera_default", "surfaceflinger"]}}"#;

/// A caller as binder reports it on the demo phone, which has SELinux: the domains decide trust
/// (SurfaceFlinger runs as uid 1000, which the policy never trusts by uid alone).
fn caller(p: &Proc) -> Caller {
    let domain = match p.pid {
        pid if pid == GRALLOC.pid => "hal_graphics_allocator_default",
        pid if pid == SURFACEFLINGER.pid => "surfaceflinger",
        pid if pid == CAMERA_HAL.pid => "hal_camera_default",
        pid if pid == CODEC.pid => "mediacodec",
        _ => "untrusted_app",
    };
    Caller { pid: p.pid, uid: p.uid, context: Some(format!("u:r:{domain}:s0")) }
}

/// A service refusal as a client sees it: the AIDL code and the message.
fn refusal(e: &Error) -> String {
    format!("{}: {e}", code_name(e.code()))
}

fn label_of(pid: u32) -> String {
    PROCESSES.iter().find(|p| p.pid == pid).map_or_else(|| format!("pid {pid}"), |p| format!("{} (pid {pid})", p.label))
}

fn inodes(list: &[Inode]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

struct Day<'a> {
    phone: Phone,
    acc: Accountant,
    out: &'a mut Transcript,
    step: usize,
    /// Per step, bytes charged to each of [`APPS`].
    samples: Vec<[u64; 3]>,
    tiles: Vec<Inode>,
    window: Inode,
}

/// Lays out the phone in `dir/tree`, opens the accountant on it and plays the day; writes
/// `dir/usage.svg`.
pub fn play(dir: &Path, out: &mut Transcript) -> Result<(), String> {
    let phone = Phone::build(&dir.join("tree"))?;
    let roots = phone.roots();
    let config = Config {
        proc_root: roots.proc,
        cgroup_root: Some(roots.cgroup),
        state_dir: Some(dir.join("state")),
        durability: Durability::None,
        pidfds: false,
        scan: crate::kernel::ScanChoice::Procfs,
    };
    let policy = Policy::default_with(&[PLATFORM_CLIENTS]).map_err(|e| format!("the demo policy: {e}"))?;
    let acc = Accountant::open(config, policy).map_err(|e| format!("opening the accountant: {e}"))?;
    // The phone has SELinux, so its domains decide trust: the daemon's rule, from the same probe.
    acc.set_trust_rule(TrustRule::with_selinux(probe::selinux(&roots.sys).is_ok()));
    let mut day = Day { phone, acc, out, step: 0, samples: Vec::new(), tiles: Vec::new(), window: 0 };
    day.boot(dir)?;
    day.maps_tiles()?;
    day.double_hop()?;
    day.over_limit()?;
    day.camera()?;
    day.game_dies()?;
    day.reconcile()?;
    day.finish(dir)
}

impl Day<'_> {
    fn say(&mut self, line: impl AsRef<str>) {
        self.out.line(format!("  {}", line.as_ref()));
    }

    fn begin(&mut self, title: &str) {
        self.step += 1;
        self.out.line("");
        self.out.line(format!("== Step {}: {title} ==", self.step));
    }

    /// Turns a service error into the demo's error, naming the step and the call.
    fn check<T>(&self, what: &str, r: crate::error::Result<T>) -> Result<T, String> {
        r.map_err(|e| format!("step {}: {what}: {}", self.step, refusal(&e)))
    }

    fn table(&mut self, title: &str) {
        self.say(title);
        let table = owner_table(&self.acc);
        self.out.block("    ", &table);
    }

    /// Prints the ledger and records each app's charges.
    fn end(&mut self) {
        let title = format!("ledger after step {} (usage, or usage/max where the service enforces a max):", self.step);
        self.table(&title);
        let sample = APPS.map(|p| self.acc.uid_usage(p.uid).buffer_bytes);
        self.samples.push(sample);
    }

    fn counter(&self, cgroup: &str, pool: &str) -> Counter {
        self.acc.with_ledger(|l| l.counter(cgroup, pool)).unwrap_or_default()
    }

    /// What a live process's cgroup pays, pool by pool.
    fn pays(&self, p: &Proc) -> Result<String, String> {
        let usage = self.check(&format!("usage of {}", p.label), self.acc.process_usage(p.pid))?;
        let parts: Vec<String> = usage
            .pools
            .iter()
            .filter(|u| u.counter.usage > 0)
            .map(|u| format!("{} {}", u.pool, format_bytes(u.counter.usage)))
            .collect();
        Ok(if parts.is_empty() { "nothing".into() } else { parts.join(" + ") })
    }

    fn charged(&self, b: &BufferInfo) -> String {
        let who = PROCESSES
            .iter()
            .find(|p| p.pid == b.pid)
            .map_or_else(|| format!("pid {}", b.pid), |p| format!("{}, pid {}", p.label, p.pid));
        format!("charged to {} ({who}) in {}", b.cgroup, b.pools.join(" + "))
    }

    /// `allocator` allocates from `heap` and charges the buffer on behalf of `owner`.
    fn allocate_for(
        &mut self,
        allocator: &Proc,
        owner: &Proc,
        heap: &str,
        size: u64,
        name: &str,
    ) -> Result<(Inode, BufferInfo), String> {
        let inode = self.phone.allocate(allocator.pid, heap, size, name)?;
        let info = self.phone.present(allocator.pid, inode)?;
        let what = format!("{} charges dma-buf {inode} on behalf of {}", allocator.label, owner.label);
        let b = self.check(&what, self.acc.charge(&caller(allocator), &info, Some(owner.pid)))?;
        Ok((inode, b))
    }

    fn boot(&mut self, dir: &Path) -> Result<(), String> {
        self.begin("Boot: autoconfig probes the phone and sets limits");
        self.say(format!(
            "simulated phone in {}: cgroup2 root, /proc, /sys and /dev/dma_heap",
            dir.join("tree").display()
        ));
        for p in PROCESSES {
            let trusted = if self.acc.permit(&caller(&p), Op::Push).is_ok() { "trusted" } else { "" };
            self.say(
                format!("  pid {:<5} uid {:<6} {:<20} {:<15} {trusted}", p.pid, p.uid, p.cgroup(), p.label).trim_end(),
            );
        }
        let autoconfig = Autoconfig::new(self.phone.roots(), self.acc.policy().clone(), None);
        let report =
            autoconfigure(&self.acc, &autoconfig, false, false).map_err(|e| format!("step 1: autoconfig: {e}"))?;
        self.say("autoconfig report:");
        self.out.block("    ", &report);
        let missing: Vec<String> = self
            .acc
            .policy()
            .heaps()
            .iter()
            .filter(|h| self.acc.with_ledger(|l| l.heap(&h.name).is_none()))
            .map(|h| h.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "step 1: autoconfig declared no heap for policy heap(s) {}: the simulated phone lacks them",
                missing.join(", ")
            ));
        }
        self.end();
        Ok(())
    }

    fn maps_tiles(&mut self) -> Result<(), String> {
        self.begin("gralloc allocates for maps: the app pays, not the allocator");
        self.say("maps asks the allocator HAL for map tiles; gralloc (uid 1003, trusted) allocates each from the system heap");
        self.say("and charges it on behalf of maps (chargeOnBehalf), then returns the fd to maps and closes its own:");
        for i in 0..3 {
            let (inode, b) = self.allocate_for(&GRALLOC, &MAPS, "system", TILE, &format!("maps:tile-{i}"))?;
            self.phone.send(GRALLOC.pid, MAPS.pid, inode)?;
            self.phone.close(GRALLOC.pid, inode)?;
            let line = format!("  dma-buf {inode} ({}, system heap): {}", format_bytes(b.size), self.charged(&b));
            self.say(line);
            self.tiles.push(inode);
        }
        let line = format!("maps pays {}; gralloc pays {}", self.pays(&MAPS)?, self.pays(&GRALLOC)?);
        self.say(line);
        self.end();
        Ok(())
    }

    fn double_hop(&mut self) -> Result<(), String> {
        let (sf, game) = (SURFACEFLINGER, GAME);
        self.begin("SurfaceFlinger double hop: the game pays for the buffer it draws into");
        self.say(format!(
            "the game (pid {}) calls dequeueBuffer on SurfaceFlinger for its 1080x2400 RGBA window",
            game.pid
        ));
        self.say(
            "hop 1: SurfaceFlinger asks gralloc, which allocates from the display CMA heap and charges SurfaceFlinger:",
        );
        let (inode, b) = self.allocate_for(&GRALLOC, &sf, "display", WINDOW, "SurfaceView - com.example.racer#0")?;
        self.phone.send(GRALLOC.pid, sf.pid, inode)?;
        self.phone.close(GRALLOC.pid, inode)?;
        let line = format!("  dma-buf {inode} ({}, display heap): {}", format_bytes(b.size), self.charged(&b));
        self.say(line);
        self.table("ledger between the hops:");
        self.say(
            "hop 2: SurfaceFlinger returns the buffer to the game (binder carries the fd; SurfaceFlinger keeps its",
        );
        self.say("own for composition) and pushes the charge to the game with transfer (trusted callers only):");
        self.phone.send(sf.pid, game.pid, inode)?;
        let info = self.phone.present(sf.pid, inode)?;
        let b = self.check(
            "SurfaceFlinger transfers the charge to the game",
            self.acc.transfer(&caller(&sf), &info, game.pid),
        )?;
        let line = format!("  dma-buf {inode}: {}", self.charged(&b));
        self.say(line);
        let line = format!(
            "after the double hop: SurfaceFlinger pays {}; the game pays {}",
            self.pays(&sf)?,
            self.pays(&game)?
        );
        self.say(line);
        self.window = inode;
        self.end();
        Ok(())
    }

    fn over_limit(&mut self) -> Result<(), String> {
        let game = GAME;
        let budget_cgroup = uid_cgroup(game.uid);
        self.begin("The game loads textures until its dma-buf budget refuses one");
        let budget = self.counter(&budget_cgroup, MEMCG_POOL).max;
        self.say(format!(
            "the game allocates {} texture packs from the system heap and charges them to itself;",
            format_bytes(TEXTURES)
        ));
        self.say(format!(
            "its dma-buf budget is {budget_cgroup} memcg.max = {}, set by autoconfig and enforced by the service",
            format_bytes(budget)
        ));
        self.say("because this kernel does not charge the system heap to memcg (dma_heap.mem_accounting=N):");
        for pack in 0..MAX_TEXTURE_PACKS {
            let before = owner_table(&self.acc);
            let inode = self.phone.allocate(game.pid, "system", TEXTURES, &format!("racer:textures-{pack}"))?;
            let info = self.phone.present(game.pid, inode)?;
            match self.acc.charge(&caller(&game), &info, None) {
                Ok(_) => {
                    let memcg = self.counter(&budget_cgroup, MEMCG_POOL);
                    self.say(format!(
                        "  dma-buf {inode} ({}): charged; {budget_cgroup} memcg {} of {}",
                        format_bytes(TEXTURES),
                        format_bytes(memcg.usage),
                        format_bytes(memcg.max)
                    ));
                }
                Err(e) => {
                    self.say(format!("  dma-buf {inode} ({}): REFUSED", format_bytes(TEXTURES)));
                    self.say(format!("    {}", refusal(&e)));
                    if e.code() != ErrorCode::OVER_LIMIT {
                        return Err(format!("step {}: expected OVER_LIMIT, got {}", self.step, refusal(&e)));
                    }
                    self.phone.close(game.pid, inode)?;
                    self.say("the game's allocator gets the error and frees the buffer it could not pay for");
                    if owner_table(&self.acc) != before {
                        return Err(format!("step {}: the refused charge changed the ledger", self.step));
                    }
                    self.say("the refused charge left no trace: the table below is the one from before the attempt");
                    self.end();
                    return Ok(());
                }
            }
        }
        Err(format!(
            "step {}: {MAX_TEXTURE_PACKS} texture packs of {} were all charged: no limit refused them",
            self.step,
            format_bytes(TEXTURES)
        ))
    }

    fn camera(&mut self) -> Result<(), String> {
        let (hal, app, codec) = (CAMERA_HAL, CAMERA_APP, CODEC);
        self.begin("Camera: the HAL allocates for the camera app, which hands a frame to the codec");
        self.say("the camera app opens the camera; the camera HAL (uid 1047, trusted) allocates 4000x3000 YUV frames from the");
        self.say("camera CMA heap, charges each on behalf of the camera app and shares it (both keep an fd):");
        let mut frames = Vec::new();
        for i in 0..4 {
            let (inode, b) = self.allocate_for(&hal, &app, "camera", FRAME, &format!("camera:frame-{i}"))?;
            self.phone.send(hal.pid, app.pid, inode)?;
            let line = format!("  dma-buf {inode} ({}, camera heap): {}", format_bytes(b.size), self.charged(&b));
            self.say(line);
            frames.push(inode);
        }
        let line = format!("the camera app pays {}", self.pays(&app)?);
        self.say(line);
        let frame = frames[0];
        self.say(format!("the camera app starts recording: it offers dma-buf {frame} to the codec (pid {}, uid {}) and gets a ticket,", codec.pid, codec.uid));
        let info = self.phone.present(app.pid, frame)?;
        let ticket = self.check(
            "the camera app offers a frame to the codec",
            self.acc.offer(&caller(&app), &info, codec.pid, Duration::from_secs(10)),
        )?;
        self.say("then sends the fd and the ticket over binder; the codec accepts, presenting the fd it received:");
        self.phone.send(app.pid, codec.pid, frame)?;
        let info = self.phone.present(codec.pid, frame)?;
        let b = self.check("the codec accepts the offer", self.acc.accept(&caller(&codec), ticket, &info))?;
        let line = format!("  dma-buf {frame}: {}", self.charged(&b));
        self.say(line);
        let line = format!("now the codec pays {}; the camera app pays {}", self.pays(&codec)?, self.pays(&app)?);
        self.say(line);
        self.end();
        Ok(())
    }

    fn game_dies(&mut self) -> Result<(), String> {
        let game = GAME;
        self.begin("The game dies");
        let mut charged = self.acc.charges(game.pid);
        charged.sort_by_key(|b| b.inode);
        let others: Vec<String> =
            self.phone.holders(self.window).into_iter().filter(|p| *p != game.pid).map(label_of).collect();
        self.say(format!(
            "the game (pid {}) owns {} charges; {} still holds dma-buf {} (its window, queued for composition)",
            game.pid,
            charged.len(),
            others.join(", "),
            self.window
        ));
        self.say(format!("lmkd kills the game: its fds close with it and its cgroup {} is removed", game.cgroup()));
        self.phone.exit(&game)?;
        let handled = self.check("process_died", self.acc.process_died(game.pid))?;
        self.say(format!("binder death notification -> process_died({}): {handled} charges handled", game.pid));
        let mut released = Vec::new();
        for b in &charged {
            match self.acc.with_ledger(|l| l.buffer(b.inode)) {
                None => released.push(b.inode),
                Some(now) => {
                    let holder = if now.pid == 0 { "no owning process".to_string() } else { label_of(now.pid) };
                    self.say(format!(
                        "  dma-buf {} ({}, {} heap): still held by {}, so its charge moves to {} ({holder}):",
                        b.inode,
                        format_bytes(b.size),
                        b.heap,
                        others.join(", "),
                        now.cgroup
                    ));
                    self.say("    the dead app's uid keeps paying until the buffer is let go; nobody is charged without consent");
                }
            }
        }
        let bytes: u64 = charged.iter().filter(|b| released.contains(&b.inode)).map(|b| b.size).sum();
        self.say(format!(
            "  released, nobody else holds them: {} buffers, {}: dma-buf {}",
            released.len(),
            format_bytes(bytes),
            inodes(&released)
        ));
        let left = self
            .acc
            .with_ledger(|l| l.has_cgroup(&game.cgroup()).then(|| l.counters(&game.cgroup()).unwrap_or_default()));
        if left.is_some_and(|c| c.iter().any(|(_, c)| c.usage > 0)) {
            return Err(format!("step {}: {} still pays after the game died", self.step, game.cgroup()));
        }
        self.say(format!("{} pays nothing any more", game.cgroup()));
        self.end();
        Ok(())
    }

    fn reconcile(&mut self) -> Result<(), String> {
        let (sf, maps) = (SURFACEFLINGER, MAPS);
        self.begin("Reconcile: the ledger meets /proc");
        let window = self.window;
        self.say(format!(
            "SurfaceFlinger composes the dead game's last frame and closes dma-buf {window}; nobody calls release"
        ));
        self.phone.close(sf.pid, window)?;
        let forgotten = self.tiles[0];
        self.say(format!("maps closes its tile dma-buf {forgotten} and forgets to call release"));
        self.phone.close(maps.pid, forgotten)?;
        let stray = self.phone.allocate(maps.pid, "system", TILE, "maps:offscreen")?;
        self.say(format!(
            "maps allocates dma-buf {stray} ({}) straight from /dev/dma_heap/system and never tells the service",
            format_bytes(TILE)
        ));
        let r = self.check("reconcile", self.acc.reconcile())?;
        self.say(format!("reconcile scanned {} processes and {} dma-bufs:", r.processes_scanned, r.buffers_seen));
        self.say(format!("  released (charged, but no process holds them): dma-buf {}", inodes(&r.released)));
        self.say(format!(
            "  unaccounted (held, but nobody charged them): dma-buf {} ({})",
            inodes(&r.unaccounted),
            format_bytes(r.unaccounted_bytes)
        ));
        if !r.moved.is_empty() {
            self.say(format!("  handed over (owner gone, buffer still held): dma-buf {}", inodes(&r.moved)));
        }
        if !r.reparented.is_empty() {
            self.say(format!("  cgroups gone from the tree, reparented: {}", r.reparented.join(", ")));
        }
        if !(r.released.contains(&window) && r.released.contains(&forgotten) && r.unaccounted.contains(&stray)) {
            return Err(format!("step {}: reconcile did not find what the phone shows: {r:?}", self.step));
        }
        self.end();
        Ok(())
    }

    /// The per-app summary and the plot.
    fn finish(&mut self, dir: &Path) -> Result<(), String> {
        let svg = dir.join("usage.svg");
        self.out.line("");
        self.out.line(format!("== Charges per app over the day (plotted in {}) ==", svg.display()));
        let mut header = format!("  {:<16}", "after step");
        for p in APPS {
            header.push_str(&format!(" {:>12}", p.label));
        }
        self.out.line(header);
        for (i, sample) in self.samples.iter().enumerate() {
            let mut row = format!("  {:<16}", format!("{} {}", i + 1, STEPS[i]));
            for bytes in sample {
                row.push_str(&format!(" {:>12}", format_bytes(*bytes)));
            }
            self.out.line(row);
        }
        let series: Vec<Series> = APPS
            .iter()
            .enumerate()
            .map(|(i, p)| Series {
                label: format!("{} (uid {})", p.label, p.uid),
                bytes: self.samples.iter().map(|s| s[i]).collect(),
            })
            .collect();
        let budget = self.counter(&uid_cgroup(GAME.uid), MEMCG_POOL).max;
        let budget =
            (budget != UNLIMITED).then(|| (format!("app dma-buf budget (memcg.max {})", format_bytes(budget)), budget));
        plot::write(&svg, &STEPS, &series, budget)?;
        self.out.line("");
        self.out.line(format!(
            "files: {} (the phone), {} (the journal), {}, {}",
            dir.join("tree").display(),
            dir.join("state").display(),
            dir.join("transcript.txt").display(),
            svg.display()
        ));
        self.out.line(format!("plot: {}", svg.display()));
        Ok(())
    }
}
