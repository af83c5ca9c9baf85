//! IBANs: country code, two check digits and a BBAN of the registry's length, MOD-97.

use crate::checksum::iban_mod97;

/// IBAN lengths per country code, from the SWIFT IBAN registry (release 99, 2024-2025),
/// sorted by code. The French overseas departments and territories use `FR`, and are not
/// listed apart.
const LENGTHS: &[(&[u8; 2], u8)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HN", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

/// The registry length of IBANs of `country` (two ASCII letters, any case).
pub(crate) fn length(country: [u8; 2]) -> Option<usize> {
    let key = [
        country[0].to_ascii_uppercase(),
        country[1].to_ascii_uppercase(),
    ];
    LENGTHS
        .binary_search_by(|(code, _)| code.as_slice().cmp(key.as_slice()))
        .ok()
        .map(|i| usize::from(LENGTHS[i].1))
}

/// An IBAN starting at `start` of `text` (its country code), written compactly or with
/// single spaces between groups: where it ends, if its country, length and MOD-97 check hold
/// and it is not glued to a following letter or digit.
pub(crate) fn match_at(text: &[u8], start: usize) -> Option<usize> {
    let country = [*text.get(start)?, *text.get(start + 1)?];
    if !country.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let len = length(country)?;
    let mut compact = [0u8; 34];
    let mut n = 0;
    let mut at = start;
    while n < len {
        let b = *text.get(at)?;
        if b.is_ascii_alphanumeric() {
            // Country letters, then check digits, then the BBAN.
            if (2..4).contains(&n) && !b.is_ascii_digit() {
                return None;
            }
            compact[n] = b;
            n += 1;
            at += 1;
        } else if b == b' ' && n >= 4 && text.get(at + 1).is_some_and(u8::is_ascii_alphanumeric) {
            // One space between groups (after the check digits at the earliest).
            at += 1;
        } else {
            return None;
        }
    }
    if text
        .get(at)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return None;
    }
    iban_mod97(&compact[..len]).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_sorted() {
        assert!(LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(length(*b"sa"), Some(24));
        assert_eq!(length(*b"KW"), Some(30));
        assert_eq!(length(*b"US"), None);
    }

    #[test]
    fn published_examples() {
        for (iban, ok) in [
            ("SA03 8000 0000 6080 1016 7519", true),
            ("SA0380000000608010167519", true),
            ("AE07 0331 2345 6789 0123 456", true),
            ("GB82 WEST 1234 5698 7654 32", true),
            ("DE89 3704 0044 0532 0130 00", true),
            ("FR14 2004 1010 0505 0001 3M02 606", true),
            ("SA03 8000 0000 6080 1016 7518", false),
            ("SA03 8000 0000 6080 1016 751", false),
            ("SA0380000000608010167519X", false),
            ("US12 3456 7890", false),
        ] {
            let found = match_at(iban.as_bytes(), 0);
            assert_eq!(found == Some(iban.len()), ok, "{iban}: {found:?}");
        }
    }
}
