//! Sizes and limit amounts as the policy writes them: memparse-style byte counts (`64M`, `1G`,
//! `4096`), a share of a capacity (`25%`, `12.5%`), or `max`.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ledger::UNLIMITED;

/// One million: percentages are kept as parts per million so arithmetic stays exact.
const PPM: u64 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{text:?} is not {expected}")]
pub struct AmountError {
    pub text: String,
    pub expected: &'static str,
}

/// A limit before the capacity it refers to is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    /// No limit (`max`).
    Max,
    Bytes(u64),
    /// A share of the capacity, in parts per million (`25%` = 250 000).
    Ppm(u32),
}

impl Amount {
    /// The limit in bytes for a pool of `capacity` bytes; `None` when it is a share of a capacity
    /// that is not known. Exact: rounding to the kernel's page size is autoconfig's business, since
    /// only it knows the page size of the device (the probe's `page_size`).
    pub fn resolve(self, capacity: Option<u64>) -> Option<u64> {
        match self {
            Amount::Max => Some(UNLIMITED),
            Amount::Bytes(b) => Some(b),
            Amount::Ppm(ppm) => {
                let cap = capacity?;
                let v = (cap as u128 * ppm as u128 / PPM as u128) as u64;
                Some(if ppm as u64 == PPM { cap } else { v })
            }
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Amount::Max => f.write_str("max"),
            Amount::Bytes(b) => f.write_str(&format_bytes(b)),
            Amount::Ppm(p) => {
                let (whole, frac) = (p / 10_000, p % 10_000);
                if frac == 0 {
                    write!(f, "{whole}%")
                } else {
                    let s = format!("{frac:04}");
                    write!(f, "{whole}.{}%", s.trim_end_matches('0'))
                }
            }
        }
    }
}

/// A byte count the way the kernel's memparse reads it: decimal digits with an optional binary
/// suffix K, M, G, T, P or E (either case). No fractions, signs or spaces.
pub fn parse_bytes(text: &str) -> Result<u64, AmountError> {
    let err = || AmountError { text: text.to_string(), expected: "a size (bytes, or a number with K/M/G/T/P/E)" };
    let (digits, shift) = match text.as_bytes().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                b'K' => 10,
                b'M' => 20,
                b'G' => 30,
                b'T' => 40,
                b'P' => 50,
                b'E' => 60,
                _ => return Err(err()),
            };
            (&text[..text.len() - 1], shift)
        }
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// `max`, a size (see [`parse_bytes`]) or a percentage with up to four decimals (`12.5%`).
pub fn parse_amount(text: &str) -> Result<Amount, AmountError> {
    let err = || AmountError { text: text.to_string(), expected: "a size or percentage" };
    if text == "max" {
        return Ok(Amount::Max);
    }
    if let Some(pct) = text.strip_suffix('%') {
        let (whole, frac) = pct.split_once('.').unwrap_or((pct, ""));
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || whole.len() > 3
            || !digits_ok(whole)
            || frac.len() > 4
            || !digits_ok(frac)
            || pct.ends_with('.')
        {
            return Err(err());
        }
        let whole: u64 = whole.parse().map_err(|_| err())?;
        let frac: u64 = format!("{frac:0<4}").parse().map_err(|_| err())?;
        let ppm = whole * 10_000 + frac;
        if ppm > PPM {
            return Err(AmountError { text: text.to_string(), expected: "a percentage of at most 100%" });
        }
        return Ok(Amount::Ppm(ppm as u32));
    }
    parse_bytes(text).map(Amount::Bytes).map_err(|_| err())
}

/// Bytes for people: exact binary units when the value is a whole number of them, otherwise one
/// decimal (`1.5 GiB`), `max` for [`UNLIMITED`].
pub fn format_bytes(b: u64) -> String {
    if b == UNLIMITED {
        return "max".to_string();
    }
    const UNITS: [(&str, u32); 5] = [("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (name, shift) in UNITS {
        let unit = 1u64 << shift;
        if b >= unit {
            return if b.is_multiple_of(unit) {
                format!("{} {name}", b >> shift)
            } else {
                format!("{:.1} {name}", b as f64 / unit as f64)
            };
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_take_memparse_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("2T"), Ok(2 << 40));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("1.5G").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("64 M").is_err());
        assert!(parse_bytes("16E").is_err(), "overflow is an error");
    }

    #[test]
    fn amounts_are_max_sizes_or_percentages() {
        assert_eq!(parse_amount("max"), Ok(Amount::Max));
        assert_eq!(parse_amount("25%"), Ok(Amount::Ppm(250_000)));
        assert_eq!(parse_amount("12.5%"), Ok(Amount::Ppm(125_000)));
        assert_eq!(parse_amount("0.0001%"), Ok(Amount::Ppm(1)));
        assert_eq!(parse_amount("100%"), Ok(Amount::Ppm(1_000_000)));
        assert_eq!(parse_amount("64M"), Ok(Amount::Bytes(64 << 20)));
        for bad in ["101%", "12X", "%", ".5%", "5.%", "1.00001%", "MAX", "-5%", "5 %"] {
            assert!(parse_amount(bad).is_err(), "{bad}");
        }
        let e = parse_amount("12X").unwrap_err();
        assert_eq!(e.to_string(), "\"12X\" is not a size or percentage");
    }

    #[test]
    fn shares_are_exact_bytes_and_need_a_capacity() {
        assert_eq!(Amount::Ppm(250_000).resolve(Some(1 << 30)), Some(256 << 20));
        assert_eq!(Amount::Ppm(333_333).resolve(Some(100_000)), Some(33_333));
        assert_eq!(Amount::Ppm(1_000_000).resolve(Some(100_001)), Some(100_001));
        assert_eq!(Amount::Ppm(250_000).resolve(None), None);
        assert_eq!(Amount::Max.resolve(None), Some(UNLIMITED));
        assert_eq!(Amount::Bytes(5).resolve(None), Some(5));
    }

    #[test]
    fn amounts_print_as_written() {
        assert_eq!(Amount::Ppm(125_000).to_string(), "12.5%");
        assert_eq!(Amount::Ppm(10_000).to_string(), "1%");
        assert_eq!(Amount::Bytes(64 << 20).to_string(), "64 MiB");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_bytes(UNLIMITED), "max");
    }
}
