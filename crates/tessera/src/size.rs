//! Human-friendly sizes ("10G", "512K", "4096") and durations ("10s", "500ms") for
//! command-line flags.
//!
//! Contract: parsing never panics; every rejected input yields a message that quotes the
//! input and shows an accepted example. Sizes are binary (K = 1024) and must be whole
//! numbers; durations need an explicit unit so "10" is never silently seconds or millis.

use std::time::Duration;

/// Parses a byte count: digits with an optional binary suffix `K`, `M`, `G` or `T`
/// (case-insensitive, optionally followed by `iB` or `B`). `"4096"`, `"512K"`, `"10G"`,
/// `"1GiB"` are accepted; fractions, negatives, unknown units and overflow are errors.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!("invalid size `{s}`: expected a whole number with an optional K/M/G/T suffix, e.g. 512K or 10G"));
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "invalid size `{s}`: unknown unit `{unit}`; use K, M, G or T (binary), e.g. 512K, 10G, or plain bytes like 4096"
            ));
        }
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid size `{s}`: number too large"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("invalid size `{s}`: does not fit in 64 bits"))
}

/// Parses a duration: a whole number followed by `ms`, `s`, `m` or `h`, e.g. `"500ms"`,
/// `"10s"`, `"2m"`. Zero is allowed (`"0s"`); a missing or unknown unit is an error.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!("invalid duration `{s}`: expected a whole number with a unit, e.g. 500ms, 10s or 2m"));
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("invalid duration `{s}`: missing unit; write e.g. {num}s or {num}ms")),
        _ => return Err(format!("invalid duration `{s}`: unknown unit `{unit}`; use ms, s, m or h, e.g. 10s")),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid duration `{s}`: number too large"))?;
    let ms = n.checked_mul(millis_per_unit).ok_or_else(|| format!("invalid duration `{s}`: too long"))?;
    Ok(Duration::from_millis(ms))
}

/// Formats a byte count for people: `"512.0 MiB"`, `"1.5 GiB"`, `"4.0 KiB"`, `"100 B"`.
pub fn human(bytes: u64) -> String {
    let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    match units.iter().find(|(shift, _)| bytes >= 1u64 << shift) {
        Some((shift, unit)) => format!("{:.1} {unit}", bytes as f64 / (1u64 << shift) as f64),
        None => format!("{bytes} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_and_without_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size(" 8M "), Ok(8 << 20));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes_are_errors_that_quote_the_input() {
        for bad in ["", "G", "-1G", "1.5G", "10X", "10 G", "1GG", "99999999999999999999", "16777216T"] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")) || e.contains(bad.trim()), "{bad}: {e}");
        }
        assert!(parse_size("10X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("16777216T").unwrap_err().contains("64 bits"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_errors() {
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("10sec").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("18446744073709551615h").unwrap_err().contains("too long"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(100), "100 B");
        assert_eq!(human(4096), "4.0 KiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(34_865_152), "33.2 MiB");
    }
}
