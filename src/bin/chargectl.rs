//! chargectl: the command-line client of the charge-transfer service, and the demo.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use chargetransfer::autoconfig::{Probe, ProbeRoots};
use chargetransfer::binder::aidl::vendor::chargetransfer::{ChargeInfo::ChargeInfo, UsageReport::UsageReport};
use chargetransfer::client::{Client, ClientError};
use chargetransfer::kernel::{ProcFs, ScanChoice, Scanner};
use chargetransfer::policy::{format_bytes, TrustRule};

#[derive(Parser)]
#[command(name = "chargectl", about = "Inspect and drive the dma-buf charge-transfer service")]
struct Cli {
    /// Talk to the service over RPC on this unix socket instead of kernel binder.
    #[arg(long, global = true, value_name = "SOCKET")]
    rpc: Option<PathBuf>,
    /// Binder device (default: /dev/binderfs/binder, then /dev/binder).
    #[arg(long, global = true, value_name = "DEVICE")]
    binder: Option<String>,
    /// Seconds to wait for the service to appear.
    #[arg(long, global = true, default_value_t = 5)]
    wait: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Play a scripted day on a simulated phone (no service needed) and write an SVG plot.
    #[cfg(feature = "demo")]
    Demo {
        /// Where to write the plot and the simulated tree (default: ./demo-out).
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
    },
    /// Usage of a process, uid or cgroup (default: the root cgroup).
    Usage {
        #[arg(long, conflicts_with_all = ["uid", "cgroup"])]
        pid: Option<i32>,
        #[arg(long, conflicts_with = "cgroup")]
        uid: Option<i32>,
        #[arg(long)]
        cgroup: Option<String>,
    },
    /// Pools, their capacity, heaps and who enforces them.
    Regions,
    /// dumpsys-style state: owners, regions, biggest buffers.
    Dump,
    /// Charges listed per buffer (all, or of one pid).
    List {
        #[arg(long, default_value_t = 0)]
        pid: i32,
    },
    /// Allocate a dma-buf from a heap and charge it (to yourself, or --for PID), holding it for
    /// --hold seconds.
    Charge {
        #[arg(long, default_value = "system")]
        heap: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long = "for")]
        for_pid: Option<i32>,
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// Move the charge of another process's buffer (its fd number) to a pid (trusted callers).
    Transfer {
        /// Process that holds the buffer, and its fd number.
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        fd: u32,
        #[arg(long)]
        to: i32,
    },
    /// Release the charge of a buffer by inode.
    Release {
        inode: i64,
    },
    /// Compare the ledger with procfs and repair it.
    Reconcile,
    /// Probe the device and (re)apply limits.
    Autoconfig {
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// vram: report an eviction, a restore, pin or unpin.
    Evict {
        inode: i64,
    },
    Restore {
        inode: i64,
    },
    Pin {
        inode: i64,
    },
    Unpin {
        inode: i64,
    },
    /// Which buffers to evict first to free BYTES in REGION.
    Advice {
        region: String,
        #[arg(value_parser = parse_size)]
        bytes: u64,
    },
    /// Round-trip cost: null call vs charge, getProcessUsage, transfer and release over the same
    /// connection, as ratios.
    Bench {
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
        #[arg(long, default_value = "system")]
        heap: String,
        /// Live process the charge is transferred to (default: our parent).
        /// Transfer needs a trusted caller; otherwise it is reported as not measured.
        #[arg(long = "transfer-to")]
        transfer_to: Option<i32>,
    },
    /// Who pays for graphics memory, per app, refreshed like top: app, pid, uid, buffers, bytes,
    /// change since the last refresh, pools. A trusted caller sees every app, others their uid's.
    Top {
        /// Print one table and exit (for scripts).
        #[arg(long, conflicts_with = "iterations")]
        once: bool,
        /// Print N tables, then exit (for scripts).
        #[arg(short = 'n', long = "iterations", value_name = "N")]
        iterations: Option<u32>,
        /// Seconds between refreshes.
        #[arg(short = 'd', long, default_value_t = 2.0)]
        delay: f64,
    },
    /// The interface version and hash the service serves.
    Version,
    /// Print what autoconfig's probe sees on this device, as JSON (no service needed; the
    /// format of the fixtures under tests/fixtures/autoconfig).
    Probe {
        /// Probe a tree laid out like / (sys/fs/cgroup, proc, sys, dev) instead of the device.
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    chargetransfer::policy::parse_bytes(s).map_err(|e| e.to_string())
}

fn connect(cli: &Cli) -> Result<Client, ClientError> {
    match &cli.rpc {
        Some(socket) => Client::connect_rpc(socket),
        None => Client::connect_binder(cli.binder.as_deref(), Duration::from_secs(cli.wait)),
    }
}

fn print_usage(u: &UsageReport) {
    println!("{}: {} buffers, {}", u.cgroup, u.bufferCount, format_bytes(u.bufferBytes as u64));
    println!("  {:<26} {:>10} {:>10} {:>10} {:>10} {:>10}", "pool", "usage", "max", "peak", "pinned", "kernel");
    let b = |v: i64| if v < 0 { "-".to_string() } else { format_bytes(v as u64) };
    for p in &u.pools {
        let max = if p.max < 0 { "max".to_string() } else { format_bytes(p.max as u64) };
        println!(
            "  {:<26} {:>10} {:>10} {:>10} {:>10} {:>10}",
            p.pool,
            b(p.usage),
            max,
            b(p.peak),
            b(p.pinned),
            b(p.kernelUsage)
        );
    }
}

fn print_charge(c: &ChargeInfo) {
    let flags = match (c.evicted, c.pinned) {
        (true, _) => " evicted",
        (_, true) => " pinned",
        _ => "",
    };
    println!(
        "inode {} size {} heap {} -> pid {} uid {} cgroup {} pools [{}]{flags}",
        c.inode,
        format_bytes(c.size as u64),
        c.heap,
        c.ownerPid,
        c.ownerUid,
        c.ownerCgroup,
        c.pools.join(",")
    );
}

fn heap_path(heap: &str) -> PathBuf {
    PathBuf::from("/dev/dma_heap").join(heap)
}

fn run(cli: Cli) -> Result<(), String> {
    #[cfg(feature = "demo")]
    if let Command::Demo { out } = &cli.command {
        // The transcript is the output; the accountant's info logs would interleave with it.
        if std::env::var_os("RUST_LOG").is_none() {
            log::set_max_level(log::LevelFilter::Warn);
        }
        return chargetransfer::demo::run(out).map_err(|e| e.to_string());
    }
    if let Command::Probe { root } = &cli.command {
        let roots = root.as_deref().map_or_else(ProbeRoots::system, ProbeRoots::under);
        let mut probe: serde_json::Value =
            serde_json::from_str(&Probe::run(&roots).to_json()).map_err(|e| format!("probe JSON: {e}"))?;
        // What the service would choose with `--scan auto` (a tree under --root is not a kernel).
        let choice = match root {
            Some(_) => ScanChoice::Procfs,
            None => ScanChoice::Auto { pin_dir: chargetransfer::kernel::bpf::ANDROID_PIN_DIR.into() },
        };
        let scanner = Scanner::choose(&choice, ProcFs::new(&roots.proc)).map_err(|e| e.to_string())?;
        probe["scan"] = serde_json::json!({ "backend": scanner.name(), "detail": scanner.to_string() });
        println!("{probe}");
        return Ok(());
    }
    let client = connect(&cli).map_err(|e| e.to_string())?;
    let svc = client.service();
    let e = |err: chargetransfer::binder::Status| ClientError::from(err).to_string();
    match cli.command {
        #[cfg(feature = "demo")]
        Command::Demo { .. } => unreachable!("handled above"),
        Command::Probe { .. } => unreachable!("handled above"),
        Command::Usage { pid, uid, cgroup } => {
            let report = match (pid, uid, cgroup) {
                (Some(pid), _, _) => svc.getProcessUsage(pid),
                (_, Some(uid), _) => svc.getUidUsage(uid),
                (_, _, Some(cg)) => svc.getCgroupUsage(&cg),
                _ => svc.getCgroupUsage("/"),
            }
            .map_err(e)?;
            print_usage(&report);
        }
        Command::Regions => {
            println!(
                "{:<26} {:<8} {:>9} {:>9} {:<8} {:<24} why",
                "pool", "class", "capacity", "usage", "enforced", "heaps"
            );
            let dump = svc.dumpState().map_err(e)?;
            let scan = dump.lines().find(|l| l.starts_with(chargetransfer::dump::SCAN_PREFIX));
            for r in svc.getRegions().map_err(e)? {
                let cap = if r.capacity <= 0 { "?".into() } else { format_bytes(r.capacity as u64) };
                println!(
                    "{:<26} {:<8} {:>9} {:>9} {:<8} {:<24} {}",
                    r.name,
                    r.regionClass,
                    cap,
                    format_bytes(r.usage.max(0) as u64),
                    r.enforcedBy,
                    r.heaps.join(","),
                    r.why
                );
            }
            println!("{}", scan.unwrap_or("dma-buf scan: not reported by this service"));
            // The service takes its rule from the same test of this kernel (see TrustRule).
            let selinux = chargetransfer::autoconfig::probe::selinux(&ProbeRoots::system().sys);
            println!("trust: {}", TrustRule::with_selinux(selinux.is_ok()).describe());
        }
        Command::Dump => print!("{}", svc.dumpState().map_err(e)?),
        Command::List { pid } => svc.listCharges(pid).map_err(e)?.iter().for_each(print_charge),
        Command::Charge { heap, size, for_pid, hold } => {
            let buffer =
                chargetransfer::kernel::alloc_from_heap(&heap_path(&heap), size).map_err(|err| err.to_string())?;
            let info = match for_pid {
                Some(pid) => client.charge_for(&buffer, pid),
                None => client.charge(&buffer),
            }
            .map_err(|err| err.to_string())?;
            print_charge(&info);
            std::thread::sleep(Duration::from_secs(hold));
        }
        Command::Transfer { pid, fd, to } => {
            let path = format!("/proc/{pid}/fd/{fd}");
            let file = File::open(&path).map_err(|err| format!("{path}: {err}"))?;
            print_charge(&client.transfer(file.as_fd(), to).map_err(|err| err.to_string())?);
        }
        Command::Release { inode } => client.release(inode).map_err(|err| err.to_string())?,
        Command::Reconcile => {
            let r = svc.reconcile().map_err(e)?;
            println!(
                "scanned {} processes, {} buffers; released {:?}; moved {:?}; migrated {:?}; unaccounted {} ({})",
                r.processesScanned,
                r.buffersSeen,
                r.releasedInodes,
                r.movedInodes,
                r.migratedPids,
                r.unaccountedInodes.len(),
                format_bytes(r.unaccountedBytes.max(0) as u64)
            );
        }
        Command::Autoconfig { dry_run, json } => print!("{}", svc.autoconfigure(dry_run, json).map_err(e)?),
        Command::Evict { inode } => svc.evict(inode).map_err(e)?,
        Command::Restore { inode } => svc.restore(inode).map_err(e)?,
        Command::Pin { inode } => svc.pin(inode).map_err(e)?,
        Command::Unpin { inode } => svc.unpin(inode).map_err(e)?,
        Command::Advice { region, bytes } => {
            let advice = svc.evictionAdvice(&region, bytes as i64).map_err(e)?;
            println!("{}", advice.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
        }
        Command::Bench { iterations, heap, transfer_to } => bench(&client, iterations, &heap, transfer_to)?,
        Command::Top { once, iterations, delay } => {
            let delay = Duration::try_from_secs_f64(delay).map_err(|err| format!("--delay {delay}: {err}"))?;
            top(&client, if once { Some(1) } else { iterations }, delay)?
        }
        Command::Version => {
            println!("version {} hash {}", svc.getInterfaceVersion().map_err(e)?, svc.getInterfaceHash().map_err(e)?);
        }
    }
    Ok(())
}

/// The name a person knows a process by: an app's package (its argv[0], set by zygote), else
/// the kernel's comm.
fn process_name(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().map(|a| String::from_utf8_lossy(a).into_owned());
    match argv0.filter(|a| !a.is_empty()) {
        Some(a) => Some(a),
        None => std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim().to_string()),
    }
}

/// `chargectl top`: refreshes the per-app table every `delay`, `iterations` times or until killed.
/// On a terminal each table replaces the last; otherwise tables follow each other.
fn top(client: &Client, iterations: Option<u32>, delay: Duration) -> Result<(), String> {
    use std::io::IsTerminal;
    let clear = iterations.is_none() && std::io::stdout().is_terminal();
    let mut table = chargetransfer::memtrack::top::Top::default();
    let mut shown = 0;
    loop {
        let charges: Vec<chargetransfer::memtrack::top::Charge> = client
            .service()
            .listCharges(0)
            .map_err(|err| ClientError::from(err).to_string())?
            .into_iter()
            .map(|c| chargetransfer::memtrack::top::Charge {
                pid: c.ownerPid.max(0) as u32,
                uid: c.ownerUid.max(0) as u32,
                cgroup: c.ownerCgroup,
                pools: c.pools,
                bytes: c.size.max(0) as u64,
            })
            .collect();
        let text = table.refresh(&charges, process_name);
        if clear {
            print!("\x1b[H\x1b[2J{text}");
        } else {
            print!("{}{text}", if shown > 0 { "\n" } else { "" });
        }
        shown += 1;
        if iterations.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(delay);
    }
}

/// Median of per-call times.
fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn bench(client: &Client, iterations: u32, heap: &str, transfer_to: Option<i32>) -> Result<(), String> {
    let svc = client.service();
    let buffer = chargetransfer::kernel::alloc_from_heap(&heap_path(heap), 4096).map_err(|e| e.to_string())?;
    let me = std::process::id() as i32;
    let to = transfer_to.unwrap_or_else(|| rustix::process::getppid().map_or(1, |p| p.as_raw_nonzero().get()));
    let n = iterations.max(10);
    let (mut null, mut charge, mut usage, mut release) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut transfer = Vec::new();
    // Why transfer was not timed: the first refusal (an untrusted caller, a dead target).
    let mut transfer_refused = None;
    for _ in 0..n {
        let t = Instant::now();
        svc.ping().map_err(|e| ClientError::from(e).to_string())?;
        null.push(t.elapsed());
        let t = Instant::now();
        let info = client.charge(&buffer).map_err(|e| e.to_string())?;
        charge.push(t.elapsed());
        let t = Instant::now();
        svc.getProcessUsage(me).map_err(|e| ClientError::from(e).to_string())?;
        usage.push(t.elapsed());
        if transfer_refused.is_none() {
            let t = Instant::now();
            match client.transfer(&buffer, to) {
                Ok(_) => transfer.push(t.elapsed()),
                Err(e) => transfer_refused = Some(e.to_string()),
            }
        }
        let t = Instant::now();
        client.release(info.inode).map_err(|e| e.to_string())?;
        release.push(t.elapsed());
    }
    let (null, charge, usage, release) = (p50(null), p50(charge), p50(usage), p50(release));
    let ratio = |d: Duration| d.as_secs_f64() / null.as_secs_f64();
    println!(
        "bench: {n} iterations, p50: null {null:?}, charge {charge:?} ({:.2}x null), release {release:?} ({:.2}x null), charge+release {:?} ({:.2}x two null calls)",
        ratio(charge),
        ratio(release),
        charge + release,
        ratio(charge + release) / 2.0
    );
    let transfer = match transfer_refused {
        Some(why) => format!("transfer not measured ({why})"),
        None => {
            let d = p50(transfer);
            format!("transfer {d:?} ({:.2}x null, to pid {to})", ratio(d))
        }
    };
    println!("bench: p50: getProcessUsage {usage:?} ({:.2}x null), {transfer}", ratio(usage));
    Ok(())
}

fn main() {
    chargetransfer::logging::init("chargectl");
    if let Err(e) = run(Cli::parse()) {
        eprintln!("chargectl: {e}");
        std::process::exit(1);
    }
}
