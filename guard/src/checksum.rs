//! Check digits and date checks of the structured identifiers. Every function takes ASCII
//! digits (`b'0'..=b'9'`) or ASCII alphanumerics and is false on anything else.

/// Luhn (mod 10) over all of `digits`, check digit last: cards, Saudi IDs, Emirates IDs.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 MOD-97-10 over an IBAN without separators: the first four characters move to the
/// end, letters count as 10..=35, and the number must be 1 modulo 97. Case-insensitive.
pub(crate) fn iban_mod97(iban: &[u8]) -> bool {
    if iban.len() < 5 || !iban.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let (head, tail) = iban.split_at(4);
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head) {
        let b = b.to_ascii_uppercase();
        if b.is_ascii_digit() {
            rem = (rem * 10 + u32::from(b - b'0')) % 97;
        } else {
            let v = u32::from(b - b'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    rem == 1
}

/// The Kuwaiti civil ID check: weights 2,1,6,3,7,9,10,5,8,4,2 over the first 11 digits,
/// c = 11 − (sum mod 11), valid when c is a digit (0..=9) equal to the 12th. (With sum mod 11
/// = 0, c is 11 and the ID is invalid; with 1, c is 10, also invalid.)
pub(crate) fn kw_civil_check(digits: &[u8]) -> bool {
    const WEIGHTS: [u32; 11] = [2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    if digits.len() != 12 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .zip(WEIGHTS)
        .map(|(&b, w)| u32::from(b - b'0') * w)
        .sum();
    let c = 11 - sum % 11;
    c <= 9 && c == u32::from(digits[11] - b'0')
}

/// Whether `year-month-day` is a real date of the proleptic Gregorian calendar.
pub(crate) fn valid_date(year: u16, month: u8, day: u8) -> bool {
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

fn is_leap(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// The value of two ASCII digits.
pub(crate) fn two(d: &[u8]) -> u8 {
    (d[0] - b'0') * 10 + (d[1] - b'0')
}

/// The birth date `C YY MM DD` at the start of Kuwaiti and Egyptian IDs: century digit 2 for
/// the 1900s and 3 for the 2000s, then a real date no later than `current_year`.
pub(crate) fn century_date(d: &[u8], current_year: u16) -> bool {
    if d.len() < 7 || !d[..7].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let century = match d[0] {
        b'2' => 1900,
        b'3' => 2000,
        _ => return false,
    };
    let year = century + u16::from(two(&d[1..3]));
    year <= current_year && valid_date(year, two(&d[3..5]), two(&d[5..7]))
}

/// The calendar year of a Unix timestamp (UTC), for the "no later than this year" checks.
pub(crate) fn year_of_unix(secs: u64) -> u16 {
    // Howard Hinnant's civil_from_days.
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    u16::try_from(year).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_values() {
        // Test card numbers the networks publish, and the textbook Luhn example.
        for ok in [
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "79927398713",
        ] {
            assert!(luhn(ok.as_bytes()), "{ok}");
        }
        for bad in ["4111111111111112", "79927398710", "", "12a4"] {
            assert!(!luhn(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn mod97_known_ibans() {
        // Examples from the SWIFT IBAN registry and national banks' published samples.
        for ok in [
            "GB82WEST12345698765432",
            "DE89370400440532013000",
            "SA0380000000608010167519",
            "AE070331234567890123456",
            "FR1420041010050500013M02606",
            "gb82west12345698765432",
        ] {
            assert!(iban_mod97(ok.as_bytes()), "{ok}");
        }
        for bad in ["GB82WEST12345698765433", "SA0380000000608010167518", "GB82"] {
            assert!(!iban_mod97(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn kuwait_civil_id_check_digit() {
        // 2 900101 1234 c: sum of weights × digits = 2*2+9*1+0*6+0*3+1*7+0*9+1*10+1*5+2*8+3*4
        // +4*2 = 4+9+0+0+7+0+10+5+16+12+8 = 71; 71 mod 11 = 5; c = 6.
        assert!(kw_civil_check(b"290010112346"));
        assert!(!kw_civil_check(b"290010112345"));
        // 2900101123 2: the sum is 63 + 2*2 = 67, 67 mod 11 = 1, c = 10: no last digit works.
        for last in b'0'..=b'9' {
            let id = [
                b'2', b'9', b'0', b'0', b'1', b'0', b'1', b'1', b'2', b'3', b'2', last,
            ];
            assert!(!kw_civil_check(&id));
        }
        assert!(!kw_civil_check(b"2900101123"));
    }

    #[test]
    fn dates() {
        assert!(valid_date(2000, 2, 29));
        assert!(!valid_date(1900, 2, 29));
        assert!(valid_date(2024, 2, 29));
        assert!(!valid_date(2023, 2, 29));
        assert!(!valid_date(2023, 4, 31));
        assert!(!valid_date(2023, 13, 1));
        assert!(!valid_date(2023, 1, 0));
        assert!(century_date(b"2900101", 2026));
        assert!(century_date(b"3050228", 2026));
        assert!(!century_date(b"3990101", 2026), "2099 is in the future");
        assert!(!century_date(b"1900101", 2026), "century digit 1");
        assert!(!century_date(b"2901301", 2026), "month 13");
    }

    #[test]
    fn year_from_timestamp() {
        assert_eq!(year_of_unix(0), 1970);
        assert_eq!(year_of_unix(951_782_400), 2000); // 2000-02-29
        assert_eq!(year_of_unix(1_735_689_599), 2024); // 2024-12-31T23:59:59Z
        assert_eq!(year_of_unix(1_735_689_600), 2025);
    }
}
