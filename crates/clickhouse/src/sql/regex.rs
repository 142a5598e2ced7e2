//! `regex` and `not_regex` filters. The embedded engine matches with Rust's `regex` crate; ClickHouse's `match`
//! with RE2, whose syntax is close but whose meaning differs in places (measured on 18.16: `\d`, `\w`, `\s` and
//! `\b` are ASCII-only, `.` also matches a newline, and a case-insensitive pattern can miss because of the literal
//! prefilter of ClickHouse's own regex wrapper). So the pattern is not passed through: it is parsed with Rust's
//! own parser (`regex-syntax`, the `regex` crate's front end) and printed again for RE2 with nothing left to
//! interpretation — every class as explicit ranges (Unicode `\w`, a case-insensitive letter `[Éé]`, `.` as
//! everything but `\n`), anchors as `\A`, `\z` and `(?m:^)`/`(?m:$)`, groups non-capturing. What has no exact RE2
//! spelling (a Unicode word boundary, CRLF-aware anchors, a repetition above RE2's 1,000, bytes outside ASCII) is
//! refused, naming the filter's value.

use std::fmt::Write;

use regex_syntax::hir::{Class, Hir, HirKind, Look};

/// RE2's largest repetition count.
const RE2_MAX_REPEAT: u32 = 1000;

/// The RE2 pattern matching exactly what Rust's `regex` matches with `pattern` (unanchored search, default
/// flags), or why there is none.
pub fn to_re2(pattern: &str) -> Result<String, String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| format!("not a valid regular expression: {e}"))?;
    let mut out = String::new();
    print(&hir, &mut out)?;
    Ok(out)
}

fn print(hir: &Hir, out: &mut String) -> Result<(), String> {
    match hir.kind() {
        HirKind::Empty => out.push_str("(?:)"),
        HirKind::Literal(lit) => {
            let text = std::str::from_utf8(&lit.0)
                .map_err(|_| "a literal that is not UTF-8 text has no RE2 equivalent here".to_string())?;
            for c in text.chars() {
                literal_char(c, out);
            }
        }
        HirKind::Class(Class::Unicode(class)) => {
            let ranges: Vec<(char, char)> =
                class.ranges().iter().map(|r| (r.start(), r.end())).collect();
            print_class(&ranges, out);
        }
        HirKind::Class(Class::Bytes(class)) => {
            let mut ranges = Vec::new();
            for r in class.ranges() {
                if r.end() > 0x7f {
                    return Err("a byte class beyond ASCII has no RE2 equivalent here".into());
                }
                ranges.push((char::from(r.start()), char::from(r.end())));
            }
            print_class(&ranges, out);
        }
        HirKind::Look(look) => out.push_str(match look {
            Look::Start => r"\A",
            Look::End => r"\z",
            Look::StartLF => "(?m:^)",
            Look::EndLF => "(?m:$)",
            Look::WordAscii => r"\b",
            Look::WordAsciiNegate => r"\B",
            other => {
                return Err(format!(
                    "{other:?} has no exact RE2 equivalent (RE2's word boundaries are ASCII: write (?-u:\\b))"
                ))
            }
        }),
        HirKind::Repetition(rep) => {
            if rep.min > RE2_MAX_REPEAT || rep.max.is_some_and(|m| m > RE2_MAX_REPEAT) {
                return Err(format!("RE2 repeats at most {RE2_MAX_REPEAT} times"));
            }
            out.push_str("(?:");
            print(&rep.sub, out)?;
            out.push(')');
            match (rep.min, rep.max) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (n, None) => write!(out, "{{{n},}}").unwrap_or(()),
                (n, Some(m)) if n == m => write!(out, "{{{n}}}").unwrap_or(()),
                (n, Some(m)) => write!(out, "{{{n},{m}}}").unwrap_or(()),
            }
            if !rep.greedy {
                out.push('?');
            }
        }
        HirKind::Capture(cap) => {
            out.push_str("(?:");
            print(&cap.sub, out)?;
            out.push(')');
        }
        HirKind::Concat(parts) => {
            out.push_str("(?:");
            for p in parts {
                print(p, out)?;
            }
            out.push(')');
        }
        HirKind::Alternation(parts) => {
            out.push_str("(?:");
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                print(p, out)?;
            }
            out.push(')');
        }
    }
    Ok(())
}

/// A character outside a class: itself, escaped when RE2 could read it as syntax.
fn literal_char(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() || c == ' ' || (!c.is_ascii() && !c.is_control()) {
        out.push(c);
    } else if c.is_ascii_graphic() {
        out.push('\\');
        out.push(c);
    } else {
        write!(out, "\\x{{{:02X}}}", c as u32).unwrap_or(());
    }
}

/// A class of inclusive ranges; an empty one matches nothing.
fn print_class(ranges: &[(char, char)], out: &mut String) {
    if ranges.is_empty() {
        out.push_str(r"[^\x{00}-\x{10FFFF}]");
        return;
    }
    out.push('[');
    for &(lo, hi) in ranges {
        class_char(lo, out);
        if hi != lo {
            out.push('-');
            class_char(hi, out);
        }
    }
    out.push(']');
}

/// A class's bound: ASCII letters and digits as themselves, punctuation escaped, everything else by its code
/// point (inside a class, where ClickHouse's literal prefilter does not look).
fn class_char(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else if c.is_ascii_graphic() {
        out.push('\\');
        out.push(c);
    } else {
        write!(out, "\\x{{{:X}}}", c as u32).unwrap_or(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meanings_are_spelled_out() {
        // `.` excludes only `\n`; anchors are the text's ends.
        assert_eq!(
            to_re2("^a.b$").unwrap(),
            r"(?:\Aa[\x{0}-\x{9}\x{B}-\x{10FFFF}]b\z)"
        );
        // Case folding becomes classes, no flag is left for RE2 to interpret.
        let p = to_re2("(?i)été").unwrap();
        assert!(
            p.contains(r"[\x{C9}\x{E9}]") && p.contains("[Tt]") && !p.contains("(?i"),
            "{p}"
        );
        // Unicode digits are listed (RE2's `\d` is ASCII).
        let d = to_re2(r"\d").unwrap();
        assert!(d.contains(r"\x{660}-\x{669}") && !d.contains(r"\d"), "{d}");
        assert_eq!(to_re2(r"1\.5 \[x\]").unwrap(), r"1\.5 \[x\]");
    }

    /// Read back by Rust's `regex` (whose syntax includes everything printed here, with the same meaning once
    /// nothing is left to flags or shorthand classes), the printed pattern matches what the original matches.
    #[test]
    fn printed_patterns_mean_what_the_originals_mean() {
        let texts = [
            "",
            "a",
            "ab",
            "a\nb",
            "ÉTÉ",
            "été",
            "Zürich",
            "berlin-mitte",
            "BERLIN",
            "٣4",
            "x_y z",
            "ΌΣΟΣ",
            "İstanbul",
            "1.5 [x]",
            "aaa",
            "/docs/12",
            "/docs/x",
            "tab\there",
            "line\nbreak",
            "CD",
        ];
        let patterns = [
            "^a.b$",
            "(?i)été",
            r"\d+",
            r"^\w+$",
            r"\s",
            "a+?(b|cd)*",
            "(?i)^(cd|ab)$",
            "^.{2}$",
            "[^a-z]",
            "(?m)^break",
            "(?s)a.b",
            "[[:alpha:]]+",
            r"\p{Greek}",
            "(?i)istanbul",
            "^/docs/[0-9]+$",
            "a{2,3}",
            "(?-u:\\w)",
            "x|y|^$",
            "[é-ë]",
            "(?i)[a-c]",
        ];
        for p in patterns {
            let original = regex::Regex::new(p).unwrap();
            let printed = to_re2(p).unwrap();
            let again =
                regex::Regex::new(&printed).unwrap_or_else(|e| panic!("{p} → {printed}: {e}"));
            for t in texts {
                assert_eq!(
                    again.is_match(t),
                    original.is_match(t),
                    "{p} → {printed} on {t:?}"
                );
            }
        }
    }

    #[test]
    fn what_has_no_exact_spelling_is_refused() {
        assert!(to_re2(r"\bword\b").unwrap_err().contains("WordUnicode"));
        assert!(to_re2(r"(?-u:\b)word").is_ok());
        assert!(to_re2("a{1001}").unwrap_err().contains("1000"));
        assert!(to_re2("(").unwrap_err().contains("not a valid"));
    }
}
