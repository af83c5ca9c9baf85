#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

/// The original text behind the first occurrence of `needle` in the normalised text.
fn source_of<'a>(original: &'a str, normalized: &Normalized, needle: &str) -> &'a str {
    let at = normalized
        .text()
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {:?}", normalized.text()));
    &original[normalized.to_original(at..at + needle.len())]
}

#[test]
fn saudi_phone_in_arabic_indic_digits_with_tatweel_and_rlm_maps_back_to_its_exact_span() {
    let original = "اتصل بي على ٠٥٥ـ١٢٣\u{200F}٤٥٦٧ من فضلك";
    let n = normalize(original);
    assert_eq!(n.text(), "اتصل بي على 0551234567 من فضلك");
    assert_eq!(source_of(original, &n, "0551234567"), "٠٥٥ـ١٢٣\u{200F}٤٥٦٧");
    // A part of the number maps to just its digits: the tatweel before and the RLM after are
    // not part of "123".
    assert_eq!(source_of(original, &n, "123"), "١٢٣");
}

#[test]
fn international_phone_leaves_out_the_bidi_marks_around_it() {
    let original = "الرقم \u{200F}\u{2066}+٩٦٦ ٥٠ ١٢٣ ٤٥٦٧\u{2069}\u{200F}.";
    let n = normalize(original);
    assert_eq!(n.text(), "الرقم +966 50 123 4567.");
    assert_eq!(
        source_of(original, &n, "+966 50 123 4567"),
        "+٩٦٦ ٥٠ ١٢٣ ٤٥٦٧"
    );
}

#[test]
fn email_split_by_zero_width_characters_is_whole_again() {
    let original = "راسلني على ahmed\u{200B}.ali@exa\u{200C}mple\u{200D}.sa\u{FEFF} شكرا";
    let n = normalize(original);
    assert_eq!(n.text(), "راسلني على ahmed.ali@example.sa شكرا");
    assert_eq!(
        source_of(original, &n, "ahmed.ali@example.sa"),
        "ahmed\u{200B}.ali@exa\u{200C}mple\u{200D}.sa"
    );
}

#[test]
fn fully_vowelled_arabic_equals_its_unvowelled_form() {
    assert_eq!(
        normalize("بِسْمِ ٱللَّهِ ٱلرَّحْمَٰنِ ٱلرَّحِيمِ").text(),
        normalize("بسم ٱلله ٱلرحمن ٱلرحيم").text()
    );
    assert_eq!(
        normalize("بسم ٱلله ٱلرحمن ٱلرحيم").text(),
        "بسم ٱلله ٱلرحمن ٱلرحيم"
    );
    assert_eq!(normalize("مـــحـــمـــد").text(), "محمد");
}

#[test]
fn a_name_maps_back_with_its_vowels_but_without_neighbouring_tatweel() {
    let original = "جاء مُحَمَّدٌ ـ اليوم";
    let n = normalize(original);
    assert_eq!(n.text(), "جاء محمد  اليوم");
    assert_eq!(source_of(original, &n, "محمد"), "مُحَمَّدٌ");
}

#[test]
fn quranic_annotation_marks_are_removed() {
    let n = normalize("ذَٰلِكَ ٱلْكِتَٰبُ لَا رَيْبَ ۛ فِيهِ ۛ هُدًى لِّلْمُتَّقِينَ");
    assert_eq!(n.text(), "ذلك ٱلكتب لا ريب  فيه  هدى للمتقين");
}

#[test]
fn presentation_forms_become_base_letters() {
    assert_eq!(normalize("ﻣﺤﻤﺪ").text(), "محمد");
    assert_eq!(normalize("ﺍﻟﺴﻼﻡ ﻋﻠﻴﻜﻢ").text(), "السلام عليكم");
    assert_eq!(normalize("ﷲ").text(), "الله");
    // The isolated form of fathatan is a space and the mark: the space stays.
    assert_eq!(normalize("ﹰ").text(), " ");
    // Tatweel with a haraka on it is nothing.
    assert_eq!(normalize("ب\u{FE71}ب").text(), "بب");

    // Any part of the lam-alef ligature maps to the whole ligature.
    let original = "ﻻ";
    let n = normalize(original);
    assert_eq!(n.text(), "لا");
    assert_eq!(n.to_original(0..2), 0..original.len());
    assert_eq!(n.to_original(2..4), 0..original.len());
}

#[test]
fn persian_digits_become_ascii() {
    let original = "شماره من ۰۹۱۲۳۴۵۶۷۸۹ است";
    let n = normalize(original);
    assert_eq!(n.text(), "شماره من 09123456789 است");
    assert_eq!(source_of(original, &n, "09123456789"), "۰۹۱۲۳۴۵۶۷۸۹");
}

#[test]
fn full_width_iban_becomes_ascii_and_maps_back() {
    let original = "ＩＢＡＮ：ＳＡ０３　８０００　００００　６０８０　１０１６　７５１９。";
    let n = normalize(original);
    assert_eq!(n.text(), "IBAN:SA03 8000 0000 6080 1016 7519。");
    assert_eq!(
        source_of(original, &n, "SA03 8000 0000 6080 1016 7519"),
        "ＳＡ０３　８０００　００００　６０８０　１０１６　７５１９"
    );
}

#[test]
fn arabic_separators_map_but_the_arabic_comma_stays() {
    assert_eq!(normalize("٣٫١٤").text(), "3.14");
    assert_eq!(normalize("١٬٠٠٠٬٠٠٠").text(), "1,000,000");
    assert_eq!(normalize("١٢٣،٤٥٦").text(), "123،456");
}

#[test]
fn canonically_equivalent_spellings_normalise_alike() {
    assert_eq!(normalize("ا\u{0654}").text(), "أ");
    assert_eq!(normalize("أ").text(), "أ");
    assert_eq!(normalize("ي\u{0654}").text(), "ئ");
    assert_eq!(normalize("ا\u{0653}").text(), "آ");
    // A hamza on a letter with no precomposed form is removed like a haraka.
    assert_eq!(normalize("ب\u{0654}").text(), "ب");

    let original = "cafe\u{0301}!";
    let n = normalize(original);
    assert_eq!(n.text(), "café!");
    assert_eq!(source_of(original, &n, "é"), "e\u{0301}");
    assert_eq!(source_of(original, &n, "!"), "!");
}

#[test]
fn removing_a_mark_lets_its_neighbours_compose() {
    // U+0654 (hamza above) blocks the acute from composing with `a`; once it is gone, they
    // compose, and normalising again changes nothing.
    let n = normalize("a\u{0654}\u{0301}");
    assert_eq!(n.text(), "á");
    assert_eq!(normalize(n.text()).text(), "á");
    // A zero-width space between a letter and its accent does not stop them composing.
    assert_eq!(normalize("e\u{200B}\u{0301}").text(), "é");
}

#[test]
fn one_character_that_expands_maps_back_whole() {
    let original = "قال ﷺ";
    let n = normalize(original);
    assert_eq!(n.text(), "قال صلى الله عليه وسلم");
    assert_eq!(source_of(original, &n, "الله"), "ﷺ");
}

#[test]
fn control_characters_are_removed_but_whitespace_stays() {
    let n = normalize("05\u{0000}5\u{0085}5\t1\r\n2\u{009B}3");
    assert_eq!(n.text(), "055\u{0085}5\t1\r\n23");
}

#[test]
fn search_folds_are_off_by_default_and_fold_alef_yeh_teh_marbuta_and_latin_case() {
    let original = "أحمد إبراهيم آمنة ٱلمدرسة على Ahmed@Example.COM ÉCOLE";
    assert_eq!(normalize(original).text(), original);
    let n = normalize_with(original, NormalizeOptions::SEARCH);
    assert_eq!(
        n.text(),
        "احمد ابراهيم امنه المدرسه علي ahmed@example.com école"
    );
    // The folds keep each letter's length, so offsets still line up.
    assert!(n.is_identity());
    assert_eq!(
        normalize_with("Ahmed", NormalizeOptions::SEARCH).text(),
        "ahmed"
    );
}

#[test]
fn ascii_takes_the_fast_path_with_no_map() {
    let n = normalize("Call me at +966 55 123 4567 or mail a.b@example.com\n");
    assert_eq!(
        n.text(),
        "Call me at +966 55 123 4567 or mail a.b@example.com\n"
    );
    assert!(n.is_identity());
    assert_eq!(n.map.capacity(), 0);
    assert_eq!(n.to_original(11..27), 11..27);
}

#[test]
fn unchanged_arabic_records_no_map() {
    let n = normalize("السلام عليكم ورحمة الله");
    assert!(n.is_identity());
    assert_eq!(n.map.capacity(), 0);
}

#[test]
fn a_change_records_pieces_only_from_where_it_happens() {
    let original = "مرحبا ٥ hello world";
    let n = normalize(original);
    assert_eq!(n.text(), "مرحبا 5 hello world");
    // The unchanged prefix, the digit, and the unchanged rest.
    assert_eq!(n.map.len(), 3);
    assert_eq!(source_of(original, &n, "hello"), "hello");
    assert_eq!(source_of(original, &n, "5"), "٥");
}

#[test]
fn empty_and_all_removed_texts() {
    let n = normalize("");
    assert_eq!(n.text(), "");
    assert_eq!(n.to_original(0..0), 0..0);
    assert!(n.is_identity());

    let n = normalize("\u{200B}\u{200F}ـ");
    assert_eq!(n.text(), "");
    assert_eq!(n.original_len(), 8);
    assert_eq!(n.to_original(0..0), 0..0);
    assert!(!n.is_identity());
}

#[test]
fn out_of_range_and_mid_character_arguments_are_made_sane() {
    let original = "x ٠٥٥ y";
    let n = normalize(original);
    assert_eq!(n.text(), "x 055 y");
    assert_eq!(n.to_original(0..100), 0..original.len());
    #[allow(clippy::reversed_empty_ranges)] // A caller's bug that must not panic.
    let reversed = 5..2;
    assert_eq!(n.to_original(reversed), 8..8);
    assert_eq!(n.to_original(50..60), original.len()..original.len());

    let original = "é٥";
    let n = normalize(original);
    assert_eq!(n.text(), "é5");
    // Byte 1 is inside `é`: the range widens to the whole character.
    assert_eq!(n.to_original(1..2), 0..2);
}

#[test]
fn every_code_point_normalises_idempotently() {
    for options in [NormalizeOptions::DETECTION, NormalizeOptions::SEARCH] {
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let once = normalize_with(c.encode_utf8(&mut [0; 4]), options);
            let twice = normalize_with(once.text(), options);
            assert_eq!(
                once.text(),
                twice.text(),
                "U+{:04X} with {options:?}",
                u32::from(c)
            );
            assert!(
                !once.text().chars().any(|c| removed_after_composition(c)
                    || map_char(c, NormalizeOptions::DETECTION).is_some()),
                "U+{:04X} normalises to {:?}",
                u32::from(c),
                once.text()
            );
        }
    }
}

#[test]
fn common_arabic_letters_need_no_table_look_ups() {
    for c in (0..=0x10FFFF).filter_map(char::from_u32) {
        if is_common_arabic_letter(c) {
            assert!(starts_segment_by_tables(c), "U+{:04X}", u32::from(c));
            assert_eq!(is_nfkc_quick(std::iter::once(c)), IsNormalized::Yes);
            assert!(!removed_after_composition(c));
        }
    }
}

/// Characters that exercise every step: Arabic letters, digits of three kinds, harakat,
/// hamza and maddah, tatweel, Quranic marks, presentation forms, invisibles, controls, Latin with
/// combining marks, full-width forms, Hangul jamo and Indic vowel signs that compose.
fn tricky_char() -> impl Strategy<Value = char> {
    use proptest::char::range;
    prop_oneof![
        4 => range(' ', '~'),
        4 => range('\u{0621}', '\u{064A}'),
        2 => range('\u{064B}', '\u{065F}'),
        2 => range('\u{0660}', '\u{066C}'),
        1 => range('\u{0670}', '\u{06FF}'),
        1 => Just('\u{0640}'),
        2 => range('\u{FB50}', '\u{FDFF}'),
        2 => range('\u{FE70}', '\u{FEFF}'),
        2 => prop::sample::select(vec![
            '\u{00AD}', '\u{034F}', '\u{061C}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}',
            '\u{200F}', '\u{202A}', '\u{202E}', '\u{2060}', '\u{2066}', '\u{2069}', '\u{FE0F}',
            '\u{FEFF}', '\u{0000}', '\u{0085}', '\u{009F}', '\t', '\n',
        ]),
        2 => range('\u{0300}', '\u{036F}'),
        1 => range('\u{00C0}', '\u{024F}'),
        1 => range('\u{1E00}', '\u{1EFF}'),
        1 => range('\u{FF01}', '\u{FFEE}'),
        1 => range('\u{1100}', '\u{11FF}'),
        1 => range('\u{AC00}', '\u{AC40}'),
        1 => prop::sample::select(vec!['\u{0B47}', '\u{0B3E}', '\u{0B56}', '\u{0B57}', '\u{0130}']),
        1 => any::<char>(),
    ]
}

fn tricky_string() -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..48).prop_map(String::from_iter)
}

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        tricky_string(),
        prop::collection::vec(any::<char>(), 0..32).prop_map(String::from_iter),
    ]
}

fn options() -> impl Strategy<Value = NormalizeOptions> {
    any::<bool>().prop_map(|search_folds| NormalizeOptions { search_folds })
}

/// Byte offsets of the char boundaries of `s`, its end included.
fn boundaries(s: &str) -> Vec<usize> {
    s.char_indices()
        .map(|(at, _)| at)
        .chain([s.len()])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn normalising_twice_changes_nothing(original in any_string(), options in options()) {
        let once = normalize_with(&original, options);
        let twice = normalize_with(once.text(), options);
        prop_assert_eq!(once.text(), twice.text());
        prop_assert!(twice.is_identity());
    }

    #[test]
    fn mapped_ranges_land_on_char_boundaries_and_grow_with_their_argument(
        original in any_string(),
        options in options(),
    ) {
        let n = normalize_with(&original, options);
        let cuts = boundaries(n.text());
        // Each normalised character's source, in order: equal to its neighbour's (both from one
        // atomic piece) or entirely before it.
        let sources: Vec<Range<usize>> =
            cuts.windows(2).map(|w| n.to_original(w[0]..w[1])).collect();
        for source in &sources {
            prop_assert!(source.start < source.end && source.end <= original.len());
            prop_assert!(original.is_char_boundary(source.start));
            prop_assert!(original.is_char_boundary(source.end));
        }
        for pair in sources.windows(2) {
            prop_assert!(pair[0] == pair[1] || pair[0].end <= pair[1].start, "{:?}", pair);
        }
        // A longer range maps to the hull of its characters' sources.
        for (i, &from) in cuts.iter().enumerate() {
            for (j, &to) in cuts.iter().enumerate().skip(i + 1) {
                prop_assert_eq!(
                    n.to_original(from..to),
                    sources[i].start..sources[j - 1].end
                );
            }
            // An empty range sits where the next character's source starts, or where the last
            // one's ends.
            let at = n.to_original(from..from);
            prop_assert!(at.is_empty());
            match sources.get(i) {
                Some(next) => prop_assert_eq!(at.start, next.start),
                None => prop_assert_eq!(at.start, sources.last().map_or(0, |last| last.end)),
            }
        }
    }

    #[test]
    fn the_full_range_covers_everything_that_produced_text(
        original in any_string(),
        options in options(),
    ) {
        let n = normalize_with(&original, options);
        let all = n.to_original(0..n.text().len());
        prop_assert!(original.is_char_boundary(all.start) && original.is_char_boundary(all.end));
        // Whatever lies outside produced nothing.
        prop_assert_eq!(normalize_with(&original[..all.start], options).into_text(), "");
        prop_assert_eq!(normalize_with(&original[all.end..], options).into_text(), "");
        prop_assert_eq!(all.is_empty(), n.text().is_empty());
    }

    #[test]
    fn a_mapped_span_normalises_to_text_containing_what_was_found(
        original in any_string(),
        options in options(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 8),
    ) {
        let n = normalize_with(&original, options);
        let cuts = boundaries(n.text());
        for (a, b) in picks {
            let (from, to) = (a.get(&cuts), b.get(&cuts));
            let (from, to) = (*from.min(to), *from.max(to));
            let source = n.to_original(from..to);
            let again = normalize_with(&original[source], options);
            prop_assert!(
                again.text().contains(&n.text()[from..to]),
                "{:?} does not contain {:?}", again.text(), &n.text()[from..to]
            );
        }
    }

    #[test]
    fn ascii_without_control_characters_is_unchanged(original in "[ -~\t\n\r]*") {
        let n = normalize(&original);
        prop_assert_eq!(n.text(), original.as_str());
        prop_assert!(n.is_identity());
        prop_assert_eq!(n.to_original(0..original.len()), 0..original.len());
    }

    #[test]
    fn output_has_no_removed_characters_and_no_arabic_digits(
        original in any_string(),
        options in options(),
    ) {
        let n = normalize_with(&original, options);
        for c in n.text().chars() {
            prop_assert!(!removed_after_composition(c), "U+{:04X} left in", u32::from(c));
            prop_assert!(map_char(c, options).is_none(), "U+{:04X} left unmapped", u32::from(c));
        }
    }
}
