//! Reverse DNS for `RESOLVE_HOST=1`, bounded in time.
//!
//! 1.2 called the resolver inline, so an unreachable DNS server stalled detection for the
//! resolver's full timeout on every alert. Here lookups run on their own thread; the response
//! thread waits at most a short time, uses the IP when the answer is late or the resolver is
//! busy, and later alerts from the same host get the cached name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};

/// How long a name is reused.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// Names kept at most; the cache is emptied when full, so a flood of forged sources cannot
/// grow it.
const CACHE_CAPACITY: usize = 4096;
/// Lookups waiting at most; beyond that the IP is used at once.
const QUEUE: usize = 16;

/// A lookup function: the system resolver in the daemon, a fake in tests.
pub type Lookup = fn(IpAddr) -> Option<String>;

type Cache = Arc<Mutex<HashMap<IpAddr, (String, Instant)>>>;

/// Resolves attacker addresses for log lines, never for commands (`$TARGET$` stays an IP).
pub struct Resolver {
    requests: Sender<(IpAddr, Sender<String>)>,
    cache: Cache,
    wait: Duration,
}

/// The system resolver (`getnameinfo`).
pub fn system_lookup(ip: IpAddr) -> Option<String> {
    dns_lookup::lookup_addr(&ip).ok().filter(|n| !n.is_empty())
}

impl Resolver {
    /// Starts the lookup thread; `wait` bounds how long a caller waits for an answer.
    pub fn new(lookup: Lookup, wait: Duration) -> Resolver {
        let (requests, rx) = bounded::<(IpAddr, Sender<String>)>(QUEUE);
        let cache: Cache = Arc::default();
        let thread_cache = Arc::clone(&cache);
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                for (ip, reply) in rx {
                    let name = lookup(ip).unwrap_or_else(|| ip.to_string());
                    let mut cache = crate::sync::lock(&thread_cache);
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                    cache.insert(ip, (name.clone(), Instant::now()));
                    drop(cache);
                    let _ = reply.try_send(name);
                }
            });
        if let Err(e) = spawned {
            log::error!("{}", crate::log_lines::resolver_thread_failed(e));
        }
        Resolver {
            requests,
            cache,
            wait,
        }
    }

    /// The host's name, or its IP when unknown, late or the resolver is busy.
    pub fn name(&self, ip: IpAddr) -> String {
        {
            let cache = crate::sync::lock(&self.cache);
            if let Some((name, at)) = cache.get(&ip)
                && at.elapsed() < CACHE_TTL
            {
                return name.clone();
            }
        }
        let (reply, answer) = bounded(1);
        if self.requests.try_send((ip, reply)).is_err() {
            return ip.to_string();
        }
        answer
            .recv_timeout(self.wait)
            .unwrap_or_else(|_| ip.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(ip: IpAddr) -> Option<String> {
        std::thread::sleep(Duration::from_millis(300));
        Some(format!("host-{ip}"))
    }

    fn unknown(_: IpAddr) -> Option<String> {
        None
    }

    #[test]
    fn late_answer_gives_the_ip_now_and_the_name_later() {
        let r = Resolver::new(slow, Duration::from_millis(50));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let start = Instant::now();
        assert_eq!(r.name(ip), "192.0.2.7");
        assert!(start.elapsed() < Duration::from_millis(250));
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(r.name(ip), "host-192.0.2.7");
    }

    #[test]
    fn quick_answer_is_used_and_unknown_hosts_keep_their_ip() {
        let r = Resolver::new(slow, Duration::from_secs(2));
        assert_eq!(r.name("fd77::5".parse().unwrap()), "host-fd77::5");
        let r = Resolver::new(unknown, Duration::from_secs(2));
        assert_eq!(r.name("192.0.2.8".parse().unwrap()), "192.0.2.8");
    }

    #[test]
    fn busy_resolver_never_holds_the_caller_longer_than_the_wait() {
        let r = Resolver::new(slow, Duration::from_millis(20));
        let start = Instant::now();
        for i in 0..40u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            assert_eq!(r.name(ip), ip.to_string());
        }
        // 16 queued lookups wait 20 ms each at most; the rest return at once.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}
