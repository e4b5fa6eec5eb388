//! Allocating from a dma-buf heap (/dev/dma_heap/<name>) with the kernel's
//! DMA_HEAP_IOCTL_ALLOC: what the CLI, the VTS children and the benchmark use to make real
//! dma-bufs. This host has no heap, so its tests cover the ABI and the refusals; real
//! allocations run in the QEMU lanes.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Updater};

use super::error::KernelError;
use super::parse::Result;

/// `struct dma_heap_allocation_data` from include/uapi/linux/dma-heap.h.
#[repr(C)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}

/// `_IOWR('H', 0x0, struct dma_heap_allocation_data)`.
const DMA_HEAP_IOCTL_ALLOC: Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0);

/// Allocates `len` bytes from a dma-buf heap (`/dev/dma_heap/system`); the fd is O_RDWR|O_CLOEXEC.
pub fn alloc_from_heap(heap_dev: &Path, len: u64) -> Result<OwnedFd> {
    let heap = rustix::fs::open(heap_dev, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| KernelError::io(heap_dev, e))?;
    let mut data =
        DmaHeapAllocationData { len, fd: 0, fd_flags: (OFlags::RDWR | OFlags::CLOEXEC).bits(), heap_flags: 0 };
    // SAFETY: the opcode and the struct layout are the kernel's DMA_HEAP_IOCTL_ALLOC ABI.
    let done = unsafe { rustix::ioctl::ioctl(&heap, Updater::<DMA_HEAP_IOCTL_ALLOC, _>::new(&mut data)) };
    match done {
        // SAFETY: on success the kernel installed a new fd that nobody else owns.
        Ok(()) => Ok(unsafe { OwnedFd::from_raw_fd(data.fd as i32) }),
        Err(errno @ (Errno::AGAIN | Errno::NOMEM)) => {
            Err(KernelError::HeapAllocFailed { heap: heap_dev.to_path_buf(), len, errno })
        }
        Err(e) => Err(KernelError::io(heap_dev, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alloc_ioctl_number_matches_the_kernel_header() {
        assert_eq!(DMA_HEAP_IOCTL_ALLOC as u64, 0xc018_4800);
        assert_eq!(std::mem::size_of::<DmaHeapAllocationData>(), 24);
    }

    #[test]
    fn allocating_from_something_that_is_not_a_heap_names_the_device() {
        let missing = Path::new("/dev/dma_heap/no-such-heap");
        assert!(matches!(alloc_from_heap(missing, 4096), Err(KernelError::Io { path, .. }) if path == missing));
        let null = Path::new("/dev/null");
        match alloc_from_heap(null, 4096) {
            Err(KernelError::Io { path, source }) => {
                assert_eq!(path, null);
                assert_eq!(source.raw_os_error(), Some(Errno::NOTTY.raw_os_error()));
            }
            other => panic!("expected ENOTTY from /dev/null, got {other:?}"),
        }
    }
}
