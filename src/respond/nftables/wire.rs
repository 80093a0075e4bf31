//! The few nf_tables netlink messages this module speaks, encoded and decoded by hand.
//!
//! nf_tables is driven over `NETLINK_NETFILTER`: every change travels inside a batch
//! (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`) that the kernel applies as one
//! transaction, all or nothing; reads are single requests or dumps. Attributes are TLVs
//! aligned to 4 bytes; numbers inside them are big-endian. The constants below are the
//! kernel's (`linux/netfilter/nf_tables.h`, `nfnetlink.h`), checked against the headers.

use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, sockopt};
use nix::sys::time::TimeVal;

use super::NftError;

// Netlink.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

// nfnetlink.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFGENMSG_LEN: usize = 4;
/// `NFPROTO_INET`: the table family, both IPv4 and IPv6.
pub(super) const NFPROTO_INET: u8 = 1;
pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFPROTO_IPV6: u8 = 10;

/// `enum nf_tables_msg_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Cmd {
    NewTable = 0,
    GetTable = 1,
    NewChain = 3,
    GetChain = 4,
    DelChain = 5,
    NewRule = 6,
    GetRule = 7,
    DelRule = 8,
    NewSet = 9,
    GetSet = 10,
    NewSetElem = 12,
    GetSetElem = 13,
    DelSetElem = 14,
    GetGen = 16,
}

// Attribute numbers, per object (`enum nft_*_attributes`).
pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
pub(super) const NFTA_CHAIN_TYPE: u16 = 7;
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
pub(super) const NFTA_META_DREG: u16 = 1;
pub(super) const NFTA_META_KEY: u16 = 2;
pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
pub(super) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(super) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(super) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(super) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(super) const NFTA_LOOKUP_SET: u16 = 1;
pub(super) const NFTA_LOOKUP_SREG: u16 = 2;
pub(super) const NFTA_LOOKUP_SET_ID: u16 = 4;
pub(super) const NFTA_LOOKUP_FLAGS: u16 = 5;
pub(super) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_SET_TABLE: u16 = 1;
pub(super) const NFTA_SET_NAME: u16 = 2;
pub(super) const NFTA_SET_FLAGS: u16 = 3;
pub(super) const NFTA_SET_KEY_TYPE: u16 = 4;
pub(super) const NFTA_SET_KEY_LEN: u16 = 5;
pub(super) const NFTA_SET_DESC: u16 = 9;
pub(super) const NFTA_SET_ID: u16 = 10;
pub(super) const NFTA_SET_DESC_SIZE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(super) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
pub(super) const NFTA_SET_ELEM_EXPIRATION: u16 = 5;

// Values.
pub(super) const NFT_SET_INTERVAL: u32 = 0x4;
pub(super) const NFT_SET_TIMEOUT: u32 = 0x10;
/// `NFT_SET_ELEM_INTERVAL_END`: the element closes an interval (its key is the first
/// address after it).
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
pub(super) const NFT_META_NFPROTO: u32 = 15;
pub(super) const NFT_REG_VERDICT: u32 = 0;
pub(super) const NFT_REG_1: u32 = 1;
pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_LOOKUP_F_INV: u32 = 1;
pub(super) const NF_DROP: u32 = 0;
pub(super) const NF_ACCEPT: u32 = 1;
pub(super) const NF_INET_LOCAL_IN: u32 = 1;
pub(super) const NF_INET_FORWARD: u32 = 2;

/// How long a read waits for the kernel before it gives up (the kernel answers at once; this
/// only bounds a stuck socket).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer asked for: room for many error reports of one batch (each costs the socket
/// about 1 KiB); beyond it the kernel drops them and the caller falls back to reading the set.
const RCVBUF: usize = 4 << 20;
/// One datagram read; the kernel fills dump datagrams up to 32 KiB.
const RECV_CHUNK: usize = 64 << 10;

/// Appends netlink messages and their attributes to one buffer: a batch or a lone request.
#[derive(Default)]
pub(super) struct Writer {
    buf: Vec<u8>,
    /// Where the open message starts.
    msg: Option<usize>,
    /// Starts of the open nested attributes.
    nests: Vec<usize>,
    /// A nested attribute outgrew the 16-bit length field.
    too_big: bool,
}

impl Writer {
    /// Starts a message (`nlmsghdr` + `nfgenmsg`), closing the previous one.
    pub(super) fn begin(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.end();
        self.msg = Some(self.buf.len());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf
            .extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    /// Closes the open message (and any nest left open), writing its length.
    fn end(&mut self) {
        while !self.nests.is_empty() {
            self.close();
        }
        if let Some(start) = self.msg.take() {
            let len = (self.buf.len() - start) as u32;
            self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// Bytes written so far.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    fn header(&mut self, kind: u16, len: usize) {
        self.buf
            .extend_from_slice(&((4 + len).min(usize::from(u16::MAX)) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// An attribute holding raw bytes.
    pub(super) fn bytes(&mut self, kind: u16, data: &[u8]) {
        if data.len() + 4 > usize::from(u16::MAX) {
            self.too_big = true;
        }
        self.header(kind, data.len());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute (names of tables, sets, chains, expressions).
    pub(super) fn str(&mut self, kind: u16, text: &str) {
        self.header(kind, text.len() + 1);
        self.buf.extend_from_slice(text.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// A 32-bit number, big-endian as nf_tables wants it.
    pub(super) fn be32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    /// A 64-bit number (timeouts in milliseconds), big-endian.
    pub(super) fn be64(&mut self, kind: u16, value: u64) {
        self.bytes(kind, &value.to_be_bytes());
    }

    /// Opens a nested attribute; [`Writer::close`] ends it.
    pub(super) fn nest(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.header(kind | NLA_F_NESTED, 0);
    }

    /// Closes the innermost open nested attribute.
    pub(super) fn close(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = self.buf.len() - start;
            if len > usize::from(u16::MAX) {
                self.too_big = true;
            }
            let len = len.min(usize::from(u16::MAX)) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// A nested attribute holding what `inner` writes.
    pub(super) fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut Writer)) {
        self.nest(kind);
        inner(self);
        self.close();
    }

    /// The finished bytes; an error if an attribute did not fit its length field (a
    /// programming error in the chunking, reported rather than sent truncated).
    pub(super) fn finish(mut self) -> Result<Vec<u8>, NftError> {
        self.end();
        if self.too_big {
            return Err(NftError::Protocol(
                "a netlink attribute grew past 64 KiB".into(),
            ));
        }
        Ok(self.buf)
    }
}

/// A transaction being written: the begin marker, commands, then the end marker.
pub(super) struct Batch {
    w: Writer,
    next_seq: u32,
    /// Sequence number of the first command.
    first: u32,
    /// Offset of the last command's header, to ask the kernel to acknowledge it.
    last: Option<(usize, u32)>,
}

/// A batch ready to send.
pub(super) struct Finished {
    pub(super) bytes: Vec<u8>,
    /// Sequence number of the begin marker; the commands follow it.
    pub(super) begin: u32,
    /// Sequence number of the last command, the one the kernel acknowledges.
    pub(super) last: u32,
    /// Sequence number of the end marker.
    pub(super) end: u32,
}

impl Batch {
    pub(super) fn new(first_seq: u32) -> Batch {
        let mut w = Writer::default();
        w.begin(NFNL_MSG_BATCH_BEGIN, 0, first_seq, 0, NFNL_SUBSYS_NFTABLES);
        Batch {
            w,
            next_seq: first_seq.wrapping_add(1),
            first: first_seq.wrapping_add(1),
            last: None,
        }
    }

    /// Appends one command on the inet family; `body` writes its attributes. Returns its
    /// sequence number, which the kernel's error report for it carries.
    pub(super) fn command(&mut self, cmd: Cmd, flags: u16, body: impl FnOnce(&mut Writer)) -> u32 {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.w.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | cmd as u16,
            flags,
            seq,
            NFPROTO_INET,
            0,
        );
        self.last = Some((self.w.len() - NLMSG_HDRLEN - NFGENMSG_LEN, seq));
        body(&mut self.w);
        seq
    }

    /// Adds the end marker and asks the kernel to acknowledge the last command (its
    /// report comes after all others, so it tells when the answer is complete). `None`
    /// when there is no command.
    pub(super) fn finish(self) -> Result<Option<Finished>, NftError> {
        let Batch {
            mut w,
            next_seq,
            first,
            last,
        } = self;
        let Some((last_at, last_seq)) = last else {
            return Ok(None);
        };
        w.begin(NFNL_MSG_BATCH_END, 0, next_seq, 0, NFNL_SUBSYS_NFTABLES);
        let mut bytes = w.finish()?;
        let flags_at = last_at + 6;
        let flags = u16::from_ne_bytes([bytes[flags_at], bytes[flags_at + 1]]) | NLM_F_ACK;
        bytes[flags_at..flags_at + 2].copy_from_slice(&flags.to_ne_bytes());
        Ok(Some(Finished {
            bytes,
            begin: first.wrapping_sub(1),
            last: last_seq,
            end: next_seq,
        }))
    }
}

/// A failed command of a batch: its sequence number and the kernel's errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Failure {
    pub(super) seq: u32,
    pub(super) errno: Errno,
}

/// Why a batch did not apply.
#[derive(Debug)]
pub(super) enum Rejected {
    /// The kernel refused these commands; the transaction was rolled back as a whole.
    Commands(Vec<Failure>),
    /// Some of the kernel's reports were lost (receive buffer overrun): it failed, but which
    /// commands failed is unknown.
    Overrun,
    /// The socket failed or the kernel's answer made no sense.
    Other(NftError),
}

impl From<NftError> for Rejected {
    fn from(e: NftError) -> Self {
        Rejected::Other(e)
    }
}

/// One reply message.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reply<'a> {
    pub(super) kind: u16,
    pub(super) seq: u32,
    /// What follows the netlink header.
    pub(super) body: &'a [u8],
}

impl<'a> Reply<'a> {
    /// The errno of an `NLMSG_ERROR` (0 is an acknowledgement); `None` for other messages.
    pub(super) fn error(&self) -> Option<i32> {
        if self.kind != NLMSG_ERROR {
            return None;
        }
        Some(self.body.get(..4).map_or(-libc::EBADMSG, |b| {
            i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        }))
    }

    /// The attributes of an nfnetlink reply (after its `nfgenmsg`).
    pub(super) fn attrs(&self) -> Attrs<'a> {
        Attrs(self.body.get(NFGENMSG_LEN..).unwrap_or_default())
    }
}

/// Splits a datagram into netlink messages; a malformed header is an error.
pub(super) fn replies(mut buf: &[u8]) -> impl Iterator<Item = Result<Reply<'_>, NftError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let malformed = || NftError::Protocol("malformed netlink reply from the kernel".into());
        let Some(h) = buf.get(..NLMSG_HDRLEN) else {
            buf = &[];
            return Some(Err(malformed()));
        };
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(malformed()));
        }
        let reply = Reply {
            kind: u16::from_ne_bytes([h[4], h[5]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            body: &buf[NLMSG_HDRLEN..len],
        };
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some(Ok(reply))
    })
}

/// Iterates over attributes as (type without flags, payload); stops at a malformed one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attrs<'a>(pub(super) &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let h = self.0.get(..4)?;
        let len = usize::from(u16::from_ne_bytes([h[0], h[1]]));
        let kind = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        let Some(payload) = self.0.get(4..len.max(4)) else {
            self.0 = &[];
            return None;
        };
        if len < 4 {
            self.0 = &[];
            return None;
        }
        self.0 = self.0.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, payload))
    }
}

impl<'a> Attrs<'a> {
    /// The payload of the first attribute of this type.
    pub(super) fn get(self, kind: u16) -> Option<&'a [u8]> {
        self.into_iter().find(|(k, _)| *k == kind).map(|(_, v)| v)
    }

    /// The nested attributes inside the first attribute of this type.
    pub(super) fn nested(self, kind: u16) -> Option<Attrs<'a>> {
        self.get(kind).map(Attrs)
    }

    /// A big-endian 32-bit number.
    pub(super) fn be32(self, kind: u16) -> Option<u32> {
        let b = self.get(kind)?;
        Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
    }

    /// A big-endian 64-bit number.
    pub(super) fn be64(self, kind: u16) -> Option<u64> {
        let b = self.get(kind)?;
        Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
    }

    /// A string, without its NUL terminator.
    pub(super) fn str(self, kind: u16) -> Option<&'a str> {
        let b = self.get(kind)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        std::str::from_utf8(&b[..end]).ok()
    }
}

/// A `NETLINK_NETFILTER` socket; it belongs to the network namespace of the thread that
/// opened it, whichever thread uses it later.
pub(super) struct Socket {
    fd: OwnedFd,
    seq: Cell<u32>,
    /// The send buffer granted so far (a batch must fit in it whole).
    sndbuf: Cell<usize>,
}

impl Socket {
    /// Opens the socket; the errors of a kernel without nfnetlink map to
    /// [`NftError::Unsupported`].
    pub(super) fn open() -> Result<Socket, NftError> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| match e {
            Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT => NftError::Unsupported(format!(
                "cannot open a netfilter netlink socket ({})",
                e.desc()
            )),
            e => NftError::Kernel {
                what: "opening a netfilter netlink socket".into(),
                source: e.into(),
            },
        })?;
        let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
        let _ = socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout);
        // Forcing needs CAP_NET_ADMIN; without it the plain limit applies (and the kernel
        // will refuse the first command anyway).
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
            let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &RCVBUF);
        }
        cap_ack(&fd);
        let sndbuf = socket::getsockopt(&fd, sockopt::SndBuf).unwrap_or(0);
        Ok(Socket {
            fd,
            // Each request and batch takes new numbers, so a late answer to an earlier one
            // (after a timeout) is recognised and skipped.
            seq: Cell::new(1),
            sndbuf: Cell::new(sndbuf),
        })
    }

    fn take_seqs(&self, n: u32) -> u32 {
        let first = self.seq.get();
        self.seq.set(first.wrapping_add(n));
        first
    }

    /// A new, empty transaction.
    pub(super) fn batch(&self) -> Batch {
        Batch::new(self.seq.get())
    }

    /// Sends a transaction and collects the kernel's verdict. The kernel handles a batch
    /// while the send call runs, so every report is queued on the socket when it returns.
    pub(super) fn commit(&self, batch: Batch) -> Result<(), Rejected> {
        let Some(Finished {
            bytes,
            begin,
            last: last_seq,
            end,
        }) = batch.finish()?
        else {
            return Ok(());
        };
        self.seq.set(end.wrapping_add(1));
        self.grow_sndbuf(bytes.len());
        self.send(&bytes)?;

        // The batch's sequence numbers: begin marker, commands, end marker.
        let ours = |seq: u32| seq.wrapping_sub(begin) <= end.wrapping_sub(begin);
        let mut failures = Vec::new();
        let mut confirmed = false;
        let mut buf = vec![0u8; RECV_CHUNK];
        let mut block = false;
        loop {
            let flags = if block {
                MsgFlags::empty()
            } else {
                MsgFlags::MSG_DONTWAIT
            };
            let n = match socket::recv(self.fd.as_raw_fd(), &mut buf, flags) {
                Ok(n) => n,
                Err(Errno::EAGAIN) if !block => {
                    if confirmed || !failures.is_empty() {
                        break;
                    }
                    block = true;
                    continue;
                }
                Err(Errno::EAGAIN) => {
                    return Err(Rejected::Other(NftError::Protocol(
                        "the kernel did not answer the batch".into(),
                    )));
                }
                Err(Errno::ENOBUFS) => return Err(Rejected::Overrun),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(Rejected::Other(NftError::Kernel {
                        what: "reading the kernel's answer".into(),
                        source: e.into(),
                    }));
                }
            };
            block = false;
            for reply in replies(&buf[..n]) {
                let reply = reply?;
                let Some(err) = reply.error() else { continue };
                if !ours(reply.seq) {
                    continue; // left over from an earlier batch
                }
                if err != 0 {
                    failures.push(Failure {
                        seq: reply.seq,
                        errno: Errno::from_raw(-err),
                    });
                }
                // An error for a sequence number outside the commands (the batch markers)
                // rejects the whole batch: a missing capability, no nf_tables.
                if reply.seq == last_seq || (err != 0 && (reply.seq == begin || reply.seq == end)) {
                    confirmed = true;
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Rejected::Commands(failures))
        }
    }

    /// Sends one read request and hands each answer message to `each`, until the kernel's
    /// acknowledgement (a get) or end marker (a dump). A kernel error is returned as errno.
    pub(super) fn request(
        &self,
        cmd: Cmd,
        dump: bool,
        attrs: impl FnOnce(&mut Writer),
        mut each: impl FnMut(Reply<'_>) -> Result<(), NftError>,
    ) -> Result<Result<(), Errno>, NftError> {
        let seq = self.take_seqs(1);
        let mut w = Writer::default();
        let flags = if dump { NLM_F_DUMP } else { NLM_F_ACK };
        w.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | cmd as u16,
            flags,
            seq,
            NFPROTO_INET,
            0,
        );
        attrs(&mut w);
        self.send(&w.finish()?)?;
        let mut buf = vec![0u8; RECV_CHUNK];
        loop {
            let n = match socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(NftError::Protocol(format!(
                        "the kernel did not answer within {} s",
                        REPLY_TIMEOUT.as_secs()
                    )));
                }
                Err(e) => {
                    return Err(NftError::Kernel {
                        what: "reading the kernel's answer".into(),
                        source: e.into(),
                    });
                }
            };
            for reply in replies(&buf[..n]) {
                let reply = reply?;
                if reply.seq != seq {
                    continue; // a late answer to an earlier request
                }
                match reply.error() {
                    Some(0) if !dump => return Ok(Ok(())),
                    Some(0) => {}
                    Some(err) => return Ok(Err(Errno::from_raw(-err))),
                    None if reply.kind == NLMSG_DONE => {
                        let err = reply
                            .body
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return Ok(if err < 0 {
                            Err(Errno::from_raw(-err))
                        } else {
                            Ok(())
                        });
                    }
                    // A get's object comes before its acknowledgement.
                    None => each(reply)?,
                }
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NftError> {
        loop {
            return match socket::send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()) {
                Ok(_) => Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => Err(NftError::Kernel {
                    what: format!("sending {} bytes to the kernel", bytes.len()),
                    source: e.into(),
                }),
            };
        }
    }

    /// A netlink datagram must fit in the send buffer: grow it for large batches (as `nft`
    /// does). The kernel doubles the value asked for.
    fn grow_sndbuf(&self, len: usize) {
        if len + 4096 <= self.sndbuf.get() {
            return;
        }
        let want = len + 4096;
        if socket::setsockopt(&self.fd, sockopt::SndBufForce, &want).is_err() {
            let _ = socket::setsockopt(&self.fd, sockopt::SndBuf, &want);
        }
        self.sndbuf
            .set(socket::getsockopt(&self.fd, sockopt::SndBuf).unwrap_or(0));
    }
}

/// Asks the kernel to echo only the header of a failed message in its error report, not the
/// whole message (which can be tens of KiB of elements).
fn cap_ack(fd: &OwnedFd) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to a c_int that lives across the call, with its
    // size; the kernel only reads it.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_CAP_ACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
