//! Reading capture files: pcap (micro- and nanosecond, either byte order) and pcapng (any
//! number of sections and interfaces, each with its own link type and time resolution),
//! through `pcap-parser`, a streaming reader that never holds more than its buffer. Several
//! files are merged into one stream in timestamp order ([`Merged`]), as a capture split by
//! `tcpdump -C` or taken on two interfaces at once would be read.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{Linktype, PcapBlockOwned, PcapError, create_reader};

/// The reader's buffer: enough for any packet a capture holds (a 256 KiB snap length) with
/// room to spare; grown for a bigger block.
const BUFFER: usize = 1 << 20;
/// The largest block accepted: a larger one is a corrupt length field, not a packet.
const MAX_BLOCK: usize = 64 << 20;

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

/// One packet of a capture, copied out of the reader's buffer (its buffer is reused).
#[derive(Debug, Clone)]
pub struct Frame {
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
    pub data: Vec<u8>,
    /// Which file it came from (index in the list given).
    pub file: usize,
    /// Its number in that file (1-based), for error messages.
    pub number: u64,
}

impl Default for Frame {
    fn default() -> Frame {
        Frame {
            time: UNIX_EPOCH,
            link: 0,
            iface: 0,
            wire_len: 0,
            data: Vec::new(),
            file: 0,
            number: 0,
        }
    }
}

impl Frame {
    /// Only part of the packet was captured (a short snap length).
    pub fn truncated(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.wire_len)
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

/// One capture file being read.
pub struct CaptureFile {
    reader: Box<dyn PcapReaderIterator + Send>,
    meta: Meta,
}

/// What a file's headers set up, and where the reading is.
struct Meta {
    path: PathBuf,
    index: usize,
    /// Legacy pcap: the link type and whether timestamps are in nanoseconds.
    legacy: Option<(u16, bool)>,
    /// pcapng: the interfaces of the current section.
    interfaces: Vec<Interface>,
    packets: u64,
    /// Bytes consumed so far (for the summary).
    bytes: u64,
    /// The last packet's time: a pcapng simple packet block has none of its own.
    last_time: SystemTime,
}

impl std::fmt::Debug for CaptureFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureFile")
            .field("path", &self.meta.path)
            .field("packets", &self.meta.packets)
            .finish_non_exhaustive()
    }
}

impl CaptureFile {
    /// Opens `path` (the `index`th file given) and reads its header.
    pub fn open(path: &Path, index: usize) -> Result<CaptureFile, FileError> {
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
        let reader = create_reader(BUFFER, file).map_err(|e| {
            err(match e {
                PcapError::Eof => "empty file: expected a pcap or pcapng header".into(),
                PcapError::HeaderNotRecognized => {
                    "not a capture file: expected a pcap or pcapng header (tcpdump -w, Wireshark)"
                        .into()
                }
                other => format!("cannot read the header: {other:?}"),
            })
        })?;
        Ok(CaptureFile {
            reader,
            meta: Meta {
                path: path.to_path_buf(),
                index,
                legacy: None,
                interfaces: Vec::new(),
                packets: 0,
                bytes: 0,
                last_time: UNIX_EPOCH,
            },
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.meta.path
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.meta.bytes
    }

    /// Reads the next packet into `frame`; false at the end of the file.
    pub fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, FileError> {
        loop {
            let meta = &mut self.meta;
            let (used, got) = match self.reader.next() {
                Ok((used, block)) => (used, meta.take(block, frame)),
                Err(PcapError::Eof) => return Ok(false),
                Err(PcapError::Incomplete(_)) => {
                    self.more(false)?;
                    continue;
                }
                Err(PcapError::BufferTooSmall) => {
                    self.more(true)?;
                    continue;
                }
                Err(PcapError::UnexpectedEof) => {
                    return Err(meta.error("the file ends inside this packet (truncated file)"));
                }
                Err(e) => {
                    let what = format!("malformed: {e:?}");
                    return Err(meta.error(what));
                }
            };
            let got = got?;
            self.reader.consume(used);
            let meta = &mut self.meta;
            meta.bytes += used as u64;
            if got {
                meta.packets += 1;
                meta.last_time = frame.time;
                frame.file = meta.index;
                frame.number = meta.packets;
                return Ok(true);
            }
        }
    }

    /// Reads more of the file into the buffer, growing it for a block larger than it.
    fn more(&mut self, grow: bool) -> Result<(), FileError> {
        if self.reader.reader_exhausted() && !self.reader.data().is_empty() {
            return Err(self
                .meta
                .error("the file ends inside this packet (truncated file)"));
        }
        let before = self.reader.data().len();
        if let Err(e) = self.reader.refill() {
            let what = format!("cannot read: {e:?}");
            return Err(self.meta.error(what));
        }
        if grow || self.reader.data().len() == before && !self.reader.reader_exhausted() {
            let size = before.saturating_mul(2).max(BUFFER);
            if size > MAX_BLOCK || !self.reader.grow(size) {
                return Err(self.meta.error(format!(
                    "a block larger than {} MiB: its length field is corrupt",
                    MAX_BLOCK >> 20
                )));
            }
        }
        Ok(())
    }
}

impl Meta {
    fn error(&self, what: impl Into<String>) -> FileError {
        FileError {
            path: self.path.clone(),
            packet: self.packets + 1,
            what: what.into(),
        }
    }

    /// Takes one block: a packet is copied into `frame` (true); headers set the file up.
    fn take(&mut self, block: PcapBlockOwned<'_>, frame: &mut Frame) -> Result<bool, FileError> {
        match block {
            PcapBlockOwned::LegacyHeader(h) => {
                self.legacy = Some((link_number(h.network), h.is_nanosecond_precision()));
                Ok(false)
            }
            PcapBlockOwned::Legacy(b) => {
                let (link, nanos) = self
                    .legacy
                    .ok_or_else(|| self.error("a packet before the file header"))?;
                let frac = if nanos {
                    u64::from(b.ts_usec)
                } else {
                    u64::from(b.ts_usec) * 1_000
                };
                frame.time =
                    UNIX_EPOCH + Duration::new(u64::from(b.ts_sec), 0) + Duration::from_nanos(frac);
                fill(frame, link, self.index as u32, b.origlen, b.data, b.caplen);
                Ok(true)
            }
            PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                self.interfaces.clear();
                Ok(false)
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
                Ok(false)
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
                frame.time = base + Duration::from_secs(secs) + Duration::from_nanos(nanos);
                let id = ((self.index as u32) << 16) | (epb.if_id & 0xffff);
                fill(frame, iface.link, id, epb.origlen, epb.data, epb.caplen);
                Ok(true)
            }
            PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                let iface = *self
                    .interfaces
                    .first()
                    .ok_or_else(|| self.error("a packet before any interface description"))?;
                // A simple packet has no time: it takes the previous packet's.
                frame.time = self.last_time;
                let id = (self.index as u32) << 16;
                let caplen = spb.data.len() as u32;
                fill(frame, iface.link, id, spb.origlen, spb.data, caplen);
                Ok(true)
            }
            PcapBlockOwned::NG(_) => Ok(false),
        }
    }
}

fn link_number(link: Linktype) -> u16 {
    u16::try_from(link.0).unwrap_or(u16::MAX)
}

/// Copies a packet's bytes (the captured length, never the block's padding).
fn fill(frame: &mut Frame, link: u16, iface: u32, wire_len: u32, data: &[u8], caplen: u32) {
    let n = (caplen as usize).min(data.len());
    frame.link = link;
    frame.iface = iface;
    frame.wire_len = wire_len.max(n as u32);
    frame.data.clear();
    frame.data.extend_from_slice(&data[..n]);
}

/// Several capture files read as one stream in timestamp order: each step hands out the
/// earliest of the files' next packets (ties go to the file given first).
#[derive(Debug)]
pub struct Merged {
    files: Vec<CaptureFile>,
    /// Each file's next packet, `None` once it ended.
    heads: Vec<Option<Frame>>,
    bytes_done: u64,
}

impl Merged {
    /// Opens every file and reads its first packet; the first file that cannot be read is
    /// the error.
    pub fn open(paths: &[PathBuf]) -> Result<Merged, FileError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut heads = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            let mut f = CaptureFile::open(p, i)?;
            let mut frame = Frame::default();
            heads.push(f.next_frame(&mut frame)?.then_some(frame));
            files.push(f);
        }
        Ok(Merged {
            files,
            heads,
            bytes_done: 0,
        })
    }

    /// Bytes read from all files so far.
    pub fn bytes(&self) -> u64 {
        self.bytes_done + self.files.iter().map(|f| f.bytes()).sum::<u64>()
    }

    /// The next packet in time order, swapped into `frame`; false when every file ended.
    pub fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, FileError> {
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            if let Some(h) = head
                && best.is_none_or(|b| self.heads[b].as_ref().is_none_or(|bh| h.time < bh.time))
            {
                best = Some(i);
            }
        }
        let Some(i) = best else {
            return Ok(false);
        };
        let Some(head) = self.heads[i].as_mut() else {
            return Ok(false);
        };
        std::mem::swap(head, frame);
        if !self.files[i].next_frame(head)? {
            self.heads[i] = None;
        }
        Ok(true)
    }
}

#[cfg(test)]
pub(crate) mod tests;
