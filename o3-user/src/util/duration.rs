//! Durations on the command line and in the configuration: a number with a unit (`500us`,
//! `10ms`, `1.5s`, `2m`, `1h`, `7d`).

use std::time::Duration;

/// Why a duration was refused; the text names the input and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration (write e.g. 10ms or 1s)")]
    NotADuration(String),
    #[error("`{0}` needs a unit (write e.g. {0}ms or {0}s)")]
    NoUnit(String),
    #[error("`{text}`: unknown unit `{unit}` (use ns, us, ms, s, m, h or d)")]
    UnknownUnit { text: String, unit: String },
    #[error("`{0}` is too long")]
    TooLong(String),
    /// Not a duration at all, with the accepted range.
    #[error("{0}; {1}")]
    Unreadable(Box<DurationError>, String),
    #[error("{shown} is out of range: {range}")]
    OutOfRange { shown: String, range: String },
}

/// Parses `N<unit>` with unit ns, us, ms, s, m, h or d; fractions are allowed (`0.5s`).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let not_one = || DurationError::NotADuration(text.to_string());
    if num.is_empty() {
        return Err(not_one());
    }
    let v: f64 = num.parse().map_err(|_| not_one())?;
    let ns_per = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        "" => return Err(DurationError::NoUnit(text.to_string())),
        u => {
            return Err(DurationError::UnknownUnit {
                text: text.to_string(),
                unit: u.to_string(),
            })
        }
    };
    let ns = v * ns_per;
    if !ns.is_finite() || ns > u64::MAX as f64 {
        return Err(DurationError::TooLong(text.to_string()));
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

/// Parses a duration and checks it lies in `[min, max]`, naming the range when it does not.
pub fn parse_in_range(text: &str, min: Duration, max: Duration) -> Result<Duration, DurationError> {
    let range = format!("accepted range {} to {}", show(min), show(max));
    let d = parse(text).map_err(|e| DurationError::Unreadable(Box::new(e), range.clone()))?;
    if d < min || d > max {
        return Err(DurationError::OutOfRange {
            shown: show(d),
            range,
        });
    }
    Ok(d)
}

/// Short human form: `10ms`, `1.5s`, `250us`.
pub fn show(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns >= 3600e9 && ns % 3600e9 == 0.0 {
        format!("{}h", ns / 3600e9)
    } else if ns >= 60e9 && ns % 60e9 == 0.0 {
        format!("{}m", ns / 60e9)
    } else if ns >= 1e9 {
        format!("{}s", trim(ns / 1e9))
    } else if ns >= 1e6 {
        format!("{}ms", trim(ns / 1e6))
    } else if ns >= 1e3 {
        format!("{}us", trim(ns / 1e3))
    } else {
        format!("{ns}ns")
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("abc")
            .unwrap_err()
            .to_string()
            .contains("not a duration"));
        assert!(parse("10")
            .unwrap_err()
            .to_string()
            .contains("needs a unit"));
        assert!(parse("10 parsecs")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse("1.2.3s").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn range_is_named() {
        let min = Duration::from_millis(1);
        let max = Duration::from_secs(10);
        let e = parse_in_range("0ms", min, max).unwrap_err().to_string();
        assert!(e.contains("accepted range 1ms to 10s"), "{e}");
        let e = parse_in_range("5h", min, max).unwrap_err().to_string();
        assert_eq!(e, "5h is out of range: accepted range 1ms to 10s");
        assert!(parse_in_range("abc", min, max)
            .unwrap_err()
            .to_string()
            .contains("accepted range"));
        assert_eq!(parse_in_range("10s", min, max).unwrap(), max);
    }

    #[test]
    fn shows_short_forms() {
        assert_eq!(show(Duration::from_millis(10)), "10ms");
        assert_eq!(show(Duration::from_millis(1500)), "1.5s");
        assert_eq!(show(Duration::from_secs(60)), "1m");
        assert_eq!(show(Duration::from_micros(5)), "5us");
    }
}
