//! Percents and fractions, each in its own unit: a percent is 1 to 100 (`85`, or `85%`), a
//! fraction is a share of one (`0.9`, or `90%`). A value that fits the other unit is refused
//! with the value it most likely meant, so that `0.5` given as a percent is never half a percent
//! by accident.

/// Why a percent or fraction was refused; the text says what the value must be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShareError {
    #[error("`{0}` is not a number: {1}")]
    NotANumber(String, String),
    /// Between 0 and 1 where a percent is wanted.
    #[error("a percent from 1 to 100 (did you mean {}?)", show(.0 * 100.0))]
    FractionForPercent(f64),
    #[error("a percent from 1 to 100")]
    PercentRange,
    /// Above 1 where a fraction is wanted, and read as a percent it would fit.
    #[error("{} (did you mean {}%?)", .range, show(*.value))]
    PercentForFraction { value: f64, range: String },
    #[error("{0}")]
    FractionRange(String),
}

/// A number as people write it: `50`, `0.05`.
pub fn show(v: f64) -> String {
    let r = (v * 1e6).round() / 1e6;
    format!("{r}")
}

/// Allowed fractions: `lo` to `hi`; with `above`, `lo` itself is excluded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FractionRange {
    pub lo: f64,
    pub above: bool,
    pub hi: f64,
}

impl FractionRange {
    pub const fn new(lo: f64, above: bool, hi: f64) -> FractionRange {
        FractionRange { lo, above, hi }
    }

    pub fn contains(&self, v: f64) -> bool {
        let low_ok = if self.above {
            v > self.lo
        } else {
            v >= self.lo
        };
        low_ok && v <= self.hi
    }

    /// "a fraction from 0.05 to 1 (or a percent such as 90%)".
    pub fn words(&self) -> String {
        let from = if self.above {
            format!("above {} up to {}", show(self.lo), show(self.hi))
        } else {
            format!("from {} to {}", show(self.lo), show(self.hi))
        };
        let example = show((self.hi * 100.0).min(90.0).max(self.lo * 100.0));
        format!("a fraction {from} (or a percent such as {example}%)")
    }
}

/// Checks a percent: 1 to 100.
pub fn check_percent(v: f64) -> Result<f64, ShareError> {
    if (1.0..=100.0).contains(&v) {
        Ok(v)
    } else if v > 0.0 && v < 1.0 {
        Err(ShareError::FractionForPercent(v))
    } else {
        Err(ShareError::PercentRange)
    }
}

/// `85` or `85%`: a percent from 1 to 100.
pub fn parse_percent(text: &str) -> Result<f64, ShareError> {
    let t = text.trim();
    let num = t.strip_suffix('%').unwrap_or(t).trim();
    let v: f64 = num
        .parse()
        .map_err(|_| ShareError::NotANumber(text.into(), ShareError::PercentRange.to_string()))?;
    check_percent(v)
}

/// Checks a fraction against `range`.
pub fn check_fraction(v: f64, range: FractionRange) -> Result<f64, ShareError> {
    if range.contains(v) {
        Ok(v)
    } else if v > 1.0 && v <= 100.0 && range.contains(v / 100.0) {
        Err(ShareError::PercentForFraction {
            value: v,
            range: range.words(),
        })
    } else {
        Err(ShareError::FractionRange(range.words()))
    }
}

/// `0.9` or `90%`: a fraction in `range`.
pub fn parse_fraction(text: &str, range: FractionRange) -> Result<f64, ShareError> {
    let t = text.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| ShareError::NotANumber(text.into(), range.words()))?;
    if !v.is_finite() {
        return Err(ShareError::FractionRange(range.words()));
    }
    check_fraction(v / scale, range)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILL: FractionRange = FractionRange::new(0.05, false, 1.0);

    #[test]
    fn a_percent_is_1_to_100_with_or_without_the_sign() {
        assert_eq!(parse_percent("85"), Ok(85.0));
        assert_eq!(parse_percent("85%"), Ok(85.0));
        assert_eq!(parse_percent("1"), Ok(1.0));
        assert_eq!(parse_percent("100 %"), Ok(100.0));
        assert_eq!(
            parse_percent("0.5").unwrap_err().to_string(),
            "a percent from 1 to 100 (did you mean 50?)"
        );
        assert_eq!(
            parse_percent("0.85").unwrap_err().to_string(),
            "a percent from 1 to 100 (did you mean 85?)"
        );
        assert_eq!(
            parse_percent("150").unwrap_err().to_string(),
            "a percent from 1 to 100"
        );
        assert_eq!(
            parse_percent("0").unwrap_err().to_string(),
            "a percent from 1 to 100"
        );
        assert_eq!(
            parse_percent("lots").unwrap_err().to_string(),
            "`lots` is not a number: a percent from 1 to 100"
        );
    }

    #[test]
    fn a_fraction_is_a_share_of_one_or_a_percent_with_its_sign() {
        assert_eq!(parse_fraction("0.9", FILL), Ok(0.9));
        assert_eq!(parse_fraction("90%", FILL), Ok(0.9));
        assert_eq!(parse_fraction("1", FILL), Ok(1.0));
        assert_eq!(parse_fraction("5%", FILL), Ok(0.05));
        assert_eq!(
            parse_fraction("90", FILL).unwrap_err().to_string(),
            "a fraction from 0.05 to 1 (or a percent such as 90%) (did you mean 90%?)"
        );
        assert_eq!(
            parse_fraction("0.01", FILL).unwrap_err().to_string(),
            "a fraction from 0.05 to 1 (or a percent such as 90%)"
        );
        assert_eq!(
            parse_fraction("150%", FILL).unwrap_err().to_string(),
            "a fraction from 0.05 to 1 (or a percent such as 90%)"
        );
        assert_eq!(
            parse_fraction("x%", FILL).unwrap_err().to_string(),
            "`x%` is not a number: a fraction from 0.05 to 1 (or a percent such as 90%)"
        );
        let cv = FractionRange::new(0.0, true, 1.0);
        assert_eq!(
            parse_fraction("0", cv).unwrap_err().to_string(),
            "a fraction above 0 up to 1 (or a percent such as 90%)"
        );
        let p = FractionRange::new(0.0, false, 0.5);
        assert_eq!(
            p.words(),
            "a fraction from 0 to 0.5 (or a percent such as 50%)"
        );
    }
}
