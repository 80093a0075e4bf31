use super::*;
use std::io::Write as _;

/// A classic pcap file: little-endian, micro- or nanosecond stamps, one link type.
pub(crate) fn legacy(link: u32, nanos: bool, frames: &[(u32, u32, &[u8])]) -> Vec<u8> {
    let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
    let mut f = Vec::new();
    f.extend_from_slice(&magic.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&link.to_le_bytes());
    for (sec, frac, data) in frames {
        f.extend_from_slice(&sec.to_le_bytes());
        f.extend_from_slice(&frac.to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(data);
    }
    f
}

fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
    let len = (body.len() + 12) as u32;
    let mut b = kind.to_le_bytes().to_vec();
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&body);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

/// A pcapng file with one interface of `link` at `tsresol` (10^-tsresol s) and its packets.
fn pcapng(link: u16, tsresol: u8, packets: &[(u64, &[u8])]) -> Vec<u8> {
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    let mut f = block(0x0a0d_0d0a, &shb);
    let mut idb = link.to_le_bytes().to_vec();
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&0u32.to_le_bytes());
    // if_tsresol option, then opt_endofopt.
    idb.extend_from_slice(&9u16.to_le_bytes());
    idb.extend_from_slice(&1u16.to_le_bytes());
    idb.extend_from_slice(&[tsresol, 0, 0, 0]);
    idb.extend_from_slice(&[0, 0, 0, 0]);
    f.extend(block(1, &idb));
    for (ticks, data) in packets {
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((ticks >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(*ticks as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32 + 10).to_le_bytes());
        epb.extend_from_slice(data);
        f.extend(block(6, &epb));
    }
    f
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

/// A frame's fields, owned.
#[derive(Debug, Clone, PartialEq)]
struct Owned {
    time: SystemTime,
    link: u16,
    data: Vec<u8>,
    number: u64,
    truncated: bool,
}

fn read_all(path: &Path) -> Result<Vec<Owned>, FileError> {
    let map = Mapped::open(path)?;
    let mut f = CaptureFile::open(&map, 0)?;
    let mut out = Vec::new();
    while let Some(frame) = f.next_frame()? {
        out.push(Owned {
            time: frame.time,
            link: frame.link,
            data: frame.data.to_vec(),
            number: frame.number,
            truncated: frame.truncated(),
        });
    }
    Ok(out)
}

fn open_error(path: &Path) -> FileError {
    match Mapped::open(path) {
        Err(e) => e,
        Ok(map) => CaptureFile::open(&map, 0).unwrap_err(),
    }
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

#[test]
fn classic_pcap_in_micro_and_nanoseconds() {
    let dir = tempfile::tempdir().unwrap();
    let us = write(
        &dir,
        "us.pcap",
        &legacy(1, false, &[(100, 250_000, b"abc"), (101, 1, b"de")]),
    );
    let frames = read_all(&us).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].time, at(100, 250_000_000));
    assert_eq!(
        (frames[0].link, frames[0].data.as_slice()),
        (1, &b"abc"[..])
    );
    assert_eq!((frames[1].time, frames[1].number), (at(101, 1_000), 2));
    let ns = write(&dir, "ns.pcap", &legacy(101, true, &[(100, 7, b"x")]));
    let frames = read_all(&ns).unwrap();
    assert_eq!((frames[0].time, frames[0].link), (at(100, 7), 101));
}

#[test]
fn pcapng_with_its_interface_time_resolution() {
    let dir = tempfile::tempdir().unwrap();
    // Nanosecond resolution: 5.000000003 s; microseconds: 7.5 s.
    let p = write(
        &dir,
        "ns.pcapng",
        &pcapng(113, 9, &[(5_000_000_003, b"sll")]),
    );
    let frames = read_all(&p).unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].time, frames[0].link), (at(5, 3), 113));
    assert_eq!(frames[0].data, b"sll");
    assert!(frames[0].truncated, "wire length 13, 3 captured");
    let p = write(&dir, "us.pcapng", &pcapng(1, 6, &[(7_500_000, b"eth0")]));
    assert_eq!(read_all(&p).unwrap()[0].time, at(7, 500_000_000));
}

#[test]
fn bad_files_are_named_with_the_packet_number() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = write(
        &dir,
        "notes.txt",
        b"this is not a capture at all, just text\n",
    );
    let e = open_error(&garbage);
    assert!(
        e.to_string().contains("notes.txt") && e.to_string().contains("not a capture file"),
        "{e}"
    );
    let empty = write(&dir, "empty.pcap", b"");
    assert!(open_error(&empty).to_string().contains("empty"));
    // The second record's header promises more than the file holds.
    let mut cut = legacy(1, false, &[(1, 0, b"first"), (2, 0, b"second packet")]);
    cut.truncate(cut.len() - 4);
    let cut = write(&dir, "cut.pcap", &cut);
    let e = read_all(&cut).unwrap_err();
    assert_eq!(e.packet, 2, "{e}");
    assert!(e.to_string().contains("cut.pcap: packet 2"), "{e}");
    assert!(
        open_error(dir.path())
            .to_string()
            .contains("not a regular file")
    );
}

#[test]
fn several_files_are_merged_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        &dir,
        "a.pcap",
        &legacy(1, false, &[(1, 0, b"a1"), (3, 0, b"a3")]),
    );
    let b = write(
        &dir,
        "b.pcap",
        &legacy(1, false, &[(2, 0, b"b2"), (4, 0, b"b4")]),
    );
    let maps = Mapped::open_all(&[a, b]).unwrap();
    let mut m = Merged::open(&maps).unwrap();
    let mut order = Vec::new();
    while let Some(frame) = m.next_frame().unwrap() {
        order.push((String::from_utf8(frame.data.to_vec()).unwrap(), frame.file));
    }
    let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a1", "b2", "a3", "b4"]);
    assert_eq!(order[1].1, 1);
}
