//! The simulated phone: a directory tree laid out like the device's /sys/fs/cgroup, /proc, /sys
//! and /dev, with the processes of the day in it, and the few kernel actions the day needs
//! (allocate a dma-buf, pass its fd over binder, close it, exit).
//!
//! The tree matches `config/policy.json`: every policy heap has its /dev/dma_heap node or dmem
//! region, so autoconfig finds what a real device with that policy would show. The kernel here
//! is a stand-in: it creates the files a process's dma-bufs leave in /proc, nothing more.
//! Everything is fixed (pids, start times, inodes, sizes), so every run prints the same.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::autoconfig::ProbeRoots;
use crate::kernel::dmabuf::DmaBufInfo;
use crate::kernel::fake_proc::{dmabuf_fdinfo, plain_fdinfo, FakeProc, FakeProcess};
use crate::kernel::procfs::ProcFs;
use crate::ledger::Inode;

pub const MIB: u64 = 1 << 20;
pub const PAGE: u64 = 4096;

/// RAM as /proc/meminfo reports it: a 4 GiB phone.
pub const MEM_TOTAL: u64 = 4 << 30;
/// zram swap.
pub const SWAP_TOTAL: u64 = 2 << 30;

/// The dmem regions the drivers register, in dmem.capacity order. The GPU's driver registers its
/// local memory; that is all the service needs to know of the GPU.
pub const DISPLAY_CMA: &str = "cma/display";
pub const CAMERA_CMA: &str = "cma/camera";
pub const SECURE_VIDEO: &str = "carveout/secure_video";
pub const GPU_VRAM: &str = "drm/13000000.gpu/vram0";
pub const REGIONS: [(&str, u64); 4] =
    [(DISPLAY_CMA, 128 * MIB), (CAMERA_CMA, 256 * MIB), (SECURE_VIDEO, 96 * MIB), (GPU_VRAM, 512 * MIB)];

/// /dev/dma_heap: the heaps userspace allocates from (the GPU's buffers come from its driver).
pub const DEV_HEAPS: [&str; 5] = ["camera", "display", "secure_video", "system", "system-uncached"];

/// A process of the day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub uid: u32,
    /// What the transcript calls it.
    pub label: &'static str,
    pub cmdline: &'static str,
    /// Clock ticks after boot (field 22 of stat).
    pub start: u64,
}

impl Proc {
    pub fn cgroup(&self) -> String {
        format!("/uid_{}/pid_{}", self.uid, self.pid)
    }

    /// The kernel's comm: the program's base name, cut to 15 bytes.
    fn comm(&self) -> String {
        let program = self.cmdline.split(' ').next().unwrap_or(self.cmdline);
        let base = program.rsplit('/').next().unwrap_or(program);
        base.chars().take(15).collect()
    }
}

pub const GRALLOC: Proc = Proc {
    pid: 612,
    uid: 1003,
    label: "gralloc",
    cmdline: "/vendor/bin/hw/android.hardware.graphics.allocator-service",
    start: 412,
};
pub const SURFACEFLINGER: Proc =
    Proc { pid: 640, uid: 1000, label: "SurfaceFlinger", cmdline: "/system/bin/surfaceflinger", start: 431 };
pub const CAMERA_HAL: Proc = Proc {
    pid: 701,
    uid: 1047,
    label: "camera HAL",
    cmdline: "/vendor/bin/hw/android.hardware.camera.provider-service",
    start: 455,
};
pub const CODEC: Proc = Proc {
    pid: 733,
    uid: 1046,
    label: "codec",
    cmdline: "/vendor/bin/hw/android.hardware.media.c2-default-service",
    start: 468,
};
pub const MAPS: Proc =
    Proc { pid: 4210, uid: 10061, label: "maps", cmdline: "com.google.android.apps.maps", start: 18_204 };
pub const GAME: Proc = Proc { pid: 4388, uid: 10082, label: "game", cmdline: "com.example.racer", start: 19_377 };
pub const CAMERA_APP: Proc =
    Proc { pid: 4502, uid: 10097, label: "camera app", cmdline: "com.android.camera2", start: 20_815 };

pub const PROCESSES: [Proc; 7] = [GRALLOC, SURFACEFLINGER, CAMERA_HAL, CODEC, MAPS, GAME, CAMERA_APP];
pub const APPS: [Proc; 3] = [MAPS, GAME, CAMERA_APP];

/// The first inode the stand-in kernel gives a dma-buf.
const FIRST_INODE: Inode = 40_001;
/// The first fd number a process gets for a dma-buf (0-2 are stdio, the rest binder and friends).
const FIRST_FD: u32 = 20;

/// The tree and what the stand-in kernel remembers about it: which fd of which process refers to
/// which dma-buf. The tree is the truth the service reads; this map only names the files.
pub struct Phone {
    root: PathBuf,
    procfs: ProcFs,
    proc: FakeProc,
    next_inode: Inode,
    /// pid → (inode → fd number).
    fds: BTreeMap<u32, BTreeMap<Inode, u32>>,
    next_fd: BTreeMap<u32, u32>,
    /// inode → (size, heap, name), what a new holder's fdinfo repeats.
    buffers: BTreeMap<Inode, (u64, String, String)>,
}

fn put(path: &Path, content: impl AsRef<[u8]>) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))
}

fn be_cells(cells: &[u32]) -> Vec<u8> {
    cells.iter().flat_map(|c| c.to_be_bytes()).collect()
}

/// "<region> <value>" for every region, as the dmem files print.
fn per_region(value: &str) -> String {
    REGIONS.iter().map(|(r, _)| format!("{r} {value}\n")).collect()
}

impl Phone {
    /// Lays out the phone under `root` (which must not exist yet).
    pub fn build(root: &Path) -> Result<Phone, String> {
        let phone = Phone {
            root: root.to_path_buf(),
            procfs: ProcFs::new(ProbeRoots::under(root).proc),
            proc: FakeProc::new(ProbeRoots::under(root).proc),
            next_inode: FIRST_INODE,
            fds: BTreeMap::new(),
            next_fd: BTreeMap::new(),
            buffers: BTreeMap::new(),
        };
        phone.lay_out_kernel()?;
        for p in PROCESSES {
            phone.spawn(&p)?;
        }
        Ok(phone)
    }

    /// Where the tree stands in for the device's /sys/fs/cgroup, /proc, /sys and /dev.
    pub fn roots(&self) -> ProbeRoots {
        ProbeRoots::under(&self.root)
    }

    fn cgroup_root(&self) -> PathBuf {
        self.roots().cgroup
    }

    /// What the kernel shows before any app runs: cgroup root with the dmem regions, memory, heaps,
    /// CMA areas and the secure-video carve-out in the device tree.
    fn lay_out_kernel(&self) -> Result<(), String> {
        let roots = self.roots();
        let cg = &roots.cgroup;
        put(&cg.join("cgroup.controllers"), "cpuset cpu io memory pids dmem\n")?;
        // Android's init enables memory; dmem is new, and autoconfig enables it.
        put(&cg.join("cgroup.subtree_control"), "cpuset cpu io memory pids\n")?;
        put(&cg.join("cgroup.procs"), "1\n")?;
        let capacity: String = REGIONS.iter().map(|(name, size)| format!("{name} {size}\n")).collect();
        put(&cg.join("dmem.capacity"), capacity)?;

        // The system heap's pages are not charged to memcg by this kernel: the service must.
        put(&roots.sys.join("module/dma_heap/parameters/mem_accounting"), "N\n")?;
        for heap in DEV_HEAPS {
            put(&roots.dev.join("dma_heap").join(heap), "")?;
        }
        for (region, size) in REGIONS {
            if let Some(area) = region.strip_prefix("cma/") {
                let dir = roots.sys.join("kernel/mm/cma").join(area);
                put(&dir.join("total_pages"), format!("{}\n", size / PAGE))?;
                put(&dir.join("available_pages"), format!("{}\n", size / PAGE))?;
            }
        }
        let cma_total: u64 = REGIONS.iter().filter(|(n, _)| n.starts_with("cma/")).map(|(_, s)| s).sum();
        put(
            &roots.proc.join("meminfo"),
            format!(
                "MemTotal:       {:>8} kB\nMemFree:        {:>8} kB\nMemAvailable:   {:>8} kB\nSwapTotal:      {:>8} kB\nSwapFree:       {:>8} kB\nCmaTotal:       {:>8} kB\nCmaFree:        {:>8} kB\n",
                MEM_TOTAL >> 10,
                (MEM_TOTAL >> 10) * 3 / 8,
                (MEM_TOTAL >> 10) * 5 / 8,
                SWAP_TOTAL >> 10,
                SWAP_TOTAL >> 10,
                cma_total >> 10,
                cma_total >> 10,
            ),
        )?;
        put(
            &roots.proc.join("cmdline"),
            "console=ttyMSM0,115200n8 androidboot.hardware=demo androidboot.selinux=enforcing\n",
        )?;
        put(&roots.sys.join("fs/selinux/enforce"), "1\n")?;

        // Device tree: the CMA areas are reusable pools; secure video is a no-map carve-out.
        let rm = roots.proc.join("device-tree/reserved-memory");
        put(&rm.join("#address-cells"), be_cells(&[2]))?;
        put(&rm.join("#size-cells"), be_cells(&[2]))?;
        let nodes: [(&str, u32, u64, &str, bool); 3] = [
            ("display@d0000000", 0xd000_0000, 128 * MIB, "shared-dma-pool", true),
            ("camera@d8000000", 0xd800_0000, 256 * MIB, "shared-dma-pool", true),
            ("secure_video@e8000000", 0xe800_0000, 96 * MIB, "vendor,secure-video-heap", false),
        ];
        for (node, base, size, compatible, reusable) in nodes {
            let dir = rm.join(node);
            put(&dir.join("reg"), be_cells(&[0, base, 0, size as u32]))?;
            put(&dir.join("compatible"), format!("{compatible}\0"))?;
            put(&dir.join(if reusable { "reusable" } else { "no-map" }), "")?;
        }

        Ok(())
    }

    /// Writes one cgroup directory with the memory and dmem files a kernel with both controllers
    /// shows (limits at their defaults, nothing charged).
    fn cgroup_dir(&self, path: &str, procs: &str) -> Result<(), String> {
        let dir = self.cgroup_root().join(path.trim_start_matches('/'));
        let files: [(&str, String); 16] = [
            ("cgroup.controllers", "cpuset cpu io memory pids dmem\n".into()),
            ("cgroup.subtree_control", "\n".into()),
            ("cgroup.procs", procs.into()),
            ("memory.current", "0\n".into()),
            ("memory.max", "max\n".into()),
            ("memory.high", "max\n".into()),
            ("memory.low", "0\n".into()),
            ("memory.min", "0\n".into()),
            ("memory.peak", "0\n".into()),
            ("memory.stat", "anon 0\nfile 0\nkernel 0\nshmem 0\n".into()),
            ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n".into()),
            ("dmem.current", per_region("0")),
            ("dmem.max", per_region("max")),
            ("dmem.min", per_region("0")),
            ("dmem.low", per_region("0")),
            ("dmem.peak", per_region("0")),
        ];
        for (name, content) in files {
            put(&dir.join(name), content)?;
        }
        Ok(())
    }

    /// Starts a process: its /proc/PID directory and its `/uid_<uid>/pid_<pid>` cgroup.
    fn spawn(&self, p: &Proc) -> Result<(), String> {
        let uid_cgroup = format!("/uid_{}", p.uid);
        if !self.cgroup_root().join(uid_cgroup.trim_start_matches('/')).is_dir() {
            self.cgroup_dir(&uid_cgroup, "")?;
        }
        self.cgroup_dir(&p.cgroup(), &format!("{}\n", p.pid))?;
        let comm = p.comm();
        let cgroup = p.cgroup();
        let cmdline: Vec<&str> = p.cmdline.split(' ').collect();
        let ppid = if p.uid >= 10_000 { 300 } else { 1 }; // zygote64 or init
        let process = FakeProcess {
            pid: p.pid,
            uid: p.uid,
            cgroup: &cgroup,
            start: p.start,
            comm: &comm,
            ppid,
            cmdline: &cmdline,
        };
        let fail = |e: std::io::Error| format!("{}: {e}", self.proc_dir(p.pid).display());
        self.proc.spawn(&process).map_err(fail)?;
        self.proc
            .write(
                format!("{}/maps", p.pid),
                "5a0c000000-5a0c021000 r--p 00000000 fd:00 1402                       /system/bin/app_process64\n\
                 7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n",
            )
            .map_err(fail)?;
        self.proc.put_fd(p.pid, 0, plain_fdinfo(3)).map_err(fail)?;
        Ok(())
    }

    fn proc_dir(&self, pid: u32) -> PathBuf {
        self.proc.pid_dir(pid)
    }

    /// Gives `pid` a new fd on `inode`: the fdinfo file the kernel would show for it.
    fn add_fd(&mut self, pid: u32, inode: Inode) -> Result<u32, String> {
        let (size, heap, name) = self.buffers.get(&inode).cloned().ok_or_else(|| format!("no dma-buf {inode}"))?;
        let next = self.next_fd.entry(pid).or_insert(FIRST_FD);
        let fd = *next;
        *next += 1;
        let holders = self.fds.values().filter(|f| f.contains_key(&inode)).count() + 1;
        self.proc
            .put_fd(pid, fd, dmabuf_fdinfo(Some(inode), size, holders as u32, &heap, Some(&name)))
            .map_err(|e| format!("{}: {e}", self.proc_dir(pid).display()))?;
        self.fds.entry(pid).or_default().insert(inode, fd);
        Ok(fd)
    }

    /// `pid` allocates `size` bytes from `heap` (an ioctl on /dev/dma_heap/<heap>, or the GPU
    /// driver): the kernel makes a dma-buf with a fresh inode and the process gets an fd on it.
    pub fn allocate(&mut self, pid: u32, heap: &str, size: u64, name: &str) -> Result<Inode, String> {
        if !self.proc_dir(pid).is_dir() {
            return Err(format!("pid {pid} is not running"));
        }
        let inode = self.next_inode;
        self.next_inode += 1;
        self.buffers.insert(inode, (size, heap.to_string(), name.to_string()));
        self.add_fd(pid, inode)?;
        Ok(inode)
    }

    /// The buffer as the service sees it when `pid` passes its fd in a call: read back from the
    /// process's fdinfo through the same procfs adapter production uses.
    pub fn present(&self, pid: u32, inode: Inode) -> Result<DmaBufInfo, String> {
        let refs = self.procfs.dmabufs(pid).map_err(|e| e.to_string())?;
        let r =
            refs.into_iter().find(|r| r.inode == inode).ok_or_else(|| format!("pid {pid} holds no dma-buf {inode}"))?;
        let exporter = r.exporter.ok_or_else(|| format!("pid {pid} only maps dma-buf {inode}"))?;
        Ok(DmaBufInfo { inode, size: r.size, exporter, name: r.name })
    }

    /// Binder carries the fd from one process to another: the receiver gets its own fd.
    pub fn send(&mut self, from: u32, to: u32, inode: Inode) -> Result<(), String> {
        if !self.fds.get(&from).is_some_and(|f| f.contains_key(&inode)) {
            return Err(format!("pid {from} holds no fd on dma-buf {inode}"));
        }
        self.add_fd(to, inode).map(drop)
    }

    /// `pid` closes its fd on `inode`.
    pub fn close(&mut self, pid: u32, inode: Inode) -> Result<(), String> {
        let fd = self
            .fds
            .get_mut(&pid)
            .and_then(|f| f.remove(&inode))
            .ok_or_else(|| format!("pid {pid} holds no fd on dma-buf {inode}"))?;
        let path = self.proc_dir(pid).join("fdinfo").join(fd.to_string());
        fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The process exits: its fds close with its /proc directory, and (as Android's process
    /// cleanup does) its `pid_<pid>` cgroup is removed.
    pub fn exit(&mut self, p: &Proc) -> Result<(), String> {
        self.fds.remove(&p.pid);
        self.proc.exit(p.pid).map_err(|e| format!("{}: {e}", self.proc_dir(p.pid).display()))?;
        let cgroup = self.cgroup_root().join(p.cgroup().trim_start_matches('/'));
        fs::remove_dir_all(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))
    }

    /// Pids holding an fd on `inode`.
    pub fn holders(&self, inode: Inode) -> Vec<u32> {
        self.fds.iter().filter(|(_, f)| f.contains_key(&inode)).map(|(pid, _)| *pid).collect()
    }
}
