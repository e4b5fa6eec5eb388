//! The client side an allocator links: one call each to charge, transfer, offer, accept and
//! release a buffer, each blocking until the service answers. Used by `chargectl` and the VTS
//! suite; an allocator links [`crate::allocator`] on top of it (per-call deadline, background
//! reconnection, deferred charges), so that it never waits on an unavailable service.
//!
//! Connects over the kernel binder driver (service manager lookup of [`INSTANCE`]) or, on a host
//! without binder, over the binder RPC transport on a unix socket with fd passing.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use crate::binder::aidl::vendor::chargetransfer::{
    ChargeInfo::ChargeInfo, ErrorCode::ErrorCode, IChargeTransfer::IChargeTransfer,
};
use crate::binder::{self, ParcelFileDescriptor, RpcSession, Status, Strong};
use crate::service::INSTANCE;

/// Highest android-13+ RPC wire version offered; the server is set up with the same.
pub const RPC_WIRE_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The service refused: a typed code and its message.
    #[error("{}: {message}", crate::error::code_name(*code))]
    Refused { code: ErrorCode, message: String },
    #[error("binder error: {0}")]
    Binder(String),
    #[error("cannot reach {INSTANCE}: {0}")]
    Connect(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, ClientError>;

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> ClientError {
        let code = s.service_specific_error();
        if code != 0 {
            ClientError::Refused { code: ErrorCode(code), message: binder::status_message(&s) }
        } else {
            ClientError::Binder(format!("{s:?}"))
        }
    }
}

/// A connection to the service. Keeps the RPC session (if any) alive.
pub struct Client {
    service: Strong<dyn IChargeTransfer>,
    _session: Option<RpcSession>,
}

/// Duplicates a borrowed fd for sending: the parcel owns and closes its copy.
fn parcel_fd(fd: BorrowedFd<'_>) -> Result<ParcelFileDescriptor> {
    Ok(ParcelFileDescriptor::new(fd.try_clone_to_owned()?))
}

impl Client {
    /// Over the kernel binder driver. `device` defaults to the service manager's usual device;
    /// waits up to `wait` for the service to register.
    pub fn connect_binder(device: Option<&str>, wait: Duration) -> Result<Client> {
        Client::connect_instance(device, INSTANCE, wait)
    }

    /// [`Client::connect_binder`] to the registered service `instance` (a full service name).
    pub fn connect_instance(device: Option<&str>, instance: &str, wait: Duration) -> Result<Client> {
        binder::open_driver(device, 0).map_err(ClientError::Connect)?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match binder::check_interface::<dyn IChargeTransfer>(instance) {
                Ok(service) => return Ok(Client { service, _session: None }),
                Err(e) if std::time::Instant::now() >= deadline => return Err(ClientError::Connect(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Over the binder RPC transport on a unix socket (host tier, no kernel binder).
    pub fn connect_rpc(socket: &Path) -> Result<Client> {
        let (service, session) = binder::connect_rpc(socket, RPC_WIRE_VERSION).map_err(ClientError::Connect)?;
        Ok(Client { service, _session: Some(session) })
    }

    /// The raw interface, for calls without a helper here.
    pub fn service(&self) -> &Strong<dyn IChargeTransfer> {
        &self.service
    }

    /// Charge `buffer` to the caller.
    pub fn charge(&self, buffer: impl AsFd) -> Result<ChargeInfo> {
        Ok(self.service.charge(&parcel_fd(buffer.as_fd())?)?)
    }

    /// Charge `buffer` to `pid` (trusted allocators only).
    pub fn charge_for(&self, buffer: impl AsFd, pid: i32) -> Result<ChargeInfo> {
        Ok(self.service.chargeOnBehalf(&parcel_fd(buffer.as_fd())?, pid)?)
    }

    /// Trusted push of the charge to `pid`.
    pub fn transfer(&self, buffer: impl AsFd, pid: i32) -> Result<ChargeInfo> {
        Ok(self.service.transfer(&parcel_fd(buffer.as_fd())?, pid)?)
    }

    pub fn offer(&self, buffer: impl AsFd, pid: i32, ttl: Duration) -> Result<i64> {
        let ttl = i32::try_from(ttl.as_millis()).unwrap_or(i32::MAX);
        Ok(self.service.offer(&parcel_fd(buffer.as_fd())?, pid, ttl)?)
    }

    pub fn accept(&self, ticket: i64, buffer: impl AsFd) -> Result<ChargeInfo> {
        Ok(self.service.accept(ticket, &parcel_fd(buffer.as_fd())?)?)
    }

    pub fn release(&self, inode: i64) -> Result<()> {
        Ok(self.service.release(inode)?)
    }
}
