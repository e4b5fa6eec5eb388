//! chargetransfer: charges dma-buf allocations to the requesting app's memcg and dmem cgroups,
//! enforces limits the kernel cannot, and moves charges when buffers cross binder.
//!
//! Layout: a pure [`ledger`] at the centre; [`policy`] and [`autoconfig`] decide limits and
//! trust; OS adapters in [`kernel`]; the durable [`journal`]; the AIDL boundary in `service`.

pub mod accountant;
pub mod aidl;
pub mod allocator;
pub mod autoconfig;
pub mod catchup;
pub mod client;
pub mod daemon;
pub mod demo;
pub mod dump;
pub mod error;
pub mod journal;
pub mod kernel;
pub mod ledger;
pub mod logging;
pub mod owner;
pub mod policy;
pub mod service;
pub mod transfer;
