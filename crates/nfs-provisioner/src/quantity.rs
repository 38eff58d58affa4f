//! Reading a Kubernetes resource quantity (`50Gi`, `1Mi`, `500M`, `1.5Gi`, `1e9`) as bytes, for comparing a claim's
//! request with a share's free space. Only what storage requests use is supported; anything else is an error, never a
//! guess.

/// The quantity in bytes, rounded up; `None` if it is not a quantity this parser understands or is negative.
pub fn parse_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    // value = digits / 10^scale, times the suffix's multiplier.
    let digits: u128 = format!("{int_part}{frac_part}").parse().ok()?;
    let scale = u32::try_from(frac_part.len()).ok()?;
    let (numer, denom_exp10): (u128, u32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "k" => (10u128.pow(3), 0),
        "M" => (10u128.pow(6), 0),
        "G" => (10u128.pow(9), 0),
        "T" => (10u128.pow(12), 0),
        "P" => (10u128.pow(15), 0),
        "E" => (10u128.pow(18), 0),
        "m" => (1, 3),
        s => {
            let exp: u32 = s.strip_prefix(['e', 'E'])?.parse().ok()?;
            (10u128.checked_pow(exp)?, 0)
        }
    };
    let numerator = digits.checked_mul(numer)?;
    let denominator = 10u128.checked_pow(scale + denom_exp10)?;
    Some(numerator.div_ceil(denominator))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn storage_quantities_read_as_bytes() {
        assert_eq!(parse_bytes("50Gi"), Some(50 << 30));
        assert_eq!(parse_bytes("1Mi"), Some(1 << 20));
        assert_eq!(parse_bytes("500M"), Some(500_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_bytes("1e3"), Some(1000));
        assert_eq!(parse_bytes("1500m"), Some(2));
        assert_eq!(parse_bytes("1024"), Some(1024));
    }

    #[test]
    fn nonsense_is_refused() {
        for q in ["", "Gi", "-1Gi", "1Xi", "1.2.3", "1e999"] {
            assert_eq!(parse_bytes(q), None, "{q}");
        }
    }
}
