//! Values with a unit in the configuration file: durations (`load_s: 2m` or `load_s: 120`),
//! fractions (`fill: 0.9` or `fill: 90%`) and percents (`max_ram_percent: 85` or `85%`). Each
//! is read into the number of the key's unit (seconds for `*_s`, milliseconds for `*_ms`,
//! days for `*_days`, a share of one, a percent); ranges are checked by [`super::validate`].
//! A text that is not such a value is one error, `<problem>; <fix>`, that `error::from_serde`
//! places at its file, line and key.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

use crate::util::duration;

/// The unit a duration key counts in when given a bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeUnit {
    Ms,
    S,
    Days,
}

impl TimeUnit {
    fn per_ns(self) -> f64 {
        match self {
            TimeUnit::Ms => 1e6,
            TimeUnit::S => 1e9,
            TimeUnit::Days => 86_400e9,
        }
    }

    /// "seconds".
    pub(crate) fn word(self) -> &'static str {
        match self {
            TimeUnit::Ms => "milliseconds",
            TimeUnit::S => "seconds",
            TimeUnit::Days => "days",
        }
    }

    /// Examples of durations with units for keys of this unit.
    pub(crate) fn examples(self) -> &'static str {
        match self {
            TimeUnit::Ms => "250ms or 2s",
            TimeUnit::S => "90s, 2m or 1h",
            TimeUnit::Days => "12h or 7d",
        }
    }

    /// A value of this unit as people write it: `10m`, `24h`, `7d`, `250ms`, `0`.
    pub(crate) fn show(self, v: f64) -> String {
        if !v.is_finite() {
            return format!("{v}");
        }
        if v == 0.0 {
            return "0".into();
        }
        if v < 0.0 {
            return format!("{}{}", crate::util::percent::show(v), self.suffix());
        }
        let ns = v * self.per_ns();
        let day = TimeUnit::Days.per_ns();
        if self == TimeUnit::Days || (ns >= 7.0 * day && ns % day == 0.0) {
            return format!("{}d", crate::util::percent::show(ns / day));
        }
        duration::show(std::time::Duration::from_nanos(ns as u64))
    }

    fn suffix(self) -> &'static str {
        match self {
            TimeUnit::Ms => "ms",
            TimeUnit::S => "s",
            TimeUnit::Days => "d",
        }
    }

    /// `2m` or a bare number (`120`) as a number of this unit.
    fn parse(self, text: &str) -> Result<f64, String> {
        if let Ok(v) = text.trim().parse::<f64>() {
            return Ok(v);
        }
        duration::parse(text)
            .map(|d| d.as_nanos() as f64 / self.per_ns())
            .map_err(|e| {
                let problem = match e {
                    duration::DurationError::NotADuration(t) => {
                        format!("`{t}` is not a number or a duration")
                    }
                    e => e.to_string(),
                };
                format!(
                    "{problem}; give a number of {}, or a number with a unit, e.g. {}",
                    self.word(),
                    self.examples()
                )
            })
    }
}

/// A number, or a text the closure turns into one; with `whole`, only whole numbers.
struct Num<F> {
    expecting: &'static str,
    text: F,
    whole: bool,
}

impl<F> Num<F> {
    fn checked<E: de::Error>(&self, v: f64) -> Result<f64, E> {
        if self.whole && (v.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&v)) {
            return Err(E::custom(format!(
                "{} is not a whole number of milliseconds; give e.g. 10 or 10ms",
                crate::util::percent::show(v)
            )));
        }
        Ok(v)
    }
}

impl<'de, F: Fn(&str) -> Result<f64, String>> Visitor<'de> for Num<F> {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        self.checked(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        self.checked(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        self.checked(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        let n = (self.text)(v).map_err(E::custom)?;
        self.checked(n)
    }
}

/// An optional value of one of the kinds below.
struct Opt<F>(Num<F>);

impl<'de, F: Fn(&str) -> Result<f64, String>> Visitor<'de> for Opt<F> {
    type Value = Option<f64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0.expecting)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<f64>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<f64>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(self.0).map(Some)
    }
}

fn time(unit: TimeUnit) -> Num<impl Fn(&str) -> Result<f64, String>> {
    Num {
        expecting: "a number or a duration such as 2m",
        text: move |t: &str| unit.parse(t),
        whole: false,
    }
}

/// Seconds: `120`, or `2m`.
pub(crate) fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(time(TimeUnit::S))
}

/// Seconds or null.
pub(crate) fn opt_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_option(Opt(time(TimeUnit::S)))
}

/// Milliseconds or null: `2500`, or `2.5s`.
pub(crate) fn opt_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_option(Opt(time(TimeUnit::Ms)))
}

/// Days: `7`, or `12h`.
pub(crate) fn days<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(time(TimeUnit::Days))
}

/// Whole milliseconds: `10`, or `10ms`.
pub(crate) fn whole_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = d.deserialize_any(Num {
        whole: true,
        ..time(TimeUnit::Ms)
    })?;
    Ok(v as u32)
}

/// A share of one: `0.9`, or `90%`.
pub(crate) fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(Num {
        expecting: "a fraction such as 0.9 or 90%",
        text: |t: &str| share(t, 100.0),
        whole: false,
    })
}

/// A percent: `85`, or `85%`.
pub(crate) fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(Num {
        expecting: "a percent such as 85",
        text: |t: &str| share(t, 1.0),
        whole: false,
    })
}

/// `90%` divided by `per_percent` (100 for a fraction, 1 for a percent), or a bare number.
fn share(text: &str, per_percent: f64) -> Result<f64, String> {
    let t = text.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), per_percent),
        None => (t, 1.0),
    };
    num.parse::<f64>().map(|v| v / scale).map_err(|_| {
        let what = if per_percent == 1.0 {
            "a percent, e.g. 85 or 85%"
        } else {
            "a fraction, e.g. 0.9 or 90%"
        };
        format!("`{text}` is not a number; give {what}")
    })
}
