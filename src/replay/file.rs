//! Reading capture files: pcap (micro- and nanosecond, either byte order) and pcapng (any
//! number of sections and interfaces, each with its own link type and time resolution),
//! with `pcap-parser`'s zero-copy parsers over the files mapped into memory: both passes of a
//! replay read the page cache in place, and a frame is a slice of its file, never a copy.
//! Several files are merged into one stream in timestamp order ([`Merged`]), as a capture
//! split by `tcpdump -C` or taken on two interfaces at once would be read.
//!
//! A file is mapped for the whole replay: one that another process truncates meanwhile
//! ends the replay (SIGBUS), as it would end any reader of a vanishing file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_parser::nom;
use pcap_parser::pcap::{parse_pcap_frame, parse_pcap_frame_be, parse_pcap_header};
use pcap_parser::pcapng::{Block, PcapNGSlice};
use pcap_parser::{LegacyPcapBlock, Linktype, PcapBlockOwned, PcapError};

/// A capture file that cannot be read, with where.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}", location(path, *packet))]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// The packet being read (1-based), or 0 for the file's header.
    pub packet: u64,
    /// What is wrong.
    pub what: String,
}

fn location(path: &Path, packet: u64) -> String {
    if packet == 0 {
        path.display().to_string()
    } else {
        format!("{}: packet {packet}", path.display())
    }
}

/// One packet of a capture: a slice of its file.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Capture time.
    pub time: SystemTime,
    /// Link type of the interface it was captured on.
    pub link: u16,
    /// The interface: the file's index and the pcapng interface number, so that frames of
    /// two interfaces (a bridge's ports) are told apart.
    pub iface: u32,
    /// Length on the wire (the captured part may be shorter).
    pub wire_len: u32,
    /// The captured bytes, link header included.
    pub data: &'a [u8],
    /// Which file it came from (index in the list given).
    pub file: usize,
    /// Its number in that file (1-based), for error messages.
    pub number: u64,
}

impl Frame<'_> {
    /// Only part of the packet was captured (a short snap length).
    pub fn truncated(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.wire_len)
    }
}

/// A capture file mapped into memory (an empty file has no mapping).
#[derive(Debug)]
pub struct Mapped {
    path: PathBuf,
    map: Option<memmap2::Mmap>,
}

impl Mapped {
    /// Maps `path`: a regular file, read-only.
    pub fn open(path: &Path) -> Result<Mapped, FileError> {
        let err = |what: String| FileError {
            path: path.to_path_buf(),
            packet: 0,
            what,
        };
        let file = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| err(format!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        let map = if meta.len() == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only and private to this process; the replay reads
            // files nobody should be writing (see the module's note on truncation).
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| err(format!("cannot map: {e}")))?;
            let _ = map.advise(memmap2::Advice::Sequential);
            Some(map)
        };
        Ok(Mapped {
            path: path.to_path_buf(),
            map,
        })
    }

    /// Maps every file, in order.
    pub fn open_all(paths: &[PathBuf]) -> Result<Vec<Mapped>, FileError> {
        paths.iter().map(|p| Mapped::open(p)).collect()
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }
}

/// A pcapng interface as its description block set it up.
#[derive(Debug, Clone, Copy)]
struct Interface {
    link: u16,
    /// Units per second of its timestamps.
    resolution: u64,
    offset: i64,
}

/// How a file is laid out.
enum Format<'a> {
    /// Classic pcap: the rest of the file, its byte order, link type and time unit.
    Legacy {
        rest: &'a [u8],
        big_endian: bool,
        link: u16,
        nanos: bool,
    },
    /// pcapng, section after section.
    Ng(PcapNGSlice<'a>),
}

/// Pages already read are handed back every this many bytes, so that the replay's resident
/// memory does not grow with the file (they stay in the page cache).
const RELEASE_STEP: usize = 8 << 20;

/// One capture file being read.
pub struct CaptureFile<'a> {
    mapped: &'a Mapped,
    /// Bytes at the start of the mapping handed back already.
    released: usize,
    path: &'a Path,
    index: usize,
    format: Format<'a>,
    /// pcapng: the interfaces of the current section.
    interfaces: Vec<Interface>,
    packets: u64,
    /// The last packet's time: a pcapng simple packet block has none of its own.
    last_time: SystemTime,
}

impl std::fmt::Debug for CaptureFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureFile")
            .field("path", &self.path)
            .field("packets", &self.packets)
            .finish_non_exhaustive()
    }
}

impl<'a> CaptureFile<'a> {
    /// Reads the header of `file` (the `index`th given).
    pub fn open(file: &'a Mapped, index: usize) -> Result<CaptureFile<'a>, FileError> {
        let err = |what: &str| FileError {
            path: file.path.clone(),
            packet: 0,
            what: what.into(),
        };
        let data = file.bytes();
        if data.is_empty() {
            return Err(err("empty file: expected a pcap or pcapng header"));
        }
        let format = if let Ok(ng) = PcapNGSlice::from_slice(data) {
            Format::Ng(ng)
        } else {
            match parse_pcap_header(data) {
                Ok((rest, h)) => Format::Legacy {
                    rest,
                    big_endian: h.is_bigendian(),
                    link: link_number(h.network),
                    nanos: h.is_nanosecond_precision(),
                },
                Err(nom::Err::Incomplete(_)) => {
                    return Err(err("the file ends inside its pcap header"));
                }
                Err(_) => {
                    return Err(err(
                        "not a capture file: expected a pcap or pcapng header (tcpdump -w, Wireshark)",
                    ));
                }
            }
        };
        Ok(CaptureFile {
            mapped: file,
            released: 0,
            path: &file.path,
            index,
            format,
            interfaces: Vec::new(),
            packets: 0,
            last_time: UNIX_EPOCH,
        })
    }

    fn error(&self, what: impl Into<String>) -> FileError {
        FileError {
            path: self.path.to_path_buf(),
            packet: self.packets + 1,
            what: what.into(),
        }
    }

    fn parse_error(&self, e: nom::Err<PcapError<&[u8]>>) -> FileError {
        match e {
            nom::Err::Incomplete(_) => {
                self.error("the file ends inside this packet (truncated file)")
            }
            nom::Err::Error(e) | nom::Err::Failure(e) => match e {
                PcapError::Incomplete(_) | PcapError::UnexpectedEof => {
                    self.error("the file ends inside this packet (truncated file)")
                }
                other => self.error(format!("malformed: {}", short(&other))),
            },
        }
    }

    /// The next packet; `None` at the end of the file.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'a>>, FileError> {
        loop {
            let frame = match &mut self.format {
                Format::Legacy {
                    rest,
                    big_endian,
                    link,
                    nanos,
                } => {
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    let parse = if *big_endian {
                        parse_pcap_frame_be
                    } else {
                        parse_pcap_frame
                    };
                    let (link, nanos) = (*link, *nanos);
                    match parse(rest) {
                        Ok((r, b)) => {
                            *rest = r;
                            Some(self.legacy(&b, link, nanos))
                        }
                        Err(e) => return Err(self.parse_error(e)),
                    }
                }
                Format::Ng(slice) => match slice.next() {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(self.parse_error(e)),
                    Some(Ok(block)) => self.ng(block)?,
                },
            };
            if let Some(mut frame) = frame {
                self.release_behind(frame.data);
                self.packets += 1;
                self.last_time = frame.time;
                frame.file = self.index;
                frame.number = self.packets;
                return Ok(Some(frame));
            }
        }
    }

    /// Hands back the pages more than a [`RELEASE_STEP`] behind `data`: the frames there
    /// were handled (a page touched again is read anew from the file, so this is never
    /// wrong, only slower if a frame that old were still in use).
    fn release_behind(&mut self, data: &[u8]) {
        let Some(map) = &self.mapped.map else {
            return;
        };
        let offset = (data.as_ptr() as usize).saturating_sub(map.as_ptr() as usize);
        let upto = offset.saturating_sub(RELEASE_STEP) & !(RELEASE_STEP - 1);
        if upto > self.released {
            // SAFETY: a private, read-only file mapping: MADV_DONTNEED drops the pages from
            // this process only; the next access maps them from the file again.
            #[allow(unsafe_code)]
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.released,
                    upto - self.released,
                )
            };
            self.released = upto;
        }
    }

    fn legacy(&self, b: &LegacyPcapBlock<'a>, link: u16, nanos: bool) -> Frame<'a> {
        let frac = if nanos {
            u64::from(b.ts_usec)
        } else {
            u64::from(b.ts_usec) * 1_000
        };
        let time =
            UNIX_EPOCH + Duration::from_secs(u64::from(b.ts_sec)) + Duration::from_nanos(frac);
        frame(time, link, self.index as u32, b.origlen, b.data, b.caplen)
    }

    /// A pcapng block: a packet (`Some`), or a header that sets the file up (`None`).
    fn ng(&mut self, block: PcapBlockOwned<'a>) -> Result<Option<Frame<'a>>, FileError> {
        match block {
            PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                self.interfaces.clear();
                Ok(None)
            }
            PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                let resolution = idb.ts_resolution().ok_or_else(|| {
                    self.error(format!(
                        "interface {} has an impossible time resolution ({})",
                        self.interfaces.len(),
                        idb.if_tsresol
                    ))
                })?;
                self.interfaces.push(Interface {
                    link: link_number(idb.linktype),
                    resolution: resolution.max(1),
                    offset: idb.if_tsoffset,
                });
                Ok(None)
            }
            PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                let iface = *self.interfaces.get(epb.if_id as usize).ok_or_else(|| {
                    self.error(format!(
                        "packet of interface {}, which the file never described",
                        epb.if_id
                    ))
                })?;
                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let secs = ticks / iface.resolution;
                let frac = ticks % iface.resolution;
                let nanos =
                    (u128::from(frac) * 1_000_000_000 / u128::from(iface.resolution)) as u64;
                let base = if iface.offset >= 0 {
                    UNIX_EPOCH + Duration::from_secs(iface.offset.unsigned_abs())
                } else {
                    UNIX_EPOCH
                        .checked_sub(Duration::from_secs(iface.offset.unsigned_abs()))
                        .unwrap_or(UNIX_EPOCH)
                };
                let time = base + Duration::from_secs(secs) + Duration::from_nanos(nanos);
                let id = ((self.index as u32) << 16) | (epb.if_id & 0xffff);
                Ok(Some(frame(
                    time,
                    iface.link,
                    id,
                    epb.origlen,
                    epb.data,
                    epb.caplen,
                )))
            }
            PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                let iface = *self
                    .interfaces
                    .first()
                    .ok_or_else(|| self.error("a packet before any interface description"))?;
                // A simple packet has no time: it takes the previous packet's.
                let id = (self.index as u32) << 16;
                let caplen = spb.data.len() as u32;
                Ok(Some(frame(
                    self.last_time,
                    iface.link,
                    id,
                    spb.origlen,
                    spb.data,
                    caplen,
                )))
            }
            _ => Ok(None),
        }
    }
}

/// A parser error without the bytes it carries.
fn short(e: &PcapError<&[u8]>) -> String {
    match e {
        PcapError::NomError(_, kind) => format!("{kind:?}"),
        PcapError::OwnedNomError(_, kind) => format!("{kind:?}"),
        other => format!("{other:?}"),
    }
}

fn link_number(link: Linktype) -> u16 {
    u16::try_from(link.0).unwrap_or(u16::MAX)
}

/// A packet's frame: the captured length, never the block's padding.
fn frame(
    time: SystemTime,
    link: u16,
    iface: u32,
    wire_len: u32,
    data: &[u8],
    caplen: u32,
) -> Frame<'_> {
    let n = (caplen as usize).min(data.len());
    Frame {
        time,
        link,
        iface,
        wire_len: wire_len.max(n as u32),
        data: &data[..n],
        file: 0,
        number: 0,
    }
}

/// Several capture files read as one stream in timestamp order: each step hands out the
/// earliest of the files' next packets (ties go to the file given first).
#[derive(Debug)]
pub struct Merged<'a> {
    files: Vec<CaptureFile<'a>>,
    /// Each file's next packet, `None` once it ended.
    heads: Vec<Option<Frame<'a>>>,
}

impl<'a> Merged<'a> {
    /// Reads every file's header and first packet; the first file that cannot be read is
    /// the error.
    pub fn open(maps: &'a [Mapped]) -> Result<Merged<'a>, FileError> {
        let mut files = Vec::with_capacity(maps.len());
        let mut heads = Vec::with_capacity(maps.len());
        for (i, m) in maps.iter().enumerate() {
            let mut f = CaptureFile::open(m, i)?;
            heads.push(f.next_frame()?);
            files.push(f);
        }
        Ok(Merged { files, heads })
    }

    /// The next packet in time order; `None` when every file ended.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'a>>, FileError> {
        if self.heads.len() == 1 {
            let Some(head) = self.heads[0] else {
                return Ok(None);
            };
            self.heads[0] = self.files[0].next_frame()?;
            return Ok(Some(head));
        }
        let mut best: Option<(usize, SystemTime)> = None;
        for (i, head) in self.heads.iter().enumerate() {
            if let Some(h) = head
                && best.is_none_or(|(_, t)| h.time < t)
            {
                best = Some((i, h.time));
            }
        }
        let Some((i, _)) = best else {
            return Ok(None);
        };
        let head = self.heads[i];
        self.heads[i] = self.files[i].next_frame()?;
        Ok(head)
    }
}

#[cfg(test)]
pub(crate) mod tests;
