//! Adapters to the kernel's files: cgroup v2, procfs dma-buf scans, dma-buf fds.
