//! Socket options the standard library does not expose, for fault-injection tests: an abortive
//! close (RST) and a small receive buffer.

// setsockopt has no safe std equivalent; each block is one FFI call with a valid descriptor and
// a pointer to a value of the stated length.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Sets SO_LINGER {on, 0}: closing the socket then sends a TCP RST instead of a FIN and discards
/// anything unsent (a process that crashed, or a peer that vanished off the network, as the
/// broker sees it). Takes any socket (`std` or `mio`).
///
/// # Panics
/// When `setsockopt` fails.
pub fn reset_on_close(stream: &impl AsFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a pointer to a linger of the given length.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

/// Limits the socket's receive buffer (and so what the kernel absorbs of the broker's answers),
/// so the broker's own queue is reached early.
pub fn small_receive_buffer(stream: &impl AsFd) {
    let size: libc::c_int = 64 * 1024;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
}
