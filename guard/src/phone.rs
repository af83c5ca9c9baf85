//! Phone numbers of the eight countries isnad knows in detail, and E.164 numbers of the rest.
//!
//! The number patterns are libphonenumber's (`PhoneNumberMetadata.xml`, release 9.0.33, as
//! embedded in the `phonenumber` crate 0.3.10+9.0.33), copied verbatim: for each country its
//! calling code, whether it has a national trunk prefix `0`, and the `nationalNumberPattern` of
//! its `mobile` and `fixedLine` descriptions. `tests::tables_agree_with_libphonenumber`
//! checks every pattern against that crate's own classification, so an update of the metadata
//! that changes a range fails the test instead of drifting silently.

use regex::Regex;

use crate::Error;

/// A country's numbering plan, as far as the recogniser needs it.
pub(crate) struct Country {
    /// ISO 3166 code: the tests look the country up in libphonenumber's metadata by it.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests only"))]
    pub(crate) iso: &'static str,
    /// Country calling code.
    pub(crate) code: &'static str,
    /// Whether national numbers are dialled with a leading `0` (trunk prefix).
    pub(crate) trunk_zero: bool,
    /// libphonenumber's `mobile` `nationalNumberPattern`.
    pub(crate) mobile: &'static str,
    /// libphonenumber's `fixedLine` `nationalNumberPattern`.
    pub(crate) fixed: &'static str,
}

/// Saudi Arabia, the UAE, Egypt, Kuwait, Qatar, Bahrain, Oman and Jordan.
pub(crate) const COUNTRIES: [Country; 8] = [
    Country {
        iso: "SA",
        code: "966",
        trunk_zero: true,
        mobile: r"579[0-8]\d{5}|5(?:[013-689]\d|7[0-8])\d{6}",
        fixed: r"1(?:1\d|2[24-8]|3[35-8]|4[3-68]|6[2-5]|7[235-7])\d{6}",
    },
    Country {
        iso: "AE",
        code: "971",
        trunk_zero: true,
        mobile: r"5[02-68]\d{7}",
        fixed: r"[2-4679][2-8]\d{6}",
    },
    Country {
        iso: "EG",
        code: "20",
        trunk_zero: true,
        mobile: r"1[0-25]\d{8}",
        fixed: r"13[23]\d{6}|(?:15|57)\d{6,7}|(?:2\d|3|4[05-8]|5[05]|6[24-689]|8[2468]|9[235-7])\d{7}",
    },
    Country {
        iso: "KW",
        code: "965",
        trunk_zero: false,
        mobile: r"(?:41\d\d|5(?:(?:[05]\d|1[0-7]|6[56])\d|2(?:22|5[25])|7(?:55|77)|88[58])|6(?:(?:0[034679]|5[015-9]|6\d)\d|1(?:00|11|6[16])|2[26]2|3[36]3|4[46]4|7(?:0[013-9]|[67]\d)|8[68]8|9(?:[069]\d|3[039]))|9(?:(?:[04679]\d|8[057-9])\d|1(?:00|1[01]|99)|2(?:00|2\d)|3(?:00|3[03])|5(?:00|5\d)))\d{4}",
        fixed: r"2(?:[23]\d\d|4(?:[1-35-9]\d|44)|5(?:0[034]|[2-46]\d|5[1-3]|7[1-7]))\d{4}",
    },
    Country {
        iso: "QA",
        code: "974",
        trunk_zero: false,
        mobile: r"[35-7]\d{7}",
        fixed: r"4(?:(?:[014]\d\d|999)\d|2022)\d{3}",
    },
    Country {
        iso: "BH",
        code: "973",
        trunk_zero: false,
        mobile: r"(?:3(?:[0-79]\d|8[0-57-9])\d|6(?:3(?:00|33|6[16])|441|6(?:3[03-9]|[69]\d|7[0-689])))\d{4}",
        fixed: r"(?:1(?:3[1356]|6[0156]|7\d)\d|6(?:1[16]\d|500|6(?:0\d|3[12]|44|55|7[7-9]|88)|9[69][69])|7(?:[07]\d\d|1(?:11|78)))\d{4}",
    },
    Country {
        iso: "OM",
        code: "968",
        trunk_zero: false,
        mobile: r"(?:1505|90[1-9]\d)\d{4}|(?:7[124-9]|9[1-9])\d{6}",
        fixed: r"2[1-6]\d{6}",
    },
    Country {
        iso: "JO",
        code: "962",
        trunk_zero: true,
        mobile: r"(?:427|7(?:[78][0-25-9]|9\d))\d{6}",
        fixed: r"87(?:000|90[01])\d{3}|(?:2(?:6(?:2[0-35-9]|3[0-578]|4[24-7]|5[0-24-8]|[6-8][023]|9[0-3])|7(?:0[1-79]|10|2[014-7]|3[0-689]|4[019]|5[0-3578]))|32(?:0[1-69]|1[1-35-7]|2[024-7]|3\d|4[0-3]|[5-7][023])|53(?:0[0-3]|[13][023]|2[0-59]|49|5[0-35-9]|6[15]|7[45]|8[1-6]|9[0-36-9])|6(?:2(?:[05]0|22)|3(?:00|33)|4(?:0[0-25]|1[2-7]|2[0569]|[38][07-9]|4[025689]|6[0-589]|7\d|9[0-2])|5(?:[01][056]|2[034]|3[0-57-9]|4[178]|5[0-69]|6[0-35-9]|7[1-379]|8[0-68]|9[0239]))|87(?:20|7[078]|99))\d{4}",
    },
];

/// Every country calling code in libphonenumber's metadata (the `countryCode` of every
/// territory, 9.0.33), for E.164 numbers of countries without tables here.
const CALLING_CODES: &[u16] = &[
    1, 7, 20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54,
    55, 56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98, 211,
    212, 213, 216, 218, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234,
    235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253,
    254, 255, 256, 257, 258, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 290, 291, 297, 298,
    299, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 370, 371, 372, 373, 374, 375, 376, 377,
    378, 380, 381, 382, 383, 385, 386, 387, 389, 420, 421, 423, 500, 501, 502, 503, 504, 505, 506,
    507, 508, 509, 590, 591, 592, 593, 594, 595, 596, 597, 598, 599, 670, 672, 673, 674, 675, 676,
    677, 678, 679, 680, 681, 682, 683, 685, 686, 687, 688, 689, 690, 691, 692, 800, 808, 850, 852,
    853, 855, 856, 870, 878, 880, 881, 882, 883, 886, 888, 960, 961, 962, 963, 964, 965, 966, 967,
    968, 970, 971, 972, 973, 974, 975, 976, 977, 979, 992, 993, 994, 995, 996, 998,
];

/// How a digit string reads as a phone number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PhoneKind {
    /// Country code of one of the eight countries, then a valid mobile or fixed-line number.
    Known { mobile: bool },
    /// A country code of another country and a plausible length (E.164: at most 15 digits).
    OtherCountry,
    /// A national number with its trunk `0`, valid for one of the eight countries.
    NationalTrunk { mobile: bool },
    /// A national mobile number without a trunk prefix (`501234567`, `50012345`): short and
    /// ambiguous, so only context words make it a finding.
    NationalBare,
}

/// The compiled patterns.
pub(crate) struct PhonePlan {
    /// Per country in [`COUNTRIES`] order: (mobile, fixed), anchored.
    patterns: Vec<(Regex, Regex)>,
}

impl PhonePlan {
    pub(crate) fn new() -> Result<Self, Error> {
        let anchored = |p: &str| Regex::new(&format!("^(?:{p})$"));
        let patterns = COUNTRIES
            .iter()
            .map(|c| Ok((anchored(c.mobile)?, anchored(c.fixed)?)))
            .collect::<Result<Vec<_>, regex::Error>>()?;
        Ok(Self { patterns })
    }

    /// Whether `nsn` (national significant number, no trunk prefix) is a mobile number of
    /// country `i`, or a fixed-line one.
    pub(crate) fn classify_nsn(&self, i: usize, nsn: &str) -> Option<bool> {
        let (mobile, fixed) = self.patterns.get(i)?;
        if mobile.is_match(nsn) {
            Some(true)
        } else if fixed.is_match(nsn) {
            Some(false)
        } else {
            None
        }
    }

    /// How `digits` reads as a phone number. `international` is whether it was written with
    /// `+` (or whether the caller stripped a leading `00`).
    pub(crate) fn classify(&self, digits: &str, international: bool) -> Option<PhoneKind> {
        if international {
            return self.with_country_code(digits, true);
        }
        if let Some(rest) = digits.strip_prefix("00") {
            return self.with_country_code(rest, true);
        }
        if let Some(kind) = self.with_country_code(digits, false) {
            return Some(kind);
        }
        if let Some(nsn) = digits.strip_prefix('0') {
            for (i, country) in COUNTRIES.iter().enumerate() {
                if country.trunk_zero {
                    if let Some(mobile) = self.classify_nsn(i, nsn) {
                        return Some(PhoneKind::NationalTrunk { mobile });
                    }
                }
            }
            return None;
        }
        (0..COUNTRIES.len())
            .any(|i| self.classify_nsn(i, digits) == Some(true))
            .then_some(PhoneKind::NationalBare)
    }

    /// A number that starts with a country code. Without a `+` or `00` (`strict` false), only
    /// the eight countries count, and only their mobile numbers: `966501234567` is a phone,
    /// a twelve-digit reference number that happens to start with 44 is not.
    fn with_country_code(&self, digits: &str, strict: bool) -> Option<PhoneKind> {
        for (i, country) in COUNTRIES.iter().enumerate() {
            if let Some(rest) = digits.strip_prefix(country.code) {
                // `+966 (0) 50…`: a trunk zero written after the country code.
                let nsn = if country.trunk_zero {
                    rest.strip_prefix('0').unwrap_or(rest)
                } else {
                    rest
                };
                return match self.classify_nsn(i, nsn) {
                    Some(mobile) if strict || mobile => Some(PhoneKind::Known { mobile }),
                    _ => None,
                };
            }
        }
        if !strict || !(8..=15).contains(&digits.len()) {
            return None;
        }
        (1..=3)
            .filter_map(|n| digits.get(..n)?.parse::<u16>().ok())
            .any(|code| CALLING_CODES.binary_search(&code).is_ok())
            .then_some(PhoneKind::OtherCountry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> PhonePlan {
        PhonePlan::new().expect("patterns compile")
    }

    #[test]
    fn national_and_international_forms() {
        let p = plan();
        let known = Some(PhoneKind::Known { mobile: true });
        let trunk = Some(PhoneKind::NationalTrunk { mobile: true });
        assert_eq!(p.classify("966501234567", true), known);
        assert_eq!(p.classify("00966501234567", false), known);
        assert_eq!(p.classify("966501234567", false), known);
        assert_eq!(p.classify("9660501234567", true), known, "+966 (0) 50…");
        assert_eq!(p.classify("0501234567", false), trunk);
        assert_eq!(p.classify("01012345678", false), trunk, "Egyptian mobile");
        assert_eq!(p.classify("0791234567", false), trunk, "Jordanian mobile");
        assert_eq!(p.classify("96550012345", false), known, "Kuwait without +");
        assert_eq!(p.classify("97433123456", true), known, "Qatar");
        assert_eq!(p.classify("97336001234", true), known, "Bahrain");
        assert_eq!(p.classify("96892123456", true), known, "Oman");
        assert_eq!(p.classify("50012345", false), Some(PhoneKind::NationalBare));
        assert_eq!(
            p.classify("501234567", false),
            Some(PhoneKind::NationalBare)
        );
        assert_eq!(
            p.classify("966112345678", true),
            Some(PhoneKind::Known { mobile: false }),
            "Riyadh landline"
        );
        assert_eq!(
            p.classify("966112345678", false),
            None,
            "landline needs + or 00"
        );
        assert_eq!(
            p.classify("442079460958", true),
            Some(PhoneKind::OtherCountry)
        );
        assert_eq!(
            p.classify("0579912345", false),
            Some(PhoneKind::NationalTrunk { mobile: false }),
            "not a Saudi mobile (05799 is unassigned), but an Egyptian landline (057, Damietta)"
        );
        assert_eq!(p.classify("0599912345", false), trunk);
        assert_eq!(p.classify("0999912345", false), None, "no country's number");
        assert_eq!(p.classify("12345678", false), None);
        assert_eq!(p.classify("9661234", true), None, "too short");
    }

    /// The tables are libphonenumber's metadata as the `phonenumber` crate embeds it: the
    /// same calling codes, trunk prefixes and pattern text, and the same calling codes overall.
    #[test]
    fn tables_are_libphonenumber_metadata() {
        use phonenumber::metadata::DATABASE;
        for c in &COUNTRIES {
            let meta = DATABASE.by_id(c.iso).expect("territory in the metadata");
            assert_eq!(meta.country_code().to_string(), c.code, "{}", c.iso);
            assert_eq!(
                meta.national_prefix() == Some("0"),
                c.trunk_zero,
                "{}",
                c.iso
            );
            let d = meta.descriptors();
            // The crate keeps the XML's layout whitespace in the pattern text.
            let compact = |s: &str| s.split_whitespace().collect::<String>();
            let mobile = compact(d.mobile().expect("mobile").national_number().as_str());
            let fixed = compact(
                d.fixed_line()
                    .expect("fixed line")
                    .national_number()
                    .as_str(),
            );
            assert_eq!(mobile, c.mobile, "{} mobile", c.iso);
            assert_eq!(fixed, c.fixed, "{} fixed line", c.iso);
        }
        let mut codes: Vec<u16> = DATABASE.iter().map(|m| m.country_code()).collect();
        // The metadata's non-geographic entities (territory `001`: international freephone,
        // shared cost, satellite and global networks) have calling codes too, but the crate
        // does not list them among its regions.
        codes.extend([800, 808, 870, 878, 881, 882, 883, 888]);
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes, CALLING_CODES);
    }

    /// Our classification against the `phonenumber` crate's, over numbers that cover each
    /// pattern's prefixes: all three-digit prefixes of every length from 7 to 10 digits, with
    /// a few different tails.
    ///
    /// The crate accepts a number when its pattern matches a *prefix* of it and its length is
    /// possible for the type (`Descriptor::is_match` in phonenumber 0.3.10), where
    /// libphonenumber requires the whole number to match: `+20 3 00000000` (nine digits after
    /// Alexandria's `3`, which takes seven) is a fixed line to the crate and invalid to
    /// libphonenumber and to us. Disagreements are allowed only in that one direction and only
    /// where the full pattern does not match; everything else must agree.
    #[test]
    fn classification_agrees_with_the_phonenumber_crate() {
        use phonenumber::{country, metadata::DATABASE, Type};
        let p = plan();
        let mut checked = 0;
        let mut prefix_only = 0;
        for (i, c) in COUNTRIES.iter().enumerate() {
            let id: country::Id = c.iso.parse().expect("country id");
            let (mobile_full, fixed_full) = &p.patterns[i];
            for len in 7..=10 {
                for prefix in 0..1000u32 {
                    for tail in ["0000000", "1234567", "9876543", "5555555", "0909090"] {
                        let mut nsn = format!("{prefix:03}{tail}");
                        nsn.truncate(len);
                        if nsn.starts_with('0') {
                            continue;
                        }
                        let ours = p.classify_nsn(i, &nsn);
                        let Ok(number) = phonenumber::parse(Some(id), format!("+{}{nsn}", c.code))
                        else {
                            continue;
                        };
                        let theirs = match number.number_type(&DATABASE) {
                            Type::Mobile | Type::FixedLineOrMobile => Some(true),
                            Type::FixedLine => Some(false),
                            _ => None,
                        };
                        let theirs = if phonenumber::is_valid(&number) {
                            theirs
                        } else {
                            None
                        };
                        checked += 1;
                        if ours == theirs {
                            continue;
                        }
                        let explained = ours.is_none()
                            && theirs.is_some()
                            && !mobile_full.is_match(&nsn)
                            && !fixed_full.is_match(&nsn);
                        assert!(
                            explained,
                            "{} {nsn}: ours {ours:?}, crate {theirs:?}",
                            c.iso
                        );
                        prefix_only += 1;
                    }
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
        // The prefix-only acceptances are a small minority of the samples.
        assert!(prefix_only * 20 < checked, "{prefix_only} of {checked}");
    }
}
