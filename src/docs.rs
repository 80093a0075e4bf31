//! Man pages and shell completions, generated from what the program itself knows, so they
//! cannot drift from it: `portsentry(8)` and one `portsentry-<command>(8)` per client command
//! from the clap definitions that print `--help` ([`crate::cli::command`]), `portsentry.conf(5)`
//! from the config key table ([`KEYS`]) and the built-in defaults, and the bash and zsh
//! completions from the same clap definitions.
//!
//! Nothing generated is kept in git: the package build asks the binary it packages
//! (`portsentry --generate-man DIR --generate-completions DIR`, flags read before clap so that
//! no page or completion offers them) and ships what it writes, so a copy in git could only
//! ever be stale; the package test checks that the installed pages are what the installed
//! binary generates. The tests below check that every command and every key reaches the
//! pages.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap_complete::Shell;
use roff::{Roff, bold, italic, roman};

use crate::cli::{DEFAULT_MODES_FILE, EXIT_FAILURE, EXIT_USAGE};
use crate::config::DEFAULT_CONFIG_PATH;
use crate::config::build::{KEYS, defaults};

/// Name of the manual these pages belong to (the centre of the page footer).
const MANUAL_8: &str = "System Manager's Manual";
/// Manual of section 5.
const MANUAL_5: &str = "File Formats Manual";

/// One generated file: its name in the output directory and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// File name, e.g. `portsentry.8` or `_portsentry`.
    pub name: String,
    /// The text to write.
    pub text: String,
}

/// Every man page: `portsentry.8`, `portsentry-<command>.8` for each client command, and
/// `portsentry.conf.5`.
pub fn man_pages() -> Vec<Generated> {
    // `help` is clap's own subcommand: `--help` covers it, it gets no page.
    let mut cmd = crate::cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![Generated {
        name: "portsentry.8".into(),
        text: main_page(&cmd),
    }];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = man8(sub.clone());
        let mut text = render(|w| man.render(w));
        text.push_str(&see_also(&["portsentry(8)", "portsentry.conf(5)"]));
        pages.push(Generated {
            name: man.get_filename(),
            text,
        });
    }
    pages.push(Generated {
        name: "portsentry.conf.5".into(),
        text: conf_page(),
    });
    pages
}

/// The bash (`portsentry.bash`) and zsh (`_portsentry`) completion scripts.
pub fn completions() -> Vec<Generated> {
    [
        (Shell::Bash, "portsentry.bash"),
        (Shell::Zsh, "_portsentry"),
    ]
    .into_iter()
    .map(|(shell, name)| {
        let mut cmd = crate::cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, "portsentry", &mut buf);
        Generated {
            name: name.into(),
            text: String::from_utf8_lossy(&buf).into_owned(),
        }
    })
    .collect()
}

/// Writes `files` into `dir` (created if missing); returns the paths written.
pub fn write_all(dir: &Path, files: &[Generated]) -> io::Result<Vec<PathBuf>> {
    let named = |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| named(dir, e))?;
    files
        .iter()
        .map(|f| {
            let path = dir.join(&f.name);
            std::fs::write(&path, &f.text).map_err(|e| named(&path, e))?;
            Ok(path)
        })
        .collect()
}

/// `--generate-man DIR` and/or `--generate-completions DIR`, alone on the command line: the
/// package build's step, writing these files and naming each on stdout. Read
/// before clap, so that neither `--help`, the man pages nor the completions offer admins a
/// maintainer's flag. `None`: not such a command line.
pub fn generate(argv: &[String]) -> Option<i32> {
    let mut rest = argv.get(1..)?;
    if !rest.first()?.starts_with("--generate-") {
        return None;
    }
    let mut jobs = Vec::new();
    while let Some((flag, tail)) = rest.split_first() {
        let man = match flag.as_str() {
            "--generate-man" => true,
            "--generate-completions" => false,
            other => {
                eprintln!(
                    "portsentry: {other}: expected --generate-man DIR or --generate-completions DIR"
                );
                return Some(EXIT_USAGE);
            }
        };
        let Some((dir, tail)) = tail.split_first() else {
            eprintln!("portsentry: {flag} needs a directory");
            return Some(EXIT_USAGE);
        };
        jobs.push((Path::new(dir), man));
        rest = tail;
    }
    for (dir, man) in jobs {
        let files = if man { man_pages() } else { completions() };
        match write_all(dir, &files) {
            Ok(paths) => {
                for p in paths {
                    println!("{}", p.display());
                }
            }
            Err(e) => {
                eprintln!("portsentry: {e}");
                return Some(EXIT_FAILURE);
            }
        }
    }
    Some(0)
}

/// `portsentry 0.1.0`: the footer's source field.
fn source() -> String {
    format!("portsentry {}", env!("CARGO_PKG_VERSION"))
}

/// The lines the roff crate puts before every piece it renders (they define the `Aq`
/// string that typesets an apostrophe as one). A page needs them once, at the top.
const APOSTROPHE_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// Runs a roff writer into a string (writing to a `Vec` cannot fail; a failure would only
/// lose the section, never panic).
fn render(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
    let mut buf = Vec::new();
    let _ = f(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// [`render`] for a piece that goes after the start of a page: without the preamble.
fn render_more(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
    let text = render(f);
    match text.strip_prefix(APOSTROPHE_PREAMBLE) {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

/// The page date: the day of `SOURCE_DATE_EPOCH` when set (reproducible package builds set
/// it to the last commit's time), else today, in UTC.
fn man_date() -> String {
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    let time = match epoch.and_then(|e| chrono::DateTime::from_timestamp(e, 0)) {
        Some(t) => t,
        None => chrono::Utc::now(),
    };
    time.format("%Y-%m-%d").to_string()
}

/// A section-8 page of this package for `cmd`.
fn man8(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .section("8")
        .date(man_date())
        .manual(MANUAL_8)
        .source(source())
}

/// portsentry(8): clap's sections (synopsis, description, options, commands), then the modes
/// text of `--help`, the files the defaults name, signals, exit status.
fn main_page(cmd: &clap::Command) -> String {
    let man = man8(cmd.clone());
    let mut text = render(|w| man.render_title(w));
    text.push_str(&render_more(|w| man.render_name_section(w)));
    text.push_str(&render_more(|w| man.render_synopsis_section(w)));
    text.push_str(&render_more(|w| man.render_description_section(w)));
    text.push_str(&render_more(|w| man.render_options_section(w)));
    text.push_str(&render_more(|w| man.render_subcommands_section(w)));

    let mut r = Roff::new();
    if let Some(modes) = cmd.get_after_help() {
        r.control("SH", ["MODES"]);
        r.text([roman(
            "PortSentry 1.2 spells the mode flags with one dash; both spellings are accepted.",
        )]);
        r.control("PP", []).control("nf", []);
        for line in modes.to_string().lines() {
            r.text([roman(line)]);
        }
        r.control("fi", []);
    }

    r.control("SH", ["FILES"]);
    for (path, what) in files() {
        r.control("TP", []).text([italic(path)]).text([roman(what)]);
    }

    r.control("SH", ["SIGNALS"]);
    r.control("TP", [])
        .text([bold("SIGTERM"), roman(", "), bold("SIGINT")])
        .text([roman("Stop the daemon.")]);
    r.control("TP", []).text([bold("SIGHUP")]).text([roman(
        "Re-read every configuration file, as the reload command does; \
         a refused configuration leaves the running one in force.",
    )]);

    r.control("SH", ["EXIT STATUS"]);
    for (code, what) in [
        (0, "success".to_string()),
        (
            EXIT_FAILURE,
            "configuration refused or start-up failure".into(),
        ),
        (EXIT_USAGE, "command-line error".into()),
    ] {
        r.control("TP", [])
            .text([bold(code.to_string())])
            .text([roman(what)]);
    }
    r.control("PP", []).text([roman(format!(
        "With --test-plugin: {} when every handler succeeded (a veto counts as success), {} when \
         a handler failed, {} when the plugin did not load, {} when the plugin was still running \
         well past its LUA_CALL_TIMEOUT budget and the watchdog ended it. --dry-run shows the \
         commands and file writes instead of doing them; --set KEY=VALUE adds a plugin setting.",
        crate::respond::lua::EXIT_OK,
        crate::respond::lua::EXIT_HANDLER_FAILED,
        crate::respond::lua::EXIT_LOAD_FAILED,
        crate::respond::lua::EXIT_TIMED_OUT,
    ))]);
    text.push_str(&render_more(|w| r.to_writer(w)));

    let mut also: Vec<String> = vec!["portsentry.conf(5)".into()];
    also.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("portsentry-{}(8)", s.get_name())),
    );
    also.push("fail2ban(1)".into());
    let also: Vec<&str> = also.iter().map(String::as_str).collect();
    text.push_str(&see_also(&also));
    text.push_str(&render_more(|w| man.render_version_section(w)));
    text
}

/// The files a default installation uses, with the key that moves each.
fn files() -> Vec<(String, String)> {
    let d = defaults(Path::new(DEFAULT_CONFIG_PATH));
    let show = |p: &Path| p.display().to_string();
    vec![
        (
            DEFAULT_CONFIG_PATH.to_string(),
            "The configuration, see portsentry.conf(5); -c moves it.".into(),
        ),
        (
            DEFAULT_MODES_FILE.to_string(),
            "TCP_MODE and UDP_MODE, read when no mode flag is given.".into(),
        ),
        (
            show(&d.ignore_file),
            "Addresses never acted on (IGNORE_FILE).".into(),
        ),
        (
            show(&crate::config::ignore::static_path(&d.ignore_file)),
            "More addresses never acted on, the list admins edit.".into(),
        ),
        (
            show(&d.history_file),
            "One 1.2-format line per block (HISTORY_FILE); fail2ban reads it.".into(),
        ),
        (
            show(&d.blocked_file),
            "The hosts blocked now (BLOCKED_FILE).".into(),
        ),
        (
            show(&d.block_state_file),
            "The block journal that restores blocks after a restart (BLOCK_STATE_FILE).".into(),
        ),
        (
            show(&d.control_socket),
            "The socket the client commands use (CONTROL_SOCKET).".into(),
        ),
        (show(&d.plugin_dir), "Lua responders (PLUGIN_DIR).".into()),
        (
            show(&d.lua_lib_dir),
            "The Lua library every plugin gets (LUA_PATH_DIR).".into(),
        ),
    ]
}

/// A SEE ALSO section naming `pages` (`name(section)`), in bold as man-pages(7) asks.
fn see_also(pages: &[&str]) -> String {
    let mut r = Roff::new();
    r.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        match page.split_once('(') {
            Some((name, section)) => {
                line.push(bold(name));
                line.push(roman(format!("({section}")));
            }
            None => line.push(bold(*page)),
        }
    }
    r.text(line);
    render_more(|w| r.to_writer(w))
}

/// A key's entry in portsentry.conf(5): its doc line and the bound of its value.
fn key_doc(key: &crate::config::build::KeySpec) -> String {
    format!("{} {}", key.doc, key.bound().sentence())
}

/// portsentry.conf(5): the syntax, then one entry per key of [`KEYS`] with its doc line.
fn conf_page() -> String {
    let mut r = Roff::new();
    r.control(
        "TH",
        ["portsentry.conf", "5", &man_date(), &source(), MANUAL_5],
    );
    r.control("SH", ["NAME"]);
    r.text([roman(
        "portsentry.conf - configuration of the portsentry port-scan detector",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([italic(DEFAULT_CONFIG_PATH)]);
    r.control("SH", ["DESCRIPTION"]);
    for para in [
        "The file has the syntax of PortSentry 1.2, and a 1.2 file works as it is. \
         Each setting is a line KEY=\"value\": spaces around = are allowed, the value is \
         everything between the two double quotes. Blank lines and lines starting with # \
         are skipped. The first occurrence of a key wins; a later one draws a warning.",
        "An unknown key is a warning naming its line; a malformed value of a known key is an \
         error naming the file, the line and what was expected. portsentry --check-config \
         prints every error and warning at once.",
        "Durations need a unit: 30s, 5m, 1h, \"1h 30m\", 7d. Port lists are comma-separated \
         ports and ranges (1,11,512-515).",
        "In KILL_ROUTE, KILL_HOSTS_DENY and KILL_RUN_CMD (and their UNKILL_ counterparts), \
         $TARGET$ is replaced by the attacker's address, $PORT$ by the port probed and \
         $MODE$ by the mode that saw it (tcp, udp, stcp, sudp, atcp, audp).",
        "A key named <PLUGIN>_<SETTING> is a setting of the Lua responder <plugin> when that \
         plugin is listed in LUA_RESPONDERS (NFTABLES_TIMEOUT for plugins/nftables.lua).",
        "Every value is bounded: each key below says how many bytes it takes at most, a \
         plugin setting takes 4096. A longer value is an error on its line (PORT_BANNER, \
         for one, takes 1024 bytes, as PortSentry 1.2's buffer did).",
        "The running daemon re-reads the file on SIGHUP, on portsentry reload, and when the \
         file changes; a configuration with errors is refused and the running one stays.",
    ] {
        r.control("PP", []).text([roman(para)]);
    }
    r.control("SH", ["KEYS"]);
    for key in KEYS {
        r.control("TP", [])
            .text([bold(key.name)])
            .text([roman(key_doc(key))]);
    }
    r.control("SH", ["FILES"]);
    r.control("TP", [])
        .text([italic(DEFAULT_CONFIG_PATH)])
        .text([roman(
            "The file read when portsentry is started without -c.",
        )]);
    let mut text = render(|w| r.to_writer(w));
    text.push_str(&see_also(&["portsentry(8)"]));
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn generate_flags_write_the_docs_and_nothing_else_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let man = dir.path().join("man");
        let comp = dir.path().join("completions");
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let code = generate(&argv(&[
            "portsentry",
            "--generate-man",
            man.to_str().unwrap(),
            "--generate-completions",
            comp.to_str().unwrap(),
        ]));
        assert_eq!(code, Some(0));
        assert!(man.join("portsentry.8").is_file());
        assert!(man.join("portsentry.conf.5").is_file());
        assert!(comp.join("_portsentry").is_file());
        assert_eq!(
            generate(&argv(&["portsentry", "--generate-man"])),
            Some(EXIT_USAGE)
        );
        assert_eq!(
            generate(&argv(&["portsentry", "--generate-man", "/x", "-tcp"])),
            Some(EXIT_USAGE)
        );
        assert_eq!(generate(&argv(&["portsentry", "-tcp"])), None);
        assert_eq!(generate(&argv(&["portsentry"])), None);
    }

    use super::*;

    fn page<'a>(pages: &'a [Generated], name: &str) -> &'a str {
        &pages
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no page {name}"))
            .text
    }

    /// What a reader of the page sees, roughly: roff escapes and font changes undone.
    fn plain(roff: &str) -> String {
        roff.replace("\\fB", "")
            .replace("\\fI", "")
            .replace("\\fR", "")
            .replace("\\*(Aq", "'")
            .replace("\\&", "")
            .replace("\\-", "-")
            .replace("\\\\", "\\")
    }

    fn client_commands() -> Vec<String> {
        crate::cli::command()
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect()
    }

    #[test]
    fn every_client_command_is_in_the_main_page_and_has_its_own() {
        let pages = man_pages();
        let main = page(&pages, "portsentry.8");
        let commands = client_commands();
        assert_eq!(
            commands,
            ["status", "list", "unblock", "block", "reload", "replay"]
        );
        for sub in &commands {
            assert!(
                plain(main).contains(&format!("portsentry-{sub}(8)")),
                "{sub}"
            );
            let own = plain(page(&pages, &format!("portsentry-{sub}.8")));
            assert!(own.contains(&format!(".TH portsentry-{sub} 8 ")), "{own}");
            // Client commands name the daemon's socket; replay runs in this process.
            let wanted = if sub == "replay" {
                "--listening"
            } else {
                "--socket"
            };
            assert!(own.contains(wanted), "{sub}: {own}");
        }
        assert!(plain(page(&pages, "portsentry-block.8")).contains("--from-file"));
        let replay = plain(page(&pages, "portsentry-replay.8"));
        assert!(
            replay.contains("--plugins") && replay.contains("--gateway"),
            "{replay}"
        );
        // clap's own `help` subcommand gets no page.
        assert_eq!(pages.len(), commands.len() + 2);
    }

    #[test]
    fn main_page_has_the_options_modes_and_files() {
        let pages = man_pages();
        let main = plain(page(&pages, "portsentry.8"));
        for text in [
            ".TH portsentry 8",
            "--check-config",
            "--atcp",
            ".SH MODES",
            "-atcp, -audp",
            "/etc/portsentry/portsentry.conf",
            "/etc/default/portsentry",
            "/var/lib/portsentry/portsentry.history",
            "/usr/share/portsentry/lua",
            ".SH \"EXIT STATUS\"",
            "portsentry.conf(5)",
        ] {
            assert!(main.contains(text), "{text} missing from:\n{main}");
        }
        // The package build's generator flags are not for admins.
        assert!(!main.contains("--generate"), "{main}");
    }

    #[test]
    fn conf_page_documents_every_key_with_its_doc() {
        let pages = man_pages();
        let conf = plain(page(&pages, "portsentry.conf.5"));
        assert!(conf.contains(".TH portsentry.conf 5 "), "{conf}");
        for key in KEYS {
            assert!(
                conf.contains(&format!(".TP\n{}\n{}\n", key.name, key_doc(key))),
                "{} missing from:\n{conf}",
                key.name
            );
        }
    }

    #[test]
    fn completions_offer_every_client_command_and_the_options() {
        let files = completions();
        assert_eq!(
            files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["portsentry.bash", "_portsentry"]
        );
        for f in &files {
            for sub in client_commands() {
                assert!(f.text.contains(&sub), "{}: {sub}", f.name);
            }
            assert!(f.text.contains("--check-config"), "{}", f.name);
            assert!(f.text.contains("--from-file"), "{}", f.name);
            assert!(!f.text.contains("--generate-man"), "{}", f.name);
        }
        assert!(files[1].text.starts_with("#compdef portsentry"));
    }

    #[test]
    fn pages_are_well_formed_roff() {
        for p in man_pages() {
            // The apostrophe preamble once, at the top; then the title with every field.
            assert!(p.text.starts_with(APOSTROPHE_PREAMBLE), "{}", p.name);
            assert_eq!(p.text.matches(APOSTROPHE_PREAMBLE).count(), 1, "{}", p.name);
            let th = p.text.lines().nth(2).unwrap_or_default();
            let (section, manual) = if p.name.ends_with(".5") {
                ("5", MANUAL_5)
            } else {
                ("8", MANUAL_8)
            };
            assert!(th.starts_with(".TH portsentry"), "{}: {th}", p.name);
            assert!(
                th.ends_with(&format!(
                    " {section} {} \"{}\" \"{manual}\"",
                    man_date(),
                    source()
                )),
                "{}: {th}",
                p.name
            );
            assert!(p.text.contains(".SH NAME\n"), "{}", p.name);
            assert!(p.text.contains(".SH \"SEE ALSO\"\n"), "{}", p.name);
        }
    }

    #[test]
    fn write_all_writes_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("man");
        let written = write_all(&out, &man_pages()).unwrap();
        assert_eq!(written.len(), 8);
        let text = std::fs::read_to_string(out.join("portsentry.conf.5")).unwrap();
        assert!(text.contains("IGNORE_FILE"));
    }
}
