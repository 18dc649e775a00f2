//! Humane units in `corral.toml`: byte sizes (`"512MiB"`, `"10MB"`, `4096`), durations
//! (`"100ms"`, `"1h 30m"`), plain counts and fractions, and the word `"unlimited"` where a limit
//! may be switched off.
//!
//! Each unit is a small newtype with its own `Deserialize`, so that a bad value fails inside the
//! TOML deserializer and the error carries the value's span (and so its `line:col`).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Binary and SI size suffixes, longest first so that `"MiB"` is not read as `"B"`.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("B", 1),
];

/// Parses a byte size: an integer with an optional unit (`B`, `KiB`, `MiB`, `GiB`, `TiB`, or SI
/// `kB`/`KB`, `MB`, `GB`, `TB`), spaces allowed between number and unit. Returns the message
/// tail (`found …`) on failure.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let unit = unit.trim_start();
    let multiplier = if unit.is_empty() {
        Some(1)
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, m)| *m)
    };
    let (Some(multiplier), false) = (multiplier, digits.is_empty()) else {
        return Err(format!("found {text:?}"));
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("found {text:?}, which is too large"))
}

/// What a value of some unit accepts, for one generic visitor over TOML scalars.
pub(crate) trait Unit: Sized {
    /// Completes "expected …" in messages.
    const EXPECTING: &'static str;
    /// From a TOML integer.
    fn from_int(n: i64) -> Result<Self, String> {
        Err(format!("found {n}"))
    }
    /// From a TOML float.
    fn from_float(x: f64) -> Result<Self, String> {
        Err(format!("found {x}"))
    }
    /// From a TOML string.
    fn from_text(s: &str) -> Result<Self, String> {
        Err(format!("found {s:?}"))
    }
}

/// A byte size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

impl Unit for Size {
    const EXPECTING: &'static str =
        "a size like \"512MiB\", \"64KiB\", \"10MB\" or a number of bytes";
    fn from_int(n: i64) -> Result<Self, String> {
        u64::try_from(n).map(Size).map_err(|_| format!("found {n}"))
    }
    fn from_text(s: &str) -> Result<Self, String> {
        parse_size(s).map(Size)
    }
}

/// A duration written for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);

impl Unit for Dur {
    const EXPECTING: &'static str = "a duration like \"5s\" or \"100ms\"";
    fn from_int(n: i64) -> Result<Self, String> {
        Err(format!(
            "found {n} (a duration needs a unit, e.g. \"{n}s\")"
        ))
    }
    fn from_text(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s.trim()).map_err(|_| format!("found {s:?}"))?;
        // Far beyond any real timeout, and far inside what clocks can add without overflow.
        if d > MAX_DURATION {
            return Err(format!("found {s:?}, longer than the maximum of 100 years"));
        }
        Ok(Dur(d))
    }
}

/// The longest duration accepted anywhere: 100 years.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A non-negative whole number (a count of processes, files, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count(pub u64);

impl Unit for Count {
    const EXPECTING: &'static str = "a non-negative whole number";
    fn from_int(n: i64) -> Result<Self, String> {
        u64::try_from(n)
            .map(Count)
            .map_err(|_| format!("found {n}"))
    }
}

/// A real number; integers are accepted too (`2` is `2.0`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Real(pub f64);

impl Unit for Real {
    const EXPECTING: &'static str = "a number like 1.0";
    fn from_int(n: i64) -> Result<Self, String> {
        // Exact for every integer anyone would write here.
        Ok(Real(n as f64))
    }
    fn from_float(x: f64) -> Result<Self, String> {
        Ok(Real(x))
    }
}

/// A limit that may be switched off with the string `"unlimited"`: `Limit(None)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limit<T>(pub Option<T>);

impl<T: Unit> Unit for Limit<T> {
    const EXPECTING: &'static str = "";
    fn from_int(n: i64) -> Result<Self, String> {
        T::from_int(n).map(|v| Limit(Some(v)))
    }
    fn from_float(x: f64) -> Result<Self, String> {
        T::from_float(x).map(|v| Limit(Some(v)))
    }
    fn from_text(s: &str) -> Result<Self, String> {
        if s.trim() == "unlimited" {
            Ok(Limit(None))
        } else {
            T::from_text(s).map(|v| Limit(Some(v)))
        }
    }
}

/// One visitor for every [`Unit`]; `limit` adds `or "unlimited"` to the expectation.
struct UnitVisitor<T> {
    expecting: &'static str,
    limit: bool,
    _unit: PhantomData<T>,
}

impl<T> UnitVisitor<T> {
    fn fail<E: de::Error>(&self, tail: String) -> E {
        E::custom(format!("expected {}, {tail}", self.describe()))
    }

    fn describe(&self) -> String {
        if self.limit {
            format!("{}, or \"unlimited\"", self.expecting)
        } else {
            self.expecting.to_string()
        }
    }
}

impl<'de, T: Unit> Visitor<'de> for UnitVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        T::from_int(n).map_err(|tail| self.fail(tail))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        match i64::try_from(n) {
            Ok(n) => self.visit_i64(n),
            Err(_) => Err(self.fail(format!("found {n}, which is too large"))),
        }
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<T, E> {
        T::from_float(x).map_err(|tail| self.fail(tail))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        T::from_text(s).map_err(|tail| self.fail(tail))
    }
}

fn deserialize_unit<'de, D: Deserializer<'de>, T: Unit>(
    d: D,
    expecting: &'static str,
    limit: bool,
) -> Result<T, D::Error> {
    d.deserialize_any(UnitVisitor {
        expecting,
        limit,
        _unit: PhantomData,
    })
}

macro_rules! unit_deserialize {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_unit(d, <$ty as Unit>::EXPECTING, false)
            }
        }
    )*};
}

unit_deserialize!(Size, Dur, Count, Real);

impl<'de, T: Unit> Deserialize<'de> for Limit<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_unit(d, T::EXPECTING, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Probe<T> {
        v: T,
    }

    fn probe<T: for<'de> Deserialize<'de>>(value: &str) -> Result<T, String> {
        toml::from_str::<Probe<T>>(&format!("v = {value}"))
            .map(|p| p.v)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("3kB"), Ok(3_000));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 16 MiB "), Ok(16 << 20));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(probe::<Size>("4096"), Ok(Size(4096)));
        assert_eq!(probe::<Size>("\"1GiB\""), Ok(Size(1 << 30)));
    }

    #[test]
    fn sizes_reject_bad_input() {
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "1.5GiB",
            "-1",
            "1 mib",
            "1G",
            "1MiBB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("99999999999999TiB")
            .unwrap_err()
            .contains("too large"));
        let msg = probe::<Size>("\"12 parsecs\"").unwrap_err();
        assert_eq!(
            msg,
            "expected a size like \"512MiB\", \"64KiB\", \"10MB\" or a number of bytes, \
             found \"12 parsecs\""
        );
        assert!(probe::<Size>("-5").unwrap_err().contains("found -5"));
        assert!(probe::<Size>("1.5").is_err());
        assert!(probe::<Size>("true").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            probe::<Dur>("\"100ms\""),
            Ok(Dur(Duration::from_millis(100)))
        );
        assert_eq!(probe::<Dur>("\"5s\""), Ok(Dur(Duration::from_secs(5))));
        assert_eq!(probe::<Dur>("\"5m\""), Ok(Dur(Duration::from_secs(300))));
        assert_eq!(
            probe::<Dur>("\"1h 30m\""),
            Ok(Dur(Duration::from_secs(5400)))
        );
        assert_eq!(probe::<Dur>("\"0s\""), Ok(Dur(Duration::ZERO)));
    }

    #[test]
    fn durations_beyond_a_century_are_refused() {
        assert!(Dur::from_text("99y").is_ok());
        let e = Dur::from_text("500000000000y").unwrap_err();
        assert!(e.contains("maximum of 100 years"), "{e}");
    }

    #[test]
    fn durations_reject_bad_input() {
        assert_eq!(
            probe::<Dur>("\"5 parsecs\"").unwrap_err(),
            "expected a duration like \"5s\" or \"100ms\", found \"5 parsecs\""
        );
        assert!(probe::<Dur>("5").unwrap_err().contains("needs a unit"));
        assert!(probe::<Dur>("\"\"").is_err());
        assert!(probe::<Dur>("\"-5s\"").is_err());
        assert!(probe::<Dur>("[1]").is_err());
    }

    #[test]
    fn limits_accept_unlimited() {
        assert_eq!(probe::<Limit<Size>>("\"unlimited\""), Ok(Limit(None)));
        assert_eq!(
            probe::<Limit<Size>>("\"64MiB\""),
            Ok(Limit(Some(Size(64 << 20))))
        );
        assert_eq!(probe::<Limit<Count>>("\"unlimited\""), Ok(Limit(None)));
        assert_eq!(probe::<Limit<Count>>("64"), Ok(Limit(Some(Count(64)))));
        assert_eq!(probe::<Limit<Real>>("2"), Ok(Limit(Some(Real(2.0)))));
        assert_eq!(probe::<Limit<Real>>("0.5"), Ok(Limit(Some(Real(0.5)))));
        let msg = probe::<Limit<Count>>("\"lots\"").unwrap_err();
        assert_eq!(
            msg,
            "expected a non-negative whole number, or \"unlimited\", found \"lots\""
        );
        assert!(probe::<Limit<Dur>>("\"forever\"").is_err());
    }
}
