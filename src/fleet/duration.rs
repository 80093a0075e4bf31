//! Go's `time.Duration` text, the only duration syntax the CrowdSec LAPI speaks: decisions
//! arrive with their remaining time as `Duration.String()` (`"59m57.461322642s"`,
//! `"-3.2ms"`, `"1µs"`) and must be posted as Go durations (`"3599s"`; `"1d"` is refused).

use std::time::Duration;

/// What a decision's `duration` says about its remaining time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remaining {
    /// This much time is left.
    Left(Duration),
    /// Zero or negative: the decision has ended (deleted decisions carry negative times).
    Over,
}

/// Longest duration Go can represent (`math.MaxInt64` nanoseconds, about 292 years).
const GO_MAX_NANOS: u128 = i64::MAX as u128;

/// Parses Go duration text: an optional sign, then one or more `number unit` pairs where the
/// number may have a fraction and the unit is `ns`, `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`,
/// `s`, `m` or `h`; a bare `0` is zero. `Err` says what was wrong, for the log.
pub fn parse(text: &str) -> Result<Remaining, String> {
    let bad = |why: &str| {
        Err(format!(
            "\"{}\" is not a Go duration ({why}; expected e.g. \"90s\" or \"1h2m3.5s\")",
            crate::record::excerpt(text)
        ))
    };
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Remaining::Over);
    }
    if rest.is_empty() {
        return bad("empty");
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits_end];
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let per: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return bad("a number without a unit"),
            _ => return bad("unknown unit"),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return bad("a unit without a number");
        }
        if fraction.contains('.') {
            return bad("two decimal points");
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            match whole.parse::<u128>() {
                Ok(n) if n <= GO_MAX_NANOS => n,
                _ => return bad("out of range"),
            }
        };
        // Digits past nanoseconds cannot matter: keep at most 18.
        let kept = &fraction[..fraction.len().min(18)];
        let mut part: u128 = 0;
        if !kept.is_empty() {
            let numerator: u128 = kept.parse().map_err(|_| "bad fraction".to_string())?;
            part = numerator * per / 10u128.pow(kept.len() as u32);
        }
        total = match whole.checked_mul(per).and_then(|n| n.checked_add(part)) {
            Some(t) => t.saturating_add(total),
            None => return bad("out of range"),
        };
        if total > GO_MAX_NANOS {
            return bad("out of range");
        }
    }
    if negative || total == 0 {
        return Ok(Remaining::Over);
    }
    let nanos = u64::try_from(total).unwrap_or(u64::MAX);
    Ok(Remaining::Left(Duration::from_nanos(nanos)))
}

/// A duration as Go syntax in whole seconds, rounded up so a decision never ends before the
/// block it mirrors (`3599.2 s` is `"3600s"`; under a second is `"1s"`), capped at what Go
/// can hold.
pub fn format_secs(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let max = (GO_MAX_NANOS / 1_000_000_000) as u64;
    format!("{}s", secs.clamp(1, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left(text: &str) -> Duration {
        match parse(text) {
            Ok(Remaining::Left(d)) => d,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn lapi_remaining_times_parse_to_the_nanosecond() {
        assert_eq!(
            left("59m57.461322642s"),
            Duration::new(59 * 60 + 57, 461_322_642)
        );
        assert_eq!(left("1h59m59.6s"), Duration::new(7199, 600_000_000));
        assert_eq!(left("90s"), Duration::from_secs(90));
        assert_eq!(left("168h"), Duration::from_secs(168 * 3600));
        assert_eq!(left("1.5h"), Duration::from_secs(5400));
        assert_eq!(left(".5s"), Duration::from_millis(500));
        assert_eq!(left("+2m"), Duration::from_secs(120));
    }

    #[test]
    fn micro_and_nano_units_in_every_spelling() {
        assert_eq!(left("3\u{b5}s"), Duration::from_micros(3));
        assert_eq!(left("3\u{3bc}s"), Duration::from_micros(3));
        assert_eq!(left("3us"), Duration::from_micros(3));
        assert_eq!(left("7ns"), Duration::from_nanos(7));
        assert_eq!(left("1.25ms"), Duration::from_micros(1250));
        assert_eq!(left("1m0.000001001s"), Duration::new(60, 1001));
    }

    #[test]
    fn negative_and_zero_durations_are_over() {
        assert_eq!(parse("-59m2.1s"), Ok(Remaining::Over));
        assert_eq!(parse("-1\u{b5}s"), Ok(Remaining::Over));
        assert_eq!(parse("0"), Ok(Remaining::Over));
        assert_eq!(parse("0s"), Ok(Remaining::Over));
    }

    #[test]
    fn malformed_text_is_an_error_naming_it() {
        for bad in [
            "",
            "-",
            "1d",
            "10",
            "s",
            "1.2.3s",
            "h1",
            "1 h",
            "99999999999999999999h",
            "1e3s",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("not a Go duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_whole_seconds_rounded_up() {
        assert_eq!(format_secs(Duration::from_secs(3599)), "3599s");
        assert_eq!(format_secs(Duration::from_millis(3_599_200)), "3600s");
        assert_eq!(format_secs(Duration::ZERO), "1s");
        assert_eq!(format_secs(Duration::from_secs(u64::MAX)), "9223372036s");
        let back = left(&format_secs(Duration::from_secs(86_400 * 7)));
        assert_eq!(back, Duration::from_secs(86_400 * 7));
    }
}
