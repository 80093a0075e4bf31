//! One netlink dump: send a request with `NLM_F_DUMP`, hand each answer to the caller as it
//! is parsed, stop at `NLMSG_DONE`. Shared by the route and the socket readers so that
//! neither walks netlink headers by hand.

use std::io;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

/// Longest wait for one datagram of a dump: the kernel answers at once, so a wait this long
/// means something is wrong and the caller keeps its previous view.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// Receive buffer: larger than any datagram the kernel builds for a dump (it caps them at
/// 32 KiB), so no answer is truncated.
const RECV_BUFFER: usize = 64 * 1024;

/// Sends `request` as a dump on a new socket of `protocol` (in the calling thread's network
/// namespace) and calls `each` with every answer until the kernel says it is done. A netlink
/// error, a malformed answer or a timeout is an error; what `each` saw until then stays seen,
/// so callers build their result aside and use it only on `Ok`.
pub fn dump<T>(protocol: isize, request: T, each: impl FnMut(T)) -> io::Result<()>
where
    T: NetlinkSerializable + NetlinkDeserializable,
{
    dump_with(protocol, request, false, each)
}

/// [`dump`], with the kernel's strict checking of the request asked for when `strict`
/// (`NETLINK_GET_STRICT_CHK`, Linux 4.20): then a route dump honours the filters its
/// header names (route type, table, protocol) and sends only what matches. Refused by an
/// older kernel: `Err` with `ErrorKind::Unsupported`, so the caller can dump unfiltered.
pub fn dump_with<T>(
    protocol: isize,
    request: T,
    strict: bool,
    mut each: impl FnMut(T),
) -> io::Result<()>
where
    T: NetlinkSerializable + NetlinkDeserializable,
{
    let mut socket = Socket::new(protocol)?;
    if strict && socket.set_netlink_get_strict_chk(true).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "netlink: no strict checking of dump requests",
        ));
    }
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket2::SockRef::from(&socket).set_read_timeout(Some(RECV_TIMEOUT))?;
    socket.send(&dump_request(request), 0)?;

    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let datagram = buf.get(..n).unwrap_or_default();
        if datagram.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "netlink: empty datagram in a dump",
            ));
        }
        if for_each_message(datagram, &mut each)? {
            return Ok(());
        }
    }
}

/// The bytes of `request` as a dump request: `nlmsghdr` (its type from the request,
/// `NLM_F_REQUEST | NLM_F_DUMP`, sequence number 1) and the request's own bytes.
pub fn dump_request<T: NetlinkSerializable>(request: T) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    message.finalize();
    let mut out = vec![0u8; message.buffer_len()];
    message.serialize(&mut out);
    out
}

/// Walks the netlink messages of one datagram (a dump's answer, or notifications), calling
/// `each` with every inner message; true once the kernel said a dump is done. A netlink
/// error or a malformed message is an error.
pub fn for_each_message<T>(mut datagram: &[u8], mut each: impl FnMut(T)) -> io::Result<bool>
where
    T: NetlinkDeserializable,
{
    while !datagram.is_empty() {
        let answer = NetlinkMessage::<T>::deserialize(datagram)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}")))?;
        let len = answer.header.length as usize;
        match answer.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
            NetlinkPayload::InnerMessage(inner) => each(inner),
            _ => {}
        }
        // Messages are 4-byte aligned; a zero length would loop for ever.
        if len == 0 {
            break;
        }
        datagram = datagram.get((len + 3) & !3..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {
    /// One netlink message as the kernel sends it in a dump (`NLM_F_MULTI`): header, `body`,
    /// padding to 4 bytes. For tests of parsers on hand-made datagrams.
    pub(crate) fn message(seq: u32, kind: u16, body: &[u8]) -> Vec<u8> {
        let len = (16 + body.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }
}
