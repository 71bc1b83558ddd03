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

/// Seconds with millisecond precision from ns.
pub fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

#[cfg(test)]
mod tests {
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
