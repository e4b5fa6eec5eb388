//! Adapters to the kernel's files: cgroup v2, procfs (process identity and dma-buf scans),
//! dma-buf fds, dma-buf heaps.
//!
//! Each adapter is rooted at a configurable path (`/sys/fs/cgroup`, `/proc`) so tests point it
//! at a temporary tree laid out the same way. Parsers never panic; a malformed file is a
//! [`KernelError::Parse`] naming the file and the 1-based line. Processes exiting mid-read are
//! normal: they show up as [`KernelError::NoSuchProcess`] or in [`DmaBufScan::vanished`].

pub mod bpf;
pub mod cgroupfs;
pub mod counters;
pub mod dmabuf;
pub mod dmaheap;
pub mod error;
pub mod fake_proc;
pub mod handoff_events;
mod parse;
pub mod procfs;
pub mod scanner;
pub mod view;

pub use bpf::BpfScanner;
pub use cgroupfs::{CgroupFs, DmemFile, MemoryState};
pub use dmabuf::{inspect, DmaBufInfo};
pub use dmaheap::alloc_from_heap;
pub use error::KernelError;
pub use procfs::{DmaBufRef, ProcFs};
pub use scanner::{ScanChoice, Scanner};
pub use view::{DmaBufScan, Holder, Holders, ScannedBuffer, ScannedBuffers};
