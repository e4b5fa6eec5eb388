//! The generated binder stubs for `vendor.chargetransfer`.
#![allow(clippy::all, missing_docs, non_snake_case, non_camel_case_types, unused)]
rsbinder::include_aidl!("chargetransfer_aidl");
