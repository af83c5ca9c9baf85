//! Secrets: API keys and tokens by prefix, PEM private keys, JWTs, and passwords or PINs
//! written after a cue word.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::cues::{Alphabet, Cue, Trigger};
use crate::scanner::{Candidate, Ctx};
use crate::EntityType;

/// Scans the credential triggers and password cues the cue pass found.
pub(crate) fn scan(ctx: &Ctx<'_>, out: &mut Vec<Candidate>) {
    for hit in ctx.cues.hits {
        let found = match hit.cue {
            Cue::Credential(trigger) => token(ctx, hit.start, hit.end, trigger),
            Cue::Password => secret_after_cue(ctx, hit.end, false),
            Cue::Pin => secret_after_cue(ctx, hit.end, true),
            _ => None,
        };
        if let Some((range, confidence, recognizer)) = found {
            out.push(Candidate::new(
                EntityType::Credential,
                range,
                confidence,
                recognizer,
                false,
            ));
        }
    }
}

type Found = (std::ops::Range<usize>, f32, &'static str);

fn token(ctx: &Ctx<'_>, start: usize, prefix_end: usize, trigger: Trigger) -> Option<Found> {
    let b = ctx.bytes;
    match trigger {
        Trigger::Isnad => {
            let end = span_of(b, prefix_end, Alphabet::Token);
            (end - prefix_end >= 8).then_some((start..end, 0.99, "credential.isnad"))
        }
        Trigger::Vendor {
            min,
            exact,
            alphabet,
            recognizer,
            confidence,
            ..
        } => {
            let end = span_of(b, prefix_end, alphabet);
            let n = end - prefix_end;
            let glued = b
                .get(end)
                .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
            let ok = match exact {
                Some(len) => n == len && !glued,
                None => n >= min,
            };
            ok.then_some((start..end, confidence, recognizer))
        }
        Trigger::Pem => pem(b, start),
        Trigger::Jwt => jwt(b, start),
    }
}

fn span_of(b: &[u8], from: usize, alphabet: Alphabet) -> usize {
    from + b[from..]
        .iter()
        .take_while(|&&c| alphabet.allows(c))
        .count()
}

/// A PEM block whose label names a private key (`-----BEGIN RSA PRIVATE KEY-----`,
/// `OPENSSH`, `EC`, `ENCRYPTED`, plain `PRIVATE KEY`), through its `-----END …-----` line; a
/// block cut off before its end line runs to the end of its base64 body.
fn pem(b: &[u8], start: usize) -> Option<Found> {
    let header_end = find(b, start + 10, b"-----")?;
    let label = &b[start + 10..header_end];
    if label.len() > 40 || !ends_with(label, b"PRIVATE KEY") || label.contains(&b'\n') {
        return None;
    }
    let body = header_end + 5;
    if let Some(end_marker) = find(b, body, b"-----END") {
        if let Some(close) = find(b, end_marker + 8, b"-----") {
            if !b[end_marker..close].contains(&b'\n') {
                return Some((start..close + 5, 0.99, "credential.pem"));
            }
        }
    }
    // No end line: the body is the lines of base64 (and `Proc-Type:` style headers) after it,
    // up to the first blank line or line of anything else.
    let mut end = body;
    let mut i = body;
    while i < b.len() {
        let line_end = find(b, i, b"\n").unwrap_or(b.len());
        let (lead, line) = trim(&b[i..line_end]);
        if line.is_empty() {
            if end > body {
                break;
            }
        } else {
            let base64 = line
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='));
            let header = line.contains(&b':') && line.is_ascii();
            if !(base64 || header) {
                break;
            }
            end = i + lead + line.len();
        }
        i = line_end + 1;
    }
    Some((start..end, 0.95, "credential.pem"))
}

/// The line without surrounding whitespace, and how many bytes were cut from its start.
fn trim(line: &[u8]) -> (usize, &[u8]) {
    let start = line.iter().take_while(|c| c.is_ascii_whitespace()).count();
    let end = line.len()
        - line
            .iter()
            .rev()
            .take_while(|c| c.is_ascii_whitespace())
            .count();
    (start, &line[start..end.max(start)])
}

fn ends_with(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && &s[s.len() - suffix.len()..] == suffix
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from > b.len() {
        return None;
    }
    b[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// A JWT: three base64url parts joined by dots (the signature may be empty for an unsigned
/// token), whose header decodes to a JSON object with an `alg` member.
fn jwt(b: &[u8], start: usize) -> Option<Found> {
    let allowed = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    let mut end = start + b[start..].iter().take_while(|&&c| allowed(c)).count();
    let token = &b[start..end];
    let mut parts: Vec<&[u8]> = token.split(|&c| c == b'.').collect();
    // A sentence may end right after the token: `... is eyJ….x.y.`
    if parts.len() == 4 && parts[3].is_empty() {
        parts.pop();
        end -= 1;
    }
    let [header, payload, _signature] = parts.as_slice() else {
        return None;
    };
    if payload.is_empty() {
        return None;
    }
    let decoded = URL_SAFE_NO_PAD.decode(header).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&decoded).ok()?;
    value.get("alg")?.as_str()?;
    Some((start..end, 0.95, "credential.jwt"))
}

/// The secret after a password or PIN cue: optional spaces, then `:`, `=`, `is`, `هي` or `هو`
/// (or nothing, for `password: x` typed as `password x`: not accepted), spaces, an optional
/// quote, and a token up to the next space or quote. A PIN is 4 to 8 digits. A password after
/// `:` or `=` has at least 4 characters and is not a word such as `required`; after `is` it
/// must also look like one: 6 or more characters with a digit, a symbol or mixed case.
fn secret_after_cue(ctx: &Ctx<'_>, cue_end: usize, pin: bool) -> Option<Found> {
    let text = ctx.text;
    let rest = text.get(cue_end..)?;
    let trimmed = rest.trim_start_matches([' ', '\t']);
    let mut at = cue_end + (rest.len() - trimmed.len());
    let (strict, after) = if let Some(r) = trimmed.strip_prefix([':', '=']) {
        (false, r)
    } else if let Some(r) = ["is ", "هي ", "هو ", "is: ", "هي: "].iter().find_map(|w| {
        trimmed
            .get(..w.len())
            .filter(|p| p.eq_ignore_ascii_case(w))
            .map(|_| &trimmed[w.len()..])
    }) {
        (true, r)
    } else {
        return None;
    };
    at += trimmed.len() - after.len();
    let after_trim = after.trim_start_matches([' ', '\t', ':']);
    at += after.len() - after_trim.len();
    let quoted = after_trim.starts_with(['"', '\'', '`', '«', '“']);
    let body_start = if quoted {
        at + after_trim.chars().next().map_or(0, char::len_utf8)
    } else {
        at
    };
    let body = text.get(body_start..)?;
    let len = body
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '»' | '”' | '،'))
        .unwrap_or(body.len());
    let mut token = &body[..len];
    if !quoted {
        token = token.trim_end_matches(['.', ',', ';', '!', '?', ')', ']']);
    }
    let end = body_start + token.len();
    let chars = token.chars().count();
    if pin {
        let ok = (4..=8).contains(&token.len()) && token.bytes().all(|c| c.is_ascii_digit());
        return ok.then_some((body_start..end, 0.85, "credential.pin"));
    }
    if chars < 4
        || token
            .chars()
            .all(|c| c == '*' || c == 'x' || c == 'X' || c == '•')
    {
        return None;
    }
    if !token.is_ascii() && token.chars().all(|c| c.is_alphabetic()) {
        // An Arabic word (`كلمة المرور: خاطئة`), not a password.
        return None;
    }
    let lower = token.to_ascii_lowercase();
    if NOT_PASSWORDS.contains(&lower.as_str()) {
        return None;
    }
    let has_digit = token.bytes().any(|c| c.is_ascii_digit());
    let has_symbol = token.chars().any(|c| !c.is_alphanumeric());
    let mixed = token.bytes().any(|c| c.is_ascii_uppercase())
        && token.bytes().any(|c| c.is_ascii_lowercase());
    if strict && !(chars >= 6 && (has_digit || has_symbol || mixed)) {
        return None;
    }
    let confidence = if strict { 0.8 } else { 0.85 };
    Some((body_start..end, confidence, "credential.password"))
}

/// Words that follow a password cue without being a password.
const NOT_PASSWORDS: &[&str] = &[
    "required",
    "incorrect",
    "invalid",
    "wrong",
    "reset",
    "changed",
    "expired",
    "forgotten",
    "forgot",
    "hidden",
    "none",
    "null",
    "empty",
    "optional",
    "mandatory",
    "redacted",
    "<redacted>",
    "too",
    "weak",
    "strong",
    "correct",
    "change",
    "policy",
    "field",
    "here",
    "below",
    "above",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_header_must_name_an_algorithm() {
        // {"alg":"HS256","typ":"JWT"} . {"sub":"1234567890"} . signature
        let good = b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert!(jwt(good, 0).is_some());
        // {"typ":"JWT"}: no alg.
        let no_alg = b"eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2ln";
        assert!(jwt(no_alg, 0).is_none());
        assert!(
            jwt(b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0", 0).is_none(),
            "two parts"
        );
    }

    #[test]
    fn pem_blocks() {
        let block =
            b"-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAbCd==\n-----END RSA PRIVATE KEY-----";
        assert_eq!(pem(block, 0).map(|f| f.0), Some(0..block.len()));
        let cut = b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\nBgkqhkiG9w0B\n\nthanks";
        assert_eq!(
            pem(cut, 0).map(|f| f.0.end),
            Some(cut.len() - "\n\nthanks".len())
        );
        assert!(pem(
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            0
        )
        .is_none());
    }
}
