//! The scanner: normalise, find cues, run the recognisers, resolve overlaps, map spans back.

use std::ops::Range;

use crate::cues::{CueSet, Cues, Hit};
use crate::language::{detect_normalized, Language};
use crate::phone::PhonePlan;
use crate::{checksum, credential, names, network, numbers};
use crate::{EntityType, Finding, Result, Span};

/// Candidates below this confidence are not reported by default. It sits between the bare
/// readings that need a context word to count (a national mobile number without its trunk
/// `0` at 0.4, an Egyptian-ID-shaped number next to an order word) and the weakest reading
/// that stands on its own (a gazetteer given name alone, 0.55).
pub const DEFAULT_MIN_CONFIDENCE: f32 = 0.5;

/// How a [`Scanner`] judges what it finds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScannerConfig {
    /// Candidates below this confidence are dropped (and do not claim their characters from
    /// other readings). Default [`DEFAULT_MIN_CONFIDENCE`].
    pub min_confidence: f32,
    /// The latest birth or issue year an identifier may carry (Kuwaiti and Egyptian birth
    /// dates, the Emirates ID year). Default: the current year of the system clock when the
    /// config is made.
    pub current_year: u16,
}

impl Default for ScannerConfig {
    fn default() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // A clock before 2025 is wrong; 2025 is a floor that keeps recent IDs valid.
        Self {
            min_confidence: DEFAULT_MIN_CONFIDENCE,
            current_year: checksum::year_of_unix(secs).max(2025),
        }
    }
}

/// Finds PII in text. Build it once (it compiles the cue automaton and the phone patterns)
/// and share it: it is `Send + Sync` and [`Scanner::scan`] takes `&self`.
pub struct Scanner {
    cues: CueSet,
    phones: PhonePlan,
    config: ScannerConfig,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One reading of a stretch of the normalised text, before overlaps are resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub(crate) entity: EntityType,
    /// Byte range in the normalised text.
    pub(crate) range: Range<usize>,
    pub(crate) confidence: f32,
    pub(crate) recognizer: &'static str,
    pub(crate) context: bool,
}

impl Candidate {
    pub(crate) fn new(
        entity: EntityType,
        range: Range<usize>,
        confidence: f32,
        recognizer: &'static str,
        context: bool,
    ) -> Self {
        Self {
            entity,
            range,
            confidence,
            recognizer,
            context,
        }
    }
}

/// What every recogniser sees of one scan.
pub(crate) struct Ctx<'a> {
    /// The normalised text.
    pub(crate) text: &'a str,
    /// Its bytes.
    pub(crate) bytes: &'a [u8],
    /// The cues in it.
    pub(crate) cues: Cues<'a>,
    pub(crate) phones: &'a PhonePlan,
    pub(crate) min_confidence: f32,
    pub(crate) current_year: u16,
}

impl Scanner {
    /// A scanner with the default [`ScannerConfig`].
    pub fn new() -> Result<Self> {
        Self::with_config(ScannerConfig::default())
    }

    /// A scanner with `config`.
    pub fn with_config(config: ScannerConfig) -> Result<Self> {
        Ok(Self {
            cues: CueSet::new()?,
            phones: PhonePlan::new()?,
            config,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ScannerConfig {
        &self.config
    }

    /// The findings in `text`, sorted by start, none overlapping another. Where two readings
    /// claim the same characters (a valid Saudi ID that also reads as a phone, a given name
    /// inside an email address) the more confident one wins, then the longer.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        self.scan_with_language(text).0
    }

    /// [`Scanner::scan`] and [`crate::detect_language`] over one normalisation of `text`.
    pub fn scan_with_language(&self, text: &str) -> (Vec<Finding>, Language) {
        let normalized = isnad_ingest::normalize(text);
        let norm = normalized.text();
        let mut hits: Vec<Hit> = Vec::new();
        self.cues.find(norm, &mut hits);
        let ctx = Ctx {
            text: norm,
            bytes: norm.as_bytes(),
            cues: Cues { hits: &hits },
            phones: &self.phones,
            min_confidence: self.config.min_confidence,
            current_year: self.config.current_year,
        };
        let mut candidates = Vec::new();
        numbers::scan(&ctx, &mut candidates);
        network::scan(&ctx, &mut candidates);
        credential::scan(&ctx, &mut candidates);
        names::scan(&ctx, &mut candidates);
        candidates.retain(|c| c.confidence >= self.config.min_confidence && !c.range.is_empty());
        let chosen = resolve(candidates);
        let mut chars = CharCounter::new(text);
        let findings = chosen
            .into_iter()
            .filter_map(|c| {
                let orig = normalized.to_original(c.range.clone());
                if orig.is_empty() {
                    return None;
                }
                let char_start = chars.at(orig.start);
                let char_end = chars.at(orig.end);
                Some(Finding {
                    entity: c.entity,
                    span: Span {
                        start: orig.start,
                        end: orig.end,
                        char_start,
                        char_end,
                    },
                    confidence: c.confidence,
                    recognizer: c.recognizer,
                    context: c.context,
                })
            })
            .collect();
        (findings, detect_normalized(norm))
    }
}

/// Keeps the most confident (then longest, then earliest) candidates that overlap no
/// candidate kept before them; returns them sorted by start.
fn resolve(mut candidates: Vec<Candidate>) -> Vec<Candidate> {
    candidates.sort_by(|a, b| {
        b.confidence
            .total_cmp(&a.confidence)
            .then_with(|| b.range.len().cmp(&a.range.len()))
            .then_with(|| a.range.start.cmp(&b.range.start))
    });
    // Kept candidates, sorted by start; they never overlap, so their ends are sorted too.
    let mut kept: Vec<Candidate> = Vec::with_capacity(candidates.len());
    for c in candidates {
        let at = kept.partition_point(|k| k.range.start < c.range.start);
        let clashes_before = at > 0 && kept[at - 1].range.end > c.range.start;
        let clashes_after = kept.get(at).is_some_and(|k| k.range.start < c.range.end);
        if !clashes_before && !clashes_after {
            kept.insert(at, c);
        }
    }
    kept
}

/// Character offsets of byte offsets of one text, counted incrementally: linear over a scan
/// whose offsets mostly grow.
struct CharCounter<'a> {
    text: &'a str,
    byte: usize,
    chars: usize,
}

impl<'a> CharCounter<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            byte: 0,
            chars: 0,
        }
    }

    /// The character offset of byte offset `at` (a char boundary of the text).
    fn at(&mut self, at: usize) -> usize {
        if self.text.is_ascii() {
            return at;
        }
        if at < self.byte {
            self.byte = 0;
            self.chars = 0;
        }
        let between = self
            .text
            .get(self.byte..at)
            .map_or(0, |s| s.chars().count());
        self.chars += between;
        self.byte = at;
        self.chars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner() -> Scanner {
        Scanner::with_config(ScannerConfig {
            current_year: 2026,
            ..ScannerConfig::default()
        })
        .expect("scanner builds")
    }

    #[test]
    fn scanner_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Scanner>();
    }

    fn found(text: &str) -> Vec<(EntityType, &str)> {
        scanner()
            .scan(text)
            .into_iter()
            .map(|f| (f.entity, &text[f.span.range()]))
            .collect()
    }

    #[test]
    fn spans_point_into_the_original_through_arabic_indic_digits_and_tatweel() {
        let text = "رقم جوالي ٠٥٠ـ١٢٣ ٤٥٦٧ شكرا";
        let findings = scanner().scan(text);
        assert_eq!(findings.len(), 1, "{findings:?}");
        let f = findings[0];
        assert_eq!(f.entity, EntityType::Phone);
        assert_eq!(&text[f.span.range()], "٠٥٠ـ١٢٣ ٤٥٦٧");
        assert!(f.context, "جوالي is a phone context word");
        let chars: Vec<char> = text.chars().collect();
        let by_chars: String = chars[f.span.char_start..f.span.char_end].iter().collect();
        assert_eq!(by_chars, "٠٥٠ـ١٢٣ ٤٥٦٧");
        assert_eq!(f.span.char_start, "رقم جوالي ".chars().count());
    }

    #[test]
    fn persian_digits_and_presentation_forms() {
        // Persian digits, and the ID cue written in presentation forms.
        let text = "ﺭﻗﻢ ﺍﻟﻬﻮﻳﺔ: ۱۰۱۲۳۴۵۶۷۲";
        assert_eq!(found(text), vec![(EntityType::SaNationalId, "۱۰۱۲۳۴۵۶۷۲")]);
        let f = scanner().scan(text)[0];
        assert!(f.context);
        assert_eq!(f.span.char_end, text.chars().count());
    }

    #[test]
    fn a_valid_saudi_id_is_not_also_a_phone() {
        // 1012345672 passes Luhn and also reads as an Egyptian mobile without its trunk 0.
        assert_eq!(
            found("هويتي 1012345672"),
            vec![(EntityType::SaNationalId, "1012345672")]
        );
        assert_eq!(
            found("ID 1012345672."),
            vec![(EntityType::SaNationalId, "1012345672")]
        );
        // One digit off fails Luhn: no ID, and an ID word does not make it a phone.
        assert_eq!(found("رقم الهوية 1012345673 وجوالي"), vec![]);
    }

    #[test]
    fn digit_runs_inside_longer_runs_do_not_match() {
        for text in [
            "ref 10123456720001",
            "x10123456720",
            "1012345672345",
            "tx 0000101234567200",
            "INV-1012345672",
            "№1012345672",
        ] {
            let ids: Vec<_> = found(text)
                .into_iter()
                .filter(|(e, _)| *e == EntityType::SaNationalId)
                .collect();
            assert!(ids.is_empty(), "{text}: {ids:?}");
        }
    }

    #[test]
    fn checksums_decide() {
        assert_eq!(
            found("civil id 285051501237"),
            vec![(EntityType::KwCivilId, "285051501237")]
        );
        assert_eq!(found("civil id 285051501238"), vec![]);
        assert_eq!(
            found("Emirates ID 784-1990-1234567-6"),
            vec![(EntityType::EmiratesId, "784-1990-1234567-6")]
        );
        assert_eq!(found("Emirates ID 784-1990-1234567-5"), vec![]);
        assert_eq!(
            found("IBAN SA0380000000608010167519"),
            vec![(EntityType::Iban, "SA0380000000608010167519")]
        );
        assert_eq!(found("IBAN SA0380000000608010167518"), vec![]);
        assert_eq!(
            found("card 4111 1111 1111 1111"),
            vec![(EntityType::Card, "4111 1111 1111 1111")]
        );
        assert_eq!(found("card 4111 1111 1111 1112"), vec![]);
    }

    #[test]
    fn prices_dates_and_order_numbers_are_not_phones() {
        for text in [
            "Order #0501234567 shipped",
            "رقم الطلب 0501234567",
            "Total: SAR 1,250.00",
            "المبلغ ٥٠٠١٢٣٤٥٦٧ ريال",
            "on 2024-05-12 at 14:30",
            "تاريخ ١٢/٠٥/٢٠٢٤",
            "invoice 966501234567",
        ] {
            assert_eq!(found(text), vec![], "{text}");
        }
    }

    #[test]
    fn resolve_prefers_confident_then_long() {
        let c = |s, e, conf| Candidate::new(EntityType::Phone, s..e, conf, "t", false);
        let kept = resolve(vec![
            c(0, 10, 0.6),
            c(2, 12, 0.9),
            c(12, 14, 0.5),
            c(20, 30, 0.7),
        ]);
        let ranges: Vec<_> = kept.iter().map(|k| k.range.clone()).collect();
        assert_eq!(ranges, vec![2..12, 12..14, 20..30]);
    }
}
