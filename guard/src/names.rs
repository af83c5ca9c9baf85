//! Person names in Arabic and English, from the gazetteers and cue words of
//! [`crate::lexicon`].
//!
//! - After a cue (`اسمي`, `السيد`, `الدكتورة`, `my name is`, `Mr.`), the next word is a name
//!   (for English, a capitalised one; after `my name is`, a gazetteer name may be lower case),
//!   and so are the name parts that follow it: 0.85 when the first word is in a gazetteer,
//!   0.7 otherwise.
//! - A given name from a gazetteer (capitalised, in English) followed by at least one more name
//!   part: 0.7. Alone: 0.55, unless it is also a common word (`علي`, `أمل`, `Will`, `Grace`),
//!   then it is no finding.
//! - Name parts: gazetteer names; Arabic particles with the word after them (`بن سلمان`,
//!   `عبد الرحمن`, `آل سعود`, `أبو بكر`); words that start with `عبد` (`عبدالله`); family names
//!   of the `ال…ي` form (`القحطاني`, `الشمري`); in English, capitalised words that are not
//!   common capitalised words (`Thanks`, `Monday`), and particles before one (`bin`, `al`).

use crate::cues::{Cue, Cues};
use crate::lexicon;
use crate::scanner::{Candidate, Ctx};
use crate::EntityType;

/// The most words a name takes after its first.
const MAX_PARTS: usize = 4;

/// Scans the name cues and gazetteer hits of the cue pass.
pub(crate) fn scan(ctx: &Ctx<'_>, out: &mut Vec<Candidate>) {
    let text = ctx.text;
    for hit in ctx.cues.hits {
        let found = match hit.cue {
            Cue::TitleEn => {
                let title = &text[hit.start..hit.end];
                let proper = title.starts_with(|c: char| c.is_ascii_uppercase())
                    && title[1..].bytes().all(|c| c.is_ascii_lowercase());
                if !proper {
                    continue;
                }
                let mut at = hit.end;
                if text[at..].starts_with('.') {
                    at += 1;
                }
                after_cue(ctx, at, false, "person_name.title")
            }
            Cue::PhraseEn => after_cue(ctx, hit.end, true, "person_name.cue"),
            Cue::IntroAr => after_cue(ctx, hit.end, false, "person_name.cue"),
            Cue::Given { arabic, ambiguous } => {
                if !arabic && !text[hit.start..].starts_with(|c: char| c.is_ascii_uppercase()) {
                    continue;
                }
                let end = extend(ctx, hit.end, arabic);
                let parts = end != hit.end;
                match (parts, ambiguous) {
                    (true, _) => Some((hit.start..end, 0.7, "person_name.gazetteer")),
                    (false, false) => Some((hit.start..end, 0.55, "person_name.gazetteer")),
                    (false, true) => None,
                }
            }
            Cue::ParticleAr if text[hit.start..hit.end].starts_with("عبد") => {
                // `عبد الله`, `عبد الرحمن`: the compound is a given name.
                next_word(text, hit.end)
                    .filter(|&(s, e)| is_arabic_word(&text[s..e]) && !is_stop_ar(&text[s..e]))
                    .map(|(_, e)| {
                        let end = extend(ctx, e, true);
                        let confidence = if end != e { 0.7 } else { 0.6 };
                        (hit.start..end, confidence, "person_name.gazetteer")
                    })
            }
            _ => None,
        };
        if let Some((range, confidence, recognizer)) = found {
            out.push(Candidate::new(
                EntityType::PersonName,
                range,
                confidence,
                recognizer,
                false,
            ));
        }
    }
}

/// The name after a cue ending at `at`.
fn after_cue(
    ctx: &Ctx<'_>,
    at: usize,
    lowercase_gazetteer: bool,
    recognizer: &'static str,
) -> Option<(std::ops::Range<usize>, f32, &'static str)> {
    let text = ctx.text;
    // `الاسم: محمد`, `Name - Sara`.
    let rest = &text[at..];
    let trimmed = rest.trim_start_matches([' ', '\t', ':', '-']);
    let (start, end) = next_word(text, at + (rest.len() - trimmed.len()))?;
    let word = &text[start..end];
    let gazetteer = ctx.cues.given_name(start, end).is_some();
    let arabic = is_arabic_word(word);
    let ok = if arabic {
        !is_stop_ar(word) && word.chars().count() >= 2
    } else {
        let capital = word.starts_with(|c: char| c.is_ascii_uppercase());
        (capital || (lowercase_gazetteer && gazetteer)) && !is_stop_en(word)
    };
    if !ok {
        return None;
    }
    let end = extend(ctx, end, arabic);
    let confidence = if gazetteer { 0.85 } else { 0.7 };
    Some((start..end, confidence, recognizer))
}

/// Extends a name ending at `end` over the name parts after it; returns the new end.
fn extend(ctx: &Ctx<'_>, mut end: usize, arabic: bool) -> usize {
    let text = ctx.text;
    let cues = &ctx.cues;
    for _ in 0..MAX_PARTS {
        let Some((s, e)) = next_word(text, end) else {
            break;
        };
        let word = &text[s..e];
        if arabic != is_arabic_word(word) {
            break;
        }
        if cues.particle(s, e) {
            // A particle joins only with a real word after it.
            match next_word(text, e) {
                Some((s2, e2)) if joins_after_particle(cues, text, s2, e2, arabic) => {
                    end = e2;
                    continue;
                }
                _ => break,
            }
        }
        if is_name_part(cues, text, s, e, arabic) {
            end = e;
        } else {
            break;
        }
    }
    end
}

fn joins_after_particle(cues: &Cues<'_>, text: &str, s: usize, e: usize, arabic: bool) -> bool {
    let word = &text[s..e];
    if arabic {
        is_arabic_word(word) && !is_stop_ar(word)
    } else {
        is_name_part(cues, text, s, e, false)
    }
}

fn is_name_part(cues: &Cues<'_>, text: &str, s: usize, e: usize, arabic: bool) -> bool {
    let word = &text[s..e];
    if arabic {
        if cues.given_name(s, e).is_some() {
            return true;
        }
        let chars = word.chars().count();
        (word.starts_with("عبد") && chars > 3)
            || (word.starts_with("ال") && word.ends_with('ي') && chars >= 5)
    } else {
        word.starts_with(|c: char| c.is_ascii_uppercase())
            && !is_stop_en(word)
            && word
                .chars()
                .all(|c| c.is_alphabetic() || c == '-' || c == '\'')
    }
}

/// The word that starts after spaces at `at` (not across a line break or punctuation): a run
/// of letters, with inner `-` and `'` between letters (`Al-Harbi`, `O'Brien`).
pub(crate) fn next_word(text: &str, at: usize) -> Option<(usize, usize)> {
    let rest = text.get(at..)?;
    let trimmed = rest.trim_start_matches([' ', '\t']);
    let start = at + (rest.len() - trimmed.len());
    let mut end = start;
    let mut chars = trimmed.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphabetic() {
            end = start + i + c.len_utf8();
        } else if matches!(c, '-' | '\'') && end == start + i {
            if !chars.peek().is_some_and(|&(_, n)| n.is_alphabetic()) {
                break;
            }
        } else {
            break;
        }
    }
    (end > start).then_some((start, end))
}

fn is_arabic_word(word: &str) -> bool {
    word.chars()
        .next()
        .is_some_and(|c| ('\u{0600}'..='\u{06FF}').contains(&c))
}

fn is_stop_ar(word: &str) -> bool {
    lexicon::STOP_AR.contains(&word)
}

fn is_stop_en(word: &str) -> bool {
    lexicon::STOP_EN
        .iter()
        .any(|s| s.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        let t = "  Al-Harbi, O'Brien x- محمد";
        assert_eq!(next_word(t, 0), Some((2, 10)));
        assert_eq!(next_word(t, 10), None, "a comma is no word");
        assert_eq!(next_word(t, 11).map(|(s, e)| &t[s..e]), Some("O'Brien"));
        assert_eq!(next_word(t, 19).map(|(s, e)| &t[s..e]), Some("x"));
        let ar = t.find('م').unwrap_or(0);
        assert_eq!(next_word(t, ar - 1).map(|(s, e)| &t[s..e]), Some("محمد"));
    }
}
