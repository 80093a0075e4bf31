//! End-to-end tests: the real daemon binary in network namespaces made by each test, real
//! scanners (nmap) in an attacker namespace beside it; and the sensors and Lua responders
//! driven in-process against the same lab. Needs root, iproute2, nftables, iptables,
//! python3, nmap, tcpd's `tcpdmatch`, e2fsprogs and util-linux (`mkfs.ext4`,
//! `fsfreeze`), systemd's `systemd-analyze`, bubblewrap (`bwrap`, the unit's sandbox) and
//! curl (the mail plugin's SMTP relay) (scripts/setup-deps.sh): a test whose prerequisite
//! is missing fails.

mod answers;
mod blocks;
mod classic;
mod cli;
mod config_errors;
mod fleet;
mod forged;
mod full_disk;
mod hosts_deny;
mod inprocess;
mod lab;
mod lua;
mod lua_plugins;
mod metrics;
mod nftables;
mod nftables_backend;
mod prefix;
mod protect;
mod raw;
mod raw_sensor;
mod reload;
mod replay;
mod sandbox;
mod systemd;
