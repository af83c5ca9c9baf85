//! Redaction with typed placeholders, and the RAM-only vault that restores them in a model's
//! answer.
//!
//! The guardrail replaces each redacted value by `[TYPE_N]` (`[EMAIL_1]`, `[IBAN_2]`): the same
//! value gets the same placeholder wherever it appears in the request, so a model can still
//! refer to it. The [`Vault`] maps placeholders back to values for the request's life only: it
//! is never journaled, never logged (its `Debug` shows counts), and dropped with the request.
//! A streamed answer is restored by a [`Restorer`], which holds back the tail of a chunk that
//! may be the start of a placeholder split across chunks.

use std::collections::HashMap;
use std::fmt;

use isnad_guard::{EntityType, Finding};

/// The longest placeholder: `[` + the longest type name + `_` + a number of up to 6 digits + `]`.
const MAX_PLACEHOLDER: usize = 1 + "SA_NATIONAL_ID".len() + 1 + 6 + 1;

/// Placeholders and the values they stand for, for one request.
#[derive(Clone, Default)]
pub struct Vault {
    /// Placeholder → value.
    values: HashMap<String, String>,
    /// Value → placeholder (the same value is redacted to the same placeholder).
    placeholders: HashMap<(EntityType, String), String>,
    /// How many placeholders of each type were issued.
    counts: HashMap<EntityType, usize>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("placeholders", &self.values.len())
            .finish_non_exhaustive()
    }
}

/// The placeholder name of a type: its snake_case name in capitals.
fn tag(entity: EntityType) -> String {
    entity.as_str().to_ascii_uppercase()
}

impl Vault {
    /// An empty vault.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing was redacted.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// How many distinct values were redacted.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The placeholder for `value` of type `entity`, issuing the next one if it is new.
    fn placeholder(&mut self, entity: EntityType, value: &str) -> String {
        if let Some(p) = self.placeholders.get(&(entity, value.to_owned())) {
            return p.clone();
        }
        let n = self.counts.entry(entity).or_insert(0);
        *n += 1;
        let p = format!("[{}_{}]", tag(entity), n);
        self.values.insert(p.clone(), value.to_owned());
        self.placeholders
            .insert((entity, value.to_owned()), p.clone());
        p
    }

    /// `text` with every finding `redact` says yes to replaced by its placeholder. Findings
    /// that overlap one already redacted are skipped (the first, longest one wins).
    pub fn redact(
        &mut self,
        text: &str,
        findings: &[Finding],
        redact: impl Fn(EntityType) -> bool,
    ) -> String {
        let mut chosen: Vec<&Finding> = findings.iter().filter(|f| redact(f.entity)).collect();
        chosen.sort_by_key(|f| (f.span.start, std::cmp::Reverse(f.span.end)));
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in chosen {
            let r = f.span.range();
            if r.start < at || r.end > text.len() || !text.is_char_boundary(r.start) {
                continue;
            }
            let Some(value) = text.get(r.clone()) else {
                continue;
            };
            out.push_str(&text[at..r.start]);
            let p = self.placeholder(f.entity, value);
            out.push_str(&p);
            at = r.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// `text` with every placeholder this vault issued replaced by its value.
    pub fn restore(&self, text: &str) -> String {
        if self.values.is_empty() || !text.contains('[') {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            match tail.find(']').filter(|&close| close < MAX_PLACEHOLDER) {
                Some(close) => match self.values.get(&tail[..=close]) {
                    Some(value) => {
                        out.push_str(value);
                        rest = &tail[close + 1..];
                    }
                    None => {
                        out.push('[');
                        rest = &tail[1..];
                    }
                },
                None => {
                    out.push('[');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Splits a streamed answer's unreleased text into what can be released now and a tail
    /// that may be the start of a placeholder (held until the next piece shows what it is).
    /// Neither part is restored.
    pub fn split_ready(&self, pending: &str) -> (String, String) {
        let hold = match pending.rfind('[') {
            Some(open)
                if !pending[open..].contains(']') && pending.len() - open < MAX_PLACEHOLDER =>
            {
                open
            }
            _ => pending.len(),
        };
        (pending[..hold].to_owned(), pending[hold..].to_owned())
    }

    /// A restorer for a streamed answer.
    pub fn restorer(&self) -> Restorer<'_> {
        Restorer {
            vault: self,
            pending: String::new(),
        }
    }
}

/// Restores placeholders in an answer that arrives in pieces.
pub struct Restorer<'a> {
    vault: &'a Vault,
    /// A tail that may be the start of a placeholder.
    pending: String,
}

impl Restorer<'_> {
    /// The restored text that can be released after `piece`; a possible placeholder's start is
    /// held back until the next piece (or [`Restorer::finish`]) shows what it is.
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let (ready, rest) = self.vault.split_ready(&self.pending);
        self.pending = rest;
        self.vault.restore(&ready)
    }

    /// What is still held back, restored: the answer's end.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.vault.restore(&rest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use isnad_guard::Scanner;

    fn redacted(text: &str) -> (String, Vault) {
        let scanner = Scanner::new().unwrap();
        let findings = scanner.scan(text);
        let mut vault = Vault::new();
        let out = vault.redact(text, &findings, |e| e != EntityType::PersonName);
        (out, vault)
    }

    #[test]
    fn the_same_value_gets_the_same_placeholder_and_comes_back() {
        let text = "write to sara@example.com or omar@example.org; sara@example.com is first";
        let (out, vault) = redacted(text);
        assert_eq!(
            out, "write to [EMAIL_1] or [EMAIL_2]; [EMAIL_1] is first",
            "{out}"
        );
        assert_eq!(vault.len(), 2);
        assert_eq!(vault.restore(&out), text);
        assert!(!format!("{vault:?}").contains("sara"));
    }

    #[test]
    fn arabic_text_keeps_its_letters_around_a_placeholder() {
        let text = "رقم الآيبان SA0380000000608010167519 من فضلك";
        let (out, vault) = redacted(text);
        assert_eq!(out, "رقم الآيبان [IBAN_1] من فضلك");
        assert_eq!(
            vault.restore("تم: [IBAN_1]"),
            "تم: SA0380000000608010167519"
        );
    }

    #[test]
    fn unknown_brackets_are_left_alone() {
        let (_, vault) = redacted("mail a@b.co");
        assert_eq!(
            vault.restore("[EMAIL_9] [x] [ and [EMAIL_1]"),
            "[EMAIL_9] [x] [ and a@b.co"
        );
    }

    #[test]
    fn a_placeholder_split_across_stream_pieces_is_restored() {
        let (_, vault) = redacted("mail a@b.co");
        for cut in 1.."[EMAIL_1]".len() {
            let answer = "sent to [EMAIL_1], done [";
            let (one, two) = answer.split_at(8 + cut);
            let mut r = vault.restorer();
            let mut got = r.push(one);
            got.push_str(&r.push(two));
            got.push_str(&r.finish());
            assert_eq!(got, "sent to a@b.co, done [", "cut {cut}");
        }
    }
}
