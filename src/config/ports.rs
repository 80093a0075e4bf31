//! Port lists: `1,11,15`, ranges `512-515` (2.0 style), no 64-entry cap.
//!
//! 1.2 silently kept only the first 64 entries and read garbage as port 0; here every element
//! must be a port (1-65535) or a range `a-b` with `a <= b`, spaces around elements are
//! tolerated, and duplicates are dropped keeping the first occurrence, so the order the admin
//! wrote (which decides the order of the "listen mode" log lines) survives.

/// Parses a port list; the error says which element is wrong and why.
///
/// An empty (or all-blank) list is valid and means "no ports": an admin may switch a
/// protocol's trap ports off with `UDP_PORTS=""`.
pub fn parse_port_list(text: &str) -> Result<Vec<u16>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = vec![false; usize::from(u16::MAX) + 1];
    let mut ports = Vec::new();
    for element in text.split(',') {
        let element = element.trim();
        let (first, last) = parse_element(element)?;
        for port in first..=last {
            let slot = &mut seen[usize::from(port)];
            if !*slot {
                *slot = true;
                ports.push(port);
            }
        }
    }
    Ok(ports)
}

/// One element of the list: a single port (as a one-port range) or `a-b`.
fn parse_element(element: &str) -> Result<(u16, u16), String> {
    if element.is_empty() {
        return Err("empty entry in the list (two commas in a row, or a comma at an end)".into());
    }
    match element.split_once('-') {
        None => {
            let port = parse_port(element)?;
            Ok((port, port))
        }
        Some((a, b)) => {
            let (a, b) = (a.trim(), b.trim());
            if a.is_empty() || b.is_empty() {
                return Err(format!(
                    "'{element}' is not a port range (expected first-last, e.g. 512-515)"
                ));
            }
            let (first, last) = (parse_port(a)?, parse_port(b)?);
            if first > last {
                return Err(format!(
                    "'{element}' is a reversed range (write {last}-{first})"
                ));
            }
            Ok((first, last))
        }
    }
}

/// A single port number, strictly: ASCII digits only (no sign, no trailing garbage), 1-65535.
pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{text}' is not a port number"));
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => {
            u16::try_from(n).map_err(|_| format!("'{text}' is out of range (ports are 1-65535)"))
        }
        _ => Err(format!("'{text}' is out of range (ports are 1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_list_keeps_written_order() {
        assert_eq!(parse_port_list("1,11,15").unwrap(), vec![1, 11, 15]);
        assert_eq!(parse_port_list("15,1,11").unwrap(), vec![15, 1, 11]);
    }

    #[test]
    fn spaces_around_elements_are_tolerated() {
        assert_eq!(parse_port_list(" 1 , 11,  15 ").unwrap(), vec![1, 11, 15]);
        assert_eq!(
            parse_port_list("512 - 515").unwrap(),
            vec![512, 513, 514, 515]
        );
    }

    #[test]
    fn empty_list_means_no_ports() {
        assert_eq!(parse_port_list("").unwrap(), Vec::<u16>::new());
        assert_eq!(parse_port_list("   ").unwrap(), Vec::<u16>::new());
    }

    #[test]
    fn range_expands_inclusively() {
        assert_eq!(
            parse_port_list("1,512-515,600").unwrap(),
            vec![1, 512, 513, 514, 515, 600]
        );
        assert_eq!(parse_port_list("7-7").unwrap(), vec![7]);
    }

    #[test]
    fn full_range_is_allowed() {
        let ports = parse_port_list("1-65535").unwrap();
        assert_eq!(ports.len(), 65535);
        assert_eq!(ports.first(), Some(&1));
        assert_eq!(ports.last(), Some(&65535));
    }

    #[test]
    fn more_than_64_ports_are_all_kept() {
        let text: Vec<String> = (1000..1150).map(|p| p.to_string()).collect();
        let ports = parse_port_list(&text.join(",")).unwrap();
        assert_eq!(ports.len(), 150);
        assert_eq!(ports[149], 1149);
    }

    #[test]
    fn duplicates_are_removed_keeping_first_position() {
        assert_eq!(parse_port_list("5,3,5,1-4,3").unwrap(), vec![5, 3, 1, 2, 4]);
    }

    #[test]
    fn garbage_element_is_named() {
        assert_eq!(
            parse_port_list("80,x").unwrap_err(),
            "'x' is not a port number"
        );
        assert_eq!(
            parse_port_list("80,8o").unwrap_err(),
            "'8o' is not a port number"
        );
        assert_eq!(
            parse_port_list("+80").unwrap_err(),
            "'+80' is not a port number"
        );
        assert_eq!(
            parse_port_list("-80").unwrap_err(),
            "'-80' is not a port range (expected first-last, e.g. 512-515)"
        );
    }

    #[test]
    fn port_zero_is_rejected() {
        assert_eq!(
            parse_port_list("0,1").unwrap_err(),
            "'0' is out of range (ports are 1-65535)"
        );
        assert_eq!(
            parse_port_list("0-10").unwrap_err(),
            "'0' is out of range (ports are 1-65535)"
        );
    }

    #[test]
    fn port_above_65535_is_rejected() {
        assert_eq!(
            parse_port_list("65536").unwrap_err(),
            "'65536' is out of range (ports are 1-65535)"
        );
        assert_eq!(
            parse_port_list("99999999999999999999").unwrap_err(),
            "'99999999999999999999' is out of range (ports are 1-65535)"
        );
    }

    #[test]
    fn reversed_range_is_rejected() {
        assert_eq!(
            parse_port_list("515-512").unwrap_err(),
            "'515-512' is a reversed range (write 512-515)"
        );
    }

    #[test]
    fn malformed_ranges_are_rejected() {
        assert_eq!(
            parse_port_list("512-").unwrap_err(),
            "'512-' is not a port range (expected first-last, e.g. 512-515)"
        );
        assert_eq!(
            parse_port_list("1-2-3").unwrap_err(),
            "'2-3' is not a port number"
        );
    }

    #[test]
    fn empty_element_is_rejected() {
        let expected = "empty entry in the list (two commas in a row, or a comma at an end)";
        assert_eq!(parse_port_list("1,,2").unwrap_err(), expected);
        assert_eq!(parse_port_list("1,2,").unwrap_err(), expected);
        assert_eq!(parse_port_list(",1").unwrap_err(), expected);
        assert_eq!(parse_port_list("1, ,2").unwrap_err(), expected);
    }
}
