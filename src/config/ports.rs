//! Port lists: `1,11,15`, ranges `512-515`, no 64-entry cap.
//! (Implementation in progress.)

/// Parses a port list; the error says which element is wrong and why.
pub fn parse_port_list(text: &str) -> Result<Vec<u16>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u16>().map_err(|_| format!("'{s}' is not a port number")))
        .collect()
}
