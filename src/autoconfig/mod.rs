//! Works out, on every boot, what the device has and what the kernel enforces.
