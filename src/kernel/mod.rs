//! Adapters to the kernel's files: cgroup v2, procfs dma-buf scans, dma-buf fds.
//!
//! Each adapter is rooted at a configurable path (`/sys/fs/cgroup`, `/proc`) so tests point it
//! at a temporary tree laid out the same way. Parsers never panic; a malformed file is a
//! [`KernelError::Parse`] naming the file and the 1-based line. Processes exiting mid-read are
//! normal: they show up as [`KernelError::NoSuchProcess`] or in [`DmaBufScan::vanished`].

pub mod bpf;
pub mod cgroupfs;
pub mod dmabuf;
pub mod error;
mod parse;
pub mod procfs;

pub use bpf::BpfScanner;
pub use cgroupfs::{CgroupFs, DmemFile, MemoryState};
pub use dmabuf::{alloc_from_heap, inspect, DmaBufInfo};
pub use error::KernelError;
pub use procfs::{DmaBufRef, DmaBufScan, Holder, ProcFs, ScannedBuffer};
