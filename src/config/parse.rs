//! Stage one: `portsentry.conf` text -> raw `KEY -> (value, line)` entries, 1.2 syntax.
//!
//! The grammar, one line at a time:
//! - blank lines and lines whose first non-blank character is `#` are skipped;
//! - `KEY="value"`, with spaces or tabs allowed around `=` (Debian ships `RESOLVE_HOST = "0"`);
//!   the value is everything between the first two double quotes, and text after the closing
//!   quote is ignored (with a warning unless it is blank or a `#` comment, since it usually
//!   means the value held a quote and was cut short);
//! - the first occurrence of a key wins, as in 1.2; later ones draw a warning naming both lines;
//! - a key whose `=` or quotes are missing is an error (1.2 skipped it with an admin alert,
//!   which silently dropped e.g. a whole `KILL_ROUTE`); any other line is an error too.
//!
//! Line endings may be LF or CRLF, the last line may lack its newline, and a UTF-8 byte order
//! mark is skipped. Bytes that are not UTF-8 (a Latin-1 comment written by an old editor) are
//! replaced by U+FFFD rather than refusing the file: in a comment that is harmless and silent,
//! on a setting line it draws a warning, because the value may not be what the admin meant.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ConfigError, ConfigErrors, ConfigWarning};

/// One `KEY="value"` line, kept close to the text for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// Key as written (1.2 keys are upper case).
    pub key: String,
    /// Everything between the two double quotes.
    pub value: String,
    /// 1-based line number.
    pub line: usize,
}

/// The file's entries in order, first occurrence of a key only (1.2: first wins).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawConfig {
    /// The file the text came from.
    pub path: PathBuf,
    /// Entries, first occurrence of each key.
    pub entries: Vec<RawEntry>,
    /// Non-fatal findings (duplicate keys, …).
    pub warnings: Vec<ConfigWarning>,
}

/// Parses 1.2 syntax.
pub fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigErrors> {
    into_result(parse_collect(path, text.as_bytes()))
}

/// Parses 1.2 syntax from the file's bytes, tolerating bytes that are not UTF-8 (see the
/// module documentation): the daemon reads files written by any editor of the last 25 years.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<RawConfig, ConfigErrors> {
    into_result(parse_collect(path, bytes))
}

/// The whole pass: entries and warnings, plus every error found. The caller decides whether
/// to go on and build, so that `load` can report parse and build errors together.
pub(crate) fn parse_collect(path: &Path, bytes: &[u8]) -> (RawConfig, Vec<ConfigError>) {
    parse_lines(path, split_lines(bytes))
}

fn into_result((raw, errors): (RawConfig, Vec<ConfigError>)) -> Result<RawConfig, ConfigErrors> {
    if errors.is_empty() {
        Ok(raw)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// One physical line: its text (lossily decoded) and whether decoding replaced anything.
struct Line {
    text: String,
    lossy: bool,
}

/// Splits on `\n`, strips one trailing `\r` per line, skips a leading BOM; a final newline
/// does not make an extra empty line (it would be harmless anyway).
fn split_lines(bytes: &[u8]) -> Vec<Line> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == b'\n')
        .map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match std::str::from_utf8(line) {
                Ok(s) => Line {
                    text: s.to_owned(),
                    lossy: false,
                },
                Err(_) => Line {
                    text: String::from_utf8_lossy(line).into_owned(),
                    lossy: true,
                },
            }
        })
        .collect()
}

/// Reads the lines one by one; see [`parse_collect`].
fn parse_lines(path: &Path, lines: Vec<Line>) -> (RawConfig, Vec<ConfigError>) {
    let mut raw = RawConfig {
        path: path.to_path_buf(),
        ..RawConfig::default()
    };
    let mut errors = Vec::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for (index, line) in lines.into_iter().enumerate() {
        let number = index + 1;
        let trimmed = line.text.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.lossy {
            raw.warnings.push(ConfigWarning {
                file: path.to_path_buf(),
                line: number,
                message: "not valid UTF-8; the invalid bytes were replaced by U+FFFD".into(),
            });
        }
        match parse_line(trimmed) {
            Ok(Parsed {
                key,
                value,
                trailing,
            }) => {
                if !trailing.is_empty() && !trailing.starts_with('#') {
                    raw.warnings.push(ConfigWarning {
                        file: path.to_path_buf(),
                        line: number,
                        message: format!(
                            "{key}: text after the closing quote ignored: {} \
                             (a value cannot contain a double quote)",
                            shorten(trailing)
                        ),
                    });
                }
                if let Some(&first) = first_seen.get(key) {
                    raw.warnings.push(ConfigWarning {
                        file: path.to_path_buf(),
                        line: number,
                        message: format!(
                            "{key} is set again here, ignored: the first setting, \
                             line {first}, wins"
                        ),
                    });
                    continue;
                }
                first_seen.insert(key.to_owned(), number);
                raw.entries.push(RawEntry {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    line: number,
                });
            }
            Err(message) => errors.push(ConfigError {
                file: path.to_path_buf(),
                line: number,
                message,
            }),
        }
    }
    (raw, errors)
}

/// A well-formed setting line, borrowed from the text.
struct Parsed<'a> {
    key: &'a str,
    value: &'a str,
    trailing: &'a str,
}

/// One non-blank, non-comment line (already trimmed).
fn parse_line(line: &str) -> Result<Parsed<'_>, String> {
    let key_len = line
        .char_indices()
        .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(line.len(), |(i, _)| i);
    if key_len == 0 {
        return Err(format!(
            "cannot read {}: expected KEY=\"value\", a # comment or a blank line",
            shorten(line)
        ));
    }
    let (key, rest) = line.split_at(key_len);
    let expected = |what: &str| format!("{key}: {what}: expected {key}=\"value\"");
    let Some(rest) = rest.trim_start().strip_prefix('=') else {
        return Err(expected("'=' missing"));
    };
    let Some(rest) = rest.trim_start().strip_prefix('"') else {
        return Err(expected("opening quote missing"));
    };
    let Some((value, trailing)) = rest.split_once('"') else {
        return Err(expected("closing quote missing"));
    };
    Ok(Parsed {
        key,
        value,
        trailing: trailing.trim(),
    })
}

/// Quotes a piece of a line for a message, cut short so one bad line cannot flood the log.
fn shorten(text: &str) -> String {
    format!("{:?}", super::read::excerpt(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> RawConfig {
        match parse(Path::new("portsentry.conf"), text) {
            Ok(raw) => raw,
            Err(e) => panic!("unexpected errors: {e}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("portsentry.conf"), text) {
            Ok(raw) => panic!("expected errors, got {raw:?}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn pairs(raw: &RawConfig) -> Vec<(&str, &str, usize)> {
        raw.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.line))
            .collect()
    }

    fn warnings(raw: &RawConfig) -> Vec<String> {
        raw.warnings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn plain_setting_gives_key_value_and_line() {
        let raw = ok("TCP_PORTS=\"1,11,15\"\n");
        assert_eq!(pairs(&raw), vec![("TCP_PORTS", "1,11,15", 1)]);
        assert!(raw.warnings.is_empty());
    }

    #[test]
    fn spaces_and_tabs_around_equals_are_allowed() {
        let raw = ok("RESOLVE_HOST = \"0\"\nBLOCK_TCP\t=\t\"1\"\n  SCAN_TRIGGER=\"2\"  \n");
        assert_eq!(
            pairs(&raw),
            vec![
                ("RESOLVE_HOST", "0", 1),
                ("BLOCK_TCP", "1", 2),
                ("SCAN_TRIGGER", "2", 3)
            ]
        );
    }

    #[test]
    fn comments_and_blank_lines_are_skipped_but_counted() {
        let raw = ok("# a comment\n\n   \n  # indented comment\n#KILL_ROUTE=\"x\"\nA=\"1\"\n");
        assert_eq!(pairs(&raw), vec![("A", "1", 6)]);
    }

    #[test]
    fn value_is_kept_verbatim_between_quotes() {
        let raw = ok("PORT_BANNER=\"  ** GO AWAY #1 = no **  \"\nE=\"\"\n");
        assert_eq!(
            pairs(&raw),
            vec![
                ("PORT_BANNER", "  ** GO AWAY #1 = no **  ", 1),
                ("E", "", 2)
            ]
        );
    }

    #[test]
    fn comment_after_closing_quote_is_ignored_silently() {
        let raw = ok("BLOCK_TCP=\"1\" # block it\n");
        assert_eq!(pairs(&raw), vec![("BLOCK_TCP", "1", 1)]);
        assert!(raw.warnings.is_empty());
    }

    #[test]
    fn other_text_after_closing_quote_is_ignored_with_a_warning() {
        let raw = ok("KILL_ROUTE=\"/sbin/route -n | grep \"-\" && echo\"\n");
        assert_eq!(
            pairs(&raw),
            vec![("KILL_ROUTE", "/sbin/route -n | grep ", 1)]
        );
        assert_eq!(
            warnings(&raw),
            vec![
                "portsentry.conf:1: KILL_ROUTE: text after the closing quote ignored: \
                 \"-\\\" && echo\\\"\" (a value cannot contain a double quote)"
            ]
        );
    }

    #[test]
    fn missing_opening_quote_is_an_error_naming_line_and_key() {
        assert_eq!(
            errors("# c\nTCP_PORTS=1,2\"\n"),
            vec![
                "portsentry.conf:2: TCP_PORTS: opening quote missing: expected TCP_PORTS=\"value\""
            ]
        );
    }

    #[test]
    fn missing_closing_quote_is_an_error_naming_line_and_key() {
        assert_eq!(
            errors("TCP_PORTS=\"1,2\n"),
            vec![
                "portsentry.conf:1: TCP_PORTS: closing quote missing: expected TCP_PORTS=\"value\""
            ]
        );
    }

    #[test]
    fn unquoted_value_is_an_error() {
        assert_eq!(
            errors("BLOCK_TCP=1\n"),
            vec![
                "portsentry.conf:1: BLOCK_TCP: opening quote missing: expected BLOCK_TCP=\"value\""
            ]
        );
    }

    #[test]
    fn missing_equals_is_an_error() {
        assert_eq!(
            errors("BLOCK_TCP \"1\"\n"),
            vec!["portsentry.conf:1: BLOCK_TCP: '=' missing: expected BLOCK_TCP=\"value\""]
        );
    }

    #[test]
    fn garbage_line_is_an_error_with_its_line() {
        assert_eq!(
            errors("A=\"1\"\n=\"x\"\n}\n"),
            vec![
                "portsentry.conf:2: cannot read \"=\\\"x\\\"\": expected KEY=\"value\", a # comment or a blank line",
                "portsentry.conf:3: cannot read \"}\": expected KEY=\"value\", a # comment or a blank line",
            ]
        );
    }

    #[test]
    fn every_bad_line_is_reported_in_one_pass() {
        let errs = errors("A=1\nB=\"2\"\nC=\"3\n");
        assert_eq!(errs.len(), 2);
        assert!(errs[0].starts_with("portsentry.conf:1: A:"));
        assert!(errs[1].starts_with("portsentry.conf:3: C:"));
    }

    #[test]
    fn first_occurrence_wins_and_duplicate_warns_with_both_lines() {
        let raw = ok("BLOCK_TCP=\"1\"\n# x\nBLOCK_TCP=\"0\"\n");
        assert_eq!(pairs(&raw), vec![("BLOCK_TCP", "1", 1)]);
        assert_eq!(
            warnings(&raw),
            vec![
                "portsentry.conf:3: BLOCK_TCP is set again here, ignored: the first setting, line 1, wins"
            ]
        );
    }

    #[test]
    fn crlf_line_endings_are_handled() {
        let raw = ok("A=\"1\"\r\n\r\n# c\r\nB = \"two words\"\r\n");
        assert_eq!(pairs(&raw), vec![("A", "1", 1), ("B", "two words", 4)]);
        assert!(raw.warnings.is_empty());
    }

    #[test]
    fn last_line_without_newline_is_read() {
        let raw = ok("A=\"1\"\nB=\"2\"");
        assert_eq!(pairs(&raw), vec![("A", "1", 1), ("B", "2", 2)]);
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let raw = ok("\u{feff}A=\"1\"\n");
        assert_eq!(pairs(&raw), vec![("A", "1", 1)]);
    }

    #[test]
    fn empty_file_has_no_entries() {
        assert!(ok("").entries.is_empty());
        assert!(ok("\n\n").entries.is_empty());
    }

    #[test]
    fn non_utf8_in_comment_is_silent_and_in_a_setting_warns() {
        let bytes = b"# caf\xe9 latin-1\nPORT_BANNER=\"caf\xe9\"\nA=\"1\"\n";
        let raw = match parse_bytes(Path::new("portsentry.conf"), bytes) {
            Ok(raw) => raw,
            Err(e) => panic!("unexpected errors: {e}"),
        };
        assert_eq!(
            pairs(&raw),
            vec![("PORT_BANNER", "caf\u{fffd}", 2), ("A", "1", 3)]
        );
        assert_eq!(
            warnings(&raw),
            vec!["portsentry.conf:2: not valid UTF-8; the invalid bytes were replaced by U+FFFD"]
        );
    }

    #[test]
    fn key_may_hold_digits_and_lower_case_but_not_start_with_a_digit() {
        let raw = ok("Plugin2_x=\"v\"\n");
        assert_eq!(pairs(&raw), vec![("Plugin2_x", "v", 1)]);
        assert_eq!(
            errors("2A=\"v\"\n"),
            vec![
                "portsentry.conf:1: cannot read \"2A=\\\"v\\\"\": expected KEY=\"value\", a # comment or a blank line"
            ]
        );
    }

    #[test]
    fn long_garbage_is_shortened_in_the_message() {
        let line = "?".repeat(200);
        let errs = errors(&line);
        assert!(errs[0].contains(&format!("\"{}… (200 bytes)\"", "?".repeat(80))));
        assert!(errs[0].len() < 200);
    }
}
