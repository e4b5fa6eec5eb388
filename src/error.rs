//! The service's domain errors. Each maps to exactly one AIDL `ErrorCode`, so a client always
//! gets a typed refusal with a message that names the buffer, process or limit involved.

use thiserror::Error;

use crate::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;
use crate::kernel::error::KernelError;
use crate::ledger::{Inode, LedgerError};

#[derive(Debug, Error)]
pub enum Error {
    #[error("not a dma-buf: {0}")]
    NotDmaBuf(String),
    #[error("heap {0:?} is not in the policy")]
    UnknownHeap(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The message names the caller only: who owns the charge is not the caller's business.
    #[error("pid {caller} does not own the charge of buffer {inode}")]
    NotOwner { caller: u32, inode: Inode },
    /// An owner asked to release a buffer it still holds (an fd or a mapping).
    #[error("pid {pid} still holds buffer {inode}: close and unmap it before releasing its charge")]
    StillHeld { pid: u32, inode: Inode },
    #[error("uid {uid} (pid {pid}) is not a trusted allocator: {what}")]
    NotTrusted { uid: u32, pid: u32, what: &'static str },
    #[error("no such process: pid {0}")]
    NoSuchProcess(u32),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("bad ticket {ticket}: {reason}")]
    BadTicket { ticket: u64, reason: &'static str },
    #[error("buffer {0} is already charged to another process")]
    ChargedElsewhere(Inode),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Error {
        match e {
            KernelError::NotDmaBuf { .. } => Error::NotDmaBuf(e.to_string()),
            KernelError::NoSuchProcess(pid) => Error::NoSuchProcess(pid),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// The AIDL name of an error code (the generated enum only derives `Debug`).
pub fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NOT_DMA_BUF => "NOT_DMA_BUF",
        ErrorCode::UNKNOWN_HEAP => "UNKNOWN_HEAP",
        ErrorCode::OVER_LIMIT => "OVER_LIMIT",
        ErrorCode::NOT_OWNER => "NOT_OWNER",
        ErrorCode::NOT_TRUSTED => "NOT_TRUSTED",
        ErrorCode::NO_SUCH_PROCESS => "NO_SUCH_PROCESS",
        ErrorCode::NOT_CHARGED => "NOT_CHARGED",
        ErrorCode::ALREADY_CHARGED => "ALREADY_CHARGED",
        ErrorCode::INVALID_ARGUMENT => "INVALID_ARGUMENT",
        ErrorCode::BAD_TICKET => "BAD_TICKET",
        ErrorCode::OVER_PIN_LIMIT => "OVER_PIN_LIMIT",
        ErrorCode::INVALID_STATE => "INVALID_STATE",
        ErrorCode::NOT_HOLDER => "NOT_HOLDER",
        ErrorCode::INTERNAL => "INTERNAL",
        _ => "UNKNOWN_ERROR",
    }
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NotDmaBuf(_) => ErrorCode::NOT_DMA_BUF,
            Error::UnknownHeap(_) => ErrorCode::UNKNOWN_HEAP,
            Error::Ledger(e) => match e {
                LedgerError::OverLimit { .. } => ErrorCode::OVER_LIMIT,
                LedgerError::OverPinLimit { .. } => ErrorCode::OVER_PIN_LIMIT,
                LedgerError::UnknownBuffer(_) => ErrorCode::NOT_CHARGED,
                LedgerError::AlreadyCharged { .. } => ErrorCode::ALREADY_CHARGED,
                LedgerError::UnknownHeap(_) => ErrorCode::UNKNOWN_HEAP,
                LedgerError::InvalidState { .. } => ErrorCode::INVALID_STATE,
                LedgerError::UnknownPool(_)
                | LedgerError::HeapNeedsRegion { .. }
                | LedgerError::HeapRedefined(_)
                | LedgerError::UnknownCgroup(_)
                | LedgerError::InvalidCgroupPath(_)
                | LedgerError::CgroupHasChildren(_)
                | LedgerError::RootRemoval
                | LedgerError::ZeroSize
                | LedgerError::InvalidLimit { .. }
                | LedgerError::TooMany { .. } => ErrorCode::INVALID_ARGUMENT,
            },
            Error::NotOwner { .. } => ErrorCode::NOT_OWNER,
            Error::NotTrusted { .. } => ErrorCode::NOT_TRUSTED,
            Error::NoSuchProcess(_) => ErrorCode::NO_SUCH_PROCESS,
            Error::InvalidArgument(_) => ErrorCode::INVALID_ARGUMENT,
            Error::BadTicket { .. } => ErrorCode::BAD_TICKET,
            // "The operation does not fit the buffer's state": it is still held by the caller.
            Error::StillHeld { .. } => ErrorCode::INVALID_STATE,
            Error::ChargedElsewhere(_) => ErrorCode::ALREADY_CHARGED,
            Error::Internal(_) => ErrorCode::INTERNAL,
        }
    }

    /// The same refusal without the other process or cgroup it names, for a caller that may not
    /// see other apps.
    pub fn without_others(self) -> Error {
        match self {
            Error::Ledger(LedgerError::AlreadyCharged { inode, .. }) => Error::ChargedElsewhere(inode),
            other => other,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
