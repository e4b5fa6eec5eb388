//! Who holds which dma-buf, from the backend chosen once at start: the BPF iterators where they
//! open (a full view whatever the processes' uids and SELinux domains), else the procfs scan
//! (full only where the service may read every process's fdinfo and maps; an incomplete scan
//! lists what it could not read in [`DmaBufScan::errors`], and nothing is released on its word).

use std::fmt;
use std::path::PathBuf;

use super::bpf::BpfScanner;
use super::error::KernelError;
use super::procfs::ProcFs;
use super::view::DmaBufScan;

/// What the service is asked to use (`chargetransferd --scan`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanChoice {
    /// BPF when it opens (pinned programs in `pin_dir`, else loaded by the service), procfs
    /// otherwise.
    Auto {
        pin_dir: PathBuf,
    },
    /// BPF, or the service does not start.
    Bpf {
        pin_dir: PathBuf,
    },
    Procfs,
}

#[derive(Debug)]
pub enum Scanner {
    Bpf(BpfScanner),
    /// `why_not_bpf` says why the BPF backend is not used: not asked for, or why it did not open.
    Procfs {
        procfs: ProcFs,
        why_not_bpf: String,
    },
}

impl Scanner {
    /// Opens the backend `choice` names; only [`ScanChoice::Bpf`] can fail.
    pub fn choose(choice: &ScanChoice, procfs: ProcFs) -> Result<Scanner, KernelError> {
        match choice {
            ScanChoice::Procfs => Ok(Scanner::Procfs { procfs, why_not_bpf: "procfs was asked for".into() }),
            ScanChoice::Bpf { pin_dir } => BpfScanner::open(pin_dir).map(Scanner::Bpf),
            ScanChoice::Auto { pin_dir } => Ok(BpfScanner::open(pin_dir)
                .map_or_else(|e| Scanner::Procfs { procfs, why_not_bpf: e.into_reason() }, Scanner::Bpf)),
        }
    }

    /// `bpf` or `procfs`.
    pub fn name(&self) -> &'static str {
        match self {
            Scanner::Bpf(_) => "bpf",
            Scanner::Procfs { .. } => "procfs",
        }
    }

    /// Every process's dma-bufs, merged by inode.
    pub fn scan_all(&self) -> Result<DmaBufScan, KernelError> {
        match self {
            Scanner::Bpf(bpf) => bpf.scan_all(),
            Scanner::Procfs { procfs, .. } => procfs.scan_all(),
        }
    }
}

/// One line for logs and reports: the backend and where it comes from, or why not BPF.
impl fmt::Display for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scanner::Bpf(bpf) => write!(f, "bpf ({}; a full view)", bpf.origin()),
            Scanner::Procfs { why_not_bpf, .. } => {
                write!(f, "procfs (full only where every process is readable; not bpf: {why_not_bpf})")
            }
        }
    }
}
