//! The transport without the `tls` feature: [`SharedTls`] has no values, so no connection is
//! TLS, and each function here takes one and so can never be called; its body says so to the
//! compiler (`match *tls {}`) instead of a panic.

use std::io;
use std::net::TcpStream;

use bytes::BytesMut;
use switchyard_proto::Frame;

use super::Received;

/// A TLS session, of which a build without the `tls` feature has none.
#[derive(Clone, Debug)]
pub(crate) enum SharedTls {}

pub(crate) fn read_some(
    _stream: &mut TcpStream,
    tls: &SharedTls,
    _chunk: &mut [u8],
    _buf: &mut BytesMut,
) -> io::Result<Received> {
    match *tls {}
}

pub(crate) fn write_frame(
    _stream: &mut TcpStream,
    tls: &SharedTls,
    _records: &mut Vec<u8>,
    _frame: &Frame,
) -> io::Result<()> {
    match *tls {}
}

pub(crate) fn write_pending_records(
    _stream: &mut TcpStream,
    tls: &SharedTls,
    _records: &mut Vec<u8>,
) -> io::Result<()> {
    match *tls {}
}

pub(crate) fn wants_write(tls: &SharedTls) -> bool {
    match *tls {}
}
