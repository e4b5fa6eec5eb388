//! The C ABI of [`chargetransfer::allocator`] (`include/chargetransfer.h`): for allocators written
//! in C or C++ that link a static archive instead of Android's NDK AIDL backend. Every function
//! answers with a `ct_result` (status, typed code, reason for a deferral) and never unwinds into C.

use std::ffi::{c_char, c_int, CStr};
use std::os::fd::BorrowedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use chargetransfer::allocator::{AllocatorClient, Answer, Options, Transport, Unavailable};
use chargetransfer::binder::aidl::vendor::chargetransfer::ChargeInfo::ChargeInfo;
use chargetransfer::client::ClientError;

/// `ct_status`.
pub const CT_OK: c_int = 0;
pub const CT_DEFERRED: c_int = 1;
pub const CT_REFUSED: c_int = 2;
pub const CT_ERROR: c_int = 3;

/// `ct_result`, laid out as the header declares it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtResult {
    pub status: c_int,
    pub code: i32,
    pub unavailable: c_int,
    pub inode: i64,
    pub size: i64,
    pub owner_pid: i32,
}

/// `ct_client`: opaque to C.
pub struct CtClient(AllocatorClient);

/// `ct_unavailable`.
fn reason(why: Unavailable) -> c_int {
    match why {
        Unavailable::NotConnected => 1,
        Unavailable::Died => 2,
        Unavailable::DeadlinePassed => 3,
        Unavailable::Busy => 4,
    }
}

fn error() -> CtResult {
    CtResult { status: CT_ERROR, ..CtResult::default() }
}

fn result<T>(r: chargetransfer::client::Result<Answer<T>>, done: impl FnOnce(T) -> CtResult) -> CtResult {
    match r {
        Ok(Answer::Done(v)) => done(v),
        Ok(Answer::Deferred(why)) => CtResult { status: CT_DEFERRED, unavailable: reason(why), ..CtResult::default() },
        Err(ClientError::Refused { code, .. }) => CtResult { status: CT_REFUSED, code: code.0, ..CtResult::default() },
        Err(_) => error(),
    }
}

fn charged(info: ChargeInfo) -> CtResult {
    CtResult { status: CT_OK, inode: info.inode, size: info.size, owner_pid: info.ownerPid, ..CtResult::default() }
}

fn options(deadline_ms: u32, queue_capacity: u32) -> Options {
    let defaults = Options::default();
    Options {
        deadline: if deadline_ms == 0 { defaults.deadline } else { Duration::from_millis(deadline_ms.into()) },
        queue_capacity: if queue_capacity == 0 { defaults.queue_capacity } else { queue_capacity as usize },
    }
}

/// A `&str` from a C string; `None` for NULL or invalid UTF-8.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string valid for the call.
unsafe fn text<'a>(s: *const c_char) -> Option<&'a str> {
    if s.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(s) }.to_str().ok()
}

fn boxed(client: AllocatorClient) -> *mut CtClient {
    Box::into_raw(Box::new(CtClient(client)))
}

/// # Safety
/// `device` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ct_client_new(device: *const c_char, deadline_ms: u32, queue_capacity: u32) -> *mut CtClient {
    // SAFETY: forwarded caller contract.
    let device = unsafe { text(device) }.map(str::to_string);
    catch_unwind(|| boxed(AllocatorClient::start(Transport::Binder(device), options(deadline_ms, queue_capacity))))
        .unwrap_or(std::ptr::null_mut())
}

/// # Safety
/// `socket_path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ct_client_new_rpc(
    socket_path: *const c_char,
    deadline_ms: u32,
    queue_capacity: u32,
) -> *mut CtClient {
    // SAFETY: forwarded caller contract.
    let Some(path) = (unsafe { text(socket_path) }).map(PathBuf::from) else { return std::ptr::null_mut() };
    catch_unwind(|| boxed(AllocatorClient::start(Transport::Rpc(path), options(deadline_ms, queue_capacity))))
        .unwrap_or(std::ptr::null_mut())
}

/// # Safety
/// `client` is NULL or from `ct_client_new*`, not freed before.
#[no_mangle]
pub unsafe extern "C" fn ct_client_free(client: *mut CtClient) {
    if !client.is_null() {
        // SAFETY: allocated by Box::into_raw in ct_client_new*, freed once by contract.
        drop(unsafe { Box::from_raw(client) });
    }
}

/// Runs `f` with the client and the call's deadline; CT_ERROR for NULL, a bad fd or a panic.
///
/// # Safety
/// `client` is NULL or a live client.
unsafe fn with_client(
    client: *const CtClient,
    deadline_ms: u32,
    f: impl FnOnce(&AllocatorClient, Duration) -> CtResult,
) -> CtResult {
    // SAFETY: NULL or live by the caller's contract.
    let Some(client) = (unsafe { client.as_ref() }) else { return error() };
    let deadline = if deadline_ms == 0 { client.0.deadline() } else { Duration::from_millis(deadline_ms.into()) };
    catch_unwind(AssertUnwindSafe(|| f(&client.0, deadline))).unwrap_or_else(|_| error())
}

/// The caller's fd, borrowed for the call; `None` for a negative number.
///
/// # Safety
/// A non-negative `fd` is open for the duration of the call.
unsafe fn borrowed<'a>(fd: c_int) -> Option<BorrowedFd<'a>> {
    // SAFETY: open for the call by the caller's contract.
    (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
}

/// # Safety
/// `client` is NULL or live; `buffer_fd` is open for the call.
#[no_mangle]
pub unsafe extern "C" fn ct_charge_on_behalf(
    client: *const CtClient,
    buffer_fd: c_int,
    owner_pid: i32,
    deadline_ms: u32,
) -> CtResult {
    // SAFETY: forwarded caller contract.
    unsafe {
        with_client(client, deadline_ms, |c, deadline| match borrowed(buffer_fd) {
            Some(fd) => result(c.charge_on_behalf_within(fd, owner_pid, deadline), charged),
            None => error(),
        })
    }
}

/// # Safety
/// `client` is NULL or live; `buffer_fd` is open for the call.
#[no_mangle]
pub unsafe extern "C" fn ct_transfer(
    client: *const CtClient,
    buffer_fd: c_int,
    to_pid: i32,
    deadline_ms: u32,
) -> CtResult {
    // SAFETY: forwarded caller contract.
    unsafe {
        with_client(client, deadline_ms, |c, deadline| match borrowed(buffer_fd) {
            Some(fd) => result(c.transfer_within(fd, to_pid, deadline), charged),
            None => error(),
        })
    }
}

/// # Safety
/// `client` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ct_release(client: *const CtClient, inode: i64, deadline_ms: u32) -> CtResult {
    // SAFETY: forwarded caller contract.
    unsafe {
        with_client(client, deadline_ms, |c, deadline| match u64::try_from(inode) {
            Ok(inode) => result(c.release_within(inode, deadline), |()| CtResult {
                status: CT_OK,
                inode: inode as i64,
                ..CtResult::default()
            }),
            Err(_) => CtResult { status: CT_REFUSED, code: CT_E_INVALID_ARGUMENT, ..CtResult::default() },
        })
    }
}

const CT_E_INVALID_ARGUMENT: i32 = 9;

/// # Safety
/// `client` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ct_pending(client: *const CtClient) -> u32 {
    // SAFETY: NULL or live by the caller's contract.
    unsafe { client.as_ref() }.map_or(0, |c| u32::try_from(c.0.pending()).unwrap_or(u32::MAX))
}

/// # Safety
/// `client` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ct_connected(client: *const CtClient) -> c_int {
    // SAFETY: NULL or live by the caller's contract.
    unsafe { client.as_ref() }.is_some_and(|c| c.0.connected()).into()
}

/// The AIDL name of an error code, NUL-terminated and static.
#[no_mangle]
pub extern "C" fn ct_code_name(code: i32) -> *const c_char {
    let name: &'static CStr = match code {
        1 => c"NOT_DMA_BUF",
        2 => c"UNKNOWN_HEAP",
        3 => c"OVER_LIMIT",
        4 => c"NOT_OWNER",
        5 => c"NOT_TRUSTED",
        6 => c"NO_SUCH_PROCESS",
        7 => c"NOT_CHARGED",
        8 => c"ALREADY_CHARGED",
        9 => c"INVALID_ARGUMENT",
        10 => c"BAD_TICKET",
        11 => c"OVER_PIN_LIMIT",
        12 => c"INVALID_STATE",
        13 => c"NOT_HOLDER",
        14 => c"INTERNAL",
        _ => c"UNKNOWN_ERROR",
    };
    name.as_ptr()
}

#[cfg(test)]
mod tests {
    use chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;
    use chargetransfer::error::code_name;

    use super::*;

    /// The header's `#define CT_E_<NAME> <n>` lines.
    fn header_codes() -> Vec<(String, i32)> {
        let header = include_str!("../include/chargetransfer.h");
        header
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("#define CT_E_")?;
                let (name, value) = rest.split_once(' ')?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn the_header_codes_are_the_aidl_error_codes() {
        let codes = header_codes();
        assert_eq!(codes.len(), 14);
        for (name, value) in codes {
            assert_eq!(code_name(ErrorCode(value)), name, "CT_E_{name} = {value}");
            // SAFETY: ct_code_name returns a static NUL-terminated string.
            assert_eq!(unsafe { CStr::from_ptr(ct_code_name(value)) }.to_str().unwrap(), name);
        }
        assert_eq!(CT_E_INVALID_ARGUMENT, ErrorCode::INVALID_ARGUMENT.0);
    }

    #[test]
    fn a_null_client_or_a_closed_fd_is_an_error_not_a_crash() {
        // SAFETY: NULL is allowed; fd -1 is never open.
        unsafe {
            assert_eq!(ct_charge_on_behalf(std::ptr::null(), 3, 1, 0).status, CT_ERROR);
            assert_eq!(ct_pending(std::ptr::null()), 0);
            let dir = tempfile::tempdir().unwrap();
            let path = std::ffi::CString::new(dir.path().join("none.sock").to_str().unwrap()).unwrap();
            let client = ct_client_new_rpc(path.as_ptr(), 0, 0);
            assert!(!client.is_null());
            assert_eq!(ct_charge_on_behalf(client, -1, 1, 0).status, CT_ERROR);
            assert_eq!(ct_release(client, -1, 0), CtResult { status: CT_REFUSED, code: 9, ..CtResult::default() });
            ct_client_free(client);
        }
    }
}
