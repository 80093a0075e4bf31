//! The default `UNKILL_ROUTE`: the command that takes back what a `KILL_ROUTE` of a well-known
//! form did, so that blocks made by 1.2 configs can expire without the admin writing the
//! inverse command by hand.
//!
//! Only plain commands are read: one program and its words, no shell syntax (`&&`, `;`,
//! pipes, quotes, redirections), since guessing the inverse of a script could remove the
//! wrong thing. Anything not recognised gives `None`, and blocks made by it are kept.

use super::Config;

/// Why what `KILL_RUN_CMD` did is not undone (block records and `--check-config`).
pub const NO_UNKILL_RUN_CMD: &str = "no UNKILL_RUN_CMD";

/// Why what `KILL_ROUTE` did is not undone under `config`: no undo known, or the admin said
/// so with an empty `UNKILL_ROUTE`.
pub fn no_unkill_route_why(config: &Config) -> &'static str {
    if config.raw.contains_key("UNKILL_ROUTE") {
        "UNKILL_ROUTE is empty"
    } else {
        "no UNKILL_ROUTE and KILL_ROUTE is not a form whose undo is known"
    }
}

/// Characters that make a command line more than one plain command (braces are fine: `nft`
/// takes `{ … }` as plain words).
const SHELL_SYNTAX: &[char] = &[
    ';', '&', '|', '<', '>', '`', '(', ')', '\'', '"', '\\', '\n', '#', '*', '?',
];

/// The command undoing `kill_route`, or `None` when its form is not one whose undo is known:
///
/// - `ip [options] route add …` -> `ip [options] route del …` (also `ip -6`, `/sbin/ip`);
/// - `route add …` -> `route del …` (`route add -host $TARGET$ reject`, `route add $TARGET$ gw`);
/// - `iptables [options] -I CHAIN [N] rule` or `-A CHAIN rule` -> `iptables [options] -D
///   CHAIN rule` (also `ip6tables`, `-legacy` and `-nft` variants; a position number is
///   dropped, `-D` takes none);
/// - `nft add element …` -> `nft delete element …`.
///
/// Words are re-joined with single spaces; macros stay in place and are substituted at block
/// time with the same values as the `KILL_ROUTE` itself.
pub fn derive_unkill_route(kill_route: &str) -> Option<String> {
    if kill_route.contains(SHELL_SYNTAX) {
        return None;
    }
    let mut words: Vec<&str> = kill_route.split_whitespace().collect();
    let program = words.first()?.rsplit('/').next()?;
    match program {
        "ip" => replace_verb(&mut words, &["route", "add"], 1, "del"),
        "route" => replace_verb(&mut words, &["add"], 0, "del"),
        "nft" => replace_verb(&mut words, &["add", "element"], 0, "delete"),
        p if is_iptables(p) => iptables_delete(&mut words),
        _ => None,
    }?;
    Some(words.join(" "))
}

/// `iptables`, `ip6tables`, and their `-legacy` / `-nft` builds.
fn is_iptables(program: &str) -> bool {
    ["iptables", "ip6tables"].iter().any(|base| {
        program
            .strip_prefix(base)
            .is_some_and(|rest| matches!(rest, "" | "-legacy" | "-nft"))
    })
}

/// After the program and any `-option` words, the command must go on with `expected` (`route
/// add`) and at least one more word (the target); the word at `verb` is replaced by `new`.
/// `None` when the command does not have that shape.
fn replace_verb(
    words: &mut [&str],
    expected: &[&str],
    verb: usize,
    new: &'static str,
) -> Option<()> {
    let first = 1 + words[1..].iter().take_while(|w| w.starts_with('-')).count();
    let rest = words.get(first..)?;
    if rest.len() <= expected.len() || !rest.starts_with(expected) {
        return None;
    }
    words[first + verb] = new;
    Some(())
}

/// iptables commands other than insert/append: a KILL_ROUTE holding one of them is not a
/// plain rule insertion.
const IPTABLES_OTHER_COMMANDS: &[&str] = &[
    "-D",
    "--delete",
    "-R",
    "--replace",
    "-N",
    "--new-chain",
    "-F",
    "--flush",
    "-X",
    "--delete-chain",
    "-P",
    "--policy",
    "-Z",
    "--zero",
    "-L",
    "--list",
    "-S",
    "--list-rules",
    "-C",
    "--check",
    "-E",
    "--rename-chain",
];

/// `-I CHAIN [N] rule` / `-A CHAIN rule` -> `-D CHAIN rule`.
fn iptables_delete(words: &mut Vec<&str>) -> Option<()> {
    if words.iter().any(|w| IPTABLES_OTHER_COMMANDS.contains(w)) {
        return None;
    }
    let mut ops = words
        .iter()
        .enumerate()
        .filter(|(_, w)| matches!(**w, "-I" | "--insert" | "-A" | "--append"));
    let (at, op) = ops.next().map(|(i, w)| (i, *w))?;
    if ops.next().is_some() {
        return None;
    }
    let chain = words.get(at + 1)?;
    if chain.starts_with('-') {
        return None;
    }
    let insert = matches!(op, "-I" | "--insert");
    if insert
        && words
            .get(at + 2)
            .is_some_and(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
    {
        words.remove(at + 2);
    }
    // A rule must follow the chain, or the delete would name no rule.
    (words.len() > at + 2).then_some(())?;
    words[at] = "-D";
    Some(())
}

#[cfg(test)]
mod tests {
    use super::derive_unkill_route as derive;

    #[test]
    fn ip_route_add_becomes_del_with_options_and_full_paths() {
        assert_eq!(
            derive("/sbin/ip route add unreachable $TARGET$").as_deref(),
            Some("/sbin/ip route del unreachable $TARGET$")
        );
        assert_eq!(
            derive("ip -6 route add blackhole $TARGET$").as_deref(),
            Some("ip -6 route del blackhole $TARGET$")
        );
        assert_eq!(
            derive("ip  route   add $TARGET$ via 192.0.2.1").as_deref(),
            Some("ip route del $TARGET$ via 192.0.2.1")
        );
    }

    #[test]
    fn net_tools_route_add_becomes_route_del() {
        assert_eq!(
            derive("route add -host $TARGET$ reject").as_deref(),
            Some("route del -host $TARGET$ reject")
        );
        assert_eq!(
            derive("/sbin/route add -host $TARGET$ reject").as_deref(),
            Some("/sbin/route del -host $TARGET$ reject")
        );
        assert_eq!(
            derive("/sbin/route add $TARGET$ 333.444.555.666").as_deref(),
            Some("/sbin/route del $TARGET$ 333.444.555.666")
        );
    }

    #[test]
    fn iptables_insert_and_append_become_delete_without_position() {
        assert_eq!(
            derive("/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP").as_deref(),
            Some("/usr/sbin/iptables -D INPUT -s $TARGET$ -j DROP")
        );
        assert_eq!(
            derive("iptables -w -I INPUT 1 -s $TARGET$ -j DROP").as_deref(),
            Some("iptables -w -D INPUT -s $TARGET$ -j DROP")
        );
        assert_eq!(
            derive("ip6tables -A INPUT -s $TARGET$ -j REJECT").as_deref(),
            Some("ip6tables -D INPUT -s $TARGET$ -j REJECT")
        );
        assert_eq!(
            derive("iptables-nft -t raw --insert PREROUTING -s $TARGET$ -j DROP").as_deref(),
            Some("iptables-nft -t raw -D PREROUTING -s $TARGET$ -j DROP")
        );
    }

    #[test]
    fn nft_add_element_becomes_delete_element() {
        assert_eq!(
            derive("/usr/sbin/nft add element inet portsentry blocked { $TARGET$ }").as_deref(),
            Some("/usr/sbin/nft delete element inet portsentry blocked { $TARGET$ }")
        );
        assert_eq!(
            derive("nft add element inet portsentry blocked $TARGET$").as_deref(),
            Some("nft delete element inet portsentry blocked $TARGET$")
        );
        assert_eq!(derive("nft add rule inet t c ip saddr $TARGET$ drop"), None);
    }

    #[test]
    fn unknown_commands_and_shell_syntax_have_no_known_undo() {
        for command in [
            "",
            "/usr/local/bin/block $TARGET$",
            "ip route replace unreachable $TARGET$",
            "ip addr add $TARGET$ dev lo",
            "ip route add",
            "route -A inet6 add $TARGET$",
            "iptables -I INPUT -s $TARGET$ -j DROP && iptables -I INPUT -j LOG",
            "iptables -I INPUT -s $TARGET$ -j DROP; logger x",
            "iptables -N portsentry",
            "iptables -I INPUT",
            "iptables -I INPUT 3",
            "iptables -D INPUT -s $TARGET$ -j DROP",
            "iptables -I INPUT -s $TARGET$ -j DROP -A OUTPUT",
            "sh -c 'ip route add unreachable $TARGET$'",
            "ip route add unreachable $TARGET$ > /dev/null",
        ] {
            assert_eq!(derive(command), None, "{command:?}");
        }
    }
}
