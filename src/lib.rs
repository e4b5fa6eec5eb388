//! chargetransfer: charges dma-buf allocations to the requesting app's memcg and dmem cgroups,
//! enforces limits the kernel cannot, and moves charges when buffers cross binder.
//!
//! Layout: a pure [`ledger`] at the centre; OS adapters in [`kernel`]; the AIDL boundary in
//! `service`.

pub mod ledger;
