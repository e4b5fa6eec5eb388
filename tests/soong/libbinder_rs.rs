//! Stand-in for AOSP's libbinder_rs (Soong module `libbinder_rs`, crate `binder`), as of
//! android16-release (frameworks/native/libs/binder/rust/src). It holds only the items
//! src/binder.rs uses under `--cfg soong`, with their AOSP signatures; the bodies are never run:
//! tests/android_files.rs type-checks the seam against this crate (`rustc --emit=metadata`).
//! Keep every signature as AOSP spells it; add an item here only when the seam starts using it.

use std::ffi::CStr;

/// `frameworks/native/libs/binder/rust/src/lib.rs`: binder methods return a [`Status`] on error.
pub type Result<T> = std::result::Result<T, Status>;

/// `error.rs`: transport-level errors (`status_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCode(pub i32);

/// `error.rs`: the AIDL exception codes.
#[allow(non_camel_case_types)]
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionCode {
    NONE = 0,
    SECURITY = -1,
    BAD_PARCELABLE = -2,
    ILLEGAL_ARGUMENT = -3,
    NULL_POINTER = -4,
    ILLEGAL_STATE = -5,
    NETWORK_MAIN_THREAD = -6,
    UNSUPPORTED_OPERATION = -7,
    SERVICE_SPECIFIC = -8,
    PARCELABLE = -9,
    TRANSACTION_FAILED = -129,
    JUST_PLAIN_BROKEN = -130,
}

/// `error.rs`: an AIDL `Status` (exception code, service-specific error, message).
#[derive(Debug)]
pub struct Status(());

impl Status {
    pub fn new_exception_str<T: AsRef<str>>(_exception: ExceptionCode, _message: Option<T>) -> Status {
        unimplemented!("stand-in")
    }
    pub fn exception_code(&self) -> ExceptionCode {
        unimplemented!("stand-in")
    }
    pub fn new_service_specific_error_str<T: AsRef<str>>(_err: i32, _message: Option<T>) -> Status {
        unimplemented!("stand-in")
    }
    pub fn service_specific_error(&self) -> i32 {
        unimplemented!("stand-in")
    }
    pub fn get_description(&self) -> String {
        unimplemented!("stand-in")
    }
}

/// `proxy.rs`: a strong reference to a binder object.
#[derive(Debug, Clone)]
pub struct SpIBinder(());

/// `proxy.rs`: a death notification callback.
pub struct DeathRecipient(());

impl DeathRecipient {
    pub fn new<F>(_callback: F) -> DeathRecipient
    where
        F: Fn() + Send + Sync + 'static,
    {
        unimplemented!("stand-in")
    }
}

/// `binder.rs`: operations on any binder object.
pub trait IBinder {
    fn link_to_death(&mut self, recipient: &mut DeathRecipient) -> std::result::Result<(), StatusCode>;
}

impl IBinder for SpIBinder {
    fn link_to_death(&mut self, _recipient: &mut DeathRecipient) -> std::result::Result<(), StatusCode> {
        unimplemented!("stand-in")
    }
}

/// `binder.rs`: a binder interface (the generated traits extend it).
pub trait Interface: Send + Sync {
    fn as_binder(&self) -> SpIBinder {
        unimplemented!("stand-in")
    }
}

/// `binder.rs`: conversion of a binder object to a typed interface.
pub trait FromIBinder: Interface {
    fn try_from(ibinder: SpIBinder) -> std::result::Result<Strong<Self>, StatusCode>;
}

/// `binder.rs`: a strong reference to a typed interface.
pub struct Strong<I: FromIBinder + ?Sized>(Box<I>);

impl<I: FromIBinder + ?Sized> std::ops::Deref for Strong<I> {
    type Target = I;
    fn deref(&self) -> &I {
        &self.0
    }
}

/// `binder.rs`: what a local binder asks of the driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct BinderFeatures {
    pub set_requesting_sid: bool,
}

/// `parcel/file_descriptor.rs`.
#[derive(Debug)]
pub struct ParcelFileDescriptor(());

/// `state.rs`.
pub struct ProcessState;

impl ProcessState {
    pub fn start_thread_pool() {
        unimplemented!("stand-in")
    }
    pub fn set_thread_pool_max_thread_count(_num_threads: u32) {
        unimplemented!("stand-in")
    }
    pub fn join_thread_pool() {
        unimplemented!("stand-in")
    }
}

/// `state.rs`.
pub struct ThreadState;

impl ThreadState {
    pub fn get_calling_uid() -> u32 {
        unimplemented!("stand-in")
    }
    pub fn get_calling_pid() -> i32 {
        unimplemented!("stand-in")
    }
    pub fn with_calling_sid<T, F>(_check_permission: F) -> T
    where
        for<'a> F: FnOnce(Option<&'a CStr>) -> T,
    {
        unimplemented!("stand-in")
    }
}

/// `service.rs`.
pub fn add_service(_identifier: &str, _binder: SpIBinder) -> std::result::Result<(), StatusCode> {
    unimplemented!("stand-in")
}

/// `service.rs`.
pub fn check_interface<T: FromIBinder + ?Sized>(_name: &str) -> std::result::Result<Strong<T>, StatusCode> {
    unimplemented!("stand-in")
}

/// `service.rs`.
pub fn get_declared_instances(_interface: &str) -> std::result::Result<Vec<String>, StatusCode> {
    unimplemented!("stand-in")
}
