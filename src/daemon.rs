//! The service process: opens the ledger, runs autoconfig, registers the binder service (or
//! serves RPC on a unix socket), and keeps lifecycles in order — pidfd polling, periodic
//! reconcile with catch-up charging, journal compaction on SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use log::{error, info, warn};

use crate::accountant::{Accountant, Config};
use crate::autoconfig::{Autoconfig, ProbeRoots, Scope};
use crate::binder::{self, Interface};
use crate::catchup::CatchUp;
use crate::client::RPC_WIRE_VERSION;
use crate::handoff_watch;
use crate::journal::Durability;
use crate::kernel::handoff_events::HandoffEvents;
use crate::kernel::ScanChoice;
use crate::memtrack::TraceCounters;
use crate::policy::{Policy, TrustRule};
use crate::service::{ChargeTransferService, DeathWatch, MemtrackService, INSTANCE, MEMTRACK_INSTANCE};

#[derive(Parser, Debug, Clone)]
#[command(name = "chargetransferd", about = "Charges dma-buf allocations to the apps that use them")]
pub struct Options {
    /// Serve on the kernel binder driver (the default); optionally name the device.
    #[arg(long, value_name = "DEVICE", conflicts_with = "rpc")]
    pub binder: Option<Option<String>>,
    /// Serve over the binder RPC transport on this unix socket instead of kernel binder.
    #[arg(long, value_name = "SOCKET")]
    pub rpc: Option<PathBuf>,
    /// Policy files, merged in order (later wins); the embedded default when none is given.
    #[arg(long = "policy", value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// Journal directory; without it charges live in memory only.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// cgroup v2 mount; found from /proc/self/mounts when not given.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    #[arg(long, default_value = "/sys")]
    pub sys_root: PathBuf,
    #[arg(long, default_value = "/dev")]
    pub dev_root: PathBuf,
    /// Journal durability. `batch` (default) writes each record to the kernel before the reply,
    /// so it survives the service's own death, and syncs in the background: after a power loss
    /// no dma-buf survives either, so there is nothing a synced record could add. `fsync` syncs
    /// every record; `none` is for tests.
    #[arg(long, default_value = "batch", value_parser = ["fsync", "batch", "none"])]
    pub durability: String,
    /// Skip autoconfig at start (limits stay as journaled).
    #[arg(long)]
    pub no_autoconfig: bool,
    /// Seconds between reconcile passes; 0 disables the periodic pass.
    #[arg(long, default_value_t = 30)]
    pub reconcile_secs: u64,
    /// Milliseconds between pidfd polls for owners without a death token.
    #[arg(long, default_value_t = 100)]
    pub pidfd_poll_ms: u64,
    /// Who holds which dma-buf: `auto` uses the BPF iterators when they open (pinned in
    /// --bpf-pin-dir, else loaded by the service) and the procfs scan otherwise; `bpf` refuses to
    /// start without them. Against a --proc-root other than /proc, `auto` is procfs.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bpf", "procfs"])]
    pub scan: String,
    /// Where bpfloader pins the holder iterators (`prog_chargetransfer_holders_iter_*`).
    #[arg(long, default_value = crate::kernel::bpf::ANDROID_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
    /// Binder threads.
    #[arg(long, default_value_t = 8)]
    pub threads: u32,
    /// Do not follow handoffs from the kernel's fd events (tracefs): the periodic reconcile alone
    /// applies the handoff rule.
    #[arg(long)]
    pub no_handoff_events: bool,
    /// Where tracefs is mounted: the policy's `trace.counters` writes to its trace_marker, and
    /// the handoff events come from an instance of its own.
    #[arg(long, default_value = crate::memtrack::counters::TRACEFS)]
    pub tracefs: PathBuf,
}

fn scan_choice(opts: &Options) -> ScanChoice {
    let pin_dir = opts.bpf_pin_dir.clone();
    match opts.scan.as_str() {
        "bpf" => ScanChoice::Bpf { pin_dir },
        "auto" if opts.proc_root == std::path::Path::new("/proc") => ScanChoice::Auto { pin_dir },
        _ => ScanChoice::Procfs,
    }
}

fn durability(name: &str) -> Durability {
    match name {
        "batch" => Durability::Batch,
        "none" => Durability::None,
        _ => Durability::Fsync,
    }
}

/// Runs the service until SIGTERM. Errors are start-up failures, printed by the caller.
pub fn run(opts: Options) -> Result<(), String> {
    let policy = if opts.policies.is_empty() {
        Policy::embedded_default()
    } else {
        Policy::load(&opts.policies).map_err(|e| e.to_string())?
    };
    let cgroup_root = match &opts.cgroup_root {
        Some(r) => Some(r.clone()),
        None => crate::kernel::cgroupfs::CgroupFs::discover(&opts.proc_root).ok().map(|c| c.root().to_path_buf()),
    };
    let config = Config {
        proc_root: opts.proc_root.clone(),
        cgroup_root: cgroup_root.clone(),
        state_dir: opts.state_dir.clone(),
        durability: durability(&opts.durability),
        pidfds: opts.proc_root == std::path::Path::new("/proc"),
        scan: scan_choice(&opts),
    };
    let accountant = Arc::new(Accountant::open(config, policy.clone()).map_err(|e| e.to_string())?);
    if policy.trace_counters() {
        match TraceCounters::open(&opts.tracefs) {
            Ok(counters) => {
                accountant.set_trace_counters(Arc::new(counters));
                info!("trace counters: per-app totals to {}/trace_marker", opts.tracefs.display());
            }
            Err(e) => warn!("trace counters asked for, but {}/trace_marker: {e}", opts.tracefs.display()),
        }
    }
    let trust = TrustRule::with_selinux(crate::autoconfig::probe::selinux(&opts.sys_root).is_ok());
    accountant.set_trust_rule(trust);
    info!("trust: {}", trust.describe());
    let roots = ProbeRoots {
        cgroup: cgroup_root.unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
        proc: opts.proc_root.clone(),
        sys: opts.sys_root.clone(),
        dev: opts.dev_root.clone(),
    };
    let autoconfig = Arc::new(Autoconfig::new(roots, policy, opts.state_dir.clone()));
    if !opts.no_autoconfig {
        match autoconfigure(&accountant, &autoconfig, false, false) {
            Ok(report) => info!("autoconfig:\n{report}"),
            Err(e) => warn!("autoconfig failed, limits unchanged: {e}"),
        }
        // An app that appears after boot gets its class limits before its first charge: its own
        // cgroup only, nobody else's.
        accountant.set_autoconfig(Arc::clone(&autoconfig));
    }
    // After the journal's replay: held buffers nobody pays for (charges an allocator deferred
    // while the service was down and never replayed) are caught up in the background, so that
    // the registration, which allocators wait for, is not delayed by it.
    let catch_up = Arc::new(CatchUp::new());
    match accountant.reconcile() {
        Ok(r) => {
            info!(
                "start-up reconcile: released {:?}, moved {:?}, {} unaccounted",
                r.released,
                r.moved,
                r.unaccounted.len()
            );
            let (a, c) = (Arc::clone(&accountant), Arc::clone(&catch_up));
            std::thread::Builder::new()
                .name("catch-up".into())
                .spawn(move || match c.charge(&a, &r.unaccounted) {
                    Ok(caught) => info!("start-up catch-up: {} buffers charged", caught.len()),
                    Err(e) => warn!("start-up catch-up failed: {e}"),
                })
                .map_err(|e| format!("spawn catch-up: {e}"))?;
        }
        Err(e) => warn!("start-up reconcile failed: {e}"),
    }

    watch_handoffs(&accountant, &opts);

    let deaths = DeathWatch::new(&accountant);
    let stop = Arc::new(AtomicBool::new(false));
    spawn_lifecycle(&accountant, &autoconfig, &catch_up, &deaths, &stop, &opts);
    let autoconfigure: crate::service::Autoconfigure =
        Box::new(move |a, dry_run, json| autoconfigure(a, &autoconfig, dry_run, json));
    let service = ChargeTransferService::new(
        Arc::clone(&accountant),
        opts.proc_root.clone(),
        Arc::clone(&deaths),
        autoconfigure,
        catch_up,
    );
    let service = binder::new_service(service, crate::service::features());
    let memtrack = binder::new_memtrack_service(MemtrackService::new(Arc::clone(&accountant), opts.sys_root.clone()));
    spawn_signal_handler(&accountant, &stop, opts.rpc.clone())?;

    match &opts.rpc {
        Some(socket) => {
            info!("serving {INSTANCE} over RPC on {} (the RPC root is one object: no memtrack)", socket.display());
            binder::serve_rpc(socket, service.as_binder(), opts.threads, RPC_WIRE_VERSION)
        }
        None => {
            binder::open_driver(opts.binder.clone().flatten().as_deref(), opts.threads)
                .map_err(|e| format!("binder: {e}"))?;
            binder::start_thread_pool();
            binder::add_service(INSTANCE, service.as_binder()).map_err(|e| format!("add_service {INSTANCE}: {e}"))?;
            info!("registered {INSTANCE}");
            // The memtrack HAL is a second face of the same ledger: without it the charges still
            // work, so a refused registration is logged, not fatal.
            match binder::add_service(MEMTRACK_INSTANCE, memtrack.as_binder()) {
                Ok(()) => info!("registered {MEMTRACK_INSTANCE}"),
                Err(e) => warn!("add_service {MEMTRACK_INSTANCE}: {e}"),
            }
            binder::join_thread_pool().map_err(|e| format!("thread pool: {e}"))
        }
    }
}

/// Follows handoffs as the kernel reports them where tracefs offers the events (a real /proc,
/// not `--no-handoff-events`); otherwise the periodic reconcile alone applies the rule.
fn watch_handoffs(accountant: &Arc<Accountant>, opts: &Options) {
    let why_not = if opts.no_handoff_events {
        "--no-handoff-events".to_string()
    } else if opts.proc_root != std::path::Path::new("/proc") {
        "not the real /proc".to_string()
    } else {
        match HandoffEvents::open(&opts.tracefs, &opts.sys_root.join("kernel/btf/vmlinux")) {
            Ok(events) => {
                let mode =
                    format!("{} (re-checked within {} ms)", events.describe(), handoff_watch::WINDOW.as_millis());
                match handoff_watch::spawn(Arc::clone(accountant), events, opts.proc_root.clone()) {
                    Ok(()) => {
                        info!("handoffs: {mode}");
                        handoff_watch::set_mode(mode);
                        return;
                    }
                    Err(e) => format!("spawn: {e}"),
                }
            }
            Err(e) => e.to_string(),
        }
    };
    let mode = format!("periodic reconcile only (every {} s; no events: {why_not})", opts.reconcile_secs);
    info!("handoffs: {mode}");
    handoff_watch::set_mode(mode);
}

/// Probes the device, computes limits from the policy and applies them to every owner: cgroup
/// files where the kernel enforces, ledger limits where the service does. Returns the report, as
/// text or JSON, with the dma-buf scan backend the service chose at start.
pub fn autoconfigure(
    accountant: &Accountant,
    autoconfig: &Autoconfig,
    dry_run: bool,
    json: bool,
) -> crate::error::Result<String> {
    let report = accountant.autoconfigure(autoconfig, Scope::All, dry_run)?;
    let scanner = accountant.scanner();
    Ok(if json {
        let mut value: serde_json::Value = serde_json::from_str(&report.to_json())
            .map_err(|e| crate::error::Error::Internal(format!("autoconfig report JSON: {e}")))?;
        value["scan"] = serde_json::json!({ "backend": scanner.name(), "detail": scanner.to_string() });
        value["handoffs"] = serde_json::json!(handoff_watch::mode());
        value.to_string()
    } else {
        format!("{report}dma-buf scan: {scanner}\nhandoffs: {}\n", handoff_watch::mode())
    })
}

fn spawn_lifecycle(
    accountant: &Arc<Accountant>,
    autoconfig: &Arc<Autoconfig>,
    catch_up: &Arc<CatchUp>,
    deaths: &Arc<DeathWatch>,
    stop: &Arc<AtomicBool>,
    opts: &Options,
) {
    let (d, s) = (Arc::clone(deaths), Arc::clone(stop));
    let interval = Duration::from_millis(opts.pidfd_poll_ms.max(10));
    std::thread::Builder::new()
        .name("pidfd-watch".into())
        .spawn(move || d.poll_pidfds(interval, &|| s.load(Ordering::Relaxed)))
        .expect("spawn pidfd watcher");
    let (a, s) = (Arc::clone(accountant), Arc::clone(stop));
    std::thread::Builder::new()
        .name("journal-sync".into())
        .spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                if let Err(e) = a.sync_journal() {
                    error!("{e}");
                }
            }
        })
        .expect("spawn journal sync");
    if opts.reconcile_secs > 0 {
        let (a, c, s) = (Arc::clone(accountant), Arc::clone(catch_up), Arc::clone(stop));
        let ac = (!opts.no_autoconfig).then(|| Arc::clone(autoconfig));
        let every = Duration::from_secs(opts.reconcile_secs);
        std::thread::Builder::new()
            .name("reconcile".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    if let Err(e) = c.reconcile(&a) {
                        warn!("periodic reconcile: {e}");
                    }
                    // An owner whose processes changed state (the background or foreground signal)
                    // gets its new class's limits.
                    if let Some(ac) = &ac {
                        let changed = ac.reclassified();
                        if !changed.is_empty() {
                            if let Err(e) = a.autoconfigure(ac, Scope::Owners(changed), false) {
                                warn!("autoconfig for reclassified owners: {e}");
                            }
                        }
                    }
                }
            })
            .expect("spawn reconcile");
    }
}

/// SIGTERM/SIGINT: stop the lifecycle threads, compact the journal, exit 0.
fn spawn_signal_handler(
    accountant: &Arc<Accountant>,
    stop: &Arc<AtomicBool>,
    socket: Option<PathBuf>,
) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signals: {e}"))?;
    let (a, s) = (Arc::clone(accountant), Arc::clone(stop));
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!("signal {sig}: shutting down");
                s.store(true, Ordering::Relaxed);
                if let Err(e) = a.compact() {
                    error!("final compaction: {e}");
                }
                if let Some(path) = socket {
                    let _ = std::fs::remove_file(path);
                }
                std::process::exit(0);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
