//! Kubernetes quantity syntax (`resource.Quantity`) for the bandwidth
//! annotations, read as bits per second.
//!
//! Grammar (as Kubernetes defines it):
//! `[+-] digits[.digits] | [+-] .digits`, then one optional suffix: decimal
//! SI `m k M G T P E` (milli .. exa), binary SI `Ki Mi Gi Ti Pi Ei`, or a
//! decimal exponent `e<int>` / `E<int>`. `"1E"` is one exa, `"1E3"` is 1000.
//!
//! Like kubelet (`Quantity.Value()`), a fractional result is rounded up to a
//! whole bit per second, and the result must lie in 1 kbit/s ..= 1 Pbit/s.

/// Smallest accepted rate: 1 kbit/s (kubelet's bound too).
pub const MIN_BITS_PER_SEC: u64 = 1_000;
/// Largest accepted rate: 1 Pbit/s (kubelet's bound too).
pub const MAX_BITS_PER_SEC: u64 = 1_000_000_000_000_000;

/// Digits kept for exact arithmetic; later digits can only round the result
/// up (by at most one bit/s), never move it across the accepted range.
const KEPT_DIGITS: usize = 20;

/// Why a value is not an acceptable rate. `Display` gives the reason only;
/// the caller names the value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty value")]
    Empty,
    #[error("not a Kubernetes quantity ({0})")]
    Syntax(&'static str),
    #[error("negative rate")]
    Negative,
    #[error("rate is zero or below 1 kbit/s")]
    TooSmall,
    #[error("rate is above 1 Pbit/s")]
    TooLarge,
}

/// Parses a rate in Kubernetes quantity syntax into bits per second.
pub fn parse_bits_per_sec(text: &str) -> Result<u64, QuantityError> {
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (negative, rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(QuantityError::Syntax("no digits"));
    }
    if frac_part.contains('.') {
        return Err(QuantityError::Syntax("more than one decimal point"));
    }
    let (suffix_exp10, exp2) = parse_suffix(suffix)?;

    // value = digits * 10^exp10 * 2^exp2, with digits an integer string.
    let digits_all = format!("{int_part}{frac_part}");
    let mut exp10 = suffix_exp10 - frac_part.len() as i64;
    let digits = digits_all.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    exp10 += (digits.len() - trimmed.len()) as i64;
    let digits = trimmed;
    if digits.is_empty() {
        return Err(QuantityError::TooSmall);
    }
    if negative {
        return Err(QuantityError::Negative);
    }

    // The order of magnitude decides far-out values without big numbers:
    // value is in [10^mag, 10^(mag+1)).
    let mag = (digits.len() as f64 - 1.0) + exp10 as f64 + exp2 as f64 * std::f64::consts::LOG10_2;
    if mag >= 16.0 {
        return Err(QuantityError::TooLarge);
    }
    if mag < 2.0 {
        return Err(QuantityError::TooSmall);
    }

    // Here the value is below 10^16: exact integer arithmetic fits in u128.
    let kept = &digits[..digits.len().min(KEPT_DIGITS)];
    let dropped_nonzero = digits.len() > kept.len();
    exp10 += (digits.len() - kept.len()) as i64;
    let mantissa: u128 = kept.parse().map_err(|_| QuantityError::Syntax("bad digits"))?;
    let numerator = mantissa << exp2;
    let value = if exp10 >= 0 {
        // Within range: mantissa * 10^exp10 < 10^16 * (a little).
        numerator.checked_mul(10u128.pow(exp10 as u32)).ok_or(QuantityError::TooLarge)?
    } else {
        let denominator = 10u128.checked_pow((-exp10) as u32).ok_or(QuantityError::TooSmall)?;
        let whole = numerator / denominator;
        let rest = numerator % denominator;
        whole + u128::from(rest != 0 || dropped_nonzero)
    };
    if value < u128::from(MIN_BITS_PER_SEC) {
        return Err(QuantityError::TooSmall);
    }
    if value > u128::from(MAX_BITS_PER_SEC) {
        return Err(QuantityError::TooLarge);
    }
    u64::try_from(value).map_err(|_| QuantityError::TooLarge)
}

/// (decimal exponent, binary exponent) of a suffix.
fn parse_suffix(suffix: &str) -> Result<(i64, u32), QuantityError> {
    Ok(match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let Some(exp) = suffix.strip_prefix(['e', 'E']) else {
                return Err(QuantityError::Syntax(
                    "unknown suffix; expected k M G T P E, Ki .. Ei, m or e<n>",
                ));
            };
            (parse_exponent(exp)?, 0)
        }
    })
}

/// The integer after `e`/`E`; huge values saturate (they are out of range
/// either way).
fn parse_exponent(text: &str) -> Result<i64, QuantityError> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Syntax("exponent must be an integer"));
    }
    let magnitude =
        digits.bytes().fold(0i64, |acc, d| acc.saturating_mul(10).saturating_add(i64::from(d - b'0')));
    // Saturated at a bound far beyond any accepted value, so the sign still
    // decides "too large" versus "too small".
    let magnitude = magnitude.min(1_000_000);
    Ok(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> u64 {
        parse_bits_per_sec(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &str) -> QuantityError {
        parse_bits_per_sec(text).expect_err(text)
    }

    #[test]
    fn decimal_suffixes() {
        assert_eq!(ok("10M"), 10_000_000);
        assert_eq!(ok("500k"), 500_000);
        assert_eq!(ok("1G"), 1_000_000_000);
        assert_eq!(ok("2T"), 2_000_000_000_000);
        assert_eq!(ok("1P"), MAX_BITS_PER_SEC);
        assert_eq!(ok("1000"), 1000);
        assert_eq!(ok("+5M"), 5_000_000);
    }

    #[test]
    fn binary_suffixes() {
        assert_eq!(ok("1Ki"), 1024);
        assert_eq!(ok("1Mi"), 1 << 20);
        assert_eq!(ok("1Gi"), 1 << 30);
        assert_eq!(ok("3Ti"), 3 << 40);
        assert_eq!(ok("1.5Ki"), 1536);
        // 1 Pi = 2^50 > 10^15
        assert_eq!(err("1Pi"), QuantityError::TooLarge);
        assert_eq!(ok("0.5Pi"), 1 << 49);
    }

    #[test]
    fn fractions_and_milli() {
        assert_eq!(ok("1.5G"), 1_500_000_000);
        assert_eq!(ok(".5M"), 500_000);
        assert_eq!(ok("5.M"), 5_000_000);
        assert_eq!(ok("0.001G"), 1_000_000);
        assert_eq!(ok("1000000m"), 1000);
        // Rounded up to a whole bit/s, as kubelet does.
        assert_eq!(ok("1000.1"), 1001);
        assert_eq!(ok("1000001m"), 1001);
        assert_eq!(ok("1.0000000000000000000000000001k"), 1001);
        assert_eq!(ok("0001000.000"), 1000);
    }

    #[test]
    fn decimal_exponent() {
        assert_eq!(ok("1e6"), 1_000_000);
        assert_eq!(ok("1E6"), 1_000_000);
        assert_eq!(ok("2.5e+3"), 2500);
        assert_eq!(ok("1e15"), MAX_BITS_PER_SEC);
        assert_eq!(ok("100000e-2"), 1000);
        assert_eq!(err("1e16"), QuantityError::TooLarge);
        assert_eq!(err("1e-3"), QuantityError::TooSmall);
        assert_eq!(err("1e999999999999999999999"), QuantityError::TooLarge);
        assert_eq!(err("1e-999999999999999999999"), QuantityError::TooSmall);
        assert!(matches!(err("1e"), QuantityError::Syntax(_)));
        assert!(matches!(err("1e1.5"), QuantityError::Syntax(_)));
        assert!(matches!(err("1e+"), QuantityError::Syntax(_)));
    }

    #[test]
    fn range_bounds_are_inclusive() {
        assert_eq!(ok("1k"), MIN_BITS_PER_SEC);
        assert_eq!(err("999"), QuantityError::TooSmall);
        // Rounded up before the range check, like kubelet's `Value()`.
        assert_eq!(ok("999.9"), MIN_BITS_PER_SEC);
        assert_eq!(err("999.0"), QuantityError::TooSmall);
        assert_eq!(ok("1000000000000000"), MAX_BITS_PER_SEC);
        assert_eq!(err("1000000000000001"), QuantityError::TooLarge);
        assert_eq!(err("1000.0000000000000000000001T"), QuantityError::TooLarge);
    }

    #[test]
    fn the_bad_values_of_the_issue() {
        assert_eq!(err(""), QuantityError::Empty);
        assert!(matches!(err("abc"), QuantityError::Syntax(_)));
        assert_eq!(err("-5M"), QuantityError::Negative);
        assert_eq!(err("0"), QuantityError::TooSmall);
        assert_eq!(err("0M"), QuantityError::TooSmall);
        assert_eq!(err("-0"), QuantityError::TooSmall);
        // E is exa (10^18), not an exponent.
        assert_eq!(err("1E"), QuantityError::TooLarge);
        assert_eq!(err("1Ei"), QuantityError::TooLarge);
        // Digits far beyond any integer type overflow into "too large".
        assert_eq!(err(&"9".repeat(400)), QuantityError::TooLarge);
        assert_eq!(err(&format!("{}G", "1".repeat(60))), QuantityError::TooLarge);
        assert_eq!(err(&format!("0.{}1", "0".repeat(400))), QuantityError::TooSmall);
    }

    #[test]
    fn malformed_text() {
        for text in [
            "M", "-", "+", ".", "1.2.3", "10 M", " 10M", "10M ", "10mb", "10Mbit", "1Gb", "10KI", "10K",
            "1_000", "0x10", "--5M", "5M5", "1e6M", "Infinity", "NaN", "1,5M", "١٠M",
        ] {
            assert!(matches!(err(text), QuantityError::Syntax(_)), "{text:?} -> {:?}", err(text));
        }
    }

    #[test]
    fn errors_say_why() {
        assert_eq!(err("1E").to_string(), "rate is above 1 Pbit/s");
        assert_eq!(err("0").to_string(), "rate is zero or below 1 kbit/s");
        assert!(err("abc").to_string().starts_with("not a Kubernetes quantity"));
    }
}
