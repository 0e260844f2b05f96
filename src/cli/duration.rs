//! The one syntax of every time flag: `500ms`, `2s`, `1m`, or a bare number of seconds
//! (`1`, `60.0`, `1.5`).
//!
//! Invariants: every time flag of every command parses through this file, so they all take
//! the same words; a TTL is whole seconds of at least 1, because etcd's leases count in
//! seconds (a TTL that would have to be rounded is refused, not rounded, so the lease a user
//! gets is the one they asked for).

use std::time::Duration;

/// The words every time flag's help ends with.
pub const HELP: &str = "500ms, 2s, 1m or seconds";

/// A duration of zero or more: `500ms`, `2s`, `1m` or seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let not_a_duration = || format!("{text:?} is not a duration ({HELP})");
    let number: f64 = number.parse().map_err(|_| not_a_duration())?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        _ => return Err(not_a_duration()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is too long"))
}

/// A duration above zero, for how long something runs or how often it happens.
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    match parse(text)? {
        Duration::ZERO => Err("must be more than zero".into()),
        duration => Ok(duration),
    }
}

/// A lease TTL: whole seconds, at least 1 (`1`, `2s`, `1m`).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse(text)?;
    if ttl.subsec_nanos() != 0 || ttl < Duration::from_secs(1) {
        return Err("a TTL is whole seconds, at least 1 (etcd's leases count in seconds)".into());
    }
    Ok(ttl)
}

/// A range `MIN-MAX` of two durations (`0-2`, `100ms-1.5s`), or `MAX` alone for `0-MAX`.
pub fn parse_range(text: &str) -> Result<(Duration, Duration), String> {
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (parse(low)?, parse(high)?),
        None => (Duration::ZERO, parse(text)?),
    };
    if low > high {
        return Err("the minimum is above the maximum".into());
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_take_units_or_bare_seconds() {
        assert_eq!(parse("500ms"), Ok(ms(500)));
        assert_eq!(parse("2s"), Ok(ms(2000)));
        assert_eq!(parse("2.5s"), Ok(ms(2500)));
        assert_eq!(parse("1m"), Ok(ms(60_000)));
        assert_eq!(parse("1"), Ok(ms(1000)));
        assert_eq!(parse("60.0"), Ok(ms(60_000)));
        assert_eq!(parse("1.5"), Ok(ms(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 3s "), Ok(ms(3000)));
    }

    #[test]
    fn anything_else_is_refused_with_the_accepted_forms() {
        for bad in [
            "", "soon", "3h", "s", "-1", "1.2.3", "2 s x", "1e3", "NaN", "inf",
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains(HELP), "{bad}: {error}");
        }
        assert!(parse("1e300").is_err(), "too long for a Duration");
    }

    #[test]
    fn positive_durations_refuse_zero() {
        assert_eq!(parse_positive("0.3"), Ok(ms(300)));
        assert!(parse_positive("0").is_err());
        assert!(parse_positive("0ms").is_err());
    }

    #[test]
    fn ttls_are_whole_seconds_of_at_least_one() {
        assert_eq!(parse_ttl("1"), Ok(ms(1000)));
        assert_eq!(parse_ttl("2s"), Ok(ms(2000)));
        assert_eq!(parse_ttl("1m"), Ok(ms(60_000)));
        assert_eq!(parse_ttl("3000ms"), Ok(ms(3000)));
        for bad in ["0", "500ms", "1.5", "1500ms"] {
            let error = parse_ttl(bad).expect_err(bad);
            assert!(error.contains("whole seconds"), "{bad}: {error}");
        }
    }

    #[test]
    fn ranges_take_two_durations_or_a_maximum() {
        assert_eq!(parse_range("0-0.2"), Ok((Duration::ZERO, ms(200))));
        assert_eq!(parse_range("0-2"), Ok((Duration::ZERO, ms(2000))));
        assert_eq!(parse_range("100ms-1.5s"), Ok((ms(100), ms(1500))));
        assert_eq!(parse_range("2"), Ok((Duration::ZERO, ms(2000))));
        assert_eq!(parse_range("1-1"), Ok((ms(1000), ms(1000))));
        assert!(parse_range("2-1").is_err());
        assert!(parse_range("0-soon").is_err());
        assert!(parse_range("-1").is_err());
    }
}
