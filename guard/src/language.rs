//! The language of a prompt, by a script-ratio rule over its letters.

/// The language of a prompt, as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// Arabic: Arabic-script letters dominate and are not Persian or Urdu.
    Ar,
    /// English, or more exactly Latin script: Latin letters dominate. Script alone cannot tell
    /// English from French or Turkish; the router treats them alike.
    En,
    /// Arabic and Latin letters, each a real share of the text.
    Mixed,
    /// Anything else: Persian or Urdu, other scripts, or no letters at all.
    Other,
}

impl Language {
    /// The snake_case name, as serde writes it (`ar`, `en`, `mixed`, `other`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Language::Ar => "ar",
            Language::En => "en",
            Language::Mixed => "mixed",
            Language::Other => "other",
        }
    }
}

/// A script is dominant at this share of the letters.
pub const DOMINANT_SHARE: f32 = 0.8;
/// Each script has at least this share of the letters in a mixed text.
pub const MIXED_SHARE: f32 = 0.2;

/// Detects the language of `text` by counting letters (digits, punctuation, spaces and marks
/// do not count), after the same normalisation the scanner applies, so presentation forms
/// count as the letters they stand for.
///
/// With `arabic`, `latin` and `other` the letters of each script and `total` their sum:
///
/// 1. no letters: [`Language::Other`];
/// 2. `arabic ≥ 0.8 × total` ([`DOMINANT_SHARE`]): [`Language::Ar`], unless the Arabic-script
///    letters are Persian or Urdu (below), then [`Language::Other`];
/// 3. `latin ≥ 0.8 × total`: [`Language::En`];
/// 4. `arabic ≥ 0.2 × total` and `latin ≥ 0.2 × total` ([`MIXED_SHARE`]): [`Language::Mixed`]
///    (Persian or Urdu with Latin is [`Language::Other`]);
/// 5. otherwise [`Language::Other`].
///
/// Persian and Urdu: the letters that Persian and Urdu use and Arabic does not (پ چ ژ گ ک ی
/// ٹ ڈ ڑ ں ے ہ ھ ۀ) are counted against the Arabic letters that they replace or that those
/// languages do not write (ي ك ة ى). The Arabic-script text is Persian or Urdu when the first
/// count is larger: Persian writes ی and ک where Arabic writes ي and ك, so even a short Persian
/// sentence tips the count, while Arabic typed on a Persian keyboard rarely does.
pub fn detect_language(text: &str) -> Language {
    let normalized = isnad_ingest::normalize(text);
    detect_normalized(normalized.text())
}

/// [`detect_language`] on text that is already normalised.
pub(crate) fn detect_normalized(text: &str) -> Language {
    let mut counts = Counts::default();
    for c in text.chars() {
        counts.add(c);
    }
    counts.language()
}

#[derive(Debug, Default)]
struct Counts {
    arabic: u32,
    latin: u32,
    other: u32,
    /// Letters of Persian and Urdu that Arabic does not use.
    fa_ur: u32,
    /// Letters of Arabic that Persian and Urdu do not use (or replace).
    ar_only: u32,
}

impl Counts {
    fn add(&mut self, c: char) {
        if c.is_ascii() {
            if c.is_ascii_alphabetic() {
                self.latin += 1;
            }
            return;
        }
        match c {
            // Arabic letters of the basic block: hamza to yeh, and the Persian/Urdu additions.
            '\u{0621}'..='\u{064A}'
            | '\u{066E}'..='\u{066F}'
            | '\u{0671}'..='\u{06D3}'
            | '\u{06D5}'
            | '\u{06EE}'..='\u{06EF}'
            | '\u{06FA}'..='\u{06FC}'
            | '\u{06FF}'
            | '\u{0750}'..='\u{077F}'
            | '\u{08A0}'..='\u{08C9}' => {
                if c == '\u{0640}' {
                    // Tatweel is not a letter (normalisation removes it anyway).
                    return;
                }
                self.arabic += 1;
                match c {
                    'پ' | 'چ' | 'ژ' | 'گ' | 'ک' | 'ی' | 'ٹ' | 'ڈ' | 'ڑ' | 'ں' | 'ے' | 'ہ' | 'ھ'
                    | 'ۀ' => self.fa_ur += 1,
                    'ي' | 'ك' | 'ة' | 'ى' => self.ar_only += 1,
                    _ => {}
                }
            }
            _ if c.is_alphabetic() => {
                if is_latin_letter(c) {
                    self.latin += 1;
                } else {
                    self.other += 1;
                }
            }
            _ => {}
        }
    }

    fn language(&self) -> Language {
        let total = self.arabic + self.latin + self.other;
        if total == 0 {
            return Language::Other;
        }
        let share = |n: u32| n as f32 / total as f32;
        let persian = self.fa_ur > self.ar_only;
        if share(self.arabic) >= DOMINANT_SHARE {
            return if persian {
                Language::Other
            } else {
                Language::Ar
            };
        }
        if share(self.latin) >= DOMINANT_SHARE {
            return Language::En;
        }
        if share(self.arabic) >= MIXED_SHARE && share(self.latin) >= MIXED_SHARE && !persian {
            return Language::Mixed;
        }
        Language::Other
    }
}

fn is_latin_letter(c: char) -> bool {
    matches!(c, '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}' | '\u{2C60}'..='\u{2C7F}' | '\u{A720}'..='\u{A7FF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages() {
        let cases = [
            ("ما هي عاصمة المملكة العربية السعودية؟", Language::Ar),
            ("What is the capital of Saudi Arabia?", Language::En),
            (
                "اشرح لي كيف أستخدم Python مع PostgreSQL database",
                Language::Mixed,
            ),
            (
                "Please translate this: مرحبا بكم في الرياض اليوم",
                Language::Mixed,
            ),
            (
                "پایتخت ایران کجاست؟ لطفا یک پاسخ کوتاه بدهید",
                Language::Other,
            ),
            ("پاکستان کا دارالحکومت کہاں ہے؟", Language::Other),
            ("Привет, как дела?", Language::Other),
            ("東京はどこですか", Language::Other),
            ("12345 !!! 678", Language::Other),
            ("", Language::Other),
            // Presentation forms are letters of the script they stand for.
            ("ﻣﺮﺣﺒﺎ ﺑﻜﻢ", Language::Ar),
            // One English word in an Arabic sentence does not make it mixed.
            ("أريد أن أتعلم البرمجة بلغة Go", Language::Ar),
            ("Café crème, s'il vous plaît", Language::En),
        ];
        for (text, expected) in cases {
            assert_eq!(detect_language(text), expected, "{text}");
        }
    }

    #[test]
    fn arabic_with_an_odd_persian_letter_stays_arabic() {
        // A Persian keyboard's ی in one word of an otherwise Arabic sentence.
        assert_eq!(
            detect_language("السلام علیكم، كيف حالك يا صديقي العزيز؟"),
            Language::Ar
        );
    }

    #[test]
    fn names_serialise_snake_case() {
        assert_eq!(
            serde_json::to_string(&Language::Mixed).ok().as_deref(),
            Some("\"mixed\"")
        );
        assert_eq!(Language::Ar.as_str(), "ar");
    }
}
