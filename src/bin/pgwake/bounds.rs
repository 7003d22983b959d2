//! The accepted range of every number on the command line, checked when the
//! arguments are parsed: a value out of range is refused with its bound
//! named, before anything connects. Unbounded, a `--shutdown-timeout` of
//! `u64::MAX` seconds overflowed the shutdown deadline (a panic, and no
//! lease released) and `--activities 300000000` made every worker that
//! claimed the instance abort on allocation.

use std::fmt::Display;
use std::str::FromStr;

/// The runtime's own limit on a worker's concurrency (`Runtime::builder`
/// refuses more).
pub(crate) const MAX_CONCURRENCY: usize = 10_000;
/// The runtime's lease limits, in seconds: 1 second to 24 hours.
pub(crate) const MIN_LEASE_SECS: u64 = 1;
/// See [`MIN_LEASE_SECS`].
pub(crate) const MAX_LEASE_SECS: u64 = 24 * 3600;
/// Connections one benchmark may open at once, each its own backend: the
/// throwaway server allows 300 in all.
pub(crate) const MAX_BENCH_CONNECTIONS: usize = 256;
/// The longest measured window of a benchmark: 1 hour.
pub(crate) const MAX_BENCH_SECONDS: u64 = 3600;

/// A clap value parser for whole numbers from `min` to `max`; `unit` follows
/// the upper bound in the message ("must be at most 3600 seconds (1 hour)").
pub(crate) fn whole<T>(
    min: T,
    max: T,
    unit: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    move |text: &str| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let too_large = || format!("must be at most {max} {unit}");
        let too_small = || format!("must be at least {min}");
        let value = match text.parse::<T>() {
            Ok(value) => value,
            // Digits that do not fit the type are far beyond any bound here.
            Err(_) if digits(text.strip_prefix('+').unwrap_or(text)) => return Err(too_large()),
            Err(_) if text.strip_prefix('-').is_some_and(digits) => return Err(too_small()),
            Err(_) => return Err(format!("must be a whole number from {min} to {max} {unit}")),
        };
        if value > max {
            Err(too_large())
        } else if value < min {
            Err(too_small())
        } else {
            Ok(value)
        }
    }
}

/// A clap value parser for finite decimal numbers from `min` to `max`.
pub(crate) fn decimal(
    min: f64,
    max: f64,
    unit: &'static str,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text: &str| match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > max => {
            Err(format!("must be at most {max} {unit}"))
        }
        Ok(value) if value.is_finite() && value < min => Err(format!("must be at least {min}")),
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(format!("must be a number from {min} to {max} {unit}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_name_the_bound_they_break() {
        let parse = whole(1u64, 3600, "seconds (1 hour)");
        assert_eq!(parse("3600"), Ok(3600));
        assert_eq!(parse("+1"), Ok(1));
        for (text, expected) in [
            ("3601", "must be at most 3600 seconds (1 hour)"),
            (
                "18446744073709551615",
                "must be at most 3600 seconds (1 hour)",
            ),
            (
                "99999999999999999999999",
                "must be at most 3600 seconds (1 hour)",
            ),
            ("0", "must be at least 1"),
            ("-5", "must be at least 1"),
            (
                "ten",
                "must be a whole number from 1 to 3600 seconds (1 hour)",
            ),
            ("", "must be a whole number from 1 to 3600 seconds (1 hour)"),
        ] {
            assert_eq!(parse(text).unwrap_err(), expected, "{text:?}");
        }
    }

    #[test]
    fn decimals_refuse_what_is_not_finite() {
        let parse = decimal(0.1, 100_000.0, "per second");
        assert_eq!(parse("2.5"), Ok(2.5));
        for text in ["NaN", "inf", "fast"] {
            assert_eq!(
                parse(text).unwrap_err(),
                "must be a number from 0.1 to 100000 per second"
            );
        }
        assert_eq!(
            parse("1e9").unwrap_err(),
            "must be at most 100000 per second"
        );
        assert_eq!(parse("0").unwrap_err(), "must be at least 0.1");
    }
}
