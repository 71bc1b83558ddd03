//! Human-readable sizes and rates for summaries (machine output keeps raw integers).

/// Binary units: `512.0 MiB`, `3.2 GiB`, `4.0 KiB`, `100 B`.
pub fn bytes(v: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if v < 1024 {
        return format!("{v} B");
    }
    let mut x = v as f64 / 1024.0;
    let mut i = 0;
    while x >= 1024.0 && i < UNITS.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    format!("{x:.1} {}", UNITS[i])
}

/// A duration in seconds for people: `95 s`, `12.5 min`, `3.2 h`.
pub fn span(s: f64) -> String {
    if !s.is_finite() {
        "∞".into()
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Seconds with millisecond precision from ns.
pub fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// `2025-01-14 09:30` (UTC) of unix seconds.
pub fn utc(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans() {
        assert_eq!(span(90.0), "90 s");
        assert_eq!(span(7200.0), "2.0 h");
        assert_eq!(span(750.0), "12.5 min");
        assert_eq!(span(f64::INFINITY), "∞");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_736_847_015), "2025-01-14 09:30");
        assert_eq!(utc(1_709_164_800 + 86_399), "2024-02-29 23:59");
    }

    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(100), "100 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(512 << 20), "512.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(secs(1_234_567_890), "1.235 s");
    }
}
