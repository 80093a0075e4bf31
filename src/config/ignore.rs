//! The ignore list: hosts never acted on, read from `IGNORE_FILE` and from Debian's
//! `portsentry.ignore.static` beside it. Plain data, like the rest of `config/`; the filter
//! that applies it (and also spares this host's own addresses) is
//! [`crate::filter::ignored::IgnoreFilter`].
//!
//! Matching follows 1.2, which masks both sides: `192.168.1.5/24` ignores `192.168.1.77`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::read::{ReadError, TEXT_CAP, excerpt, read_regular};
use super::{ConfigError, ConfigErrors, ConfigWarning};

/// File name Debian users edit; its entries are merged with `IGNORE_FILE`'s.
pub const STATIC_FILE_NAME: &str = "portsentry.ignore.static";

/// Hosts never acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreList {
    /// Entries as read (masked to their network), in file order, for display.
    entries: Vec<IpNet>,
    /// IPv4 entries as (network, mask), so a probe is checked with two integer operations each.
    v4: Vec<(u32, u32)>,
    /// IPv6 entries as (network, mask).
    v6: Vec<(u128, u128)>,
    /// Non-fatal findings of the load (missing file), for whoever loaded it to log.
    warnings: Vec<ConfigWarning>,
}

impl IgnoreList {
    /// Reads `ignore_file` and, when it exists, [`static_path`]`(ignore_file)`. A missing
    /// ignore file is not fatal (1.2 blocks anyway): the list is then empty, or the static
    /// file's alone, and a warning says so. A malformed line, or a file that exists but cannot
    /// be read, refuses the whole list; every such error is reported at once.
    pub fn load(ignore_file: &Path) -> Result<IgnoreList, ConfigErrors> {
        let mut list = IgnoreList::default();
        let mut errors = Vec::new();
        match read_regular(ignore_file, TEXT_CAP, "ignore file") {
            Ok(bytes) => list.add_text(ignore_file, &bytes, &mut errors),
            Err(e) if e.is_not_found() => {
                list.warnings.push(ConfigWarning {
                    file: ignore_file.to_path_buf(),
                    line: 0,
                    message: "ignore file not found: no host is ignored but this host's own \
                              addresses"
                        .to_string(),
                });
            }
            Err(e) => errors.push(unreadable(ignore_file, &e)),
        }
        let static_file = static_path(ignore_file);
        if static_file != ignore_file {
            match read_regular(&static_file, TEXT_CAP, "ignore file") {
                Ok(bytes) => list.add_text(&static_file, &bytes, &mut errors),
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(unreadable(&static_file, &e)),
            }
        }
        if errors.is_empty() {
            Ok(list)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Parses ignore-file text as if it came from `file` (names errors); for tests and for
    /// callers that already hold the text.
    pub fn parse(file: &Path, text: &str) -> Result<IgnoreList, ConfigErrors> {
        let mut list = IgnoreList::default();
        let mut errors = Vec::new();
        list.add_text(file, text.as_bytes(), &mut errors);
        if errors.is_empty() {
            Ok(list)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Whether `ip` falls in any entry; an IPv4-mapped IPv6 source (`::ffff:a.b.c.d`) is
    /// checked as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            IpAddr::V6(v6) => {
                let a = u128::from(v6);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
        }
    }

    /// Number of entries (both files).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, masked to their networks, in file order (ignore file first).
    pub fn entries(&self) -> &[IpNet] {
        &self.entries
    }

    /// Non-fatal findings of the load, to be logged by the loader.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// Adds every entry of one file's text; errors name `file` and the 1-based line.
    fn add_text(&mut self, file: &Path, bytes: &[u8], errors: &mut Vec<ConfigError>) {
        let text = String::from_utf8_lossy(bytes);
        // `lines()` drops one trailing "\n" or "\r\n", and a last line without newline is
        // still a line.
        for (i, raw) in text.lines().enumerate() {
            let content = match raw.find('#') {
                Some(at) => &raw[..at],
                None => raw,
            };
            let entry = content.trim();
            if entry.is_empty() {
                continue;
            }
            match parse_entry(entry) {
                Ok(net) => self.push(net),
                Err(message) => errors.push(ConfigError {
                    file: file.to_path_buf(),
                    line: i + 1,
                    message,
                }),
            }
        }
    }

    fn push(&mut self, net: IpNet) {
        match net {
            IpNet::V4(n) => {
                self.v4
                    .push((u32::from(n.network()), u32::from(n.netmask())));
            }
            IpNet::V6(n) => {
                self.v6
                    .push((u128::from(n.network()), u128::from(n.netmask())));
            }
        }
        self.entries.push(net);
    }
}

impl fmt::Display for IgnoreList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Where Debian keeps the hand-edited part of the ignore list: `portsentry.ignore.static` in
/// the ignore file's directory. A config watcher should watch it too.
pub fn static_path(ignore_file: &Path) -> PathBuf {
    match ignore_file.parent() {
        Some(dir) => dir.join(STATIC_FILE_NAME),
        None => PathBuf::from(STATIC_FILE_NAME),
    }
}

fn unreadable(file: &Path, e: &ReadError) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: 0,
        message: format!("cannot read ignore file: {}", e.reason()),
    }
}

/// One entry: `IPv4[/0..32]` or `IPv6[/0..128]`, masked to its network. An IPv4-mapped IPv6
/// entry (`::ffff:10.0.0.1/120`) becomes the IPv4 entry it means, so it matches IPv4 sources.
fn parse_entry(entry: &str) -> Result<IpNet, String> {
    let (addr_text, bits_text) = match entry.split_once('/') {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (entry, None),
    };
    // Only an error quotes the entry; cut short, as one line may be megabytes of garbage.
    let shown = || excerpt(entry);
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        format!(
            "\"{}\": expected an IPv4 or IPv6 address, optionally followed by /bits",
            shown()
        )
    })?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let bits = match bits_text {
        None => max,
        Some(b) => {
            let bits: u8 = b.parse().map_err(|_| {
                format!(
                    "\"{}\": \"{}\" is not a prefix length (expected 0 to {max})",
                    shown(),
                    excerpt(b)
                )
            })?;
            if bits > max {
                return Err(format!(
                    "\"{}\": prefix length {bits} is more than {max} for an {} address",
                    shown(),
                    if max == 32 { "IPv4" } else { "IPv6" }
                ));
            }
            bits
        }
    };
    let net = match addr {
        IpAddr::V4(a) => v4_net(a, bits),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) if bits >= 96 => v4_net(v4, bits - 96),
            _ => v6_net(a, bits),
        },
    };
    net.ok_or_else(|| format!("\"{}\": invalid prefix length", shown()))
}

fn v4_net(a: Ipv4Addr, bits: u8) -> Option<IpNet> {
    Ipv4Net::new(a, bits).ok().map(|n| IpNet::V4(n.trunc()))
}

fn v6_net(a: Ipv6Addr, bits: u8) -> Option<IpNet> {
    Ipv6Net::new(a, bits).ok().map(|n| IpNet::V6(n.trunc()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An address literal (tests of this list and of the filter that reads it).
    pub(crate) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A list parsed from text that must be valid.
    pub(crate) fn list(text: &str) -> IgnoreList {
        IgnoreList::parse(Path::new("portsentry.ignore"), text).unwrap()
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        IgnoreList::parse(Path::new("portsentry.ignore"), text)
            .unwrap_err()
            .0
    }

    #[test]
    fn a_fifo_or_dev_zero_as_ignore_file_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("portsentry.ignore");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let f = fifo.clone();
        let errs = crate::config::read::tests::within_5s(move || IgnoreList::load(&f))
            .unwrap_err()
            .0;
        assert_eq!(errs[0].file, fifo);
        assert!(errs[0].message.contains("is a FIFO"), "{}", errs[0]);
        let errs =
            crate::config::read::tests::within_5s(|| IgnoreList::load(Path::new("/dev/zero")))
                .unwrap_err()
                .0;
        assert!(errs[0].message.contains("character device"), "{}", errs[0]);
        // Positive control: a regular file at the same place is read.
        std::fs::remove_file(&fifo).unwrap();
        std::fs::write(&fifo, "10.0.0.1\n").unwrap();
        assert!(IgnoreList::load(&fifo).unwrap().contains(ip("10.0.0.1")));
    }

    #[test]
    fn a_huge_garbage_line_is_quoted_as_a_short_excerpt() {
        let line = "z".repeat(10_000_000);
        let errs = errors(&format!("10.0.0.1\n{line}\n"));
        assert_eq!(errs[0].line, 2);
        let shown = errs[0].to_string();
        assert!(shown.len() < 300, "{} bytes", shown.len());
        assert!(shown.contains("… (10000000 bytes)"), "{shown}");
    }

    #[test]
    fn host_bits_in_entry_are_masked_like_1_2() {
        let l = list("192.168.1.5/24\n");
        assert!(l.contains(ip("192.168.1.77")));
        assert!(l.contains(ip("192.168.1.5")));
        assert!(!l.contains(ip("192.168.2.5")));
        assert_eq!(l.entries()[0].to_string(), "192.168.1.0/24");
    }

    #[test]
    fn entry_without_bits_is_one_host() {
        let l = list("10.0.0.1\nfd77::5\n");
        assert!(l.contains(ip("10.0.0.1")));
        assert!(!l.contains(ip("10.0.0.2")));
        assert!(l.contains(ip("fd77::5")));
        assert!(!l.contains(ip("fd77::6")));
    }

    #[test]
    fn ipv6_prefixes_match() {
        let l = list("2001:db8::1/32\n");
        assert!(l.contains(ip("2001:db8:ffff::9")));
        assert!(!l.contains(ip("2001:db9::1")));
        assert!(!l.contains(ip("10.0.0.1")));
    }

    #[test]
    fn zero_bits_match_everything_of_that_family() {
        let l = list("0.0.0.0/0\n");
        assert!(l.contains(ip("8.8.8.8")));
        assert!(l.contains(ip("::ffff:8.8.8.8")));
        assert!(!l.contains(ip("2001:db8::1")));
    }

    #[test]
    fn ipv4_mapped_source_matches_ipv4_entry() {
        let l = list("192.168.1.0/24\n");
        assert!(l.contains(ip("::ffff:192.168.1.9")));
        assert!(!l.contains(ip("::ffff:192.168.2.9")));
    }

    #[test]
    fn ipv4_mapped_entry_matches_ipv4_source() {
        let l = list("::ffff:10.1.0.0/112\n");
        assert!(l.contains(ip("10.1.200.3")));
        assert!(!l.contains(ip("10.2.0.1")));
    }

    #[test]
    fn comments_blanks_whitespace_and_crlf_are_skipped() {
        let text = "# Debian header\r\n\r\n   \t\r\n  127.0.0.1/32   # localhost\r\n\
                    10.0.0.0/8# tight comment\r\n  fd77::/64 \t\r\n0.0.0.0";
        let l = list(text);
        assert_eq!(l.len(), 4);
        assert!(l.contains(ip("10.9.9.9")));
        assert!(l.contains(ip("fd77::1234")));
        assert!(
            l.contains(ip("0.0.0.0")),
            "last line without newline is read"
        );
        assert!(!l.contains(ip("11.0.0.1")));
    }

    #[test]
    fn bad_lines_are_all_reported_with_their_numbers() {
        let errs = errors("10.0.0.1\n10.0.0.1/33\n# ok\nnot-an-ip\nfd77::/129\n10.0.0.0/x\n");
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 4, 5, 6]);
        assert!(
            errs[0].message.contains("more than 32"),
            "{}",
            errs[0].message
        );
        assert!(errs[1].message.contains("expected an IPv4 or IPv6 address"));
        assert!(errs[2].message.contains("more than 128"));
        assert!(errs[3].message.contains("not a prefix length"));
        assert_eq!(
            errs[0].to_string(),
            "portsentry.ignore:2: \"10.0.0.1/33\": prefix length 33 is more than 32 for an IPv4 \
             address"
        );
    }

    #[test]
    fn load_merges_the_static_file_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("portsentry.ignore");
        std::fs::write(&main, "10.0.0.1\n").unwrap();
        std::fs::write(dir.path().join(STATIC_FILE_NAME), "192.168.0.0/16\n").unwrap();
        let l = IgnoreList::load(&main).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.contains(ip("10.0.0.1")));
        assert!(l.contains(ip("192.168.44.1")));
        assert!(l.warnings().is_empty());
    }

    #[test]
    fn load_names_the_static_file_in_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("portsentry.ignore");
        std::fs::write(&main, "10.0.0.1\n").unwrap();
        let stat = dir.path().join(STATIC_FILE_NAME);
        std::fs::write(&stat, "# x\n\nbogus\n").unwrap();
        let errs = IgnoreList::load(&main).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].file, stat);
        assert_eq!(errs[0].line, 3);
    }

    #[test]
    fn missing_ignore_file_gives_empty_list_and_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("portsentry.ignore");
        let l = IgnoreList::load(&main).unwrap();
        assert!(l.is_empty());
        assert_eq!(l.warnings().len(), 1);
        assert_eq!(l.warnings()[0].file, main);
    }

    #[test]
    fn missing_ignore_file_still_reads_the_static_one() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("portsentry.ignore");
        std::fs::write(dir.path().join(STATIC_FILE_NAME), "10.1.1.1\n").unwrap();
        let l = IgnoreList::load(&main).unwrap();
        assert!(l.contains(ip("10.1.1.1")));
        assert_eq!(l.warnings().len(), 1);
    }

    #[test]
    fn unreadable_ignore_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be read as a file.
        let errs = IgnoreList::load(dir.path()).unwrap_err().0;
        assert_eq!(errs[0].line, 0);
        assert!(errs[0].message.contains("cannot read"));
    }
}
