//! `.dockerignore` and `.gitignore` matching.
//!
//! `.dockerignore` follows moby/patternmatcher, the library docker and BuildKit use, quirks
//! included: each pattern is classified as an exact, prefix, suffix or regular-expression match
//! exactly as patternmatcher does, and the regular expression patternmatcher would hand to Go's
//! `regexp` package is parsed with Go's rules and re-emitted for the `regex` crate, so that the
//! odd corners (a `*` inside `[...]`, `\d`, `^` in the middle of a pattern, a raw `|` or
//! `{2}`) behave the same.
//! A path is excluded when it or one of its parent directories matches, the last matching
//! pattern winning (`MatchesOrParentMatches`).
//!
//! `.gitignore` uses the `ignore` crate's matcher, with git's rule that nothing below an
//! ignored directory can be re-included.
//!
//! Paths are bytes: Linux file names need not be UTF-8. Where Go would decode a path into
//! runes (regular-expression matching), every byte that is not part of valid UTF-8 counts as
//! one U+FFFD, as Go's decoder does.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use regex::bytes::{Regex, RegexBuilder};

/// A malformed ignore pattern: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid pattern {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for PatternError {}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// Go's `filepath.Clean` for '/'-separated paths: the shortest lexically equivalent path.
pub fn clean_path(p: &str) -> String {
    // Cleaning only removes whole '/'-separated elements, so UTF-8 stays valid.
    String::from_utf8(clean_bytes(p.as_bytes()))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `clean_path` on bytes.
pub(crate) fn clean_bytes(p: &[u8]) -> Vec<u8> {
    if p.is_empty() {
        return b".".to_vec();
    }
    let n = p.len();
    let rooted = p[0] == b'/';
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let mut r = 0;
    // `dotdot` is the length of `out` that '..' can never backtrack into.
    let mut dotdot = 0;
    if rooted {
        out.push(b'/');
        r = 1;
        dotdot = 1;
    }
    while r < n {
        if p[r] == b'/' || (p[r] == b'.' && (r + 1 == n || p[r + 1] == b'/')) {
            // An empty or '.' element.
            r += 1;
        } else if p[r] == b'.' && p[r + 1] == b'.' && (r + 2 == n || p[r + 2] == b'/') {
            r += 2;
            if out.len() > dotdot {
                let mut w = out.len() - 1;
                while w > dotdot && out[w] != b'/' {
                    w -= 1;
                }
                out.truncate(w);
            } else if !rooted {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(b"..");
                dotdot = out.len();
            }
        } else {
            if (rooted && out.len() != 1) || (!rooted && !out.is_empty()) {
                out.push(b'/');
            }
            while r < n && p[r] != b'/' {
                out.push(p[r]);
                r += 1;
            }
        }
    }
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// Normalise a user-supplied path to the form the matchers take: clean, relative to the root,
/// no leading '/' or './'. `None` for the root itself and for paths that leave the root through
/// '..': nothing can match those.
pub fn normalize_rel(path: &[u8]) -> Option<Vec<u8>> {
    let cleaned = clean_bytes(path);
    let start = cleaned
        .iter()
        .position(|&b| b != b'/')
        .unwrap_or(cleaned.len());
    let rel = &cleaned[start..];
    if rel.is_empty() || rel == b"." || rel == b".." || rel.starts_with(b"../") {
        return None;
    }
    Some(rel.to_vec())
}

/// The path as Go's regexp sees it: each byte that is not part of valid UTF-8 becomes U+FFFD.
fn go_runes(path: &[u8]) -> Cow<'_, [u8]> {
    if std::str::from_utf8(path).is_ok() {
        return Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(path.len() + 8);
    let mut rest = path;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(_) => {
                out.extend_from_slice(rest);
                break;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.extend_from_slice(&rest[..good]);
                let bad = e.error_len().unwrap_or(rest.len() - good);
                for _ in 0..bad {
                    out.extend_from_slice("\u{FFFD}".as_bytes());
                }
                rest = &rest[good + bad..];
            }
        }
    }
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------------------------
// .dockerignore files
// ---------------------------------------------------------------------------------------------

/// The patterns of a `.dockerignore` file, as moby's `ignorefile.ReadAll` returns them: a UTF-8
/// BOM is dropped, lines whose first character is '#' are comments, whitespace is trimmed,
/// empty lines are skipped, each pattern is cleaned and loses a leading '/', and an exception
/// keeps its '!' (`"! /a/../b "` becomes `"!b"`).
pub fn read_dockerignore(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut out = Vec::new();
    // bufio.ScanLines: split at '\n', drop one '\r' before it; no empty last line.
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        // A comment only when '#' is the very first character: " # x" is a pattern.
        if line.starts_with('#') {
            continue;
        }
        if let Some(p) = normalize_dockerignore_line(line) {
            out.push(p);
        }
    }
    out
}

/// One line of a `.dockerignore` after the comment check (ReadAll's per-line work).
fn normalize_dockerignore_line(line: &str) -> Option<String> {
    let mut pattern = line.trim();
    if pattern.is_empty() {
        return None;
    }
    let invert = pattern.starts_with('!');
    if invert {
        pattern = pattern[1..].trim();
    }
    let mut cleaned = String::new();
    if !pattern.is_empty() {
        cleaned = clean_path(pattern);
        if cleaned.len() > 1 && cleaned.starts_with('/') {
            cleaned.remove(0);
        }
    }
    if invert {
        cleaned.insert(0, '!');
    }
    Some(cleaned)
}

// ---------------------------------------------------------------------------------------------
// Go's filepath.Match syntax check
// ---------------------------------------------------------------------------------------------

/// Whether Go's `filepath.Match` accepts the pattern (it reports `ErrBadPattern` otherwise).
/// patternmatcher refuses a pattern that `filepath.Match` refuses.
fn check_glob_syntax(pattern: &str) -> Result<(), String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 >= chars.len() {
                    return Err("a trailing backslash escapes nothing".into());
                }
                i += 2;
            }
            '[' => {
                i += 1;
                if chars.get(i) == Some(&'^') {
                    i += 1;
                }
                let mut ranges = 0;
                loop {
                    if chars.get(i) == Some(&']') && ranges > 0 {
                        i += 1;
                        break;
                    }
                    i = class_char_end(&chars, i)?;
                    if chars.get(i) == Some(&'-') {
                        i = class_char_end(&chars, i + 1)?;
                    }
                    ranges += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Go's `getEsc`: one (possibly escaped) character of a class; the index after it.
fn class_char_end(chars: &[char], mut i: usize) -> Result<usize, String> {
    match chars.get(i) {
        None => return Err("unterminated character class".into()),
        Some('-') => return Err("'-' must follow a character in a character class".into()),
        Some(']') => return Err("empty character class or range".into()),
        Some('\\') => {
            i += 1;
            if i >= chars.len() {
                return Err("unterminated character class".into());
            }
        }
        Some(_) => {}
    }
    i += 1;
    if i >= chars.len() {
        return Err("unterminated character class".into());
    }
    Ok(i)
}

// ---------------------------------------------------------------------------------------------
// patternmatcher's pattern compiler
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detected {
    Exact,
    Prefix,
    Suffix,
    Regexp,
}

/// patternmatcher's `Pattern.compile`: the match type it detects and the Go regular expression
/// it builds (the expression is only used for `Regexp`).
fn detect(pattern: &str) -> (Detected, String) {
    let mut chars: Vec<char> = pattern.chars().collect();
    // Go's text/scanner skips a byte-order mark at the start of its input.
    if chars.first() == Some(&'\u{FEFF}') {
        chars.remove(0);
    }
    let mut re = String::from("^");
    let mut kind = Detected::Exact;
    let mut k = 0;
    let mut token = 0;
    while k < chars.len() {
        let ch = chars[k];
        k += 1;
        match ch {
            '*' if chars.get(k) == Some(&'*') => {
                k += 1;
                // "**/" is treated as "**".
                if chars.get(k) == Some(&'/') {
                    k += 1;
                }
                if k == chars.len() {
                    // A trailing "**" matches everything below, like .gitignore.
                    if kind == Detected::Exact {
                        kind = Detected::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Detected::Regexp;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Detected::Regexp;
                }
                // A leading "**" makes the pattern a suffix match, whatever follows, until a
                // later wildcard turns it back into a regular expression.
                if token == 0 {
                    kind = Detected::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = Detected::Regexp;
            }
            '?' => {
                re.push_str("[^/]");
                kind = Detected::Regexp;
            }
            // patternmatcher means to escape `.+()|{}$`, but its lookup table is built with
            // byte shifts that overflow for '|', '{' and '}': those reach Go's regexp raw,
            // where '|' is an alternation and "{2}" a counted repetition.
            '.' | '+' | '(' | ')' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => {
                if k < chars.len() {
                    re.push('\\');
                    re.push(chars[k]);
                    k += 1;
                    kind = Detected::Regexp;
                } else {
                    re.push('\\');
                }
            }
            '[' | ']' => {
                re.push(ch);
                kind = Detected::Regexp;
            }
            _ => re.push(ch),
        }
        token += 1;
    }
    if kind == Detected::Regexp {
        re.push('$');
    }
    (kind, re)
}

/// Go's regexp syntax (RE2, Perl flags), as far as patternmatcher's expressions can use it:
/// parsed into a tree and written back out in the `regex` crate's syntax, where the two
/// dialects differ (nested and set-operation classes, `\d` being Unicode, octal escapes...).
mod goregex {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Rep {
        Star,
        Plus,
        Quest,
        /// `{min,max}`; `None` is unbounded.
        Range(u32, Option<u32>),
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Assertion {
        BeginText,
        EndText,
        WordBoundary,
        NotWordBoundary,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum ClassItem {
        Range(char, char),
        /// ASCII ranges (Perl `\d` and POSIX `[:alpha:]` classes), possibly negated.
        Ascii(&'static [(u8, u8)], bool),
        /// Unicode general categories (`\pL`), possibly negated.
        Unicode(&'static [&'static str], bool),
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum Node {
        Empty,
        Literal(char),
        /// Go's `.` without the `s` flag: any character but '\n'.
        AnyNotNl,
        /// Any character at all.
        AnyChar,
        Class(bool, Vec<ClassItem>),
        Assert(Assertion),
        Concat(Vec<Node>),
        Alternate(Vec<Node>),
        Repeat(Box<Node>, Rep),
    }

    const DIGIT: &[(u8, u8)] = &[(b'0', b'9')];
    const SPACE_PERL: &[(u8, u8)] = &[(b'\t', b'\n'), (0x0c, b'\r'), (b' ', b' ')];
    const WORD: &[(u8, u8)] = &[(b'0', b'9'), (b'A', b'Z'), (b'_', b'_'), (b'a', b'z')];

    fn perl_class(c: char) -> Option<ClassItem> {
        Some(match c {
            'd' => ClassItem::Ascii(DIGIT, false),
            'D' => ClassItem::Ascii(DIGIT, true),
            's' => ClassItem::Ascii(SPACE_PERL, false),
            'S' => ClassItem::Ascii(SPACE_PERL, true),
            'w' => ClassItem::Ascii(WORD, false),
            'W' => ClassItem::Ascii(WORD, true),
            _ => return None,
        })
    }

    fn posix_class(name: &str) -> Option<&'static [(u8, u8)]> {
        Some(match name {
            "alnum" => &[(b'0', b'9'), (b'A', b'Z'), (b'a', b'z')],
            "alpha" => &[(b'A', b'Z'), (b'a', b'z')],
            "ascii" => &[(0, 0x7f)],
            "blank" => &[(b'\t', b'\t'), (b' ', b' ')],
            "cntrl" => &[(0, 0x1f), (0x7f, 0x7f)],
            "digit" => DIGIT,
            "graph" => &[(b'!', b'~')],
            "lower" => &[(b'a', b'z')],
            "print" => &[(b' ', b'~')],
            "punct" => &[(b'!', b'/'), (b':', b'@'), (b'[', b'`'), (b'{', b'~')],
            "space" => &[(b'\t', b'\r'), (b' ', b' ')],
            "upper" => &[(b'A', b'Z')],
            "word" => WORD,
            "xdigit" => &[(b'0', b'9'), (b'A', b'F'), (b'a', b'f')],
            _ => return None,
        })
    }

    /// Go's one-letter Unicode classes (`\pL`); Go's `C` leaves out unassigned code points.
    fn unicode_class(name: char) -> Option<&'static [&'static str]> {
        Some(match name {
            'C' => &["Cc", "Cf", "Co", "Cs"],
            'L' => &["L"],
            'M' => &["M"],
            'N' => &["N"],
            'P' => &["P"],
            'S' => &["S"],
            'Z' => &["Z"],
            _ => return None,
        })
    }

    struct Parser {
        s: Vec<char>,
        i: usize,
    }

    pub(super) fn parse(src: &str) -> Result<Node, String> {
        let mut p = Parser {
            s: src.chars().collect(),
            i: 0,
        };
        let node = p.alternation()?;
        if p.i < p.s.len() {
            return Err("unexpected ')' in the regular expression".into());
        }
        Ok(node)
    }

    impl Parser {
        fn peek(&self) -> Option<char> {
            self.s.get(self.i).copied()
        }

        fn at(&self, k: usize) -> Option<char> {
            self.s.get(self.i + k).copied()
        }

        fn alternation(&mut self) -> Result<Node, String> {
            let mut alts = vec![self.concatenation()?];
            while self.peek() == Some('|') {
                self.i += 1;
                alts.push(self.concatenation()?);
            }
            Ok(if alts.len() == 1 {
                alts.pop().unwrap_or(Node::Empty)
            } else {
                Node::Alternate(alts)
            })
        }

        fn concatenation(&mut self) -> Result<Node, String> {
            let mut items: Vec<Node> = Vec::new();
            let mut last_was_repeat = false;
            while let Some(c) = self.peek() {
                let (rep, len) = match c {
                    '|' | ')' => break,
                    '*' => (Some(Rep::Star), 1),
                    '+' => (Some(Rep::Plus), 1),
                    '?' => (Some(Rep::Quest), 1),
                    '{' => match self.counted_repeat() {
                        Some((min, max, len)) => {
                            if min > 1000 || max.is_some_and(|m| m > 1000 || m < min) {
                                return Err("invalid repeat count".into());
                            }
                            (Some(Rep::Range(min, max)), len)
                        }
                        // Not a repetition: Go reads the '{' literally.
                        None => (None, 0),
                    },
                    _ => (None, 0),
                };
                if let Some(rep) = rep {
                    self.i += len;
                    // A '?' after a repetition makes it non-greedy: no effect on whether it
                    // matches.
                    if self.peek() == Some('?') {
                        self.i += 1;
                    }
                    if last_was_repeat {
                        return Err("invalid nested repetition operator".into());
                    }
                    let Some(sub) = items.pop() else {
                        return Err("missing argument to repetition operator".into());
                    };
                    items.push(Node::Repeat(Box::new(sub), rep));
                    last_was_repeat = true;
                    continue;
                }
                last_was_repeat = false;
                match c {
                    '(' => {
                        self.i += 1;
                        if self.peek() == Some('?') {
                            return Err("unsupported group syntax".into());
                        }
                        let inner = self.alternation()?;
                        if self.peek() != Some(')') {
                            return Err("missing closing ')'".into());
                        }
                        self.i += 1;
                        items.push(inner);
                    }
                    '[' => items.push(self.class()?),
                    '.' => {
                        self.i += 1;
                        items.push(Node::AnyNotNl);
                    }
                    '^' => {
                        self.i += 1;
                        items.push(Node::Assert(Assertion::BeginText));
                    }
                    '$' => {
                        self.i += 1;
                        items.push(Node::Assert(Assertion::EndText));
                    }
                    '\\' => self.escape(&mut items)?,
                    _ => {
                        self.i += 1;
                        items.push(Node::Literal(c));
                    }
                }
            }
            Ok(match items.len() {
                0 => Node::Empty,
                1 => items.pop().unwrap_or(Node::Empty),
                _ => Node::Concat(items),
            })
        }

        /// Go's `parseRepeat` at a '{': `{n}`, `{n,}` or `{n,m}` (no leading zeros) gives
        /// (min, max, length); anything else is not a repetition. Numbers too large to matter
        /// saturate (Go fails them as too big too).
        fn counted_repeat(&self) -> Option<(u32, Option<u32>, usize)> {
            let number = |k: &mut usize| -> Option<u32> {
                let start = *k;
                while self.s.get(*k).is_some_and(|c| c.is_ascii_digit()) {
                    *k += 1;
                }
                let digits = &self.s[start..*k];
                if digits.is_empty() || (digits.len() >= 2 && digits[0] == '0') {
                    return None;
                }
                Some(digits.iter().fold(0u32, |n, d| {
                    n.saturating_mul(10)
                        .saturating_add(d.to_digit(10).unwrap_or(0))
                }))
            };
            let mut k = self.i + 1;
            let min = number(&mut k)?;
            let max = if self.s.get(k) == Some(&',') {
                k += 1;
                if self.s.get(k) == Some(&'}') {
                    None
                } else {
                    Some(number(&mut k)?)
                }
            } else {
                Some(min)
            };
            if self.s.get(k) != Some(&'}') {
                return None;
            }
            Some((min, max, k + 1 - self.i))
        }

        /// A backslash outside a class: an assertion, `\Q...\E`, a class or a literal.
        fn escape(&mut self, items: &mut Vec<Node>) -> Result<(), String> {
            let Some(next) = self.at(1) else {
                return Err("trailing backslash at end of expression".into());
            };
            let assertion = match next {
                'A' => Some(Assertion::BeginText),
                'z' => Some(Assertion::EndText),
                'b' => Some(Assertion::WordBoundary),
                'B' => Some(Assertion::NotWordBoundary),
                _ => None,
            };
            if let Some(a) = assertion {
                self.i += 2;
                items.push(Node::Assert(a));
                return Ok(());
            }
            match next {
                'C' => Err("invalid escape sequence: \\C".into()),
                'Q' => {
                    self.i += 2;
                    while self.i < self.s.len() {
                        if self.peek() == Some('\\') && self.at(1) == Some('E') {
                            self.i += 2;
                            break;
                        }
                        items.push(Node::Literal(self.s[self.i]));
                        self.i += 1;
                    }
                    Ok(())
                }
                'p' | 'P' => {
                    let item = self.unicode_class()?;
                    items.push(Node::Class(false, vec![item]));
                    Ok(())
                }
                _ => {
                    if let Some(item) = perl_class(next) {
                        self.i += 2;
                        items.push(Node::Class(false, vec![item]));
                    } else {
                        let c = self.escaped_char()?;
                        items.push(Node::Literal(c));
                    }
                    Ok(())
                }
            }
        }

        /// `\pX` / `\PX` at the current position.
        fn unicode_class(&mut self) -> Result<ClassItem, String> {
            let negated = self.at(1) == Some('P');
            let name = self.at(2);
            match name {
                Some('{') => Err("unsupported Unicode class syntax".into()),
                Some(n) => match unicode_class(n) {
                    Some(names) => {
                        self.i += 3;
                        Ok(ClassItem::Unicode(names, negated))
                    }
                    None => Err(format!("invalid character class range: \\p{n}")),
                },
                None => Err("invalid character class range: \\p".into()),
            }
        }

        /// Go's `parseEscape`: the character a backslash escape stands for.
        fn escaped_char(&mut self) -> Result<char, String> {
            self.i += 1; // the backslash
            let Some(c) = self.peek() else {
                return Err("trailing backslash at end of expression".into());
            };
            self.i += 1;
            let invalid = |seq: String| Err(format!("invalid escape sequence: {seq}"));
            let octal = |c: Option<char>| c.filter(|c| ('0'..='7').contains(c));
            match c {
                c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c),
                '1'..='7' if octal(self.peek()).is_none() => invalid(format!("\\{c}")),
                '0'..='7' => {
                    let mut r = c as u32 - '0' as u32;
                    for _ in 1..3 {
                        match octal(self.peek()) {
                            Some(d) => {
                                r = r * 8 + (d as u32 - '0' as u32);
                                self.i += 1;
                            }
                            None => break,
                        }
                    }
                    char::from_u32(r).ok_or_else(|| "invalid octal escape".to_string())
                }
                'x' => {
                    if self.peek() == Some('{') {
                        self.i += 1;
                        let mut r: u32 = 0;
                        let mut n = 0;
                        loop {
                            match self.peek() {
                                Some('}') if n > 0 => {
                                    self.i += 1;
                                    break;
                                }
                                Some(d) if d.is_ascii_hexdigit() && r <= 0x10FFFF => {
                                    r = r * 16 + d.to_digit(16).unwrap_or(0);
                                    n += 1;
                                    self.i += 1;
                                }
                                _ => return invalid("\\x{".into()),
                            }
                        }
                        return char::from_u32(r).ok_or_else(|| "invalid escape \\x{...}".into());
                    }
                    let hi = self.peek().and_then(|d| d.to_digit(16));
                    let lo = self.at(1).and_then(|d| d.to_digit(16));
                    match (hi, lo) {
                        (Some(h), Some(l)) => {
                            self.i += 2;
                            char::from_u32(h * 16 + l).ok_or_else(|| "bad \\x escape".into())
                        }
                        _ => invalid("\\x".into()),
                    }
                }
                'a' => Ok('\u{07}'),
                'f' => Ok('\u{0C}'),
                'n' => Ok('\n'),
                'r' => Ok('\r'),
                't' => Ok('\t'),
                'v' => Ok('\u{0B}'),
                _ => invalid(format!("\\{c}")),
            }
        }

        /// Go's `parseClass` at a '['.
        fn class(&mut self) -> Result<Node, String> {
            self.i += 1;
            let negated = self.peek() == Some('^');
            if negated {
                self.i += 1;
            }
            let mut items = Vec::new();
            let mut first = true; // ']' is a literal as the first member
            loop {
                match self.peek() {
                    None => return Err("missing closing ]".into()),
                    Some(']') if !first => {
                        self.i += 1;
                        break;
                    }
                    _ => {}
                }
                first = false;
                if self.peek() == Some('[') && self.at(1) == Some(':') {
                    // Go looks for ":]" anywhere further on, even past the class's end.
                    let rest: String = self.s[self.i + 2..].iter().collect();
                    if let Some(end) = rest.find(":]") {
                        let inner = &rest[..end];
                        let (neg, name) = match inner.strip_prefix('^') {
                            Some(n) => (true, n),
                            None => (false, inner),
                        };
                        let Some(ranges) = posix_class(name) else {
                            return Err(format!("invalid character class range: [:{inner}:]"));
                        };
                        self.i += 2 + inner.chars().count() + 2;
                        items.push(ClassItem::Ascii(ranges, neg));
                        continue;
                    }
                }
                if self.peek() == Some('\\') {
                    match self.at(1) {
                        Some('p') | Some('P') => {
                            items.push(self.unicode_class()?);
                            continue;
                        }
                        Some(c) => {
                            if let Some(item) = perl_class(c) {
                                self.i += 2;
                                items.push(item);
                                continue;
                            }
                        }
                        None => {}
                    }
                }
                let lo = self.class_char()?;
                let mut hi = lo;
                if self.peek() == Some('-') && self.at(1).is_some_and(|c| c != ']') {
                    self.i += 1;
                    hi = self.class_char()?;
                    if hi < lo {
                        return Err(format!("invalid character class range: {lo}-{hi}"));
                    }
                }
                items.push(ClassItem::Range(lo, hi));
            }
            Ok(Node::Class(negated, items))
        }

        fn class_char(&mut self) -> Result<char, String> {
            match self.peek() {
                None => Err("missing closing ]".into()),
                Some('\\') => self.escaped_char(),
                Some(c) => {
                    self.i += 1;
                    Ok(c)
                }
            }
        }
    }

    /// The strings in which Go's `MatchString` (an unanchored search) finds `node`: anything
    /// may follow a match, and precede it too in a top-level alternative that does not start
    /// with `^` (a raw '|' in a pattern splits patternmatcher's `^...$` in two).
    pub(super) fn searched(node: Node) -> Node {
        let any = || Node::Repeat(Box::new(Node::AnyChar), Rep::Star);
        let alternatives = match node {
            Node::Alternate(alts) => alts,
            other => vec![other],
        };
        Node::Alternate(
            alternatives
                .into_iter()
                .map(|alt| {
                    let anchored = match &alt {
                        Node::Concat(items) => {
                            items.first() == Some(&Node::Assert(Assertion::BeginText))
                        }
                        Node::Assert(Assertion::BeginText) => true,
                        _ => false,
                    };
                    let mut seq = Vec::with_capacity(3);
                    if !anchored {
                        seq.push(any());
                    }
                    seq.push(alt);
                    seq.push(any());
                    Node::Concat(seq)
                })
                .collect(),
        )
    }

    /// Most NFA states built to answer `dir_may_contain_exceptions` exactly; a bigger pattern
    /// (counted repetitions can multiply) gets the conservative answer.
    const MAX_NFA_STATES: usize = 50_000;

    /// One character test of the NFA.
    #[derive(Debug)]
    enum CharTest {
        Literal(char),
        AnyNotNl,
        AnyChar,
        Class(bool, Vec<ClassItem>),
        /// A class with Unicode categories, tested by the `regex` crate.
        Unicode(regex::Regex),
    }

    impl CharTest {
        fn new(node: &Node) -> Option<CharTest> {
            Some(match node {
                Node::Literal(c) => CharTest::Literal(*c),
                Node::AnyNotNl => CharTest::AnyNotNl,
                Node::AnyChar => CharTest::AnyChar,
                Node::Class(negated, items) => {
                    if items.iter().any(|i| matches!(i, ClassItem::Unicode(..))) {
                        let mut src = String::from("\\A");
                        emit(node, &mut src);
                        src.push_str("\\z");
                        CharTest::Unicode(regex::Regex::new(&src).ok()?)
                    } else {
                        CharTest::Class(*negated, items.clone())
                    }
                }
                _ => return None,
            })
        }

        fn matches(&self, c: char) -> bool {
            match self {
                CharTest::Literal(l) => *l == c,
                CharTest::AnyNotNl => c != '\n',
                CharTest::AnyChar => true,
                CharTest::Class(negated, items) => {
                    let hit = items.iter().any(|item| match item {
                        ClassItem::Range(lo, hi) => (*lo..=*hi).contains(&c),
                        ClassItem::Ascii(ranges, neg) => {
                            let inside = c.is_ascii()
                                && ranges
                                    .iter()
                                    .any(|&(lo, hi)| (lo..=hi).contains(&(c as u8)));
                            inside != *neg
                        }
                        // Routed to CharTest::Unicode.
                        ClassItem::Unicode(..) => true,
                    });
                    hit != *negated
                }
                CharTest::Unicode(re) => re.is_match(c.encode_utf8(&mut [0; 4])),
            }
        }
    }

    #[derive(Debug)]
    enum State {
        Consume(CharTest, usize),
        Split(usize, usize),
        Assert(Assertion, usize),
        Match,
    }

    /// A Thompson NFA that answers one question: can a string the expression matches start
    /// with a given prefix? Word-boundary assertions are treated as always true and `$` as
    /// true at the end of the prefix, which can only widen the answer.
    #[derive(Debug)]
    pub(super) struct PrefixNfa {
        states: Vec<State>,
        start: usize,
        /// Whether a state can still reach `Match`.
        live: Vec<bool>,
    }

    impl PrefixNfa {
        pub(super) fn new(node: &Node) -> Option<PrefixNfa> {
            let mut states = vec![State::Match];
            let start = build(node, 0, &mut states)?;
            // Liveness: walk the edges backwards from Match.
            let mut preds: Vec<Vec<usize>> = vec![Vec::new(); states.len()];
            for (id, state) in states.iter().enumerate() {
                match state {
                    State::Consume(_, n) | State::Assert(_, n) => preds[*n].push(id),
                    State::Split(a, b) => {
                        preds[*a].push(id);
                        preds[*b].push(id);
                    }
                    State::Match => {}
                }
            }
            let mut live = vec![false; states.len()];
            let mut stack = vec![0];
            live[0] = true;
            while let Some(s) = stack.pop() {
                for &p in &preds[s] {
                    if !live[p] {
                        live[p] = true;
                        stack.push(p);
                    }
                }
            }
            Some(PrefixNfa {
                states,
                start,
                live,
            })
        }

        /// Whether some string the expression matches starts with `prefix`.
        pub(super) fn may_match_with_prefix(&self, prefix: &str) -> bool {
            let chars: Vec<char> = prefix.chars().collect();
            let end = chars.len();
            let mut current = self.closure(vec![self.start], 0, end);
            for (pos, &c) in chars.iter().enumerate() {
                let next: Vec<usize> = current
                    .iter()
                    .filter_map(|&s| match &self.states[s] {
                        State::Consume(test, n) if test.matches(c) => Some(*n),
                        _ => None,
                    })
                    .collect();
                current = self.closure(next, pos + 1, end);
                if current.is_empty() {
                    return false;
                }
            }
            current.iter().any(|&s| self.live[s])
        }

        /// The consuming and matching states reachable from `seeds` without reading, at `pos`.
        fn closure(&self, seeds: Vec<usize>, pos: usize, end: usize) -> Vec<usize> {
            let mut seen = vec![false; self.states.len()];
            let mut out = Vec::new();
            let mut stack = seeds;
            while let Some(s) = stack.pop() {
                if std::mem::replace(&mut seen[s], true) {
                    continue;
                }
                match &self.states[s] {
                    State::Consume(..) | State::Match => out.push(s),
                    State::Split(a, b) => {
                        stack.push(*b);
                        stack.push(*a);
                    }
                    State::Assert(a, n) => {
                        let holds = match a {
                            Assertion::BeginText => pos == 0,
                            Assertion::EndText => pos == end,
                            Assertion::WordBoundary | Assertion::NotWordBoundary => true,
                        };
                        if holds {
                            stack.push(*n);
                        }
                    }
                }
            }
            out
        }
    }

    /// Thompson construction, back to front: the states for `node` followed by `next`.
    fn build(node: &Node, next: usize, states: &mut Vec<State>) -> Option<usize> {
        if states.len() > MAX_NFA_STATES {
            return None;
        }
        let push = |state: State, states: &mut Vec<State>| {
            states.push(state);
            states.len() - 1
        };
        Some(match node {
            Node::Empty => next,
            Node::Literal(_) | Node::AnyNotNl | Node::AnyChar | Node::Class(..) => {
                push(State::Consume(CharTest::new(node)?, next), states)
            }
            Node::Assert(a) => push(State::Assert(*a, next), states),
            Node::Concat(items) => {
                let mut cur = next;
                for item in items.iter().rev() {
                    cur = build(item, cur, states)?;
                }
                cur
            }
            Node::Alternate(alts) => {
                let mut starts = Vec::with_capacity(alts.len());
                for alt in alts {
                    starts.push(build(alt, next, states)?);
                }
                let mut cur = starts.pop()?;
                while let Some(s) = starts.pop() {
                    cur = push(State::Split(s, cur), states);
                }
                cur
            }
            Node::Repeat(sub, Rep::Quest) => {
                let body = build(sub, next, states)?;
                push(State::Split(body, next), states)
            }
            Node::Repeat(sub, Rep::Star) | Node::Repeat(sub, Rep::Range(0, None)) => {
                let lp = push(State::Split(usize::MAX, next), states);
                let body = build(sub, lp, states)?;
                states[lp] = State::Split(body, next);
                lp
            }
            Node::Repeat(sub, Rep::Plus) => {
                let lp = push(State::Split(usize::MAX, next), states);
                let body = build(sub, lp, states)?;
                states[lp] = State::Split(body, next);
                body
            }
            Node::Repeat(sub, Rep::Range(min, max)) => {
                let mut cur = next;
                match max {
                    None => {
                        let star = Node::Repeat(sub.clone(), Rep::Star);
                        cur = build(&star, cur, states)?;
                    }
                    Some(max) => {
                        for _ in *min..*max {
                            let body = build(sub, cur, states)?;
                            cur = push(State::Split(body, cur), states);
                        }
                    }
                }
                for _ in 0..*min {
                    cur = build(sub, cur, states)?;
                }
                cur
            }
        })
    }

    /// The tree in the `regex` crate's syntax (Unicode mode, no flags).
    pub(super) fn emit(node: &Node, out: &mut String) {
        match node {
            Node::Empty => out.push_str("(?:)"),
            Node::Literal(c) => push_char(*c, out),
            Node::AnyNotNl => out.push_str("[^\\n]"),
            Node::AnyChar => out.push_str("(?s:.)"),
            Node::Class(negated, items) => {
                out.push('[');
                if *negated {
                    out.push('^');
                }
                for item in items {
                    emit_class_item(item, out);
                }
                out.push(']');
            }
            Node::Assert(a) => out.push_str(match a {
                Assertion::BeginText => "\\A",
                Assertion::EndText => "\\z",
                Assertion::WordBoundary => "(?-u:\\b)",
                Assertion::NotWordBoundary => "(?-u:\\B)",
            }),
            Node::Concat(items) => {
                out.push_str("(?:");
                for item in items {
                    emit(item, out);
                }
                out.push(')');
            }
            Node::Alternate(alts) => {
                out.push_str("(?:");
                for (k, alt) in alts.iter().enumerate() {
                    if k > 0 {
                        out.push('|');
                    }
                    emit(alt, out);
                }
                out.push(')');
            }
            Node::Repeat(sub, rep) => {
                out.push_str("(?:");
                emit(sub, out);
                out.push(')');
                match rep {
                    Rep::Star => out.push('*'),
                    Rep::Plus => out.push('+'),
                    Rep::Quest => out.push('?'),
                    Rep::Range(min, Some(max)) if min == max => out.push_str(&format!("{{{min}}}")),
                    Rep::Range(min, Some(max)) => out.push_str(&format!("{{{min},{max}}}")),
                    Rep::Range(min, None) => out.push_str(&format!("{{{min},}}")),
                }
            }
        }
    }

    fn push_char(c: char, out: &mut String) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }

    fn emit_class_item(item: &ClassItem, out: &mut String) {
        match item {
            ClassItem::Range(lo, hi) => {
                push_char(*lo, out);
                if lo != hi {
                    out.push('-');
                    push_char(*hi, out);
                }
            }
            ClassItem::Ascii(ranges, negated) => {
                out.push_str(if *negated { "[^" } else { "[" });
                for &(lo, hi) in ranges.iter() {
                    push_char(lo as char, out);
                    if lo != hi {
                        out.push('-');
                        push_char(hi as char, out);
                    }
                }
                out.push(']');
            }
            ClassItem::Unicode(names, negated) => {
                out.push_str(if *negated { "[^" } else { "[" });
                for name in names.iter() {
                    out.push_str("\\p{");
                    out.push_str(name);
                    out.push('}');
                }
                out.push(']');
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// .dockerignore matching
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Matcher {
    /// The path equals the pattern.
    Exact,
    /// The path starts with the pattern less its trailing `**`.
    Prefix(Vec<u8>),
    /// The path ends with the pattern less its leading `**` (or, for `**/x`, is `x`).
    Suffix(Vec<u8>),
    /// Go's regexp; `prefixes` tells what can start a path it matches (`None`: unknown).
    Regexp {
        re: Regex,
        prefixes: Option<goregex::PrefixNfa>,
    },
}

#[derive(Debug)]
struct DockerPattern {
    exclusion: bool,
    /// The cleaned pattern without its '!'.
    text: Vec<u8>,
    matcher: Matcher,
}

impl DockerPattern {
    /// patternmatcher's `Pattern.match`: this pattern against exactly this path.
    fn matches(&self, raw: &[u8], runes: &[u8]) -> bool {
        match &self.matcher {
            Matcher::Exact => raw == self.text.as_slice(),
            Matcher::Prefix(prefix) => raw.starts_with(prefix),
            Matcher::Suffix(suffix) => {
                raw.ends_with(suffix) || (suffix.first() == Some(&b'/') && raw == &suffix[1..])
            }
            Matcher::Regexp { re, .. } => re.is_match(runes),
        }
    }

    /// Whether this pattern matches some path strictly below `dir_slash` (a directory path
    /// with its trailing '/'), or might.
    fn may_match_below(&self, dir_slash: &[u8]) -> bool {
        match &self.matcher {
            Matcher::Exact => self.text.len() > dir_slash.len() && self.text.starts_with(dir_slash),
            Matcher::Prefix(prefix) => {
                prefix.starts_with(dir_slash) || dir_slash.starts_with(prefix)
            }
            Matcher::Suffix(_) => true,
            Matcher::Regexp { prefixes, .. } => match prefixes {
                Some(nfa) => {
                    let runes = go_runes(dir_slash);
                    match std::str::from_utf8(&runes) {
                        Ok(text) => nfa.may_match_with_prefix(text),
                        Err(_) => true,
                    }
                }
                None => true,
            },
        }
    }
}

fn compile_regex(source: &str, pattern: &str) -> Result<Regex, PatternError> {
    RegexBuilder::new(source)
        .size_limit(64 << 20)
        .build()
        .map_err(|e| PatternError {
            pattern: pattern.to_string(),
            reason: format!("cannot compile the pattern: {e}"),
        })
}

/// A `.dockerignore` matcher with moby/patternmatcher semantics.
#[derive(Debug)]
pub struct DockerIgnore {
    patterns: Vec<DockerPattern>,
    cleaned: Vec<String>,
    exceptions: bool,
    regexps: bool,
}

impl DockerIgnore {
    /// Compile the patterns (as `read_dockerignore` returns them; raw lines are normalised the
    /// same way first). Empty patterns are skipped; a pattern that Go's `filepath.Match` or
    /// `regexp` would refuse, or a lone `!`, is an error naming it.
    pub fn new(patterns: &[String]) -> Result<DockerIgnore, PatternError> {
        let mut out = DockerIgnore {
            patterns: Vec::with_capacity(patterns.len()),
            cleaned: Vec::with_capacity(patterns.len()),
            exceptions: false,
            regexps: false,
        };
        for original in patterns {
            let err = |reason: &str| PatternError {
                pattern: original.clone(),
                reason: reason.to_string(),
            };
            let Some(line) = normalize_dockerignore_line(original) else {
                continue;
            };
            // patternmatcher.New: trim, clean (with the '!' still on), then split off the '!'.
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            let full = clean_path(trimmed);
            let (exclusion, text) = match full.strip_prefix('!') {
                Some("") => {
                    return Err(err("an exception '!' needs a pattern after it"));
                }
                Some(rest) => (true, rest.to_string()),
                None => (false, full.clone()),
            };
            check_glob_syntax(&text).map_err(|r| err(&format!("syntax error in pattern: {r}")))?;
            let (kind, go_re) = detect(&text);
            let matcher = match kind {
                Detected::Exact => Matcher::Exact,
                Detected::Prefix => Matcher::Prefix(text.as_bytes()[..text.len() - 2].to_vec()),
                Detected::Suffix => Matcher::Suffix(text.as_bytes()[2..].to_vec()),
                Detected::Regexp => {
                    let tree = goregex::parse(&go_re)
                        .map_err(|r| err(&format!("syntax error in pattern: {r}")))?;
                    let mut source = String::new();
                    goregex::emit(&tree, &mut source);
                    let re = compile_regex(&source, original)?;
                    let prefixes = if exclusion {
                        goregex::PrefixNfa::new(&goregex::searched(tree))
                    } else {
                        None
                    };
                    out.regexps = true;
                    Matcher::Regexp { re, prefixes }
                }
            };
            out.exceptions |= exclusion;
            out.cleaned.push(full);
            out.patterns.push(DockerPattern {
                exclusion,
                text: text.into_bytes(),
                matcher,
            });
        }
        Ok(out)
    }

    /// No patterns: nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Some pattern is a `!` exception.
    pub fn has_exceptions(&self) -> bool {
        self.exceptions
    }

    /// The cleaned patterns, exceptions with their leading '!'.
    pub fn patterns(&self) -> &[String] {
        &self.cleaned
    }

    /// Whether the context-relative path `rel` (clean, '/'-separated, no leading '/' or './')
    /// is excluded: the last pattern that matches it or one of its parent directories decides.
    /// The root itself (`""` or `"."`) is never excluded.
    pub fn matches(&self, rel: &[u8]) -> bool {
        if self.patterns.is_empty() || rel.is_empty() || rel == b"." {
            return false;
        }
        let runes = if self.regexps {
            go_runes(rel)
        } else {
            Cow::Borrowed(rel)
        };
        // filepath.Dir: everything before the last '/', cleaned.
        let parent: Option<Cow<'_, [u8]>> = match rel.iter().rposition(|&b| b == b'/') {
            None => None,
            Some(0) => Some(Cow::Borrowed(&b"/"[..])),
            Some(i) if is_clean(&rel[..i]) => Some(Cow::Borrowed(&rel[..i])),
            Some(i) => Some(Cow::Owned(clean_bytes(&rel[..i]))),
        }
        .filter(|p| p.as_ref() != b".");
        let (parent_runes, ends) = match &parent {
            None => (Cow::Borrowed(&b""[..]), Vec::new()),
            Some(p) => {
                let pr = if self.regexps {
                    go_runes(p)
                } else {
                    Cow::Borrowed(p.as_ref())
                };
                let ends = element_ends(p, &pr);
                (pr, ends)
            }
        };
        let parent_raw: &[u8] = parent.as_deref().unwrap_or(b"");
        let mut matched = false;
        for pattern in &self.patterns {
            // An exception can only undo a match, and a pattern only make one.
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(rel, &runes);
            if !hit {
                hit = ends.iter().any(|&(raw_end, rune_end)| {
                    pattern.matches(&parent_raw[..raw_end], &parent_runes[..rune_end])
                });
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// For an excluded directory `rel_dir`: whether a `!` exception could match something
    /// below it, so that a walker must descend instead of pruning the subtree. If this says
    /// no, every path below `rel_dir` is excluded. Exact for literal and prefix exceptions,
    /// and for regular-expression ones (an automaton over the pattern) up to word-boundary
    /// assertions; true whenever unsure (suffix patterns such as `**/keep`, which can match at
    /// any depth, or patterns whose automaton would be huge).
    pub fn dir_may_contain_exceptions(&self, rel_dir: &[u8]) -> bool {
        if !self.exceptions {
            return false;
        }
        if rel_dir.is_empty() || rel_dir == b"." {
            return true;
        }
        let mut dir_slash = Vec::with_capacity(rel_dir.len() + 1);
        dir_slash.extend_from_slice(rel_dir);
        dir_slash.push(b'/');
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| p.may_match_below(&dir_slash))
    }
}

/// Whether a non-empty relative path is already what `clean_bytes` would make of it.
fn is_clean(p: &[u8]) -> bool {
    if p.is_empty() || p[0] == b'/' || p[p.len() - 1] == b'/' {
        return false;
    }
    let mut leading_dotdots = true;
    for elem in p.split(|&b| b == b'/') {
        match elem {
            b"" | b"." => return false,
            b".." if !leading_dotdots => return false,
            b".." => {}
            _ => leading_dotdots = false,
        }
    }
    true
}

/// Where the prefixes `a`, `a/b`, ... of a parent path end, in its raw bytes and in its
/// Go-rune form (both have their '/' in the same order).
fn element_ends(raw: &[u8], runes: &[u8]) -> Vec<(usize, usize)> {
    let raw_slashes = raw
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(|(i, _)| i);
    let rune_slashes = runes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(|(i, _)| i);
    let mut ends: Vec<(usize, usize)> = raw_slashes.zip(rune_slashes).collect();
    ends.push((raw.len(), runes.len()));
    ends
}

// ---------------------------------------------------------------------------------------------
// .gitignore matching
// ---------------------------------------------------------------------------------------------

/// One `.gitignore` at the root of a tree, matched with the `ignore` crate.
#[derive(Debug)]
pub struct GitIgnore {
    inner: ignore::gitignore::Gitignore,
}

impl GitIgnore {
    /// Compile the lines of a `.gitignore` (an element holding several lines is split at '\n';
    /// a '\r' before it and a BOM at the very start are dropped, as the `ignore` crate does for
    /// files). A glob the `ignore` crate refuses is an error naming the line.
    pub fn new(lines: &[String]) -> Result<GitIgnore, PatternError> {
        let mut builder = ignore::gitignore::GitignoreBuilder::new(".");
        let mut first = true;
        for element in lines {
            for line in element.split('\n') {
                let mut line = line.strip_suffix('\r').unwrap_or(line);
                if first {
                    line = line.trim_start_matches('\u{FEFF}');
                    first = false;
                }
                builder.add_line(None, line).map_err(|e| PatternError {
                    pattern: line.to_string(),
                    reason: match e {
                        ignore::Error::Glob { err, .. } => err,
                        other => other.to_string(),
                    },
                })?;
            }
        }
        let inner = builder.build().map_err(|e| PatternError {
            pattern: lines.join("\n"),
            reason: e.to_string(),
        })?;
        Ok(GitIgnore { inner })
    }

    /// Whether the root-relative path is ignored: it matches as a file (or as a directory when
    /// `is_dir`), or one of its parent directories is ignored. As in git, a `!` pattern cannot
    /// re-include anything below an ignored directory.
    pub fn matches(&self, rel: &[u8], is_dir: bool) -> bool {
        let mut rel = rel;
        loop {
            if let Some(r) = rel.strip_prefix(b"/") {
                rel = r;
            } else if let Some(r) = rel.strip_prefix(b"./") {
                rel = r;
            } else {
                break;
            }
        }
        if rel.is_empty() || rel == b"." || self.inner.is_empty() {
            return false;
        }
        let as_path = |b: &[u8]| Path::new(OsStr::from_bytes(b)).to_path_buf();
        for (i, &b) in rel.iter().enumerate() {
            if b == b'/' && i > 0 && self.inner.matched(as_path(&rel[..i]), true).is_ignore() {
                return true;
            }
        }
        self.inner.matched(as_path(rel), is_dir).is_ignore()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn excluded(patterns: &[&str], path: &str) -> bool {
        DockerIgnore::new(&s(patterns))
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(path.as_bytes())
    }

    #[test]
    fn clean_path_is_go_filepath_clean() {
        let cases = [
            ("", "."),
            (".", "."),
            ("abc", "abc"),
            ("abc/def", "abc/def"),
            ("a/b/c", "a/b/c"),
            ("..", ".."),
            ("../..", "../.."),
            ("../../abc", "../../abc"),
            ("/abc", "/abc"),
            ("/", "/"),
            ("abc/", "abc"),
            ("abc/def/", "abc/def"),
            ("a/b/c/", "a/b/c"),
            ("./", "."),
            ("../", ".."),
            ("../../", "../.."),
            ("/abc/", "/abc"),
            ("abc//def//ghi", "abc/def/ghi"),
            ("//abc", "/abc"),
            ("///abc", "/abc"),
            ("//abc//", "/abc"),
            ("abc//", "abc"),
            ("abc/./def", "abc/def"),
            ("/./abc/def", "/abc/def"),
            ("abc/.", "abc"),
            ("abc/def/ghi/../jkl", "abc/def/jkl"),
            ("abc/def/../ghi/../jkl", "abc/jkl"),
            ("abc/def/..", "abc"),
            ("abc/def/../..", "."),
            ("/abc/def/../..", "/"),
            ("abc/def/../../..", ".."),
            ("/abc/def/../../..", "/"),
            ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
            ("/../abc", "/abc"),
            ("abc/./../def", "def"),
            ("abc//./../def", "def"),
            ("abc/../../././../def", "../../def"),
            ("!a/../b", "b"),
            ("!./x", "!./x"),
        ];
        for (input, want) in cases {
            assert_eq!(clean_path(input), want, "Clean({input:?})");
        }
        assert_eq!(clean_bytes(b"a/\xff/../b\xfe/"), b"a/b\xfe".to_vec());
    }

    #[test]
    fn normalize_rel_strips_root_and_refuses_escapes() {
        assert_eq!(normalize_rel(b"./a//b/"), Some(b"a/b".to_vec()));
        assert_eq!(normalize_rel(b"/a/b"), Some(b"a/b".to_vec()));
        assert_eq!(normalize_rel(b"/../a"), Some(b"a".to_vec()));
        assert_eq!(normalize_rel(b"a/../../b"), None);
        assert_eq!(normalize_rel(b".."), None);
        assert_eq!(normalize_rel(b"."), None);
        assert_eq!(normalize_rel(b"/"), None);
        assert_eq!(normalize_rel(b""), None);
        assert_eq!(normalize_rel(b"..a"), Some(b"..a".to_vec()));
    }

    #[test]
    fn read_dockerignore_matches_moby_readall() {
        let text = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n\
                    ! /inverted/abs/path\n!\n! ";
        assert_eq!(
            read_dockerignore(text),
            s(&[
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path",
                "!",
                "!"
            ])
        );
        let text = "\u{FEFF}# comment\r\n  spaced  \r\n #not a comment\r\n./a/../b\n/\n\u{FEFF}x";
        assert_eq!(
            read_dockerignore(text),
            s(&["spaced", "#not a comment", "b", "/", "\u{FEFF}x"])
        );
        assert!(read_dockerignore("").is_empty());
        assert!(read_dockerignore("\n\n   \n#x\n").is_empty());
    }

    #[test]
    fn match_types_follow_patternmatcher() {
        let kind = |p: &str| detect(p).0;
        assert_eq!(kind("*"), Detected::Regexp);
        assert_eq!(detect("*").1, "^[^/]*$");
        assert_eq!(detect("a*/b").1, "^a[^/]*/b$");
        assert_eq!(kind("**"), Detected::Suffix);
        assert_eq!(kind("**/**"), Detected::Regexp);
        assert_eq!(detect("**/**").1, "^(.*/)?.*$");
        assert_eq!(kind("dir/**"), Detected::Prefix);
        assert_eq!(kind("**/dir"), Detected::Suffix);
        assert_eq!(detect("**/dir2/*").1, "^(.*/)?dir2/[^/]*$");
        assert_eq!(detect("**/dir2/**").1, "^(.*/)?dir2/.*$");
        assert_eq!(kind("**file"), Detected::Suffix);
        assert_eq!(detect("**/**/*.txt").1, "^(.*/)?(.*/)?[^/]*\\.txt$");
        assert_eq!(detect("a[b-d]e").1, "^a[b-d]e$");
        assert_eq!(detect(".*").1, "^\\.[^/]*$");
        assert_eq!(kind("abc.def"), Detected::Exact);
        assert_eq!(kind("a.|)$(}+{bc"), Detected::Exact);
        assert_eq!(detect("a|b{2}*").1, "^a|b{2}[^/]*$");
        assert_eq!(detect("a\\*b").1, "^a\\*b$");
        assert_eq!(kind("a\\*b"), Detected::Regexp);
    }

    #[test]
    fn patternmatcher_single_pattern_table() {
        // (pattern, path, excluded with parent matching)
        let cases: &[(&str, &str, bool)] = &[
            ("**", "file", true),
            ("**", "file/", true),
            ("**/", "file", true),
            ("**/", "file/", true),
            ("**", "/", true),
            ("**/", "/", true),
            ("**", "dir/file", true),
            ("**/", "dir/file", true),
            ("**", "dir/file/", true),
            ("**/", "dir/file/", true),
            ("**/**", "dir/file", true),
            ("**/**", "dir/file/", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/file/", true),
            ("dir/**", "dir/dir2/file", true),
            ("dir/**", "dir/dir2/file/", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/*", "dir/dir2/file/", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file/", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**/file", "dir/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def", true),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            ("a\\\\", "a\\", true),
            ("a\\*b", "a*b", true),
            // Go's filepath.Match table, through patternmatcher.
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
        ];
        for &(pattern, path, want) in cases {
            assert_eq!(
                excluded(&[pattern], path),
                want,
                "pattern {pattern:?} path {path:?}"
            );
        }
    }

    #[test]
    fn patternmatcher_multi_pattern_table() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3-py3-none-any.whl",
                false,
            ),
            (&["*.go"], "fileutils.go", true),
            (&["!fileutils.go", "*.go"], "fileutils.go", true),
            (&["*.go", "!fileutils.go"], "fileutils.go", false),
            (&["docs", "!docs/README.md"], "docs/README.md", false),
            (&["docs/", "!docs/README.md"], "docs/README.md", false),
            (&["docs/*", "!docs/README.md"], "docs/README.md", false),
            (&["docs", "!docs/README.md"], "docs/other.md", true),
            (&["*.go"], ".", false),
            (&[], "any/path/there", false),
        ];
        for &(patterns, path, want) in cases {
            assert_eq!(
                excluded(patterns, path),
                want,
                "patterns {patterns:?} path {path:?}"
            );
        }
    }

    #[test]
    fn quirks_of_patternmatcher_are_kept() {
        // A leading ** is a plain string suffix: "**foo" matches "xfoo", unlike its regexp.
        assert!(excluded(&["**foo"], "a/xfoo"));
        assert!(!excluded(&["**foo*"], "a/xfoo"));
        // A trailing ** after literal text is a plain string prefix.
        assert!(excluded(&["foo**"], "foobar/x"));
        // '^' is literal in an exact pattern, an anchor in a regexp one.
        assert!(excluded(&["a^b"], "a^b"));
        assert!(!excluded(&["a^b*"], "a^bc"));
        // A class can match '/', so it can span directories.
        assert!(excluded(&["a[^x]b"], "a/b"));
        // '*' inside brackets becomes part of Go's regexp: [*] reads as the class [[^/] and a
        // star followed by a literal ']'.
        assert!(excluded(&["[*]"], "]"));
        assert!(excluded(&["[*]"], "^^]"));
        assert!(!excluded(&["[*]"], "*"));
        // Escaped letters are regexp escapes: \d is a digit, \x41 is 'A'.
        assert!(excluded(&["\\d"], "7"));
        assert!(!excluded(&["\\d"], "d"));
        assert!(excluded(&["\\x41"], "A"));
        // \Q quotes the rest of the generated expression, end anchor included.
        assert!(excluded(&["\\Qa*"], "a[^/]*$and more"));
        // Go's '.' stops at a newline: "**/" cannot span a directory name holding one.
        assert!(!excluded(&["**/*.go"], "a\nb/c.go"));
        assert!(excluded(&["**/*.go"], "ab/c.go"));
        // patternmatcher's escape table misses '|', '{' and '}': they reach Go's regexp raw.
        assert!(excluded(&["a|b"], "a|b"));
        assert!(!excluded(&["a|b"], "a"));
        assert!(excluded(&["*.md|*.txt"], "notes.txt"));
        assert!(excluded(&["*.md|*.txt"], "deep/down/notes.txt"));
        assert!(excluded(&["*.md|*.txt"], "x.mdown"));
        assert!(excluded(&["a{2}*"], "aab"));
        assert!(!excluded(&["a{2}*"], "a{2}b"));
        assert!(excluded(&["a{2}"], "a{2}"));
        assert!(DockerIgnore::new(&s(&["*{2}"])).is_err());
        // An exception is matched against parents too.
        assert!(!excluded(&["docs", "!docs"], "docs/a.md"));
    }

    #[test]
    fn non_utf8_paths() {
        let di = DockerIgnore::new(&s(&["a?b", "x\u{FFFD}y*", "lit", "*/*.bin"])).unwrap();
        assert!(di.matches(b"a\xffb"));
        assert!(!di.matches(b"a\xff\xfeb"));
        // A regexp sees an invalid byte as U+FFFD; an exact pattern compares bytes.
        assert!(di.matches(b"x\xffy"));
        assert!(!DockerIgnore::new(&s(&["x\u{FFFD}y"]))
            .unwrap()
            .matches(b"x\xffy"));
        assert!(di.matches(b"dir\xff/f.bin"));
        assert!(di.matches(b"lit/\xff"));
        assert!(!di.matches(b"\xff/x"));
        // A truncated 4-byte sequence is three runes to Go.
        assert!(DockerIgnore::new(&s(&["a???b"]))
            .unwrap()
            .matches(b"a\xf0\x9f\x98b"));
    }

    #[test]
    fn malformed_patterns_are_errors_naming_the_pattern() {
        for bad in [
            "[", "a[", "[^", "[^bc", "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "!",
        ] {
            let err = DockerIgnore::new(&s(&["ok", bad])).expect_err(bad);
            assert_eq!(err.pattern, bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
        // Valid for filepath.Match, refused by Go's regexp.
        for bad in ["[z-a]", "\\q", "\\8", "[a-*]", "\\pX"] {
            let err = DockerIgnore::new(&s(&[bad])).expect_err(bad);
            assert_eq!(err.pattern, bad);
        }
        assert!(DockerIgnore::new(&s(&["  ", "", "!/"])).is_err());
        assert!(DockerIgnore::new(&s(&["  ", ""])).unwrap().is_empty());
    }

    #[test]
    fn patterns_are_cleaned() {
        let di = DockerIgnore::new(&s(&[" /a/./b/ ", "! c/../d", "e//f", "!/x"])).unwrap();
        assert_eq!(di.patterns(), &s(&["a/b", "!d", "e/f", "!x"]));
        assert!(di.has_exceptions());
        assert!(di.matches(b"a/b/c"));
        assert!(!DockerIgnore::new(&s(&["a"])).unwrap().has_exceptions());
    }

    #[test]
    fn descend_decisions() {
        let di = DockerIgnore::new(&s(&["*", "!keep/this/file.txt"])).unwrap();
        assert!(di.dir_may_contain_exceptions(b"keep"));
        assert!(di.dir_may_contain_exceptions(b"keep/this"));
        assert!(!di.dir_may_contain_exceptions(b"keep/this/file.txt"));
        assert!(!di.dir_may_contain_exceptions(b"other"));
        assert!(!di.dir_may_contain_exceptions(b"kee"));

        let di = DockerIgnore::new(&s(&["*", "!**/keep.txt"])).unwrap();
        assert!(di.dir_may_contain_exceptions(b"any/where"));
        let di = DockerIgnore::new(&s(&["*", "!*/keep"])).unwrap();
        assert!(di.dir_may_contain_exceptions(b"a"));
        assert!(!di.dir_may_contain_exceptions(b"a/b"));
        let di = DockerIgnore::new(&s(&["*", "!src/**"])).unwrap();
        assert!(di.dir_may_contain_exceptions(b"src"));
        assert!(di.dir_may_contain_exceptions(b"src/x"));
        assert!(!di.dir_may_contain_exceptions(b"srcx"));
        let di = DockerIgnore::new(&s(&["*", "!a*/b?/*.txt"])).unwrap();
        assert!(di.dir_may_contain_exceptions(b"abc"));
        assert!(di.dir_may_contain_exceptions(b"abc/bx"));
        assert!(!di.dir_may_contain_exceptions(b"abc/bxy"));
        assert!(!di.dir_may_contain_exceptions(b"x"));
        assert!(!di.dir_may_contain_exceptions(b"abc/bx/c"));
        let di = DockerIgnore::new(&s(&["build"])).unwrap();
        assert!(!di.dir_may_contain_exceptions(b"build"));
        // A raw '|' leaves the second half of Go's "^a[^/]/|b$" unanchored at the start.
        let di = DockerIgnore::new(&s(&["*", "!a?/|b"])).unwrap();
        assert!(di.dir_may_contain_exceptions(b"x"));
        assert!(!di.matches(b"x/yb"));
    }

    #[test]
    fn long_patterns_compile_on_a_small_stack() {
        let handle = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                let long = format!("!{}*", "ab/".repeat(400));
                let class = format!("!{}", "[ab]?".repeat(300));
                let di = DockerIgnore::new(&[String::from("*"), long, class]).unwrap();
                assert!(di.dir_may_contain_exceptions(b"ab/ab"));
                assert!(!di.dir_may_contain_exceptions(b"ab/ac"));
                // Too many states for an exact answer: a conservative one.
                let counted = format!("!{}", "[ab]{1000}".repeat(60));
                let di = DockerIgnore::new(&[String::from("*"), counted]).unwrap();
                assert!(di.dir_may_contain_exceptions(b"cd"));
                let huge = format!("!{}/*", "x".repeat(5000));
                let di = DockerIgnore::new(&[String::from("*"), huge]).unwrap();
                assert!(!di.dir_may_contain_exceptions(b"y"));
                assert!(di.dir_may_contain_exceptions("x".repeat(5000).as_bytes()));
                assert!(!di.matches(format!("{}/a", "x".repeat(5000)).as_bytes()));
                assert!(di.matches(b"y"));
            })
            .unwrap();
        handle.join().unwrap();
    }

    /// A small deterministic generator, so the property test needs no extra crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.next(from.len())]
        }
    }

    #[test]
    fn pruning_never_hides_a_reincluded_path() {
        // For random pattern sets: whenever an excluded directory is pruned, no path below it
        // may be included.
        let pieces = [
            "a", "b", "ab", "*", "?", "**", "[ab]", "[^a]", "/", "/", ".", "\\a", "x",
        ];
        let names = ["a", "b", "ab", "ba", "x", "aa", "a.b"];
        let mut rng = Lcg(7);
        for _ in 0..1500 {
            let mut patterns = Vec::new();
            for _ in 0..1 + rng.next(4) {
                let mut p = String::new();
                if rng.next(2) == 0 {
                    p.push('!');
                }
                for _ in 0..1 + rng.next(5) {
                    p.push_str(rng.pick(&pieces));
                }
                patterns.push(p);
            }
            let Ok(di) = DockerIgnore::new(&patterns) else {
                continue;
            };
            for _ in 0..20 {
                let depth = 1 + rng.next(4);
                let path: Vec<&str> = (0..depth).map(|_| rng.pick(&names)).collect();
                for cut in 1..depth {
                    let dir = path[..cut].join("/");
                    if di.matches(dir.as_bytes()) && !di.dir_may_contain_exceptions(dir.as_bytes())
                    {
                        let full = path.join("/");
                        assert!(
                            di.matches(full.as_bytes()),
                            "{patterns:?}: pruned {dir:?} but {full:?} is included"
                        );
                    }
                }
            }
        }
    }

    fn gi(lines: &[&str]) -> GitIgnore {
        GitIgnore::new(&s(lines)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn gitignore_basics() {
        let g = gi(&[
            "/foo",
            "bar/",
            "**/baz",
            "a/**/b",
            "docs/**",
            "*.log",
            "!keep.log",
        ]);
        assert!(g.matches(b"foo", false));
        assert!(!g.matches(b"x/foo", false));
        assert!(g.matches(b"bar", true));
        assert!(!g.matches(b"bar", false));
        assert!(g.matches(b"x/bar/file", false));
        assert!(g.matches(b"q/baz", false));
        assert!(g.matches(b"a/b", false));
        assert!(g.matches(b"a/x/y/b", false));
        assert!(!g.matches(b"docs", true));
        assert!(g.matches(b"docs/x", false));
        assert!(g.matches(b"x/y.log", false));
        assert!(!g.matches(b"x/keep.log", false));
        assert!(g.matches(b"/foo", false));
        assert!(g.matches(b"./foo", false));
        assert!(!g.matches(b"", false));
        assert!(!g.matches(b"/", true));
        assert!(g.matches(b"\xff.log", false));
    }

    #[test]
    fn gitignore_cannot_reinclude_under_ignored_dir() {
        let g = gi(&["build/", "!build/keep.txt"]);
        assert!(g.matches(b"build/keep.txt", false));
        let g = gi(&["build/*", "!build/keep.txt"]);
        assert!(!g.matches(b"build/keep.txt", false));
        assert!(g.matches(b"build/other.txt", false));
    }

    #[test]
    fn gitignore_escapes_and_spaces() {
        let g = gi(&["\\#hash", "\\!bang", "trail   ", "esc\\ ", "#comment"]);
        assert!(g.matches(b"#hash", false));
        assert!(g.matches(b"!bang", false));
        assert!(g.matches(b"trail", false));
        assert!(!g.matches(b"trail   ", false));
        assert!(g.matches(b"esc ", false));
        assert!(!g.matches(b"#comment", false));
        let g = GitIgnore::new(&s(&["\u{FEFF}a\r\nb"])).unwrap();
        assert!(g.matches(b"a", false) && g.matches(b"b", false));
    }

    #[test]
    fn gitignore_errors_name_the_line() {
        let err = GitIgnore::new(&s(&["ok", "foo\\"])).unwrap_err();
        assert_eq!(err.pattern, "foo\\");
        let err = GitIgnore::new(&s(&["[z-a]"])).unwrap_err();
        assert_eq!(err.pattern, "[z-a]");
    }
}
