//! The in-kernel prefilter: a classic BPF program attached to the capture socket so that
//! ordinary traffic is dropped in the kernel and never copied to the daemon.
//!
//! The socket is an `AF_PACKET`/`SOCK_DGRAM` one, so the program sees the packet from the
//! IP header on, plus the skb's ancillary fields. It accepts only:
//! - packets addressed to this host (`pkttype == PACKET_HOST`: not broadcast/multicast, not
//!   another host's frames seen in promiscuous mode) or sent by it (`PACKET_OUTGOING`),
//!   without a VLAN tag still attached (those are seen again, untagged, on the VLAN device);
//! - IPv4 first fragments or whole datagrams (fragment offset 0);
//! - addressed to this host, to a port of the watch set of its protocol:
//!   - TCP segments without ACK or RST (SYN, FIN, NULL, XMAS… scans);
//!   - TCP segments with ACK, without SYN, RST or URG, that carry no data: ACK and Maimon
//!     scans. IP length = IP header + TCP header is tested here, so the data of established
//!     connections stays in the kernel even on a watched port, and ports with a listener are
//!     never watched: bulk traffic to a service never reaches the daemon;
//!   - UDP datagrams;
//! - sent by this host, from a port of the watch set of its protocol: TCP SYNs (without ACK
//!   or RST) and UDP datagrams, the flows whose answers are not probes (see
//!   [`super::flows`]). Anything else this host sends is dropped after a few instructions;
//! - IPv6 the same, with the transport header right after the fixed header, after a
//!   first-fragment header, or after one hop-by-hop/routing/destination-options header.
//!   Longer chains and AH are passed to user space, which walks them (they are rare);
//!   non-first IPv6 fragments are dropped.
//!
//! The watch sets are the exact ports (configured minus listeners) when they fit in
//! [`MAX_RANGES_PER_PROTO`] ranges; a pathological set is widened to a superset (see
//! [`super::ports::coarsen`]). User space checks every packet against the exact set anyway.
//! One port test per protocol serves both directions (the destination port of what comes
//! in, the source port of what goes out). The program is rebuilt and re-attached
//! (atomically, `SO_ATTACH_FILTER` replaces the old one) when listeners come or go or the
//! config is reloaded.

use socket2::SockFilter;

use super::ports::{PortSet, coarsen};

/// Ranges per protocol in the program: 4 instructions each, two protocols, under the
/// kernel's limit of 4096 instructions with room for the header code.
pub const MAX_RANGES_PER_PROTO: usize = 450;

/// Bytes copied per accepted packet: all of it (the checksum covers the whole segment).
pub const SNAPLEN: u32 = 0x0004_0000;

// Opcodes (linux/filter.h, linux/bpf_common.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MSH: u16 = 0xa0;
const ADD: u16 = 0x00;
const LSH: u16 = 0x60;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const JGT: u16 = 0x20;
const JGE: u16 = 0x30;
const JSET: u16 = 0x40;
const K: u16 = 0x00;
const X: u16 = 0x08;
const TAX: u16 = 0x00;
const ST: u16 = 0x02;
const STX: u16 = 0x03;
const MEM: u16 = 0x60;
const AND: u16 = 0x50;
const RSH: u16 = 0x70;

/// Scratch memory: where the IP packet ends (IPv4 total length, IPv6 40 + payload length).
const M_END: u32 = 0;
/// Scratch memory: the transport header's offset, while X serves the data-length test.
const M_OFF: u32 = 1;

const TH_SYN_RST_ACK: u32 = 0x16;
const TH_SYN: u32 = 0x02;
const TH_RST: u32 = 0x04;
const TH_ACK: u32 = 0x10;
const TH_SYN_URG: u32 = 0x22;

const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
const SKF_AD_PROTOCOL: u32 = SKF_AD_OFF.wrapping_add(0);
const SKF_AD_PKTTYPE: u32 = SKF_AD_OFF.wrapping_add(4);
const SKF_AD_VLAN_TAG_PRESENT: u32 = SKF_AD_OFF.wrapping_add(48);

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const PACKET_HOST: u32 = 0;
const PACKET_OUTGOING: u32 = 4;

/// One classic BPF instruction, comparable (socket2's `SockFilter` is opaque), so the
/// sensor can tell whether a rebuilt program differs from the attached one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

impl Insn {
    /// The form `attach_filter` takes.
    pub fn to_sock_filter(self) -> SockFilter {
        SockFilter::new(self.code, self.jt, self.jf, self.k)
    }
}

/// A compiled prefilter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The instructions, in order.
    pub insns: Vec<Insn>,
    /// The TCP port ranges the program accepts (after any widening).
    pub tcp_ranges: Vec<(u16, u16)>,
    /// The UDP port ranges the program accepts.
    pub udp_ranges: Vec<(u16, u16)>,
}

impl Program {
    /// The instructions as socket2 wants them.
    pub fn sock_filters(&self) -> Vec<SockFilter> {
        self.insns.iter().map(|i| i.to_sock_filter()).collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Label {
    /// The next instruction (offset 0).
    Next,
    Drop,
    Accept,
    Family,
    V4,
    V4Tcp,
    V4Udp,
    V6,
    V6Tcp,
    V6Udp,
    V6Frag,
    V6Ext,
    ToTcp,
    ToUdp,
    Tcp,
    Udp,
    TcpOut,
    TcpPortIn,
    TcpDrop,
    UdpIn,
    TcpPorts,
    UdpPorts,
}

enum Item {
    Plain(Insn),
    /// Conditional jump on `k`; targets must land within 255 instructions.
    Cond(u16, u32, Label, Label),
    /// Unconditional jump (32-bit offset).
    Ja(Label),
    /// Places a label at the next instruction.
    Mark(Label),
}

/// The program could not be assembled (a jump too long): a bug, reported instead of
/// attaching a wrong filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("internal error building the BPF prefilter: {0}")]
pub struct BuildError(String);

/// Builds the program for the given exact watch sets.
pub fn build(tcp: &PortSet, udp: &PortSet) -> Result<Program, BuildError> {
    use Label::*;
    let tcp_ranges = coarsen(tcp.intervals(), MAX_RANGES_PER_PROTO);
    let udp_ranges = coarsen(udp.intervals(), MAX_RANGES_PER_PROTO);
    let plain = |code: u16, k: u32| {
        Item::Plain(Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        })
    };
    let mut a = vec![
        // The kernel's checker follows scratch memory linearly and does not see that a
        // `ret` ends a path: a slot read after the shared `Drop` must be written before the
        // first jump there. M[END] gets its real value before it is read.
        plain(LD | IMM, 0),
        plain(ST, M_END),
        // Link level: untagged, addressed to this host or sent by it, IPv4 or IPv6.
        plain(LD | W | ABS, SKF_AD_VLAN_TAG_PRESENT),
        Item::Cond(JMP | JEQ | K, 0, Next, Drop),
        plain(LD | W | ABS, SKF_AD_PKTTYPE),
        Item::Cond(JMP | JEQ | K, PACKET_HOST, Family, Next),
        Item::Cond(JMP | JEQ | K, PACKET_OUTGOING, Next, Drop),
        Item::Mark(Family),
        plain(LD | W | ABS, SKF_AD_PROTOCOL),
        Item::Cond(JMP | JEQ | K, ETH_P_IP, V4, Next),
        Item::Cond(JMP | JEQ | K, ETH_P_IPV6, V6, Drop),
        // IPv4: fragment offset 0, then TCP/UDP after IHL*4 bytes.
        Item::Mark(V4),
        plain(LD | H | ABS, 6),
        Item::Cond(JMP | JSET | K, 0x1fff, Drop, Next),
        plain(LD | H | ABS, 2),
        plain(ST, M_END),
        plain(LD | B | ABS, 9),
        Item::Cond(JMP | JEQ | K, 6, V4Tcp, Next),
        Item::Cond(JMP | JEQ | K, 17, V4Udp, Drop),
        Item::Mark(V4Tcp),
        plain(LDX | B | MSH, 0),
        Item::Ja(Tcp),
        Item::Mark(V4Udp),
        plain(LDX | B | MSH, 0),
        Item::Ja(Udp),
        // IPv6: transport right after the fixed header, or after one extension header.
        Item::Mark(V6),
        plain(LD | H | ABS, 4),
        plain(ALU | ADD | K, 40),
        plain(ST, M_END),
        plain(LD | B | ABS, 6),
        Item::Cond(JMP | JEQ | K, 6, V6Tcp, Next),
        Item::Cond(JMP | JEQ | K, 17, V6Udp, Next),
        Item::Cond(JMP | JEQ | K, 44, V6Frag, Next),
        Item::Cond(JMP | JEQ | K, 0, V6Ext, Next),
        Item::Cond(JMP | JEQ | K, 43, V6Ext, Next),
        Item::Cond(JMP | JEQ | K, 60, V6Ext, Next),
        // AH: user space walks it. ICMPv6, ESP, no-next-header: dropped.
        Item::Cond(JMP | JEQ | K, 51, Accept, Drop),
        Item::Mark(V6Tcp),
        plain(LDX | IMM, 40),
        Item::Ja(Tcp),
        Item::Mark(V6Udp),
        plain(LDX | IMM, 40),
        Item::Ja(Udp),
        // Fragment header (8 bytes): offset must be 0; transport header at 48.
        Item::Mark(V6Frag),
        plain(LD | H | ABS, 42),
        Item::Cond(JMP | JSET | K, 0xfff8, Drop, Next),
        plain(LDX | IMM, 48),
        plain(LD | B | ABS, 40),
        Item::Cond(JMP | JEQ | K, 6, ToTcp, Next),
        Item::Cond(JMP | JEQ | K, 17, ToUdp, Drop),
        // Hop-by-hop / routing / destination options: (len + 1) * 8 bytes.
        Item::Mark(V6Ext),
        plain(LD | B | ABS, 41),
        plain(ALU | ADD | K, 1),
        plain(ALU | LSH | K, 3),
        plain(ALU | ADD | K, 40),
        plain(MISC | TAX, 0),
        plain(LD | B | ABS, 40),
        Item::Cond(JMP | JEQ | K, 6, ToTcp, Next),
        // A second extension header or anything else: user space decides.
        Item::Cond(JMP | JEQ | K, 17, ToUdp, Accept),
        Item::Mark(ToTcp),
        Item::Ja(Tcp),
        Item::Mark(ToUdp),
        Item::Ja(Udp),
        Item::Mark(Accept),
        plain(RET | K, SNAPLEN),
        Item::Mark(Drop),
        plain(RET | K, 0),
        // TCP, X = header offset. Sent by this host: a SYN (no ACK or RST), tested
        // on its source port. Coming in: RST never; ACK only without SYN or URG and without
        // data; then the destination port.
        Item::Mark(Tcp),
        plain(LD | W | ABS, SKF_AD_PKTTYPE),
        Item::Cond(JMP | JEQ | K, PACKET_OUTGOING, TcpOut, Next),
        plain(LD | B | IND, 13),
        Item::Cond(JMP | JSET | K, TH_RST, TcpDrop, Next),
        Item::Cond(JMP | JSET | K, TH_ACK, Next, TcpPortIn),
        Item::Cond(JMP | JSET | K, TH_SYN_URG, TcpDrop, Next),
        // No data: the IP packet ends where the TCP header does (X + data offset * 4).
        plain(STX, M_OFF),
        plain(LD | B | IND, 12),
        plain(ALU | AND | K, 0xf0),
        plain(ALU | RSH | K, 2),
        plain(ALU | ADD | X, 0),
        plain(MISC | TAX, 0),
        plain(LD | MEM, M_END),
        Item::Cond(JMP | JEQ | X, 0, Next, TcpDrop),
        plain(LDX | MEM, M_OFF),
        Item::Mark(TcpPortIn),
        plain(LD | H | IND, 2),
        Item::Ja(TcpPorts),
        Item::Mark(TcpOut),
        plain(LD | B | IND, 13),
        plain(ALU | AND | K, TH_SYN_RST_ACK),
        Item::Cond(JMP | JEQ | K, TH_SYN, Next, TcpDrop),
        plain(LD | H | IND, 0),
        Item::Ja(TcpPorts),
        Item::Mark(TcpDrop),
        plain(RET | K, 0),
        // UDP: the destination port of what comes in, the source port of what goes out.
        Item::Mark(Udp),
        plain(LD | W | ABS, SKF_AD_PKTTYPE),
        Item::Cond(JMP | JEQ | K, PACKET_OUTGOING, Next, UdpIn),
        plain(LD | H | IND, 0),
        Item::Ja(UdpPorts),
        Item::Mark(UdpIn),
        plain(LD | H | IND, 2),
        Item::Mark(UdpPorts),
    ];
    push_ranges(&mut a, &udp_ranges);
    a.push(Item::Mark(TcpPorts));
    push_ranges(&mut a, &tcp_ranges);

    Ok(Program {
        insns: assemble(a)?,
        tcp_ranges,
        udp_ranges,
    })
}

/// The port test on A, with local returns so no jump is longer than 3.
fn push_ranges(a: &mut Vec<Item>, ranges: &[(u16, u16)]) {
    let insn = |code: u16, jt: u8, jf: u8, k: u32| Item::Plain(Insn { code, jt, jf, k });
    for &(lo, hi) in ranges {
        a.push(insn(JMP | JGT | K, 3, 0, u32::from(hi))); // above: next range
        a.push(insn(JMP | JGE | K, 0, 1, u32::from(lo)));
        a.push(insn(RET | K, 0, 0, SNAPLEN));
        a.push(insn(RET | K, 0, 0, 0)); // below lo: ranges are sorted, none further
    }
    a.push(insn(RET | K, 0, 0, 0));
}

/// Resolves labels into forward offsets.
fn assemble(items: Vec<Item>) -> Result<Vec<Insn>, BuildError> {
    let mut pos = std::collections::HashMap::new();
    let mut n = 0usize;
    for it in &items {
        match it {
            Item::Mark(l) => {
                pos.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let offset = |idx: usize, l: Label| -> Result<usize, BuildError> {
        if l == Label::Next {
            return Ok(0);
        }
        let target = *pos
            .get(&l)
            .ok_or_else(|| BuildError(format!("label {l:?} not placed")))?;
        target
            .checked_sub(idx + 1)
            .ok_or_else(|| BuildError(format!("backward jump to {l:?} at {idx}")))
    };
    let mut out = Vec::with_capacity(n);
    for it in &items {
        let idx = out.len();
        match it {
            Item::Mark(_) => {}
            Item::Plain(i) => out.push(*i),
            Item::Ja(l) => out.push(Insn {
                code: JMP | JA,
                jt: 0,
                jf: 0,
                k: u32::try_from(offset(idx, *l)?)
                    .map_err(|_| BuildError(format!("jump to {l:?} too long")))?,
            }),
            Item::Cond(code, k, t, f) => {
                let short = |l: Label| -> Result<u8, BuildError> {
                    u8::try_from(offset(idx, l)?)
                        .map_err(|_| BuildError(format!("conditional jump to {l:?} too long")))
                };
                out.push(Insn {
                    code: *code,
                    jt: short(*t)?,
                    jf: short(*f)?,
                    k: *k,
                });
            }
        }
    }
    if out.len() > MAX_INSNS {
        return Err(BuildError(format!(
            "{} instructions, the kernel takes {MAX_INSNS}",
            out.len()
        )));
    }
    Ok(out)
}

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

#[cfg(test)]
pub(crate) mod interp {
    //! A classic-BPF interpreter for the opcodes [`super::build`] emits, with the kernel's
    //! semantics (an out-of-bounds load ends the program with 0), so the filter can be
    //! tested on real packets without a kernel.
    use super::*;

    /// The skb fields the program reads besides the packet.
    #[derive(Clone, Copy)]
    pub struct Ctx {
        pub pkttype: u32,
        pub protocol: u32,
        pub vlan: bool,
    }

    impl Ctx {
        /// A packet for this host, with the ethertype its first nibble implies.
        pub fn host(pkt: &[u8]) -> Ctx {
            let protocol = match pkt.first().map(|b| b >> 4) {
                Some(6) => ETH_P_IPV6,
                _ => ETH_P_IP,
            };
            Ctx {
                pkttype: PACKET_HOST,
                protocol,
                vlan: false,
            }
        }
    }

    fn load(pkt: &[u8], at: usize, size: usize) -> Option<u32> {
        let b = pkt.get(at..at.checked_add(size)?)?;
        Some(b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
    }

    /// Runs the program; returns the number of bytes it keeps (0 = drop). Reading scratch
    /// memory that no path wrote panics (the kernel's checker refuses such a program).
    pub fn run(prog: &[Insn], pkt: &[u8], ctx: Ctx) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let mut mem: [Option<u32>; 16] = [None; 16];
        let read = |mem: &[Option<u32>; 16], k: u32| {
            mem[k as usize].unwrap_or_else(|| panic!("M[{k}] read before written"))
        };
        loop {
            let Some(i) = prog.get(pc) else { return 0 };
            pc += 1;
            let class = i.code & 0x07;
            let operand = if i.code & X != 0 { x } else { i.k };
            match class {
                LD if i.code & 0xe0 == IMM => a = i.k,
                LD if i.code & 0xe0 == MEM => a = read(&mem, i.k),
                LD => {
                    let size = match i.code & 0x18 {
                        W => 4,
                        H => 2,
                        _ => 1,
                    };
                    let base = if i.code & 0xe0 == IND { x } else { 0 };
                    if i.code & 0xe0 == ABS && i.k >= SKF_AD_OFF {
                        a = match i.k {
                            SKF_AD_PROTOCOL => ctx.protocol,
                            SKF_AD_PKTTYPE => ctx.pkttype,
                            SKF_AD_VLAN_TAG_PRESENT => u32::from(ctx.vlan),
                            other => panic!("ancillary {other:#x} not modelled"),
                        };
                    } else {
                        match load(pkt, (base.wrapping_add(i.k)) as usize, size) {
                            Some(v) => a = v,
                            None => return 0,
                        }
                    }
                }
                LDX => match i.code & 0xe0 {
                    IMM => x = i.k,
                    MEM => x = read(&mem, i.k),
                    MSH => match pkt.get(i.k as usize) {
                        Some(b) => x = u32::from(b & 0x0f) * 4,
                        None => return 0,
                    },
                    m => panic!("ldx mode {m:#x} not modelled"),
                },
                ALU => match i.code & 0xf0 {
                    ADD => a = a.wrapping_add(operand),
                    LSH => a = a.wrapping_shl(operand),
                    RSH => a = a.wrapping_shr(operand),
                    AND => a &= operand,
                    op => panic!("alu op {op:#x} not modelled"),
                },
                ST => mem[i.k as usize] = Some(a),
                STX => mem[i.k as usize] = Some(x),
                MISC => x = a,
                RET => return i.k,
                JMP => {
                    let taken = match i.code & 0xf0 {
                        JA => {
                            pc += i.k as usize;
                            continue;
                        }
                        JEQ => a == operand,
                        JGT => a > operand,
                        JGE => a >= operand,
                        JSET => a & operand != 0,
                        op => panic!("jump op {op:#x} not modelled"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                c => panic!("class {c:#x} not modelled"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interp::{Ctx, run};
    use super::*;
    use crate::sensor::classify::samples::*;

    fn set(ports: &[u16]) -> PortSet {
        ports.iter().copied().collect()
    }

    fn prog(tcp: &[u16], udp: &[u16]) -> Program {
        build(&set(tcp), &set(udp)).unwrap()
    }

    fn passes(p: &Program, pkt: &[u8]) -> bool {
        run(&p.insns, pkt, Ctx::host(pkt)) != 0
    }

    #[test]
    fn nmap_probes_to_a_watched_port_reach_user_space() {
        let p = prog(&[7], &[7]);
        for pkt in [
            SYN_V4,
            FIN_V4,
            NULL_V4,
            XMAS_V4,
            SYNFIN_V4,
            SYN_V4_IP_OPTIONS,
            SYN_V4_BAD_SUM,
            UDP_V4,
            SYN_V6,
            UDP_V6,
        ] {
            assert!(passes(&p, pkt), "{pkt:02x?}");
            assert_eq!(run(&p.insns, pkt, Ctx::host(pkt)), SNAPLEN);
        }
    }

    #[test]
    fn established_traffic_to_a_service_is_dropped_in_the_kernel() {
        // 8080 has a listener, so it is not in the watch set: nothing of it comes up.
        let p = prog(&[7, 700], &[7]);
        for pkt in [
            KERNEL_SYN_V4_PARTIAL_SUM,
            KERNEL_ACK_V4,
            KERNEL_PSH_ACK_V4,
            KERNEL_ACK2_V4,
            KERNEL_FIN_ACK_V4,
        ] {
            assert!(!passes(&p, pkt));
        }
    }

    #[test]
    fn data_resets_and_syn_acks_stay_in_the_kernel_even_on_watched_ports() {
        let p = prog(&[700, 8080], &[]);
        for pkt in [KERNEL_PSH_ACK_V4, PEER_PSH_ACK_V4] {
            assert!(!passes(&p, pkt), "data-carrying ACK");
        }
        for flags in [0x04, 0x14, 0x12, 0x30, 0x11 | 0x20] {
            let mut pkt = ACK_V4.to_vec();
            pkt[33] = flags;
            assert!(!passes(&prog(&[7], &[]), &pkt), "flags {flags:#x}");
        }
    }

    #[test]
    fn bare_acks_and_fin_acks_to_watched_ports_reach_user_space() {
        let watched = prog(&[7, 700, 703, 8080], &[]);
        let other = prog(&[8], &[]);
        for pkt in [ACK_V4, MAIMON_V4, ACK_V6, MAIMON_V6] {
            assert_eq!(run(&watched.insns, pkt, Ctx::host(pkt)), SNAPLEN);
            assert!(!passes(&other, pkt));
        }
        // The bare ACKs of connections on watched ports come up too: user space tells them
        // from scans by their flow or their socket.
        for pkt in [PEER_ACK_V4, PEER_FIN_ACK_V4, PEER_ACK_V6, KERNEL_ACK_V4] {
            assert!(passes(&watched, pkt));
        }
        // ACK with PSH and no data: an ACK scan variant.
        let mut push = ACK_V4.to_vec();
        push[33] = 0x18;
        assert!(passes(&watched, &push));
    }

    /// Inserts `n` bytes of IPv4 options (NOPs) after the fixed header.
    fn with_v4_options(pkt: &[u8], n: usize) -> Vec<u8> {
        let mut out = pkt[..20].to_vec();
        out.extend(std::iter::repeat_n(1u8, n));
        out.extend_from_slice(&pkt[20..]);
        out[0] = 0x40 | (5 + n / 4) as u8;
        let total = u16::from_be_bytes([pkt[2], pkt[3]]) + n as u16;
        out[2..4].copy_from_slice(&total.to_be_bytes());
        out
    }

    #[test]
    fn the_no_data_test_follows_ip_options_and_ipv6_extension_headers() {
        let p = prog(&[7], &[]);
        let opts = with_v4_options(ACK_V4, 8);
        assert!(passes(&p, &opts));
        let mut opts_data = with_v4_options(ACK_V4, 8);
        opts_data.push(0x61);
        opts_data[3] += 1;
        assert!(!passes(&p, &opts_data));
        let ext = with_v6_ext(ACK_V6, 60, &[0, 1, 4, 0, 0, 0, 0]);
        assert!(passes(&p, &ext));
        let mut ext_data = ext.clone();
        ext_data.push(0x61);
        ext_data[5] += 1;
        assert!(!passes(&p, &ext_data));
        // Ethernet padding after a bare ACK is not data: the IP length says where it ends.
        let mut padded = ACK_V4.to_vec();
        padded.extend_from_slice(&[0u8; 6]);
        assert!(passes(&p, &padded));
        // A lying IP length (shorter than the headers) is no bare ACK.
        let mut short = ACK_V4.to_vec();
        short[3] = 0x24;
        assert!(!passes(&p, &short));
    }

    fn outgoing(pkt: &[u8]) -> Ctx {
        Ctx {
            pkttype: 4, // PACKET_OUTGOING
            ..Ctx::host(pkt)
        }
    }

    #[test]
    fn this_hosts_syns_and_datagrams_from_watched_ports_reach_user_space() {
        let p = prog(&[700, 703], &[701, 702]);
        for pkt in [OUT_SYN_V4, OUT_SYN_V6, OUT_UDP_V4, OUT_UDP_V6] {
            assert_eq!(run(&p.insns, pkt, outgoing(pkt)), SNAPLEN, "{pkt:02x?}");
        }
        // The same from ports not watched (a service's, an ephemeral one) stay in the kernel,
        // also when the destination port is in the set.
        let dst = prog(&[600], &[53]);
        for pkt in [OUT_SYN_V4, OUT_SYN_V6, OUT_UDP_V4, OUT_UDP_V6] {
            assert_eq!(run(&dst.insns, pkt, outgoing(pkt)), 0, "{pkt:02x?}");
        }
    }

    #[test]
    fn this_hosts_other_tcp_segments_stay_in_the_kernel() {
        let p = prog(&[700], &[]);
        assert_eq!(run(&p.insns, OUT_ACK_V4, outgoing(OUT_ACK_V4)), 0);
        for flags in [0x12, 0x04, 0x14, 0x10, 0x18, 0x11] {
            let mut pkt = OUT_SYN_V4.to_vec();
            pkt[33] = flags;
            assert_eq!(run(&p.insns, &pkt, outgoing(&pkt)), 0, "flags {flags:#x}");
        }
    }

    #[test]
    fn unwatched_ports_and_protocols_are_dropped() {
        let tcp_only = prog(&[7], &[]);
        assert!(!passes(&tcp_only, UDP_V4));
        assert!(!passes(&tcp_only, UDP_V6));
        let other_port = prog(&[8], &[8]);
        for pkt in [SYN_V4, UDP_V4, SYN_V6, UDP_V6, KERNEL_SYN_V4_PARTIAL_SUM] {
            assert!(!passes(&other_port, pkt));
        }
        let nothing = prog(&[], &[]);
        assert!(!passes(&nothing, SYN_V4));
    }

    #[test]
    fn fragments_without_the_tcp_flags_are_dropped() {
        let p = prog(&[7], &[7]);
        for pkt in [FRAG1_V4, FRAG2_V4, FRAG3_V4] {
            assert!(!passes(&p, pkt));
        }
    }

    #[test]
    fn broadcast_multicast_other_hosts_tagged_and_non_ip_frames_are_dropped() {
        let p = prog(&[7], &[7]);
        let host = Ctx::host(SYN_V4);
        for ctx in [
            Ctx {
                pkttype: 1, // PACKET_BROADCAST
                ..host
            },
            Ctx {
                pkttype: 2, // PACKET_MULTICAST
                ..host
            },
            Ctx {
                pkttype: 3, // PACKET_OTHERHOST
                ..host
            },
            Ctx { vlan: true, ..host },
            Ctx {
                protocol: 0x0806,
                ..host
            },
        ] {
            assert_eq!(run(&p.insns, SYN_V4, ctx), 0);
        }
    }

    fn with_v6_ext(pkt: &[u8], ext_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = pkt[..40].to_vec();
        let inner = out[6];
        out[6] = ext_type;
        let plen = u16::from_be_bytes([out[4], out[5]]) + 1 + body.len() as u16;
        out[4..6].copy_from_slice(&plen.to_be_bytes());
        out.push(inner);
        out.extend_from_slice(body);
        out.extend_from_slice(&pkt[40..]);
        out
    }

    #[test]
    fn ipv6_extension_headers_are_followed_or_left_to_user_space() {
        let p = prog(&[7], &[7]);
        let none = prog(&[], &[]);
        let opts = [0, 1, 4, 0, 0, 0, 0];
        let one = with_v6_ext(SYN_V6, 60, &opts);
        assert!(passes(&p, &one));
        assert!(!passes(&none, &one), "one header: the port test applies");
        let udp = with_v6_ext(UDP_V6, 0, &opts);
        assert!(passes(&p, &udp));
        let two = with_v6_ext(&one, 0, &opts);
        assert!(passes(&none, &two), "deeper chains go to user space");
        let first = with_v6_ext(SYN_V6, 44, &[0, 0, 1, 0, 0, 0, 1]);
        assert!(passes(&p, &first));
        assert!(!passes(&none, &first));
        let later = with_v6_ext(SYN_V6, 44, &[0, 0, 8, 0, 0, 0, 1]);
        assert!(!passes(&p, &later));
        let mut icmp = SYN_V6.to_vec();
        icmp[6] = 58;
        assert!(!passes(&p, &icmp));
    }

    /// `pkt` with the 16-bit port at byte `at` set to `port`; checksums are not fixed (the
    /// filter does not check them).
    fn with_port(pkt: &[u8], at: usize, port: u16) -> Vec<u8> {
        let mut p = pkt.to_vec();
        p[at..at + 2].copy_from_slice(&port.to_be_bytes());
        p
    }

    /// A SYN (IPv4, no options) to `port`.
    fn syn_to(port: u16) -> Vec<u8> {
        with_port(SYN_V4, 22, port)
    }

    fn udp6_to(port: u16) -> Vec<u8> {
        with_port(UDP_V6, 42, port)
    }

    fn ack6_to(port: u16) -> Vec<u8> {
        with_port(ACK_V6, 42, port)
    }

    /// This host's SYN and datagram (IPv4) from local port `port`.
    fn syn_from(port: u16) -> Vec<u8> {
        with_port(OUT_SYN_V4, 20, port)
    }

    fn udp_from(port: u16) -> Vec<u8> {
        with_port(OUT_UDP_V4, 20, port)
    }

    #[test]
    fn port_test_matches_the_set_exactly_on_every_port() {
        let tcp: PortSet = (1..1024u16)
            .filter(|p| ![22, 25, 80, 113, 139, 443].contains(p))
            .collect();
        let udp = set(&[1, 7, 9, 69, 161, 162, 513, 635, 640, 641, 700, 32770, 65535]);
        let p = build(&tcp, &udp).unwrap();
        for port in 0..=u16::MAX {
            assert_eq!(passes(&p, &syn_to(port)), tcp.contains(port), "tcp {port}");
            assert_eq!(passes(&p, &ack6_to(port)), tcp.contains(port), "ack {port}");
            assert_eq!(passes(&p, &udp6_to(port)), udp.contains(port), "udp {port}");
            let (syn, dgram) = (syn_from(port), udp_from(port));
            assert_eq!(run(&p.insns, &syn, outgoing(&syn)) != 0, tcp.contains(port));
            assert_eq!(
                run(&p.insns, &dgram, outgoing(&dgram)) != 0,
                udp.contains(port)
            );
        }
    }

    #[test]
    fn pathological_sets_fit_the_kernel_limit_as_a_superset() {
        let every_other: PortSet = (0..=u16::MAX).filter(|p| p % 2 == 1).collect();
        let p = build(&every_other, &every_other).unwrap();
        assert!(p.insns.len() <= MAX_INSNS, "{}", p.insns.len());
        assert!(p.tcp_ranges.len() <= MAX_RANGES_PER_PROTO);
        for port in (1..=u16::MAX).step_by(97) {
            if every_other.contains(port) {
                assert!(passes(&p, &syn_to(port)), "{port}");
                assert!(passes(&p, &udp6_to(port)), "{port}");
            }
        }
    }

    #[test]
    fn the_kernel_accepts_the_largest_program() {
        // SO_ATTACH_FILTER runs the kernel's checker on any socket type; no root needed.
        let every_other: PortSet = (0..=u16::MAX).filter(|p| p % 2 == 1).collect();
        let p = build(&every_other, &every_other).unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.attach_filter(&p.sock_filters()).unwrap();
        let small = prog(&[7], &[]);
        s.attach_filter(&small.sock_filters()).unwrap();
    }
}
