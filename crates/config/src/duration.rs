//! Human-readable durations: `500ms`, `5s`, `1.5s`, `10m`, `24h`, `7d`.

use std::time::Duration;

use super::ValueError;

/// The longest duration accepted anywhere in the config. Far beyond any
/// sensible timeout, and small enough that `Instant::now() + d` can never
/// overflow (which would panic) wherever the router adds it to a clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const UNITS: &[(&str, u128)] = &[
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// The accepted form, quoted in error messages.
pub(crate) const DURATION_FORM: &str =
    "a number followed by a unit: ms, s, m, h or d (e.g. `500ms`, `5s`, `1.5s`, `24h`)";

/// Parses a duration written as an integer or decimal number immediately
/// followed by a unit: `ms`, `s`, `m`, `h` or `d` (`500ms`, `5s`, `1.5s`,
/// `24h`). Zero is accepted here; the config rejects it where it makes no
/// sense.
///
/// # Errors
/// A message naming the expected form when `text` is not of that form, has
/// no unit, is more precise than a nanosecond or exceeds [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let number_len = text
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    if text.is_empty() {
        return Err(ValueError::new(format!(
            "empty duration: expected {DURATION_FORM}"
        )));
    }
    if unit.is_empty() {
        return Err(ValueError::new(format!(
            "`{text}` has no unit: expected {DURATION_FORM}"
        )));
    }
    let Some(&(_, unit_ns)) = UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(ValueError::new(format!(
            "`{text}` is not a duration: expected {DURATION_FORM}"
        )));
    };
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    let well_formed = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(number.contains('.') && frac.is_empty());
    if !well_formed {
        return Err(ValueError::new(format!(
            "`{text}` is not a duration: expected {DURATION_FORM}"
        )));
    }
    let too_long = || {
        ValueError::new(format!(
            "`{text}` is too long: the limit is {}",
            format_duration(MAX_DURATION)
        ))
    };
    if frac.len() > 9 {
        return Err(ValueError::new(format!(
            "`{text}` has too many decimal places (at most 9)"
        )));
    }
    let int: u128 = int.parse::<u64>().map_err(|_| too_long())?.into();
    // At most 9 digits, so this fits and the power is exact.
    let frac_digits = frac.len() as u32;
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().map_err(|_| too_long())?.into()
    };
    let scale = 10u128.pow(frac_digits);
    let frac_scaled = frac_value * unit_ns;
    if frac_scaled % scale != 0 {
        return Err(ValueError::new(format!(
            "`{text}` is more precise than a nanosecond"
        )));
    }
    let total = int
        .checked_mul(unit_ns)
        .and_then(|n| n.checked_add(frac_scaled / scale))
        .ok_or_else(too_long)?;
    if total > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    // Bounded by MAX_DURATION just above, which fits in u64 nanoseconds.
    let nanos = u64::try_from(total).map_err(|_| too_long())?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way the config writes them, in the largest unit
/// that represents it exactly (`24h`, `90s`, `500ms`; days only from `2d`
/// on), or with decimals
/// (`1.5s`, `0.25ms`) when none does.
pub fn format_duration(d: Duration) -> String {
    let total = d.as_nanos();
    if total == 0 {
        return "0s".to_owned();
    }
    // Whole days (from two on), hours, minutes or seconds.
    for &(unit, ns) in UNITS[1..].iter().rev() {
        let least = if unit == "d" { 2 * ns } else { ns };
        if total >= least && total % ns == 0 {
            return format!("{}{unit}", total / ns);
        }
    }
    const SECOND: u128 = 1_000_000_000;
    const MILLI: u128 = 1_000_000;
    if total < SECOND && total % MILLI == 0 {
        return format!("{}ms", total / MILLI);
    }
    // Decimals: seconds from one second on, milliseconds below.
    let (unit, ns, width) = if total >= SECOND {
        ("s", SECOND, 9)
    } else {
        ("ms", MILLI, 6)
    };
    let digits = format!("{:0width$}", total % ns);
    format!("{}.{}{unit}", total / ns, digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("1.5s", Duration::from_millis(1500)),
            ("10m", Duration::from_secs(600)),
            ("24h", Duration::from_secs(86_400)),
            ("2d", Duration::from_secs(172_800)),
            ("0.5ms", Duration::from_micros(500)),
            ("0s", Duration::ZERO),
            ("365d", MAX_DURATION),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn rejects_everything_else_with_the_expected_form() {
        for text in [
            "", "5", "1.5", "5 sec", "5 s", "5sec", "5S", "s", ".5s", "5.s", "-5s", "+5s", "1h30m",
            "5s ", "1.2.3s", "５s",
        ] {
            let err = parse_duration(text).unwrap_err().to_string();
            assert!(
                err.contains("ms, s, m, h or d"),
                "{text:?} gave {err:?}, which does not name the form"
            );
        }
        for text in ["366d", "99999999999999999999999s", "18446744073709551615d"] {
            let err = parse_duration(text).unwrap_err().to_string();
            assert!(err.contains("too long"), "{text:?}: {err}");
        }
        assert!(parse_duration("1.0000000001s")
            .unwrap_err()
            .to_string()
            .contains("decimal places"));
        assert!(parse_duration("0.0000001ms")
            .unwrap_err()
            .to_string()
            .contains("nanosecond"));
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(61_250), "61.25s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(2 * 86_400), "2d"),
            (Duration::from_secs(36 * 3600), "36h"),
            (Duration::from_micros(250), "0.25ms"),
            (Duration::from_nanos(1_000_000_001), "1.000000001s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
            assert_eq!(parse_duration(want).unwrap(), d, "round trip of {want}");
        }
    }
}
