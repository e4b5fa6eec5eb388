//! chargetransfer: charges dma-buf allocations to the requesting app's memcg and dmem cgroups,
//! enforces limits the kernel cannot, and moves charges when buffers cross binder.
//!
//! Layout: a pure [`ledger`] at the centre; [`policy`] and [`autoconfig`] decide limits and
//! trust; OS adapters in [`kernel`]; the durable [`journal`]; the AIDL boundary in `service`;
//! the one binder seam in [`binder`].

pub mod accountant;
pub mod allocator;
pub mod autoconfig;
pub mod binder;
pub mod catchup;
pub mod client;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dump;
pub mod error;
pub mod handoff_watch;
pub mod identity;
pub mod journal;
pub mod kernel;
pub mod ledger;
pub mod logging;
pub mod memtrack;
pub mod offers;
pub mod permission;
pub mod policy;
pub mod service;
